//! Callback signatures and subscribe tokens: HMAC-SHA256 with the `hmac` and
//! `sha2` crates, compared in constant time.
//!
//! A signed callback carries `Paypush-Timestamp`, `Paypush-Nonce` and
//! `Paypush-Signature`, the hex HMAC of
//! `timestamp \n nonce \n METHOD \n path_and_query \n media_type \n body \n`
//! (contract v2: the media type is signed, because the same body means
//! different fields as JSON and as a form). A subscribe token is the hex HMAC
//! of `push:<payRecordId>`.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use warp::http::HeaderMap;

use crate::model::PayRecordId;

/// Header with the signing time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "Paypush-Timestamp";
/// Header with the one-time nonce.
pub const NONCE_HEADER: &str = "Paypush-Nonce";
/// Header with the hex HMAC-SHA256.
pub const SIGNATURE_HEADER: &str = "Paypush-Signature";
/// How far a timestamp may be from now, either way.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// How long a nonce is remembered to catch replays: twice the skew, so a
/// request is either stale or its nonce still remembered.
pub const NONCE_MEMORY: Duration = Duration::from_secs(600);
/// Shortest and longest nonce accepted.
pub const NONCE_LENGTH: std::ops::RangeInclusive<usize> = 16..=64;

type HmacSha256 = Hmac<Sha256>;

/// A secret that never prints: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret's bytes, for the HMAC key.
    fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        match HmacSha256::new_from_slice(self.expose()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        }
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            Err("a secret must not be empty".into())
        } else {
            Ok(Secret(s.to_string()))
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The parts of a callback request that are signed.
#[derive(Debug, Clone, Copy)]
pub struct SignedParts<'a> {
    /// `GET` or `POST`.
    pub method: &'a str,
    /// The path and query as sent, e.g. `/pay-callback?payRecordId=123`.
    pub path_and_query: &'a str,
    /// The `Content-Type`'s type/subtype, lower case, without parameters
    /// (see [`media_type`]); empty when the request has none (GET).
    pub media_type: &'a str,
    /// The body; empty for GET.
    pub body: &'a [u8],
}

/// Why a callback's signature was refused; each says which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// A signature header is missing (or not text).
    MissingHeader(&'static str),
    /// The timestamp is not Unix seconds.
    MalformedTimestamp,
    /// The timestamp is more than [`MAX_CLOCK_SKEW`] from now.
    TimestampOutOfRange,
    /// The nonce is not 16 to 64 characters of `[A-Za-z0-9_-]`.
    MalformedNonce,
    /// The signature does not match the request.
    BadSignature,
    /// The nonce was used in the last [`NONCE_MEMORY`].
    ReplayedNonce,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::MissingHeader(name) => write!(f, "the {name} header is missing"),
            SignatureError::MalformedTimestamp => {
                write!(f, "{TIMESTAMP_HEADER} must be Unix time in seconds")
            }
            SignatureError::TimestampOutOfRange => write!(
                f,
                "{TIMESTAMP_HEADER} is more than {} s away from the server's clock",
                MAX_CLOCK_SKEW.as_secs()
            ),
            SignatureError::MalformedNonce => {
                write!(
                    f,
                    "{NONCE_HEADER} must be 16 to 64 characters of [A-Za-z0-9_-]"
                )
            }
            SignatureError::BadSignature => {
                write!(f, "{SIGNATURE_HEADER} does not match the request")
            }
            SignatureError::ReplayedNonce => write!(
                f,
                "{NONCE_HEADER} was already used in the last {} s",
                NONCE_MEMORY.as_secs()
            ),
        }
    }
}

/// The signature headers of a request, checked for form but not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// Unix seconds.
    pub timestamp: i64,
    /// As sent (its text is signed).
    pub timestamp_text: String,
    /// The one-time nonce.
    pub nonce: String,
    /// The signature bytes, decoded from hex.
    pub signature: Vec<u8>,
}

impl SignatureHeaders {
    /// Reads and checks the form of the three headers.
    pub fn parse(headers: &HeaderMap) -> Result<SignatureHeaders, SignatureError> {
        let get = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(SignatureError::MissingHeader(name))
        };
        let timestamp_text = get(TIMESTAMP_HEADER)?;
        let nonce = get(NONCE_HEADER)?;
        let signature = get(SIGNATURE_HEADER)?;
        let timestamp = parse_timestamp(timestamp_text)?;
        if !is_valid_nonce(nonce) {
            return Err(SignatureError::MalformedNonce);
        }
        let signature = hex::decode(signature).map_err(|_| SignatureError::BadSignature)?;
        Ok(SignatureHeaders {
            timestamp,
            timestamp_text: timestamp_text.to_string(),
            nonce: nonce.to_string(),
            signature,
        })
    }

    /// Checks the timestamp against `now` and the signature against the
    /// request, in constant time. Nonce replay is the caller's check, made
    /// only after this one passes.
    pub fn verify(
        &self,
        secret: &Secret,
        parts: SignedParts<'_>,
        now: SystemTime,
    ) -> Result<(), SignatureError> {
        let now = unix_seconds(now);
        if now.abs_diff(self.timestamp) > MAX_CLOCK_SKEW.as_secs() {
            return Err(SignatureError::TimestampOutOfRange);
        }
        message_mac(secret, &self.timestamp_text, &self.nonce, parts)
            .verify_slice(&self.signature)
            .map_err(|_| SignatureError::BadSignature)
    }
}

/// The three headers for a request signed now with a fresh random nonce, as
/// `(name, value)` pairs.
pub fn sign(
    secret: &Secret,
    parts: SignedParts<'_>,
    now: SystemTime,
) -> [(&'static str, String); 3] {
    sign_with(secret, parts, unix_seconds(now).to_string(), fresh_nonce())
}

/// A random nonce: 32 hex digits.
pub fn fresh_nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The three headers for a request signed with this timestamp and nonce.
pub fn sign_with(
    secret: &Secret,
    parts: SignedParts<'_>,
    timestamp: String,
    nonce: String,
) -> [(&'static str, String); 3] {
    let signature = signature_of(secret, &timestamp, &nonce, parts);
    [
        (TIMESTAMP_HEADER, timestamp),
        (NONCE_HEADER, nonce),
        (SIGNATURE_HEADER, signature),
    ]
}

/// The hex `Paypush-Signature` of a request with this timestamp and nonce.
pub fn signature_of(
    secret: &Secret,
    timestamp: &str,
    nonce: &str,
    parts: SignedParts<'_>,
) -> String {
    hex::encode(
        message_mac(secret, timestamp, nonce, parts)
            .finalize()
            .into_bytes(),
    )
}

/// The subscribe token of a payment: 64 lower-case hex digits.
pub fn subscribe_token(secret: &Secret, id: PayRecordId) -> String {
    hex::encode(token_mac(secret, id).finalize().into_bytes())
}

/// Whether `token` is the payment's subscribe token, compared in constant time.
pub fn verify_token(secret: &Secret, id: PayRecordId, token: &str) -> bool {
    hex::decode(token).is_ok_and(|bytes| token_mac(secret, id).verify_slice(&bytes).is_ok())
}

fn token_mac(secret: &Secret, id: PayRecordId) -> HmacSha256 {
    let mut mac = secret.mac();
    mac.update(format!("push:{id}").as_bytes());
    mac
}

fn message_mac(
    secret: &Secret,
    timestamp: &str,
    nonce: &str,
    parts: SignedParts<'_>,
) -> HmacSha256 {
    let mut mac = secret.mac();
    for piece in [
        timestamp.as_bytes(),
        nonce.as_bytes(),
        parts.method.as_bytes(),
        parts.path_and_query.as_bytes(),
        parts.media_type.as_bytes(),
        parts.body,
    ] {
        mac.update(piece);
        mac.update(b"\n");
    }
    mac
}

/// The signed form of a `Content-Type` value: its type/subtype, trimmed, in
/// lower case, without parameters (`Application/JSON; charset=UTF-8` ->
/// `application/json`). The server and `paypush sign` both use this, so they
/// cannot disagree.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn parse_timestamp(text: &str) -> Result<i64, SignatureError> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::MalformedTimestamp);
    }
    text.parse().map_err(|_| SignatureError::MalformedTimestamp)
}

/// Whether `nonce` is 16 to 64 characters of `[A-Za-z0-9_-]`.
pub fn is_valid_nonce(nonce: &str) -> bool {
    NONCE_LENGTH.contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `time` in Unix seconds (negative before 1970).
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn secret() -> Secret {
        "s3cret".parse().unwrap()
    }

    const GET: SignedParts<'static> = SignedParts {
        method: "GET",
        path_and_query: "/pay-callback?payRecordId=123",
        media_type: "",
        body: b"",
    };

    /// The body of issue 13: one payment as JSON, another as a form.
    const AMBIGUOUS_BODY: &[u8] =
        br#"{"payRecordId":"21","note":"x&payRecordId=22&status=FAILED&y="}"#;

    const JSON_POST: SignedParts<'static> = SignedParts {
        method: "POST",
        path_and_query: "/pay-callback",
        media_type: "application/json",
        body: AMBIGUOUS_BODY,
    };

    fn headers_of(signed: &[(&'static str, String); 3]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in signed {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn a_signed_request_verifies_and_a_tampered_one_does_not() {
        let now = SystemTime::now();
        let headers = headers_of(&sign(&secret(), GET, now));
        let parsed = SignatureHeaders::parse(&headers).unwrap();
        assert_eq!(parsed.verify(&secret(), GET, now), Ok(()));
        let tampered = SignedParts {
            path_and_query: "/pay-callback?payRecordId=124",
            ..GET
        };
        assert_eq!(
            parsed.verify(&secret(), tampered, now),
            Err(SignatureError::BadSignature)
        );
        let other: Secret = "other".parse().unwrap();
        assert_eq!(
            parsed.verify(&other, GET, now),
            Err(SignatureError::BadSignature)
        );
        let later = now + MAX_CLOCK_SKEW + Duration::from_secs(2);
        assert_eq!(
            parsed.verify(&secret(), GET, later),
            Err(SignatureError::TimestampOutOfRange)
        );
    }

    /// Parses headers carrying the HMAC of `message` (timestamp 1700000000,
    /// nonce `abcdefghijklmnop`), written in upper-case hex.
    fn headers_signing(message: &[u8]) -> SignatureHeaders {
        let mut mac = secret().mac();
        mac.update(message);
        let expected = mac.finalize().into_bytes();
        let mut headers = HeaderMap::new();
        headers.insert(TIMESTAMP_HEADER, HeaderValue::from_static("1700000000"));
        headers.insert(NONCE_HEADER, HeaderValue::from_static("abcdefghijklmnop"));
        headers.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&hex::encode_upper(expected)).unwrap(),
        );
        SignatureHeaders::parse(&headers).unwrap()
    }

    fn then() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_100)
    }

    #[test]
    fn get_signature_matches_the_documented_message() {
        // The openssl recipe of docs/security.md computes exactly this: an empty line
        // for the media type and another for the body.
        let parsed = headers_signing(
            b"1700000000\nabcdefghijklmnop\nGET\n/pay-callback?payRecordId=123\n\n\n",
        );
        assert_eq!(parsed.verify(&secret(), GET, then()), Ok(()));
    }

    #[test]
    fn post_signature_matches_the_documented_message_with_its_media_type() {
        let form = SignedParts {
            media_type: "application/x-www-form-urlencoded",
            body: b"payRecordId=124&status=FAILED",
            ..JSON_POST
        };
        let parsed = headers_signing(
            b"1700000000\nabcdefghijklmnop\nPOST\n/pay-callback\n\
              application/x-www-form-urlencoded\npayRecordId=124&status=FAILED\n",
        );
        assert_eq!(parsed.verify(&secret(), form, then()), Ok(()));
        let as_json = SignedParts {
            media_type: "application/json",
            ..form
        };
        assert_eq!(
            parsed.verify(&secret(), as_json, then()),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn a_body_signed_as_json_does_not_verify_as_a_form() {
        let now = SystemTime::now();
        let parsed =
            SignatureHeaders::parse(&headers_of(&sign(&secret(), JSON_POST, now))).unwrap();
        assert_eq!(parsed.verify(&secret(), JSON_POST, now), Ok(()));
        for other in ["application/x-www-form-urlencoded", "", "text/plain"] {
            let replayed = SignedParts {
                media_type: other,
                ..JSON_POST
            };
            assert_eq!(
                parsed.verify(&secret(), replayed, now),
                Err(SignatureError::BadSignature),
                "{other:?}"
            );
        }
    }

    #[test]
    fn media_type_is_type_and_subtype_in_lower_case_without_parameters() {
        for (header, signed) in [
            ("application/json", "application/json"),
            ("Application/JSON; charset=UTF-8", "application/json"),
            (
                "application/x-www-form-urlencoded;charset=utf-8",
                "application/x-www-form-urlencoded",
            ),
            (" text/plain ; q=1", "text/plain"),
            ("", ""),
        ] {
            assert_eq!(media_type(header), signed, "{header:?}");
        }
    }

    #[test]
    fn tokens_are_64_hex_digits_and_bound_to_the_payment() {
        let id = PayRecordId::parse("123").unwrap();
        let token = subscribe_token(&secret(), id);
        assert_eq!(token.len(), 64);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(verify_token(&secret(), id, &token));
        assert!(!verify_token(
            &secret(),
            PayRecordId::parse("124").unwrap(),
            &token
        ));
        assert!(!verify_token(&secret(), id, "zz"));
    }

    #[test]
    fn secrets_never_print() {
        let s = secret();
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn signature_headers_never_panic_and_accept_only_well_formed_ones(
                timestamp in "\\PC{0,12}|-?[0-9]{1,20}",
                nonce in "\\PC{0,70}|[A-Za-z0-9_-]{10,70}",
                signature in "\\PC{0,70}|[0-9a-fA-F]{64}",
            ) {
                let mut headers = HeaderMap::new();
                for (name, value) in [(TIMESTAMP_HEADER, &timestamp), (NONCE_HEADER, &nonce), (SIGNATURE_HEADER, &signature)] {
                    if let Ok(value) = HeaderValue::from_str(value) {
                        headers.insert(name, value);
                    }
                }
                if let Ok(parsed) = SignatureHeaders::parse(&headers) {
                    prop_assert!(is_valid_nonce(&parsed.nonce));
                    prop_assert_eq!(&parsed.timestamp_text, &timestamp);
                    prop_assert_eq!(Ok(parsed.timestamp), timestamp.parse::<i64>());
                    prop_assert_eq!(parsed.verify(&secret(), GET, SystemTime::now()).is_ok(), false);
                }
            }
        }
    }
}
