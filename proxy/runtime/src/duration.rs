//! Durations as weft writes them (`250ms`, `2s`, `1m`, `1h`, `1.5s`): parsing flags and
//! resources, and writing them back, for the proxy's `/config` and the control plane's
//! resources alike.
//!
//! A leaf: it knows no setting, resource or component. The proxy's config, policies and the
//! listeners' limits serialize through it; the control plane parses and writes its resources'
//! durations with it.

use std::time::Duration;

/// Parses durations the way weft's resources write them: `250ms`, `2s`, `1m`, `1h`, `1.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (expected e.g. 250ms, 2s, 1m)"))?;
    let unit_secs = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("{s:?} has no unit (expected ms, s, m or h)")),
        u => {
            return Err(format!(
                "unknown unit {u:?} in {s:?} (expected ms, s, m or h)"
            ))
        }
    };
    let secs = value * unit_secs;
    if !secs.is_finite() || secs > 10.0 * 365.0 * 86400.0 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Writes a duration the way weft's resources do: in the largest unit of `h`, `m`, `s` and `ms`
/// that holds it exactly (`1h`, `5m`, `2s`, `250ms`; zero is `0s`), and in fractional seconds
/// (`0.0000015s`) only when it is not a whole number of milliseconds. [`parse_duration`] reads
/// every spelling back to the same duration. Both the proxy's `/config` and the control plane's
/// resources write durations with it.
pub fn format_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}s", d.as_secs_f64());
    }
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_string()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `serialize_with` for a `Duration`, as [`format_duration`] writes it.
pub fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// `serialize_with` for an `Option<Duration>`.
pub fn ser_opt_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("1e400s").is_err());
    }

    #[test]
    fn durations_are_written_in_the_largest_exact_unit() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(36 * 3600), "36h"),
            (Duration::from_nanos(1_500), "0.0000015s"),
            (Duration::from_nanos(2_000_000_500), "2.0000005s"),
        ];
        for (d, text) in cases {
            assert_eq!(format_duration(d), text, "{d:?}");
            assert_eq!(parse_duration(text).unwrap(), d, "{text} reads back");
        }
    }
}
