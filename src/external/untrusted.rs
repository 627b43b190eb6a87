//! What the external API sends back is untrusted input (`docs/ARCHITECTURE.md`, invariant 8).
//! This module is the one place that turns its answers into values the engine acts on or stores:
//!
//! - [`parse_retry_after`]: a `Retry-After` header becomes a pause no longer than
//!   `RETRY_AFTER_MAX_SECS`, whichever form it takes. Unbounded, one hostile or buggy answer
//!   (`Retry-After: 1000000000`) would pause every call for decades, and `u64::MAX` would
//!   overflow the throttle's clock.
//! - [`clean_error_text`]: error text (an answer's body, a connect error) becomes a short line with
//!   no control characters before it reaches `sync.last_error` and the logs. PostgreSQL's `TEXT`
//!   rejects NUL, and a rejected write of the outcome would hold the order's event forever.

use std::time::{Duration, SystemTime};

/// Longest error text kept, in characters (the ellipsis included).
pub const MAX_ERROR_CHARS: usize = 500;

/// The pause a `Retry-After` value asks for, at most `max`. Both forms of RFC 9110 are read:
/// delay-seconds (`120`) and an HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`); a date already past
/// means no pause. Digits too many for a `u64` are a very long delay, so they get `max`. `None`
/// for anything else (negative, fractional, garbage): the caller then backs off as for any error.
pub fn parse_retry_after(value: &str, now: SystemTime, max: Duration) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let asked = value
            .parse::<u64>()
            .map(Duration::from_secs)
            .unwrap_or(Duration::MAX);
        return Some(asked.min(max));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    // `Err` means the date is before `now`: the wait is already over.
    let asked = date.duration_since(now).unwrap_or(Duration::ZERO);
    Some(asked.min(max))
}

/// `text` made safe to store and to log: `\n`, `\r`, `\t` and the Unicode line and paragraph
/// separators become a space (one log line stays one line), every other control character
/// (NUL, ESC of a terminal colour code, DEL, C1) becomes U+FFFD, and the result is at most
/// `max_chars` characters, cut on a character boundary and ending in "…" when cut.
pub fn clean_error_text(text: &str, max_chars: usize) -> String {
    let mut chars = text.chars().map(|c| match c {
        '\n' | '\r' | '\t' | '\u{2028}' | '\u{2029}' => ' ',
        c if c.is_control() => char::REPLACEMENT_CHARACTER,
        c => c,
    });
    let mut cleaned: String = chars.by_ref().take(max_chars).collect();
    if chars.next().is_some() {
        // Make room for the ellipsis, so the bound holds with it.
        cleaned.pop();
        if max_chars > 0 {
            cleaned.push('…');
        }
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(300);

    fn now() -> SystemTime {
        // Wed, 21 Oct 2015 07:28:00 GMT
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480)
    }

    #[test]
    fn retry_after_in_seconds_is_read() {
        assert_eq!(
            parse_retry_after("120", now(), CAP),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now(), CAP), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_as_an_http_date_is_the_time_until_then() {
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:42 GMT", now(), CAP),
            Some(Duration::from_secs(42))
        );
    }

    #[test]
    fn retry_after_as_a_date_in_the_past_means_no_pause() {
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now(), CAP),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now(), CAP),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn huge_retry_after_values_are_capped() {
        for huge in [
            "1000000000",
            "18446744073709551615",                      // u64::MAX
            "99999999999999999999999999999999999999999", // beyond u64
        ] {
            assert_eq!(parse_retry_after(huge, now(), CAP), Some(CAP), "{huge}");
        }
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now(), CAP),
            Some(CAP)
        );
    }

    #[test]
    fn a_zero_cap_turns_every_pause_off() {
        assert_eq!(
            parse_retry_after("1000000000", now(), Duration::ZERO),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn garbage_retry_after_is_ignored() {
        for garbage in [
            "",
            "soon",
            "-5",
            "1.5",
            "0x10",
            "12 s",
            "Wed, 21 Oct 2015",
            "\0",
        ] {
            assert_eq!(parse_retry_after(garbage, now(), CAP), None, "{garbage:?}");
        }
    }

    #[test]
    fn control_characters_are_replaced_and_line_breaks_become_spaces() {
        let cleaned = clean_error_text("a\0b\x01c\x1b[31mred\x7f\u{85}\r\nd\te\u{2028}f", 500);
        assert_eq!(
            cleaned,
            "a\u{fffd}b\u{fffd}c\u{fffd}[31mred\u{fffd}\u{fffd}  d e f"
        );
        assert!(!cleaned.chars().any(char::is_control), "{cleaned:?}");
    }

    #[test]
    fn text_within_the_bound_is_kept_as_it_is() {
        assert_eq!(clean_error_text("über 500 €", 10), "über 500 €");
        assert_eq!(clean_error_text("", 10), "");
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary_with_an_ellipsis() {
        let long = "é".repeat(1_000);
        let cleaned = clean_error_text(&long, 500);
        assert_eq!(cleaned.chars().count(), 500);
        assert!(cleaned.ends_with("é…"), "{cleaned}");
        assert_eq!(clean_error_text("abcdef", 4), "abc…");
        assert_eq!(clean_error_text("abcdef", 0), "");
    }
}
