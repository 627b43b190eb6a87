//! The seeder's settings, parsed from environment variables before anything is written.

use serde::Deserialize;

/// What to seed, read with envy: each field is its variable, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SeedOptions {
    /// `ORDER_COUNT`
    #[serde(
        rename = "order_count",
        default = "default_count",
        deserialize_with = "order_count"
    )]
    pub count: u64,
    /// `CLEAN_ORDERS`
    #[serde(rename = "clean_orders", default, deserialize_with = "clean_orders")]
    pub clean: bool,
    /// `SYNC`
    #[serde(default = "default_sync", deserialize_with = "sync")]
    pub sync: bool,
}

/// Enough for any benchmark, small enough that a typo (an extra zero or three) is caught.
const MAX_ORDER_COUNT: u64 = 100_000_000;

impl SeedOptions {
    /// Parses `ORDER_COUNT`, `CLEAN_ORDERS` and `SYNC` (values trimmed; empty counts as unset);
    /// the error is one line naming the variable.
    pub fn from_vars(vars: &[(String, String)]) -> Result<Self, String> {
        let vars = vars
            .iter()
            .map(|(key, value)| (key.clone(), value.trim().to_string()))
            .filter(|(_, value)| !value.is_empty());
        envy::from_iter(vars).map_err(|e| e.to_string())
    }
}

fn default_count() -> u64 {
    10_000
}

fn default_sync() -> bool {
    true
}

// The parsers below are hand-written for their messages (envy's say "invalid digit found in
// string") and because a flag also takes 1/0 and yes/no, in any case.

fn order_count<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let raw = String::deserialize(deserializer)?;
    raw.parse::<u64>()
        .ok()
        .filter(|n| *n <= MAX_ORDER_COUNT)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "ORDER_COUNT must be a whole number from 0 to {MAX_ORDER_COUNT}, not {raw:?}"
            ))
        })
}

fn clean_orders<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    flag("CLEAN_ORDERS", deserializer)
}

fn sync<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    flag("SYNC", deserializer)
}

fn flag<'de, D: serde::Deserializer<'de>>(name: &str, deserializer: D) -> Result<bool, D::Error> {
    let raw = String::deserialize(deserializer)?;
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(serde::de::Error::custom(format!(
            "{name} must be true or false, not {raw:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_reference() {
        let options = SeedOptions::from_vars(&[]).expect("defaults");
        assert_eq!(
            options,
            SeedOptions {
                count: 10_000,
                clean: false,
                sync: true
            }
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            ("ORDER_COUNT", "abc"),
            ("ORDER_COUNT", "-5"),
            ("CLEAN_ORDERS", "maybe"),
            ("SYNC", "2"),
        ] {
            let err = SeedOptions::from_vars(&vars(&[(name, value)])).unwrap_err();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn messages_say_what_a_valid_value_is() {
        let err = SeedOptions::from_vars(&vars(&[("ORDER_COUNT", "-5")])).unwrap_err();
        assert_eq!(
            err,
            "ORDER_COUNT must be a whole number from 0 to 100000000, not \"-5\""
        );
        let err = SeedOptions::from_vars(&vars(&[("SYNC", " Maybe ")])).unwrap_err();
        assert_eq!(err, "SYNC must be true or false, not \"Maybe\"");
    }

    #[test]
    fn flags_take_yes_no_and_digits_in_any_case_and_blank_is_unset() {
        let options = SeedOptions::from_vars(&vars(&[
            ("ORDER_COUNT", " 7 "),
            ("CLEAN_ORDERS", "YES"),
            ("SYNC", "0"),
            ("PATH", "/bin"),
        ]))
        .expect("valid");
        assert_eq!(
            options,
            SeedOptions {
                count: 7,
                clean: true,
                sync: false
            }
        );
        let options = SeedOptions::from_vars(&vars(&[("SYNC", "  ")])).expect("blank is unset");
        assert!(options.sync);
    }
}
