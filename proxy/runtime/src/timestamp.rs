//! Points in time as weft writes them for people and in its APIs: RFC 3339 in UTC
//! (`2026-12-01T13:20:00Z`), with microseconds where a log line needs them. The calendar
//! arithmetic is Howard Hinnant's `civil_from_days` / `days_from_civil`, so no date library is
//! needed on the request path (the access log writes one per request).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` with microseconds, for log lines: `2026-11-29T19:14:58.702772Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let (y, mo, day, h, mi, sec) = civil(i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    format!(
        "{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{sec:02}.{:06}Z",
        d.subsec_micros()
    )
}

/// Seconds since the Unix epoch, to the second: `2026-12-01T13:20:00Z`. Times before 1970 are
/// written as they are (`1969-12-31T23:59:59Z`).
pub fn rfc3339_seconds(unix: i64) -> String {
    let (y, mo, day, h, mi, sec) = civil(unix);
    format!("{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{sec:02}Z")
}

/// `t` as whole seconds since the Unix epoch (0 before it).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `serialize_with` for a time kept as Unix seconds, written as [`rfc3339_seconds`].
pub fn ser_unix<S: serde::Serializer>(unix: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_seconds(*unix))
}

/// `serialize_with` for a time kept as unsigned Unix seconds.
pub fn ser_unix_u64<S: serde::Serializer>(unix: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_seconds(i64::try_from(*unix).unwrap_or(i64::MAX)))
}

/// `deserialize_with` for an RFC 3339 time read back as Unix seconds (the CLI reading the API).
pub fn de_unix<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    parse_rfc3339(&text)
        .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time")))
}

/// The Unix seconds of an RFC 3339 time (`2026-12-01T13:20:00Z`, with or without a fraction,
/// `Z` or a `±HH:MM` offset); `None` for anything else. A fraction is dropped.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| num_of(s.get(from..to)?);
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let o = rest.as_bytes();
            if o.len() != 6 || !matches!(o[0], b'+' | b'-') || o[3] != b':' {
                return None;
            }
            let (h, m) = (num_of(rest.get(1..3)?)?, num_of(rest.get(4..6)?)?);
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if o[0] == b'-' { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// `part` as a number, if it is only ASCII digits.
fn num_of(part: &str) -> Option<i64> {
    if !part.is_empty() && part.bytes().all(|c| c.is_ascii_digit()) {
        part.parse().ok()
    } else {
        None
    }
}

/// (year, month, day, hour, minute, second) of Unix seconds.
fn civil(unix: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (days, rem) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps_are_rfc3339_utc_with_microseconds() {
        let t = UNIX_EPOCH + Duration::from_micros(1_764_443_698_702_772);
        assert_eq!(rfc3339(t), "2025-11-29T19:14:58.702772Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert!(rfc3339(leap).starts_with("2000-02-29T00:00:00"));
    }

    #[test]
    fn seconds_round_trip_through_parse() {
        for unix in [
            0,
            -1,
            951_782_400,
            1_764_595_200,
            4_102_444_800,
            253_402_300_799,
        ] {
            let written = rfc3339_seconds(unix);
            assert_eq!(parse_rfc3339(&written), Some(unix), "{written}");
        }
        assert_eq!(rfc3339_seconds(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339_seconds(1_764_595_200), "2025-12-01T13:20:00Z");
    }

    #[test]
    fn parse_takes_fractions_and_offsets_and_refuses_the_rest() {
        let base = parse_rfc3339("2026-12-01T13:20:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-12-01T13:20:00.123456Z"), Some(base));
        assert_eq!(parse_rfc3339("2026-12-01T14:20:00+01:00"), Some(base));
        assert_eq!(parse_rfc3339("2026-12-01T12:50:00-00:30"), Some(base));
        for bad in [
            "",
            "1764595200",
            "2026-12-01",
            "2026-12-01T13:20:00",
            "2026-13-01T13:20:00Z",
            "2026-02-29T13:20:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T13:20:00.Z",
            "2026-12-01T13:20:00+0100",
            "2026-12-01T13:20:00Zjunk",
            "２０２６-12-01T13:20:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
