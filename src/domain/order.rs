use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sea_orm::{DeriveActiveEnum, EnumIter};
use serde_json::{Map, Value};

/// Field name -> what is wrong with it. A `BTreeMap` so answers list fields in a stable order.
pub type FieldErrors = BTreeMap<String, String>;

/// Where an order stands in its life, as the reference service named it. Stored as its
/// lowercase name in `orders.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text", rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Delivered,
    Canceled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 3] = [Self::Pending, Self::Delivered, Self::Canceled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Canceled => "canceled",
        }
    }
}

impl FromStr for OrderStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| "must be one of pending, delivered, canceled".to_string())
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far an order's external copy is behind: `pending` (a change waits to be synced),
/// `synced`, `retrying` (parked on the delayed schedule) or `dead` (given up until retried).
/// Stored as its lowercase name in `orders.sync_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text", rename_all = "lowercase")]
pub enum SyncState {
    Pending,
    Synced,
    Retrying,
    Dead,
}

impl SyncState {
    pub const ALL: [SyncState; 4] = [Self::Pending, Self::Synced, Self::Retrying, Self::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Synced => "synced",
            Self::Retrying => "retrying",
            Self::Dead => "dead",
        }
    }
}

impl FromStr for SyncState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| "must be one of pending, synced, retrying, dead".to_string())
    }
}

serialize_as_str!(OrderStatus);
serialize_as_str!(SyncState);

impl fmt::Display for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of money in minor units (cents, paise): whole, not negative, and small enough that
/// `amount + tax` cannot overflow anywhere downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Money(i64);

impl Money {
    /// 10^12 minor units: ten billion in major units, far above any real order.
    pub const MAX: i64 = 1_000_000_000_000;

    pub fn new(minor_units: i64) -> Result<Self, String> {
        if (0..=Self::MAX).contains(&minor_units) {
            Ok(Self(minor_units))
        } else {
            Err(format!("must be between 0 and {}", Self::MAX))
        }
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }
}

/// One line of an address (street, city, state, country): trimmed, not empty, at most 200
/// characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressLine(String);

impl AddressLine {
    pub const MAX_CHARS: usize = 200;

    pub fn new(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("must not be empty".into());
        }
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        if trimmed.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A postal code kept as text, so leading zeros survive (the reference stored an integer and
/// lost them): 3 to 10 letters, digits, spaces or hyphens, starting with a letter or digit.
/// That admits Indian PINs (`560001`), US ZIP+4 (`02139-4307`) and UK codes (`SW1A 1AA`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pincode(String);

impl Pincode {
    pub fn new(raw: &str) -> Result<Self, String> {
        let code = raw.trim();
        let allowed = |c: char| c.is_ascii_alphanumeric() || c == ' ' || c == '-';
        let starts_well = code
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        if (3..=10).contains(&code.len()) && starts_well && code.chars().all(allowed) {
            Ok(Self(code.to_string()))
        } else {
            Err("must be 3 to 10 letters, digits, spaces or hyphens".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A complete, valid order as a client states it: every rule, including the ones that tie
/// fields together, holds for any value of this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFields {
    pub status: OrderStatus,
    pub placed_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub amount: Money,
    pub tax: Money,
    pub street_address: AddressLine,
    pub city: AddressLine,
    pub state: AddressLine,
    pub country: AddressLine,
    pub pincode: Pincode,
}

/// The names a client may send; any other key is an error.
const FIELD_NAMES: [&str; 10] = [
    "status",
    "placed_at",
    "delivered_at",
    "amount",
    "tax",
    "street_address",
    "city",
    "state",
    "country",
    "pincode",
];

/// A partial change (`PATCH`): `None` leaves a field as it is; `delivered_at: Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderPatch {
    pub status: Option<OrderStatus>,
    pub placed_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<Option<DateTime<Utc>>>,
    pub amount: Option<Money>,
    pub tax: Option<Money>,
    pub street_address: Option<AddressLine>,
    pub city: Option<AddressLine>,
    pub state: Option<AddressLine>,
    pub country: Option<AddressLine>,
    pub pincode: Option<Pincode>,
}

impl OrderFields {
    /// Parses a full order (`POST`, `PUT`): every field but `delivered_at` is required.
    pub fn parse(body: &Value) -> Result<Self, FieldErrors> {
        let (patch, mut errors) = match OrderPatch::parse(body) {
            Ok(patch) => (Some(patch), FieldErrors::new()),
            Err(errors) => (None, errors),
        };
        if let Some(object) = body.as_object() {
            for name in FIELD_NAMES.iter().filter(|name| **name != "delivered_at") {
                if !object.contains_key(*name) {
                    errors.insert(name.to_string(), "is required".into());
                }
            }
        }
        match patch {
            Some(OrderPatch {
                status: Some(status),
                placed_at: Some(placed_at),
                delivered_at,
                amount: Some(amount),
                tax: Some(tax),
                street_address: Some(street_address),
                city: Some(city),
                state: Some(state),
                country: Some(country),
                pincode: Some(pincode),
            }) if errors.is_empty() => Self {
                status,
                placed_at,
                delivered_at: delivered_at.flatten(),
                amount,
                tax,
                street_address,
                city,
                state,
                country,
                pincode,
            }
            .checked(),
            _ => Err(errors),
        }
    }

    /// This order with a patch applied; the rules between fields are checked on the result.
    pub fn patched(self, patch: OrderPatch) -> Result<Self, FieldErrors> {
        Self {
            status: patch.status.unwrap_or(self.status),
            placed_at: patch.placed_at.unwrap_or(self.placed_at),
            delivered_at: patch.delivered_at.unwrap_or(self.delivered_at),
            amount: patch.amount.unwrap_or(self.amount),
            tax: patch.tax.unwrap_or(self.tax),
            street_address: patch.street_address.unwrap_or(self.street_address),
            city: patch.city.unwrap_or(self.city),
            state: patch.state.unwrap_or(self.state),
            country: patch.country.unwrap_or(self.country),
            pincode: patch.pincode.unwrap_or(self.pincode),
        }
        .checked()
    }

    /// This order with an inbound change from the external system applied. A status other than
    /// `delivered` clears the delivery time unless the change sets one (which is then an error).
    pub fn with_inbound(self, update: InboundUpdate) -> Result<Self, FieldErrors> {
        let status = update.status.unwrap_or(self.status);
        let delivered_at = match update.delivered_at {
            Some(at) => Some(at),
            None if status == OrderStatus::Delivered => self.delivered_at,
            None => None,
        };
        Self {
            status,
            delivered_at,
            ..self
        }
        .checked()
    }

    /// The rules that tie fields together.
    fn checked(self) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::new();
        if let Some(delivered_at) = self.delivered_at {
            if self.status != OrderStatus::Delivered {
                errors.insert(
                    "delivered_at".into(),
                    "must be empty unless status is delivered".into(),
                );
            } else if delivered_at < self.placed_at {
                errors.insert("delivered_at".into(), "must not be before placed_at".into());
            }
        }
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(errors)
        }
    }
}

impl OrderPatch {
    /// Parses a JSON object of order fields, any subset of them. Unknown keys are errors, and
    /// every bad field is reported, not just the first.
    pub fn parse(body: &Value) -> Result<Self, FieldErrors> {
        let Some(object) = body.as_object() else {
            let mut errors = FieldErrors::new();
            errors.insert("body".into(), "must be a JSON object".into());
            return Err(errors);
        };
        let mut errors = FieldErrors::new();
        for key in object.keys() {
            if !FIELD_NAMES.contains(&key.as_str()) {
                errors.insert(key.clone(), "is not a known field".into());
            }
        }
        let mut fields = FieldReader {
            object,
            errors: &mut errors,
        };
        let patch = Self {
            status: fields.read("status", |v| string(v)?.parse()),
            placed_at: fields.read("placed_at", timestamp),
            delivered_at: fields.read("delivered_at", |v| match v {
                Value::Null => Ok(None),
                other => timestamp(other).map(Some),
            }),
            amount: fields.read("amount", money),
            tax: fields.read("tax", money),
            street_address: fields.read("street_address", address_line),
            city: fields.read("city", address_line),
            state: fields.read("state", address_line),
            country: fields.read("country", address_line),
            pincode: fields.read("pincode", pincode),
        };
        if errors.is_empty() {
            Ok(patch)
        } else {
            Err(errors)
        }
    }
}

/// A change written back by the external system (`PUT|PATCH /inbound/{id}`): the reference's
/// `order[status]` and `order[delivered_on]` (epoch seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundUpdate {
    pub status: Option<OrderStatus>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl InboundUpdate {
    /// Parses the two values as the reference took them: strings from a form, or JSON strings
    /// and numbers. The field names in errors are the ones the client sent.
    pub fn parse(
        status: Option<&Value>,
        delivered_on: Option<&Value>,
    ) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::new();
        let status = status.and_then(|v| {
            string(v)
                .and_then(str::parse)
                .map_err(|e| errors.insert("order[status]".into(), e))
                .ok()
        });
        let delivered_at = delivered_on.and_then(|v| {
            epoch_seconds(v)
                .map_err(|e| errors.insert("order[delivered_on]".into(), e))
                .ok()
        });
        if status.is_none() && delivered_at.is_none() && errors.is_empty() {
            errors.insert("order".into(), "must contain status or delivered_on".into());
        }
        if errors.is_empty() {
            Ok(Self {
                status,
                delivered_at,
            })
        } else {
            Err(errors)
        }
    }
}

/// Reads optional fields out of a JSON object, recording each failure under its field name.
struct FieldReader<'a> {
    object: &'a Map<String, Value>,
    errors: &'a mut FieldErrors,
}

impl FieldReader<'_> {
    fn read<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.object.get(name)?;
        parse(value)
            .map_err(|message| self.errors.insert(name.to_string(), message))
            .ok()
    }
}

fn string(value: &Value) -> Result<&str, String> {
    value.as_str().ok_or_else(|| "must be a string".to_string())
}

fn timestamp(value: &Value) -> Result<DateTime<Utc>, String> {
    let text = string(value).map_err(|_| "must be an RFC 3339 timestamp string".to_string())?;
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| "must be an RFC 3339 timestamp, e.g. 2025-06-03T10:00:00Z".to_string())
}

fn money(value: &Value) -> Result<Money, String> {
    match value {
        Value::Number(n) => match whole_number(n) {
            Some(units) => Money::new(units),
            None if n.as_f64().is_some_and(|f| f.fract() != 0.0) => {
                Err("must be a whole number of minor units".into())
            }
            None => Err(format!("must be between 0 and {}", Money::MAX)),
        },
        _ => Err("must be an integer (minor units)".into()),
    }
}

/// The number as an `i64` when it is a whole number: `1000` or `1000.0`, which JSON Schema (and
/// so the OpenAPI document) counts as the same integer.
pub fn whole_number(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (i64::MIN as f64..i64::MAX as f64).contains(f))
            .map(|f| f as i64)
    })
}

fn address_line(value: &Value) -> Result<AddressLine, String> {
    AddressLine::new(string(value)?)
}

/// Pincodes are text, but the reference's clients sent integers: accept both.
fn pincode(value: &Value) -> Result<Pincode, String> {
    match value {
        Value::String(s) => Pincode::new(s),
        Value::Number(n) => match whole_number(n) {
            Some(digits) if digits >= 0 => Pincode::new(&digits.to_string()),
            _ => Err("must be a string of 3 to 10 letters, digits, spaces or hyphens".into()),
        },
        _ => Err("must be a string of 3 to 10 letters, digits, spaces or hyphens".into()),
    }
}

/// The latest `delivered_on` taken: 11 digits of epoch seconds (the year 5138). Earlier than
/// 1970 is refused too. Both bounds are in the OpenAPI document, as a range and as a pattern.
pub const MAX_EPOCH_SECONDS: i64 = 99_999_999_999;

/// Epoch seconds from 0 to [`MAX_EPOCH_SECONDS`]: a whole number, or a string of 1 to 11 digits
/// (an optional `+`, surrounding whitespace trimmed), as forms send it.
fn epoch_seconds(value: &Value) -> Result<DateTime<Utc>, String> {
    let seconds = match value {
        Value::Number(n) => whole_number(n),
        Value::String(s) => {
            let digits = s.trim();
            let digits = digits.strip_prefix('+').unwrap_or(digits);
            let well_formed =
                (1..=11).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
            well_formed.then(|| digits.parse::<i64>().ok()).flatten()
        }
        _ => None,
    };
    seconds
        .filter(|s| (0..=MAX_EPOCH_SECONDS).contains(s))
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .ok_or_else(|| format!("must be a time in epoch seconds, 0 to {MAX_EPOCH_SECONDS}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_whole_number_written_with_a_fraction_is_the_same_integer() {
        let money_of = |v: Value| money(&v).map(|m| m.minor_units());
        assert_eq!(money_of(json!(1000.0)), Ok(1000));
        assert!(money_of(json!(1000.5))
            .unwrap_err()
            .contains("whole number"));
        assert!(money_of(json!(1e30)).is_err());
        assert_eq!(
            pincode(&json!(411001.0)).map(|p| p.as_str().to_string()),
            Ok("411001".to_string())
        );
        assert!(pincode(&json!(-100)).is_err());
    }

    #[test]
    fn the_entity_stores_states_under_the_names_sqlx_and_json_use() {
        use sea_orm::ActiveEnum;
        for status in OrderStatus::ALL {
            assert_eq!(status.to_value(), status.as_str());
            assert_eq!(OrderStatus::try_from_value(&status.to_value()), Ok(status));
        }
        for state in SyncState::ALL {
            assert_eq!(state.to_value(), state.as_str());
            assert_eq!(serde_json::to_value(state).unwrap(), json!(state.as_str()));
        }
    }

    fn valid() -> Value {
        json!({
            "status": "delivered",
            "placed_at": "2025-06-01T10:00:00Z",
            "delivered_at": "2025-06-04T10:00:00Z",
            "amount": 1000,
            "tax": 180,
            "street_address": "1 Main St",
            "city": "Pune",
            "state": "MH",
            "country": "India",
            "pincode": "011001"
        })
    }

    #[test]
    fn a_valid_order_parses_and_keeps_leading_zeros() {
        let order = OrderFields::parse(&valid()).expect("valid");
        assert_eq!(order.pincode.as_str(), "011001");
        assert_eq!(order.amount.minor_units(), 1000);
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let body = json!({
            "status": "lost", "placed_at": "yesterday", "amount": -1, "tax": 1e30,
            "street_address": "", "city": "x".repeat(201), "state": "MH", "country": "IN",
            "pincode": "!", "colour": "red"
        });
        let errors = OrderFields::parse(&body).unwrap_err();
        for field in [
            "status",
            "placed_at",
            "amount",
            "tax",
            "street_address",
            "city",
            "pincode",
            "colour",
        ] {
            assert!(
                errors.contains_key(field),
                "{field} missing from {errors:?}"
            );
        }
    }

    #[test]
    fn delivered_at_must_follow_placed_at_and_needs_delivered_status() {
        let mut body = valid();
        body["delivered_at"] = json!("2025-05-01T00:00:00Z");
        assert!(OrderFields::parse(&body)
            .unwrap_err()
            .contains_key("delivered_at"));
        let mut body = valid();
        body["status"] = json!("pending");
        assert!(OrderFields::parse(&body)
            .unwrap_err()
            .contains_key("delivered_at"));
    }

    #[test]
    fn a_patch_is_checked_against_the_whole_order() {
        let order = OrderFields::parse(&valid()).expect("valid");
        let patch = OrderPatch::parse(&json!({"status": "pending"})).expect("valid patch");
        assert!(order.clone().patched(patch).is_err());
        let patch =
            OrderPatch::parse(&json!({"status": "pending", "delivered_at": null})).expect("valid");
        assert_eq!(order.patched(patch).expect("valid").delivered_at, None);
    }

    #[test]
    fn inbound_takes_epoch_seconds_as_number_or_string() {
        let update = InboundUpdate::parse(Some(&json!("delivered")), Some(&json!("1749000000")))
            .expect("valid");
        assert_eq!(
            update.delivered_at.map(|t| t.timestamp()),
            Some(1_749_000_000)
        );
        assert!(InboundUpdate::parse(None, Some(&json!("soon"))).is_err());
    }
}
