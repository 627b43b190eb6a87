//! The seeder's settings, parsed from environment variables before anything is written.

/// What to seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedOptions {
    pub count: u64,
    pub clean: bool,
    pub sync: bool,
}

/// Enough for any benchmark, small enough that a typo (an extra zero or three) is caught.
const MAX_ORDER_COUNT: u64 = 100_000_000;

impl SeedOptions {
    /// Parses `ORDER_COUNT`, `CLEAN_ORDERS` and `SYNC`; the error is one line naming the variable.
    pub fn from_vars(vars: &[(String, String)]) -> Result<Self, String> {
        let get = |name: &str| {
            vars.iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.trim())
                .filter(|value| !value.is_empty())
        };
        let count = match get("ORDER_COUNT") {
            None => 10_000,
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= MAX_ORDER_COUNT)
                .ok_or_else(|| {
                    format!("ORDER_COUNT must be a whole number from 0 to {MAX_ORDER_COUNT}, not {raw:?}")
                })?,
        };
        Ok(Self {
            count,
            clean: flag("CLEAN_ORDERS", get("CLEAN_ORDERS"), false)?,
            sync: flag("SYNC", get("SYNC"), true)?,
        })
    }
}

fn flag(name: &str, raw: Option<&str>, default: bool) -> Result<bool, String> {
    match raw.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(_) => Err(format!(
            "{name} must be true or false, not {:?}",
            raw.unwrap_or_default()
        )),
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
}
