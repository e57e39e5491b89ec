//! Names in Redis and their hash slots: a payment's outcome key and
//! channel (which share a hash tag, hence a slot), the readiness probes'
//! keys (one per slot), and the slot computation itself.
//!
//! A leaf: imports nothing from the rest of `cluster/`, nor from
//! `cluster/mod.rs` or the backplane's door.

use crate::model::PayRecordId;

/// Hash slots of a Redis Cluster.
pub(super) const SLOTS: usize = 16_384;
/// Prefix of outcome keys; the payment id follows as a hash tag.
const OUTCOME_KEY: &str = "paypush:outcome:";
/// Prefix of payment channels; the payment id follows as a hash tag.
const CHANNEL: &str = "paypush:outcomes:";
/// Prefix of the readiness probes' keys; a hash tag that picks the slot
/// follows.
const PROBE_KEY: &str = "paypush:ready:";

/// `id`'s outcome key, in `id`'s slot.
pub(super) fn outcome_key(id: PayRecordId) -> String {
    format!("{OUTCOME_KEY}{{{id}}}")
}

/// `id`'s channel, in the slot of its outcome key.
pub(super) fn channel(id: PayRecordId) -> String {
    format!("{CHANNEL}{{{id}}}")
}

/// The payment whose channel is `channel`, if it is one.
pub(super) fn payment_of_channel(channel: &str) -> Option<PayRecordId> {
    let id = channel.strip_prefix(CHANNEL)?.strip_prefix('{')?;
    PayRecordId::parse(id.strip_suffix('}')?).ok()
}

/// The hash slot of `id`'s key and channel.
pub(super) fn slot(id: PayRecordId) -> u16 {
    hash_slot(&id.to_string())
}

/// A readiness probe's key in `slot`, from a table of one hash tag per
/// slot, built on first use (some 170 000 CRCs, milliseconds, once).
pub(super) fn probe_key(slot: u16) -> String {
    static TAGS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; SLOTS];
        let mut missing = SLOTS;
        let mut n = 0u32;
        while missing > 0 && n < u32::MAX {
            let tag = &mut tags[usize::from(hash_slot(&n.to_string()))];
            if *tag == u32::MAX {
                *tag = n;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    let tag = tags.get(usize::from(slot)).copied().unwrap_or_default();
    format!("{PROBE_KEY}{{{tag}}}")
}

/// The hash slot of a key whose hash tag is `tag`: CRC16 (XMODEM) of the
/// tag, modulo the slot count, as Redis Cluster computes it.
fn hash_slot(tag: &str) -> u16 {
    let crc = tag.bytes().fold(0u16, |mut crc, byte| {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    });
    // SLOTS is a power of two: the remainder fits in 14 bits.
    crc & (SLOTS as u16 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_computed_as_redis_does() {
        // CRC16/XMODEM's check value is 0x31C3 for "123456789".
        let id = PayRecordId::parse("123456789").unwrap();
        assert_eq!(slot(id), 0x31C3);
        // `CLUSTER KEYSLOT paypush:outcome:{1}` says 9842.
        assert_eq!(slot(PayRecordId::parse("1").unwrap()), 9842);
    }

    #[test]
    fn probe_keys_land_in_their_slot() {
        for slot in [0, 1, 9842, 16_383] {
            let key = probe_key(slot);
            let tag = key.split_once('{').and_then(|(_, t)| t.strip_suffix('}'));
            assert_eq!(tag.map(hash_slot), Some(slot), "{key}");
        }
    }

    #[test]
    fn channels_name_their_payment_and_share_its_slot() {
        let id = PayRecordId::parse("42").unwrap();
        assert_eq!(payment_of_channel(&channel(id)), Some(id));
        assert!(outcome_key(id).ends_with("{42}") && channel(id).ends_with("{42}"));
        assert_eq!(payment_of_channel("paypush:outcomes:42"), None);
    }
}
