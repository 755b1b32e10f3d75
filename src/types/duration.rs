//! Durations as herd reads and writes them: `250ms`, `1.5s`, `2m5s`, `1h`.
//!
//! One parser and one display, shared by the CLI, the config, readiness
//! (`delay:2s`), the logs and the events, so what herd prints it also reads.

use std::fmt;
use std::time::Duration;

use super::error::{Error, Result};

/// Parses `250ms`, `2s`, `1.5s`, `2m5s`, `1h30m` (and a bare `0`): the
/// durations herd prints.
/// Exact (no float rounding), so what [`Millis`] prints reads back equal.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    // Zero needs no unit (`--settle 0`).
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(split);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return None;
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        nanos = nanos.checked_add(whole.checked_mul(unit_nanos)?)?;
        // Digits past the nanosecond are dropped, not rounded.
        let mut scale = unit_nanos;
        for digit in fraction.bytes() {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        rest = next;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Parses a duration as herd's flags, config and readiness rules take it:
/// `250ms`, `30s`, `1.5s`, `2m5s`, `1h`.
///
/// # Errors
///
/// [`Error::Parse`] naming the text.
pub fn parse(text: &str) -> Result<Duration> {
    parse_duration(text).ok_or_else(|| Error::Parse {
        what: "duration",
        input: text.to_owned(),
        reason: "expected a number with ms, s, m or h, like 500ms, 30s or 2m5s".into(),
    })
}

/// Formats a duration the way the CLI takes it: `250ms`, `1.5s`, `2m5s`.
pub(crate) struct Millis(pub(crate) Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms < 1000 {
            write!(f, "{ms}ms")
        } else if ms < 60_000 {
            let tenths = (ms % 1000) / 100;
            if tenths == 0 {
                write!(f, "{}s", ms / 1000)
            } else {
                write!(f, "{}.{tenths}s", ms / 1000)
            }
        } else {
            let (m, s) = (ms / 60_000, (ms % 60_000) / 1000);
            if s == 0 {
                write!(f, "{m}m")
            } else {
                write!(f, "{m}m{s}s")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_the_cli_reads_them() {
        let s = |ms| Millis(Duration::from_millis(ms)).to_string();
        assert_eq!(s(250), "250ms");
        assert_eq!(s(1000), "1s");
        assert_eq!(s(1500), "1.5s");
        assert_eq!(s(125_000), "2m5s");
        assert_eq!(s(60_000), "1m");
    }

    #[test]
    fn what_herd_prints_it_reads_back() {
        for ms in [0, 1, 250, 1000, 1500, 59_900, 60_000, 125_000, 3_600_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&Millis(d).to_string()), Some(d), "{ms}");
        }
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "5", "5d", "s", "-1s", "1.2.3s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
