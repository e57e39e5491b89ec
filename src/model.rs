//! The domain types, parsed once at the edge: [`PayRecordId`], [`Status`],
//! [`Outcome`], and the JSON shapes the service writes.
//!
//! Inner code never sees a raw id or status string: a value of these types is
//! valid by construction.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A payment's identifier: a decimal integer from 1 to `i64::MAX`, written
/// exactly as `[1-9][0-9]*` (Java `Long`'s positive range, as in the original
/// Spring service).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayRecordId(u64);

/// Why a string is not a [`PayRecordId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPayRecordId;

impl PayRecordId {
    /// The largest id accepted: `9223372036854775807`.
    pub const MAX: u64 = i64::MAX as u64;

    /// Parses the exact decimal form: no sign, no spaces, no leading zeros.
    pub fn parse(s: &str) -> Result<Self, InvalidPayRecordId> {
        let bytes = s.as_bytes();
        let well_formed = matches!(bytes.first(), Some(b'1'..=b'9'))
            && bytes.iter().all(u8::is_ascii_digit)
            && bytes.len() <= 19;
        if !well_formed {
            return Err(InvalidPayRecordId);
        }
        match s.parse::<u64>() {
            Ok(n) if n <= Self::MAX => Ok(PayRecordId(n)),
            _ => Err(InvalidPayRecordId),
        }
    }

    /// The id given once as `payRecordId` in query or form pairs.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Self, InvalidPayRecordId> {
        match single(pairs, "payRecordId") {
            Ok(Some(s)) => PayRecordId::parse(s),
            Ok(None) | Err(Repeated) => Err(InvalidPayRecordId),
        }
    }

    /// Builds an id from a JSON number.
    pub fn from_u64(n: u64) -> Result<Self, InvalidPayRecordId> {
        if (1..=Self::MAX).contains(&n) {
            Ok(PayRecordId(n))
        } else {
            Err(InvalidPayRecordId)
        }
    }

    /// From the text of a JSON number whose value is a whole number, in any
    /// of JSON's spellings (`123`, `123.0`, `1.23e2`, `12300e-2`), exactly:
    /// no float is involved, so no rounding can turn it into another id.
    pub fn from_json_number(text: &str) -> Result<Self, InvalidPayRecordId> {
        let (mantissa, exponent) = match text.split_once(['e', 'E']) {
            Some((mantissa, exponent)) => (mantissa, exponent),
            None => (text, "0"),
        };
        let exponent: i64 = exponent.parse().map_err(|_| InvalidPayRecordId)?;
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if whole.is_empty() || !(whole.bytes().chain(fraction.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(InvalidPayRecordId);
        }
        // The digits without leading zeros, and where the decimal point
        // falls among them.
        let all = format!("{whole}{fraction}");
        let digits = all.trim_start_matches('0');
        let leading_zeros = (all.len() - digits.len()) as i64;
        let point = (whole.len() as i64)
            .saturating_add(exponent)
            .saturating_sub(leading_zeros);
        let significant = digits.trim_end_matches('0');
        let len = significant.len() as i64;
        // Zero, a fraction, or more digits than any id has.
        if significant.is_empty() || point < len || point > MAX_ID_DIGITS {
            return Err(InvalidPayRecordId);
        }
        let integer = format!("{significant}{}", "0".repeat((point - len) as usize));
        PayRecordId::parse(&integer)
    }

    /// The numeric value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PayRecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Written as a JSON string: JavaScript numbers lose precision above 2^53.
impl Serialize for PayRecordId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A payment's terminal status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// The customer paid.
    Success,
    /// The payment failed.
    Failed,
    /// The order was closed before it was paid.
    Closed,
}

/// Why a string is not a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidStatus;

impl Status {
    /// Every status, in the contract's order.
    pub const ALL: [Status; 3] = [Status::Success, Status::Failed, Status::Closed];

    /// The upper-case name used on the wire and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "SUCCESS",
            Status::Failed => "FAILED",
            Status::Closed => "CLOSED",
        }
    }

    /// The message shown to the customer.
    pub fn message(self) -> &'static str {
        match self {
            Status::Success => "支付成功",
            Status::Failed => "支付失败",
            Status::Closed => "订单已关闭",
        }
    }
}

impl FromStr for Status {
    type Err = InvalidStatus;

    /// Case-insensitive; nothing else (no spaces, no empty string) is accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s))
            .ok_or(InvalidStatus)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A payment's recorded outcome: what every stream of it receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The payment.
    pub pay_record_id: PayRecordId,
    /// Its terminal status.
    pub status: Status,
    /// When the first callback was accepted.
    pub completed_at: SystemTime,
}

impl Outcome {
    /// The outcome of a callback accepted now.
    pub fn new(pay_record_id: PayRecordId, status: Status) -> Self {
        Outcome {
            pay_record_id,
            status,
            completed_at: SystemTime::now(),
        }
    }

    /// The SSE `id:` of the outcome event, also what a client sends back as
    /// `Last-Event-ID`: `<payRecordId>-<STATUS>-<completedAt in ms>`. It is
    /// derived from the recorded outcome only, so every instance agrees on it.
    pub fn event_id(&self) -> String {
        let millis = self
            .completed_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("{}-{}-{}", self.pay_record_id, self.status, millis)
    }

    /// `completedAt` as RFC 3339 UTC with milliseconds.
    pub fn completed_at_rfc3339(&self) -> String {
        humantime::format_rfc3339_millis(self.completed_at).to_string()
    }

    /// The JSON data of the outcome event.
    pub fn event_json(&self) -> OutcomeJson {
        OutcomeJson {
            pay_record_id: self.pay_record_id,
            status: self.status,
            message: self.status.message(),
            completed_at: self.completed_at_rfc3339(),
        }
    }
}

/// `{"payRecordId":"123","status":"SUCCESS","message":"支付成功","completedAt":"..."}`
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeJson {
    pay_record_id: PayRecordId,
    status: Status,
    message: &'static str,
    completed_at: String,
}

/// `{"payRecordId":"123","status":"PENDING"}`: the `pending` and `timeout` data.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct PendingJson {
    /// The payment waited for.
    pub pay_record_id: PayRecordId,
    /// Always `PENDING`.
    pub status: &'static str,
}

impl PendingJson {
    /// The payment is still waiting for its outcome.
    pub fn new(pay_record_id: PayRecordId) -> Self {
        PendingJson {
            pay_record_id,
            status: "PENDING",
        }
    }
}

/// The `200` answer to a callback.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct CallbackJson {
    /// The payment.
    pub pay_record_id: PayRecordId,
    /// The recorded status.
    pub status: Status,
    /// True when this callback repeated the recorded outcome and sent nothing.
    pub duplicate: bool,
    /// The recorded status's message.
    pub message: &'static str,
    /// When the first callback was accepted.
    pub completed_at: String,
}

impl CallbackJson {
    /// The answer for a callback that recorded, or repeated, `outcome`.
    pub fn new(outcome: &Outcome, duplicate: bool) -> Self {
        CallbackJson {
            pay_record_id: outcome.pay_record_id,
            status: outcome.status,
            duplicate,
            message: outcome.status.message(),
            completed_at: outcome.completed_at_rfc3339(),
        }
    }
}

/// A provider's notification, parsed: which payment, which outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Callback {
    /// The payment.
    pub pay_record_id: PayRecordId,
    /// Its outcome; `SUCCESS` when the callback names none.
    pub status: Status,
}

/// Why a callback could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidCallback {
    /// `payRecordId` is missing, repeated or malformed.
    PayRecordId,
    /// `status` is repeated or not a terminal status.
    Status,
    /// The JSON body is not an object.
    NotAnObject,
    /// The JSON object has a key more than once: which value is meant is
    /// ambiguous (parsers disagree: first wins, last wins, error).
    RepeatedKey,
}

impl Callback {
    /// From query or form pairs: `payRecordId=123&status=failed`.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Callback, InvalidCallback> {
        let pay_record_id =
            PayRecordId::from_pairs(pairs).map_err(|_| InvalidCallback::PayRecordId)?;
        let status = match single(pairs, "status").map_err(|Repeated| InvalidCallback::Status)? {
            Some(s) => s.parse().map_err(|_| InvalidCallback::Status)?,
            None => Status::Success,
        };
        Ok(Callback {
            pay_record_id,
            status,
        })
    }

    /// From a JSON object: `{"payRecordId":"123","status":"SUCCESS"}`, the id
    /// as a string or a number, `status` absent or null meaning `SUCCESS`.
    pub fn from_json(body: &[u8]) -> Result<Callback, InvalidCallback> {
        let JsonObject { object, repeated } =
            serde_json::from_slice(body).map_err(|_| InvalidCallback::NotAnObject)?;
        if repeated {
            return Err(InvalidCallback::RepeatedKey);
        }
        let pay_record_id = match object.get("payRecordId") {
            Some(serde_json::Value::String(s)) => PayRecordId::parse(s).ok(),
            Some(serde_json::Value::Number(n)) => match n.as_u64() {
                Some(n) => PayRecordId::from_u64(n).ok(),
                // `123.0` or `1.23e2`: read from the text, never through a
                // float that could round it to another payment.
                None => raw_pay_record_id(body)
                    .and_then(|text| PayRecordId::from_json_number(&text).ok()),
            },
            _ => None,
        }
        .ok_or(InvalidCallback::PayRecordId)?;
        let status = match object.get("status") {
            None | Some(serde_json::Value::Null) => Status::Success,
            Some(serde_json::Value::String(s)) => s.parse().map_err(|_| InvalidCallback::Status)?,
            Some(_) => return Err(InvalidCallback::Status),
        };
        Ok(Callback {
            pay_record_id,
            status,
        })
    }
}

/// Digits of [`PayRecordId::MAX`].
const MAX_ID_DIGITS: i64 = 19;

/// The text of the body's top-level `payRecordId` value, as sent.
fn raw_pay_record_id(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(rename = "payRecordId", borrow)]
        pay_record_id: &'a serde_json::value::RawValue,
    }
    let raw: Raw<'_> = serde_json::from_slice(body).ok()?;
    Some(raw.pay_record_id.get().to_string())
}

/// A JSON object's top-level fields, and whether a key came more than once
/// (`serde_json::Value` keeps the last silently).
struct JsonObject {
    object: serde_json::Map<String, serde_json::Value>,
    repeated: bool,
}

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = JsonObject;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonObject, A::Error> {
                let mut object = serde_json::Map::new();
                let mut repeated = false;
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value()?;
                    repeated |= object.insert(key, value).is_some();
                }
                Ok(JsonObject { object, repeated })
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// A query or form field given more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeated;

/// The value of `key` in `pairs`: `Ok(None)` when absent, `Err` when repeated.
pub fn single<'a>(pairs: &'a [(String, String)], key: &str) -> Result<Option<&'a str>, Repeated> {
    let mut values = pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str());
    match (values.next(), values.next()) {
        (value, None) => Ok(value),
        (Some(_), Some(_)) => Err(Repeated),
        (None, Some(_)) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_with_whole_values_are_ids_read_exactly() {
        for (text, id) in [
            ("123", 123),
            ("123.0", 123),
            ("123.000", 123),
            ("1.23e2", 123),
            ("1.23E+2", 123),
            ("12300e-2", 123),
            ("0.0123e4", 123),
            ("9.223372036854775807e18", PayRecordId::MAX),
        ] {
            assert_eq!(
                PayRecordId::from_json_number(text).map(PayRecordId::get),
                Ok(id),
                "{text}"
            );
        }
        for text in [
            "123.5",
            "1.2345e2",
            "0",
            "0.0",
            "-1.0",
            "1e19",
            "9.223372036854775808e18",
            "1.0000000000000001",
            "4503599627370495.5",
            "1e99999999999999999999",
        ] {
            assert!(PayRecordId::from_json_number(text).is_err(), "{text}");
        }
        let callback =
            Callback::from_json(br#"{"payRecordId":218164.0,"status":"failed"}"#).unwrap();
        assert_eq!(
            (callback.pay_record_id.get(), callback.status),
            (218164, Status::Failed)
        );
        assert!(Callback::from_json(br#"{"payRecordId":218164.5}"#).is_err());
    }

    #[test]
    fn pay_record_id_accepts_only_the_exact_decimal_form() {
        for ok in ["1", "123", "9223372036854775807"] {
            assert_eq!(
                PayRecordId::parse(ok).map(|id| id.to_string()),
                Ok(ok.to_string())
            );
        }
        for bad in [
            "",
            "0",
            "01",
            "-1",
            "+1",
            "1.5",
            " 1",
            "1 ",
            "abc",
            "1e3",
            "９",
            "9223372036854775808",
            "18446744073709551616",
            "99999999999999999999",
        ] {
            assert_eq!(PayRecordId::parse(bad), Err(InvalidPayRecordId), "{bad:?}");
        }
    }

    #[test]
    fn status_is_case_insensitive_and_strict() {
        assert_eq!("success".parse(), Ok(Status::Success));
        assert_eq!("Failed".parse(), Ok(Status::Failed));
        assert_eq!("CLOSED".parse(), Ok(Status::Closed));
        for bad in ["", " SUCCESS", "SUCCESS ", "PAID", "succes"] {
            assert_eq!(bad.parse::<Status>(), Err(InvalidStatus), "{bad:?}");
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn callback_pairs_default_to_success_and_refuse_repeats() {
        let ok = Callback::from_pairs(&pairs(&[("payRecordId", "5")])).unwrap();
        assert_eq!(ok.status, Status::Success);
        let twice = pairs(&[("payRecordId", "5"), ("payRecordId", "6")]);
        assert_eq!(
            Callback::from_pairs(&twice),
            Err(InvalidCallback::PayRecordId)
        );
        let bad_status = pairs(&[("payRecordId", "5"), ("status", "")]);
        assert_eq!(
            Callback::from_pairs(&bad_status),
            Err(InvalidCallback::Status)
        );
    }

    #[test]
    fn callback_json_takes_the_id_as_number_or_string() {
        let n = Callback::from_json(br#"{"payRecordId":123,"status":"closed"}"#).unwrap();
        let s = Callback::from_json(br#"{"payRecordId":"123","status":null}"#).unwrap();
        assert_eq!(
            (n.pay_record_id, n.status),
            (s.pay_record_id, Status::Closed)
        );
        assert_eq!(s.status, Status::Success);
        for bad in [
            &br#"{"payRecordId":1.5}"#[..],
            br#"{"payRecordId":-1}"#,
            br#"{"payRecordId":"01"}"#,
            br#"{}"#,
        ] {
            assert_eq!(Callback::from_json(bad), Err(InvalidCallback::PayRecordId));
        }
        assert_eq!(
            Callback::from_json(b"[1]"),
            Err(InvalidCallback::NotAnObject)
        );
        assert_eq!(
            Callback::from_json(br#"{"payRecordId":1,"status":7}"#),
            Err(InvalidCallback::Status)
        );
    }

    #[test]
    fn outcome_json_carries_the_id_as_a_string() {
        let id = PayRecordId::parse("9223372036854775807").unwrap();
        let json = serde_json::to_value(Outcome::new(id, Status::Success).event_json()).unwrap();
        assert_eq!(json["payRecordId"], "9223372036854775807");
        assert_eq!(json["message"], "支付成功");
        assert!(json["completedAt"].as_str().unwrap().ends_with('Z'));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn pay_record_id_accepts_exactly_the_canonical_decimals(s in "\\PC{0,22}|[0-9]{1,20}") {
                let canonical = s.starts_with(|c: char| ('1'..='9').contains(&c))
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && s.parse::<u64>().is_ok_and(|n| n <= PayRecordId::MAX);
                match PayRecordId::parse(&s) {
                    Ok(id) => {
                        prop_assert!(canonical);
                        prop_assert_eq!(id.to_string(), s);
                    }
                    Err(_) => prop_assert!(!canonical),
                }
            }

            #[test]
            fn status_accepts_only_the_three_names(s in "\\PC{0,10}|(?i)(success|failed|closed)") {
                let known = ["SUCCESS", "FAILED", "CLOSED"].iter().any(|n| n.eq_ignore_ascii_case(&s));
                prop_assert_eq!(s.parse::<Status>().is_ok(), known);
            }

            #[test]
            fn callback_json_never_panics_and_accepts_only_valid_ids(body in proptest::collection::vec(any::<u8>(), 0..64),
                                                                    id in any::<i128>(), status in "\\PC{0,8}") {
                let _ = Callback::from_json(&body);
                let json = format!(r#"{{"payRecordId":{id},"status":{}}}"#, serde_json::Value::String(status.clone()));
                match Callback::from_json(json.as_bytes()) {
                    Ok(callback) => {
                        prop_assert!(id >= 1 && id <= i64::MAX as i128);
                        prop_assert_eq!(callback.pay_record_id.get() as i128, id);
                        prop_assert!(status.parse::<Status>().is_ok());
                    }
                    Err(_) => prop_assert!(id < 1 || id > i64::MAX as i128 || status.parse::<Status>().is_err()),
                }
            }

            #[test]
            fn callback_pairs_never_panic(pairs in proptest::collection::vec(("\\PC{0,12}", "\\PC{0,12}"), 0..5)) {
                if let Ok(callback) = Callback::from_pairs(&pairs) {
                    let given = pairs.iter().find(|(k, _)| k == "payRecordId").map(|(_, v)| v.clone());
                    prop_assert_eq!(given, Some(callback.pay_record_id.to_string()));
                }
            }
        }
    }
}
