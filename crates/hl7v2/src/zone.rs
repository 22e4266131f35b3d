//! The default time zone for v2 times written without an offset.
//!
//! A v2 `DTM` may omit its UTC offset; a FHIR `dateTime` with a time must
//! carry one. The offset then comes from a configured [`Zone`], never from
//! the host running the migration. A zone is written one of two ways:
//!
//! - a fixed offset: `Z`, `UTC`, `+05:30`, `-0500`, `+01`;
//! - an IANA name (`America/New_York`, `Europe/Berlin`), read once from the
//!   system's tz database (`$TZDIR`, else `/usr/share/zoneinfo`) by jiff.
//!   The offset then follows the zone's history and daylight-saving rules.
//!
//! A wall-clock time that falls in a spring-forward gap takes the offset in
//! force before the gap; one that occurs twice (fall back) takes its first
//! occurrence, the daylight-saving one.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone, TimeZoneDatabase};
use jiff::{Span, Timestamp};

/// A configured zone: a fixed offset (`Z`, `UTC`, `+05:30`, `-0500`) or an
/// IANA zone read from the tz database (`America/New_York`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    name: String,
    kind: ZoneKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ZoneKind {
    Fixed(i32),
    Tz(TimeZone),
}

/// A zone setting that does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{spec:?} is not a time zone ({why}); write an offset like -05:00 (or Z) or an IANA name like America/New_York"
)]
pub struct ZoneError {
    pub spec: String,
    pub why: String,
}

impl Zone {
    /// UTC.
    pub fn utc() -> Zone {
        Zone {
            name: "UTC".into(),
            kind: ZoneKind::Fixed(0),
        }
    }

    /// Reads a zone setting: a fixed offset or an IANA zone name.
    pub fn parse(spec: &str) -> Result<Zone, ZoneError> {
        parse_in(spec, jiff::tz::db())
    }

    /// The setting as written.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The UTC offset, in seconds east of UTC, of a wall-clock time in this
    /// zone. Out-of-range fields carry over (month 13 is January of the
    /// next year), as `mktime` does; years beyond ±9999 read as those.
    pub fn offset_at_local(&self, y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i32 {
        match &self.kind {
            ZoneKind::Fixed(seconds) => *seconds,
            ZoneKind::Tz(tz) => {
                let offset = match wall_clock(y, mo, d, h, mi, s) {
                    Some(local) => match tz.to_ambiguous_timestamp(local).offset() {
                        AmbiguousOffset::Unambiguous { offset } => offset,
                        // the offset in force before the gap
                        AmbiguousOffset::Gap { before, .. } => before,
                        // the first occurrence
                        AmbiguousOffset::Fold { before, .. } => before,
                    },
                    // beyond what a calendar holds: the zone's offset now
                    None => tz.to_offset(Timestamp::now()),
                };
                offset.seconds()
            }
        }
    }
}

/// A wall-clock time from fields that may be out of range (carried over).
fn wall_clock(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<DateTime> {
    let year = i16::try_from(y.clamp(-9999, 9999)).ok()?;
    let start = Date::new(year, 1, 1).ok()?.to_datetime(Time::midnight());
    let carry = Span::new()
        .try_months(i64::from(mo) - 1)
        .ok()?
        .try_days(i64::from(d) - 1)
        .ok()?
        .try_hours(i64::from(h))
        .ok()?
        .try_minutes(i64::from(mi))
        .ok()?
        .try_seconds(i64::from(s))
        .ok()?;
    start.checked_add(carry).ok()
}

/// [`Zone::parse`] against a tz database (tests use their own).
fn parse_in(spec: &str, db: &TimeZoneDatabase) -> Result<Zone, ZoneError> {
    let bad = |why: String| ZoneError {
        spec: spec.to_owned(),
        why,
    };
    let s = spec.trim();
    if s.is_empty() {
        return Err(bad("the setting is empty".into()));
    }
    if s.eq_ignore_ascii_case("z") || s.eq_ignore_ascii_case("utc") {
        return Ok(Zone::utc());
    }
    if s.starts_with(['+', '-']) {
        let seconds = parse_offset(s).ok_or_else(|| {
            bad("not an offset: write +HH:MM, +HHMM or +HH, at most 14 hours".into())
        })?;
        return Ok(Zone {
            name: s.to_owned(),
            kind: ZoneKind::Fixed(seconds),
        });
    }
    if s.split('/').any(|part| part.is_empty() || part == "..") {
        return Err(bad(
            "a zone name is Area/Location, with no empty part and no `..`".into(),
        ));
    }
    let tz = db
        .get(s)
        .map_err(|_| bad(format!("no zone named {s} in the tz database")))?;
    Ok(Zone {
        name: s.to_owned(),
        kind: ZoneKind::Tz(tz),
    })
}

/// `+HH:MM`, `+HHMM` or `+HH` (and `-`), as seconds east of UTC.
pub fn parse_offset(s: &str) -> Option<i32> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(digits.len(), 2 | 4) {
        return None;
    }
    let h: i32 = digits[..2].parse().ok()?;
    let m: i32 = if digits.len() == 4 {
        digits[2..].parse().ok()?
    } else {
        0
    };
    if h > 14 || m > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zone of the system's database; `None` (the test says so) when the
    /// machine has none.
    fn zone(name: &str) -> Option<Zone> {
        match Zone::parse(name) {
            Ok(z) => Some(z),
            Err(e) => {
                eprintln!("skipped {name}: {e}");
                None
            }
        }
    }

    #[test]
    fn fixed_offsets() {
        let cases = [
            ("Z", 0),
            ("utc", 0),
            ("+05:30", 19_800),
            ("-0500", -18_000),
            ("+01", 3600),
            (" -03:30 ", -12_600),
        ];
        for (spec, seconds) in cases {
            let z = Zone::parse(spec).unwrap();
            assert_eq!(z.offset_at_local(2023, 6, 15, 9, 30, 0), seconds, "{spec}");
        }
        assert_eq!(Zone::parse("Z").unwrap(), Zone::utc());
        assert_eq!(Zone::parse("+05:30").unwrap().name(), "+05:30");
        for bad in ["+25:00", "-05:75", "+5", "+0530x", ""] {
            let e = Zone::parse(bad).unwrap_err();
            assert!(e.to_string().contains("America/New_York"), "{e}");
            assert!(e.to_string().contains("-05:00"), "{e}");
        }
    }

    #[test]
    fn fields_out_of_range_carry_over() {
        assert_eq!(
            wall_clock(2023, 13, 1, 0, 0, 0),
            wall_clock(2024, 1, 1, 0, 0, 0)
        );
        assert_eq!(
            wall_clock(2024, 2, 30, 24, 0, 0),
            wall_clock(2024, 3, 2, 0, 0, 0)
        );
        assert_eq!(
            wall_clock(2024, 0, 1, 0, 0, 0),
            wall_clock(2023, 12, 1, 0, 0, 0)
        );
    }

    #[test]
    fn new_york() {
        let Some(z) = zone("America/New_York") else {
            return;
        };
        assert_eq!(z.name(), "America/New_York");
        assert_eq!(z.offset_at_local(2023, 6, 15, 9, 30, 0), -14_400);
        assert_eq!(z.offset_at_local(2023, 1, 15, 9, 30, 0), -18_000);
        // spring forward: 02:30 does not exist; the offset before the gap
        assert_eq!(z.offset_at_local(2023, 3, 12, 2, 30, 0), -18_000);
        assert_eq!(z.offset_at_local(2023, 3, 12, 1, 59, 59), -18_000);
        assert_eq!(z.offset_at_local(2023, 3, 12, 3, 0, 0), -14_400);
        // fall back: 01:30 happens twice; the first, daylight, one
        assert_eq!(z.offset_at_local(2023, 11, 5, 1, 30, 0), -14_400);
        assert_eq!(z.offset_at_local(2023, 11, 5, 0, 59, 59), -14_400);
        assert_eq!(z.offset_at_local(2023, 11, 5, 2, 0, 0), -18_000);
        // past the database's transitions: the zone's rule
        assert_eq!(z.offset_at_local(2040, 7, 1, 12, 0, 0), -14_400);
        assert_eq!(z.offset_at_local(2040, 1, 1, 12, 0, 0), -18_000);
        assert_eq!(z.offset_at_local(2099, 3, 8, 2, 30, 0), -18_000); // gap
        assert_eq!(z.offset_at_local(2099, 11, 1, 1, 30, 0), -14_400); // overlap
        // `TZ=America/New_York date -d '1950-07-01 12:00' +%z` says -0400
        assert_eq!(z.offset_at_local(1950, 7, 1, 12, 0, 0), -14_400);
        // before time zones: local mean time, -4:56:02
        assert_eq!(z.offset_at_local(1800, 1, 1, 0, 0, 0), -17_762);
        // nothing panics at the ends of the calendar
        z.offset_at_local(i32::MAX, 12, 31, 23, 59, 59);
        z.offset_at_local(i32::MIN, 1, 1, 0, 0, 0);
        z.offset_at_local(2023, u32::MAX, u32::MAX, u32::MAX, u32::MAX, u32::MAX);
    }

    #[test]
    fn other_zones() {
        let Some(berlin) = zone("Europe/Berlin") else {
            return;
        };
        assert_eq!(berlin.offset_at_local(2023, 7, 1, 12, 0, 0), 7200);
        assert_eq!(berlin.offset_at_local(2023, 12, 1, 12, 0, 0), 3600);
        assert_eq!(berlin.offset_at_local(2050, 7, 1, 12, 0, 0), 7200);
        let kolkata = zone("Asia/Kolkata").unwrap();
        assert_eq!(kolkata.offset_at_local(2023, 7, 1, 12, 0, 0), 19_800);
        assert_eq!(kolkata.offset_at_local(2060, 1, 1, 12, 0, 0), 19_800);
        if let Some(lh) = zone("Australia/Lord_Howe") {
            // a half-hour daylight-saving shift
            assert_eq!(lh.offset_at_local(2023, 1, 15, 12, 0, 0), 39_600);
            assert_eq!(lh.offset_at_local(2023, 7, 15, 12, 0, 0), 37_800);
            assert_eq!(lh.offset_at_local(2045, 1, 15, 12, 0, 0), 39_600);
            assert_eq!(lh.offset_at_local(2045, 7, 15, 12, 0, 0), 37_800);
        }
    }

    #[test]
    fn bad_names() {
        if zone("America/New_York").is_none() {
            return;
        }
        for name in [
            "Mars/Base",
            "../etc/passwd",
            "/etc/passwd",
            "America/../UTC",
            "America/",
            "America",
        ] {
            let e = Zone::parse(name).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains("America/New_York") && text.contains("-05:00"),
                "{text}"
            );
        }
        let e = Zone::parse("Mars/Base").unwrap_err();
        assert!(e.why.contains("no zone named Mars/Base"), "{}", e.why);
        let e = Zone::parse("../etc/passwd").unwrap_err();
        assert!(e.why.contains(".."), "{}", e.why);
    }
}
