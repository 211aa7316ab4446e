//! Bandwidth caps on a host's outgoing migration traffic: the rates users
//! write (`200Mbit`, `1.5Gbit/s`, `25MB`, `20MiB/s`), the rule that a
//! request may only lower the ceiling its source host's owner set, and
//! what estimates of the link must assume under a cap. No IO: the agent's
//! token bucket (`agent/src/transfer/pace.rs`) applies the rate.
//!
//! Rates travel as bytes per second, 0 meaning no cap.

/// The lowest rate a cap may name: 1 Mbit/s. Below it a container of any
/// size takes hours to cross, and a sender would spend its time pacing.
pub const MIN_RATE: u64 = 125_000;

/// The highest: 1 Tbit/s (anything above is a typo).
pub const MAX_RATE: u64 = 125_000_000_000;

/// What the `--bandwidth` help and every parse error list.
pub const UNITS_HELP: &str =
    "bits per second with bit, kbit, Mbit or Gbit, or bytes per second with B, kB, MB, GB, KiB, MiB or GiB, optionally followed by /s; 0 for no cap";

/// Why a rate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("no rate given: write e.g. 200Mbit or 25MB ({UNITS_HELP})")]
    Empty,
    #[error("{0:?} does not start with a number: write e.g. 200Mbit or 25MB ({UNITS_HELP})")]
    Number(String),
    #[error("{0:?} has no unit: write e.g. {0}Mbit or {0}MB ({UNITS_HELP})")]
    NoUnit(String),
    #[error("{unit:?} in {text:?} is not a unit tern knows ({UNITS_HELP})")]
    Unit { text: String, unit: String },
    #[error("{0:?} is below the least cap, 1 Mbit/s (0 means no cap)")]
    TooLow(String),
    #[error("{0:?} is above the greatest cap, 1 Tbit/s")]
    TooHigh(String),
}

/// Reads a rate: a number (digits, optionally one `.` and more digits),
/// optional spaces, and a unit from [`UNITS_HELP`], optionally followed by
/// `/s`. Bit units (`bit`, `kbit`, `Mbit`, `Gbit`) are read whatever their
/// case (`mbit` as `tc` writes it); byte units keep theirs (`MB`, not
/// `Mb`, which could be either). Prefixes are decimal (k = 1000) except
/// `KiB`, `MiB`, `GiB`. `0`, with a unit or without, is no cap. Returns
/// bytes per second, rounded to the nearest.
pub fn parse_rate(text: &str) -> Result<u64, RateError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(RateError::Empty);
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let mut number_end = digits_end;
    if digits_end == 0 {
        return Err(RateError::Number(text.into()));
    }
    if s[digits_end..].starts_with('.') {
        let frac = s[digits_end + 1..].find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len() - digits_end - 1);
        if frac == 0 {
            return Err(RateError::Number(text.into()));
        }
        number_end = digits_end + 1 + frac;
    }
    let number = &s[..number_end];
    let value: f64 = number.parse().map_err(|_| RateError::Number(text.into()))?;
    let unit = s[number_end..].trim_start();
    if unit.is_empty() {
        return if value == 0.0 { Ok(0) } else { Err(RateError::NoUnit(number.into())) };
    }
    let bare = unit.strip_suffix("/s").unwrap_or(unit);
    let per_unit = unit_bytes(bare).ok_or_else(|| RateError::Unit { text: text.into(), unit: unit.into() })?;
    let bytes = value * per_unit;
    if bytes == 0.0 {
        return Ok(0);
    }
    if bytes.round() < MIN_RATE as f64 {
        return Err(RateError::TooLow(text.into()));
    }
    if bytes.round() > MAX_RATE as f64 {
        return Err(RateError::TooHigh(text.into()));
    }
    Ok(bytes.round() as u64)
}

/// Bytes per second in one of `unit`, or `None` for a unit not in
/// [`UNITS_HELP`].
fn unit_bytes(unit: &str) -> Option<f64> {
    let bits = match unit.to_ascii_lowercase().as_str() {
        "bit" => Some(1.0),
        "kbit" => Some(1e3),
        "mbit" => Some(1e6),
        "gbit" => Some(1e9),
        _ => None,
    };
    if let Some(b) = bits {
        return Some(b / 8.0);
    }
    match unit {
        "B" => Some(1.0),
        "kB" | "KB" => Some(1e3),
        "MB" => Some(1e6),
        "GB" => Some(1e9),
        "KiB" => Some(1024.0),
        "MiB" => Some(1048576.0),
        "GiB" => Some(1073741824.0),
        _ => None,
    }
}

/// A rate for people, in bits per second: `200 Mbit/s`, `1.5 Gbit/s`,
/// `none` for 0.
pub fn format_rate(bytes_per_s: u64) -> String {
    if bytes_per_s == 0 {
        return "none".into();
    }
    let bits = bytes_per_s as f64 * 8.0;
    let (v, unit) = if bits >= 1e9 {
        (bits / 1e9, "Gbit/s")
    } else if bits >= 1e6 {
        (bits / 1e6, "Mbit/s")
    } else if bits >= 1e3 {
        (bits / 1e3, "kbit/s")
    } else {
        (bits, "bit/s")
    };
    let mut n = format!("{v:.2}");
    while n.ends_with('0') {
        n.pop();
    }
    if n.ends_with('.') {
        n.pop();
    }
    format!("{n} {unit}")
}

/// The cap a migration asks of its source: the lower of the host's
/// ceiling (its agent's config) and the request's. A request may only
/// lower the ceiling, never raise it; 0 on either side is no cap there.
pub fn effective_cap(ceiling: u64, asked: u64) -> u64 {
    match (ceiling, asked) {
        (0, a) => a,
        (c, 0) => c,
        (c, a) => c.min(a),
    }
}

/// The rate of a host's one bucket while `asked` are the caps of the
/// migrations under way from it: every cap named is one on the host's
/// whole outgoing migration traffic, so the lowest holds (and the
/// ceiling, always). 0: no cap.
pub fn host_rate(ceiling: u64, asked: impl IntoIterator<Item = u64>) -> u64 {
    asked.into_iter().fold(ceiling, effective_cap)
}

/// The rate estimates must assume: the link as measured, but never more
/// than the cap (0: none) lets through. A cap with no measurement is the
/// estimate.
pub fn capped_link_rate(measured: Option<f64>, cap: u64) -> Option<f64> {
    match (measured, cap) {
        (m, 0) => m,
        (None, c) => Some(c as f64),
        (Some(m), c) => Some(m.min(c as f64)),
    }
}

/// Whether a transfer of `bytes` in `took` measured the link: not when the
/// sender spent more than a tenth of it waiting for the cap (`throttled`),
/// which then set the pace. The rate, if so.
pub fn link_sample(bytes: u64, took: std::time::Duration, throttled: std::time::Duration) -> Option<f64> {
    (throttled * 10 <= took).then(|| bytes as f64 / took.as_secs_f64().max(1e-3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bits_and_bytes_with_their_prefixes() {
        assert_eq!(parse_rate("200Mbit"), Ok(25_000_000));
        assert_eq!(parse_rate("200mbit"), Ok(25_000_000));
        assert_eq!(parse_rate("1Gbit"), Ok(125_000_000));
        assert_eq!(parse_rate("1.5Gbit/s"), Ok(187_500_000));
        assert_eq!(parse_rate("500000kbit"), Ok(62_500_000));
        assert_eq!(parse_rate("8000000bit"), Ok(1_000_000));
        assert_eq!(parse_rate(" 100 Mbit "), Ok(12_500_000));
        assert_eq!(parse_rate("25MB"), Ok(25_000_000));
        assert_eq!(parse_rate("25MB/s"), Ok(25_000_000));
        assert_eq!(parse_rate("20MiB"), Ok(20 << 20));
        assert_eq!(parse_rate("1GiB/s"), Ok(1 << 30));
        assert_eq!(parse_rate("500kB"), Ok(500_000));
        assert_eq!(parse_rate("500KiB"), Ok(512_000));
        assert_eq!(parse_rate("2000000B"), Ok(2_000_000));
    }

    #[test]
    fn zero_is_no_cap() {
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("0Mbit"), Ok(0));
        assert_eq!(parse_rate("0.0MB"), Ok(0));
    }

    #[test]
    fn anything_else_is_refused_saying_why() {
        assert_eq!(parse_rate(""), Err(RateError::Empty));
        assert_eq!(parse_rate("  "), Err(RateError::Empty));
        assert_eq!(parse_rate("200"), Err(RateError::NoUnit("200".into())));
        assert!(matches!(parse_rate("Mbit"), Err(RateError::Number(_))));
        assert!(matches!(parse_rate("-5Mbit"), Err(RateError::Number(_))));
        assert!(matches!(parse_rate("1.Mbit"), Err(RateError::Number(_))));
        assert!(matches!(parse_rate(".5Mbit"), Err(RateError::Number(_))));
        assert!(matches!(parse_rate("1e9bit"), Err(RateError::Unit { .. })));
        assert!(matches!(parse_rate("200Mb"), Err(RateError::Unit { .. })), "Mb: bits or bytes?");
        assert!(matches!(parse_rate("200mB"), Err(RateError::Unit { .. })));
        assert!(matches!(parse_rate("200Mbps"), Err(RateError::Unit { .. })));
        assert!(matches!(parse_rate("200 Mbit extra"), Err(RateError::Unit { .. })));
        assert!(matches!(parse_rate("1.2.3Mbit"), Err(RateError::Unit { .. })));
        assert!(matches!(parse_rate("200Mbit/h"), Err(RateError::Unit { .. })));
        assert_eq!(parse_rate("999kbit"), Err(RateError::TooLow("999kbit".into())));
        assert_eq!(parse_rate("1Mbit"), Ok(MIN_RATE));
        assert_eq!(parse_rate("2000Gbit"), Err(RateError::TooHigh("2000Gbit".into())));
        let e = parse_rate("200Mbps").unwrap_err().to_string();
        assert!(e.contains("Mbit") && e.contains("MiB") && e.contains("\"Mbps\""), "{e}");
    }

    #[test]
    fn rates_read_back_in_bits() {
        assert_eq!(format_rate(0), "none");
        assert_eq!(format_rate(25_000_000), "200 Mbit/s");
        assert_eq!(format_rate(125_000_000), "1 Gbit/s");
        assert_eq!(format_rate(187_500_000), "1.5 Gbit/s");
        assert_eq!(format_rate(20 << 20), "167.77 Mbit/s");
        assert_eq!(format_rate(125_000), "1 Mbit/s");
        assert_eq!(format_rate(100), "800 bit/s");
        for s in ["200Mbit", "1Gbit", "1.5Gbit", "1Mbit"] {
            let r = parse_rate(s).unwrap();
            assert_eq!(parse_rate(&format_rate(r).replace(' ', "")), Ok(r), "{s}");
        }
    }

    #[test]
    fn a_request_only_lowers_the_ceiling() {
        assert_eq!(effective_cap(0, 0), 0);
        assert_eq!(effective_cap(0, 100), 100, "no ceiling: the request's");
        assert_eq!(effective_cap(500, 0), 500, "no request: the ceiling");
        assert_eq!(effective_cap(500, 100), 100, "lowered");
        assert_eq!(effective_cap(500, 900), 500, "never raised");
    }

    #[test]
    fn the_lowest_cap_under_way_holds_for_the_host() {
        assert_eq!(host_rate(0, []), 0);
        assert_eq!(host_rate(500, []), 500);
        assert_eq!(host_rate(0, [0, 0]), 0);
        assert_eq!(host_rate(0, [300, 0, 200]), 200);
        assert_eq!(host_rate(500, [900, 0]), 500);
        assert_eq!(host_rate(500, [900, 100]), 100);
    }

    #[test]
    fn estimates_never_assume_more_than_the_cap() {
        assert_eq!(capped_link_rate(None, 0), None);
        assert_eq!(capped_link_rate(Some(1e9), 0), Some(1e9));
        assert_eq!(capped_link_rate(Some(1e9), 25_000_000), Some(25e6));
        assert_eq!(capped_link_rate(Some(1e6), 25_000_000), Some(1e6), "a slower link stays the estimate");
        assert_eq!(capped_link_rate(None, 25_000_000), Some(25e6));
    }

    #[test]
    fn a_transfer_paced_by_the_cap_says_nothing_about_the_link() {
        let s = Duration::from_secs;
        assert_eq!(link_sample(100_000_000, s(1), Duration::ZERO), Some(1e8));
        assert_eq!(link_sample(100_000_000, s(10), s(1)), Some(1e7), "a tenth waiting: still the link");
        assert_eq!(link_sample(100_000_000, s(10), s(2)), None);
        assert!(link_sample(1, Duration::ZERO, Duration::ZERO).is_some());
    }
}
