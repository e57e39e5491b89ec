//! The store's record format: what one outcome or one nonce looks like on
//! disk, and the reader that tells a whole record from a torn or corrupt one.
//!
//! A segment file starts with [`MAGIC`], then holds records back to back:
//!
//! ```text
//! length: u32 LE   bytes of the payload
//! crc:    u32 LE   CRC-32 (IEEE) of the payload
//! payload: tag u8, then
//!   1 (outcome): payRecordId u64 LE, status u8 (0 SUCCESS, 1 FAILED, 2 CLOSED),
//!                completedAt u64 LE (Unix ms)
//!   2 (nonce):   seen u64 LE (Unix ms), the nonce's bytes (16 to 64 of [A-Za-z0-9_-])
//! ```
//!
//! A crash can cut the last write anywhere: the reader then finds a record
//! that does not fit in what is left ([`Read::Torn`]) or whose checksum does
//! not match ([`Read::Corrupt`]). A bit flip or a bad sector looks the same
//! from where it starts, but valid records follow it: [`next_record`] finds
//! the first one by trying every later offset (a length in range, a matching
//! CRC-32 and a payload that parses: bytes with a plausible length pass the
//! checksum about once in four billion tries). What the store does with each
//! case is in [`crate::store`] (the design) and its `folder` room (the reading).
//!
//! A leaf of the store: it imports the crate's model and the nonce's length,
//! and must not import any other room of the store, which all read it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::model::{Outcome, PayRecordId, Status};
use crate::signature::NONCE_LENGTH;

/// The first bytes of every segment file: the format and its version.
pub(crate) const MAGIC: &[u8; 8] = b"PAYPUSH1";
/// Bytes before a record's payload: its length and its checksum.
const HEADER: usize = 8;
/// The largest payload a valid record has (a nonce record of 64 bytes).
const MAX_PAYLOAD: usize = 1 + 8 + 64;

const TAG_OUTCOME: u8 = 1;
const TAG_NONCE: u8 = 2;

/// One durable fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A payment's outcome, recorded once (first wins).
    Outcome(Outcome),
    /// A signed callback's nonce, seen at this time.
    Nonce {
        /// The nonce as sent.
        nonce: String,
        /// When it was accepted.
        seen: SystemTime,
    },
}

/// What the reader found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// A whole, valid record, taking this many bytes.
    Record(Record, usize),
    /// The buffer ends inside a record: a write cut short.
    Torn,
    /// Bytes that are not a valid record (bad checksum or contents).
    Corrupt,
}

impl Record {
    /// When this record was made: the outcome's first callback, or the nonce's.
    pub fn time(&self) -> SystemTime {
        match self {
            Record::Outcome(outcome) => outcome.completed_at,
            Record::Nonce { seen, .. } => *seen,
        }
    }

    /// Appends the record, header included, to `buffer`.
    pub fn encode(&self, buffer: &mut Vec<u8>) {
        let start = buffer.len();
        buffer.extend_from_slice(&[0; HEADER]);
        match self {
            Record::Outcome(outcome) => {
                buffer.push(TAG_OUTCOME);
                buffer.extend_from_slice(&outcome.pay_record_id.get().to_le_bytes());
                buffer.push(status_byte(outcome.status));
                buffer.extend_from_slice(&unix_millis(outcome.completed_at).to_le_bytes());
            }
            Record::Nonce { nonce, seen } => {
                buffer.push(TAG_NONCE);
                buffer.extend_from_slice(&unix_millis(*seen).to_le_bytes());
                buffer.extend_from_slice(nonce.as_bytes());
            }
        }
        let payload = &buffer[start + HEADER..];
        // At most MAX_PAYLOAD bytes, so the length always fits.
        let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let crc = crc32fast::hash(payload);
        buffer[start..start + 4].copy_from_slice(&length.to_le_bytes());
        buffer[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    }

    /// Reads the record at the start of `bytes`. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Read {
        let Some((header, rest)) = bytes.split_first_chunk::<HEADER>() else {
            return Read::Torn;
        };
        let (length, crc) = header.split_at(4);
        let length = u32::from_le_bytes(length.try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(crc.try_into().unwrap_or_default());
        if length == 0 || length > MAX_PAYLOAD {
            return Read::Corrupt;
        }
        let Some(payload) = rest.get(..length) else {
            return Read::Torn;
        };
        if crc32fast::hash(payload) != crc {
            return Read::Corrupt;
        }
        match parse_payload(payload) {
            Some(record) => Read::Record(record, HEADER + length),
            None => Read::Corrupt,
        }
    }
}

/// The first offset at or after `from` where a whole, valid record starts:
/// where reading resumes after a damaged record. `None` when no valid record
/// follows (a torn tail).
pub(crate) fn next_record(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len()).find(|&offset| matches!(Record::decode(&bytes[offset..]), Read::Record(..)))
}

fn parse_payload(payload: &[u8]) -> Option<Record> {
    let (&tag, body) = payload.split_first()?;
    match tag {
        TAG_OUTCOME => {
            let (id, rest) = body.split_first_chunk::<8>()?;
            let (&status, rest) = rest.split_first()?;
            let millis: [u8; 8] = rest.try_into().ok()?;
            Some(Record::Outcome(Outcome {
                pay_record_id: PayRecordId::from_u64(u64::from_le_bytes(*id)).ok()?,
                status: *Status::ALL.get(usize::from(status))?,
                completed_at: from_unix_millis(u64::from_le_bytes(millis)),
            }))
        }
        TAG_NONCE => {
            let (millis, nonce) = body.split_first_chunk::<8>()?;
            let nonce = std::str::from_utf8(nonce).ok()?;
            let valid = NONCE_LENGTH.contains(&nonce.len())
                && nonce
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            valid.then(|| Record::Nonce {
                nonce: nonce.to_string(),
                seen: from_unix_millis(u64::from_le_bytes(*millis)),
            })
        }
        _ => None,
    }
}

fn status_byte(status: Status) -> u8 {
    match status {
        Status::Success => 0,
        Status::Failed => 1,
        Status::Closed => 2,
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_unix_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn outcome(id: u64, status: Status, millis: u64) -> Record {
        Record::Outcome(Outcome {
            pay_record_id: PayRecordId::from_u64(id).unwrap(),
            status,
            completed_at: from_unix_millis(millis),
        })
    }

    fn nonce(text: &str, millis: u64) -> Record {
        Record::Nonce {
            nonce: text.to_string(),
            seen: from_unix_millis(millis),
        }
    }

    #[test]
    fn records_read_back_as_written() {
        for record in [
            outcome(1, Status::Success, 1_795_636_968_695),
            outcome(PayRecordId::MAX, Status::Closed, 0),
            nonce("abcdefghijklmnop", 1_795_636_968_695),
            nonce(&"x".repeat(64), 1),
        ] {
            let mut bytes = Vec::new();
            record.encode(&mut bytes);
            assert_eq!(Record::decode(&bytes), Read::Record(record, bytes.len()));
        }
    }

    #[test]
    fn a_cut_record_is_torn_and_a_flipped_bit_is_corrupt() {
        let mut bytes = Vec::new();
        outcome(7, Status::Failed, 42).encode(&mut bytes);
        for cut in 0..bytes.len() {
            assert_eq!(Record::decode(&bytes[..cut]), Read::Torn, "cut at {cut}");
        }
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(Record::decode(&flipped), Read::Corrupt | Read::Torn),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn reading_resumes_at_the_record_after_a_damaged_one() {
        let mut bytes = Vec::new();
        outcome(1, Status::Success, 42).encode(&mut bytes);
        let second = bytes.len();
        outcome(2, Status::Failed, 43).encode(&mut bytes);
        let third = bytes.len();
        nonce("abcdefghijklmnop", 44).encode(&mut bytes);
        for byte in 0..third - second {
            let mut damaged = bytes.clone();
            damaged[second + byte] ^= 0x04;
            assert_eq!(
                next_record(&damaged, second + 1),
                Some(third),
                "byte {byte}"
            );
        }
        assert_eq!(
            next_record(&bytes, third + 1),
            None,
            "nothing valid after the last"
        );
        assert_eq!(
            next_record(&bytes[..third - 1], second + 1),
            None,
            "a torn tail"
        );
    }

    proptest! {
        #[test]
        fn any_bytes_are_a_valid_record_or_refused_never_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..96)
        ) {
            if let Read::Record(record, used) = Record::decode(&bytes) {
                // What was read is exactly what those bytes encode.
                let mut again = Vec::new();
                record.encode(&mut again);
                prop_assert_eq!(&again[..], &bytes[..used]);
            }
        }

        #[test]
        fn valid_headers_with_random_payloads_never_panic(
            payload in proptest::collection::vec(any::<u8>(), 1..80)
        ) {
            let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
            if let Read::Record(record, used) = Record::decode(&bytes) {
                let mut again = Vec::new();
                record.encode(&mut again);
                prop_assert_eq!(&again[..], &bytes[..used]);
            }
        }
    }
}
