//! HL7 v2 dates and times (DTM, TS.1, DT, TM) → FHIR `dateTime`, `date`,
//! `instant` and `time` (mapping sheet §2).
//!
//! - The precision written is kept; a value with a time is padded to
//!   seconds and its fraction kept (at most 9 digits, FHIR's limit: more
//!   are cut off).
//! - A given offset is kept as written (`+0000` and `-0000` become `Z`);
//!   a time without an offset gets the configured [`Zone`]'s offset at
//!   that wall-clock time, never the host's.
//! - At day precision or coarser a `dateTime` carries no offset.
//! - Empty input and the explicit null `""` are `Ok(None)`; anything else
//!   that is not a valid v2 value (bad syntax, month 13, 30 February, a
//!   trailing `^precision`) is a [`DateError`] whose message never quotes
//!   the value (it may be PHI).

use crate::Zone;

/// A v2 date/time that does not read. The message describes the problem
/// without quoting the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DateError(pub String);

const NOT_A_DTM: &str = "not an HL7 date/time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])";
const NOT_A_TM: &str = "not an HL7 time (HH[MM[SS[.S]]][+/-ZZZZ])";

fn err(message: &str) -> DateError {
    DateError(message.to_owned())
}

/// The most digits of a fraction of a second FHIR accepts.
const MAX_FRACTION: usize = 9;

/// A parsed DTM: each part present down to the precision written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dtm {
    year: u32,
    month: Option<u32>,
    day: Option<u32>,
    hour: Option<u32>,
    minute: Option<u32>,
    second: Option<u32>,
    /// Digits after the decimal point of the seconds.
    fraction: Option<String>,
    /// The offset written, in seconds east of UTC.
    offset: Option<i32>,
}

/// DTM / TS.1 / DT → FHIR dateTime (§2): the precision is kept; with a
/// time, padded to seconds, fraction kept, the given offset kept (`+0000`
/// → `Z`), else the zone's offset at that local time (`Z` when 0); at day
/// precision or coarser no offset. `Ok(None)` for empty or `""`.
pub fn datetime(raw: &str, zone: &Zone) -> Result<Option<String>, DateError> {
    let Some(v) = parse_dtm(raw)? else {
        return Ok(None);
    };
    let mut out = date_part(&v);
    if v.hour.is_some() {
        push_time_and_offset(&mut out, &v, zone);
    }
    Ok(Some(out))
}

/// → FHIR date (birthDate): the first 4/6/8 digits as YYYY[-MM[-DD]],
/// literal, no shift. The whole value must still be a valid DTM.
pub fn date(raw: &str) -> Result<Option<String>, DateError> {
    Ok(parse_dtm(raw)?.map(|v| date_part(&v)))
}

/// → FHIR instant: needs at least day precision; missing time parts are
/// zero; always seconds and an offset (the zone's when none is written).
pub fn instant(raw: &str, zone: &Zone) -> Result<Option<String>, DateError> {
    let Some(mut v) = parse_dtm(raw)? else {
        return Ok(None);
    };
    if v.day.is_none() {
        return Err(err(
            "an instant needs at least a full date (YYYYMMDD) in the HL7 date/time",
        ));
    }
    v.hour.get_or_insert(0);
    let mut out = date_part(&v);
    push_time_and_offset(&mut out, &v, zone);
    Ok(Some(out))
}

/// TM → FHIR time `hh:mm:ss[.fraction]`. Missing minutes and seconds are
/// zero; an offset is checked and then dropped (FHIR `time` has none).
pub fn time(raw: &str) -> Result<Option<String>, DateError> {
    let s = raw.trim();
    if s.is_empty() || s == "\"\"" {
        return Ok(None);
    }
    let (body, offset) = split_offset(s);
    if let Some(o) = offset {
        parse_offset(o)?;
    }
    let (digits, fraction) = split_fraction(body, NOT_A_TM)?;
    if !matches!(digits.len(), 2 | 4 | 6) || (fraction.is_some() && digits.len() != 6) {
        return Err(err(NOT_A_TM));
    }
    let hour = two(digits, 0, NOT_A_TM)?.unwrap_or(0);
    let minute = two(digits, 2, NOT_A_TM)?.unwrap_or(0);
    let second = two(digits, 4, NOT_A_TM)?.unwrap_or(0);
    check_time(hour, minute, second)?;
    let mut out = format!("{hour:02}:{minute:02}:{second:02}");
    if let Some(f) = fraction {
        out.push('.');
        out.push_str(f);
    }
    Ok(Some(out))
}

fn parse_dtm(raw: &str) -> Result<Option<Dtm>, DateError> {
    let s = raw.trim();
    if s.is_empty() || s == "\"\"" {
        return Ok(None);
    }
    let (body, offset) = split_offset(s);
    let offset = offset.map(parse_offset).transpose()?;
    let (digits, fraction) = split_fraction(body, NOT_A_DTM)?;
    if !matches!(digits.len(), 4 | 6 | 8 | 10 | 12 | 14)
        || (fraction.is_some() && digits.len() != 14)
    {
        return Err(err(NOT_A_DTM));
    }
    let year = digits
        .get(0..4)
        .and_then(|y| y.parse::<u32>().ok())
        .ok_or_else(|| err(NOT_A_DTM))?;
    if year == 0 {
        return Err(err("the year 0000 is not a valid FHIR year"));
    }
    let v = Dtm {
        year,
        month: two(digits, 4, NOT_A_DTM)?,
        day: two(digits, 6, NOT_A_DTM)?,
        hour: two(digits, 8, NOT_A_DTM)?,
        minute: two(digits, 10, NOT_A_DTM)?,
        second: two(digits, 12, NOT_A_DTM)?,
        fraction: fraction.map(str::to_owned),
        offset,
    };
    if let Some(m) = v.month
        && !(1..=12).contains(&m)
    {
        return Err(err("the month of the HL7 date/time is not 01-12"));
    }
    if let (Some(m), Some(d)) = (v.month, v.day)
        && (d == 0 || d > days_in_month(year, m))
    {
        return Err(err(
            "the day of the HL7 date/time does not exist in its month",
        ));
    }
    if let Some(h) = v.hour {
        check_time(h, v.minute.unwrap_or(0), v.second.unwrap_or(0))?;
    }
    Ok(Some(v))
}

/// Splits a trailing `+ZZZZ` / `-ZZZZ` off (the sign is ASCII, so the cut
/// is on a char boundary).
fn split_offset(s: &str) -> (&str, Option<&str>) {
    match s.find(['+', '-']) {
        Some(i) => (s.get(..i).unwrap_or(""), s.get(i..)),
        None => (s, None),
    }
}

/// Splits `digits[.fraction]`, both parts ASCII digits; the fraction is cut
/// to [`MAX_FRACTION`] digits.
fn split_fraction<'s>(body: &'s str, what: &str) -> Result<(&'s str, Option<&'s str>), DateError> {
    let (digits, fraction) = match body.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (body, None),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(what));
    }
    let fraction = match fraction {
        Some(f) if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(err(what));
        }
        Some(f) => Some(f.get(..MAX_FRACTION.min(f.len())).unwrap_or(f)),
        None => None,
    };
    Ok((digits, fraction))
}

/// The two digits at `at`, when the value is that long.
fn two(digits: &str, at: usize, what: &str) -> Result<Option<u32>, DateError> {
    if digits.len() <= at {
        return Ok(None);
    }
    digits
        .get(at..at + 2)
        .and_then(|p| p.parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| err(what))
}

/// `+HHMM` / `-HHMM` → seconds east of UTC (at most 14 hours, minutes
/// below 60).
fn parse_offset(o: &str) -> Result<i32, DateError> {
    let bad = || err("the UTC offset of the HL7 date/time is not +/-HHMM (at most 14 hours)");
    let (sign, digits) = match o.as_bytes().first() {
        Some(b'+') => (1, o.get(1..).unwrap_or("")),
        Some(b'-') => (-1, o.get(1..).unwrap_or("")),
        _ => return Err(bad()),
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let h: i32 = digits
        .get(0..2)
        .and_then(|p| p.parse().ok())
        .ok_or_else(bad)?;
    let m: i32 = digits
        .get(2..4)
        .and_then(|p| p.parse().ok())
        .ok_or_else(bad)?;
    if h > 14 || m > 59 || (h == 14 && m > 0) {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

fn check_time(h: u32, mi: u32, s: u32) -> Result<(), DateError> {
    if h > 23 {
        return Err(err("the hour of the HL7 time is not 00-23"));
    }
    if mi > 59 {
        return Err(err("the minute of the HL7 time is not 00-59"));
    }
    if s > 59 {
        return Err(err("the second of the HL7 time is not 00-59"));
    }
    Ok(())
}

/// Days in a month of the proleptic Gregorian calendar; 0 for a month
/// or year no calendar holds.
fn days_in_month(y: u32, m: u32) -> u32 {
    match (i16::try_from(y), i8::try_from(m)) {
        (Ok(y), Ok(m)) => jiff::civil::Date::new(y, m, 1).map_or(0, |d| d.days_in_month() as u32),
        _ => 0,
    }
}

/// `YYYY[-MM[-DD]]`.
fn date_part(v: &Dtm) -> String {
    let mut out = format!("{:04}", v.year);
    if let Some(m) = v.month {
        out.push_str(&format!("-{m:02}"));
        if let Some(d) = v.day {
            out.push_str(&format!("-{d:02}"));
        }
    }
    out
}

/// `Thh:mm:ss[.f]` and the offset (the written one, else the zone's).
fn push_time_and_offset(out: &mut String, v: &Dtm, zone: &Zone) {
    let (h, mi, s) = (
        v.hour.unwrap_or(0),
        v.minute.unwrap_or(0),
        v.second.unwrap_or(0),
    );
    out.push_str(&format!("T{h:02}:{mi:02}:{s:02}"));
    if let Some(f) = &v.fraction {
        out.push('.');
        out.push_str(f);
    }
    let offset = match v.offset {
        Some(o) => o,
        None => zone.offset_at_local(
            i32::try_from(v.year).unwrap_or(i32::MAX),
            v.month.unwrap_or(1),
            v.day.unwrap_or(1),
            h,
            mi,
            s,
        ),
    };
    out.push_str(&format_offset(offset));
}

/// Seconds east of UTC → `Z` or `±HH:MM` (rounded to the minute: FHIR has
/// no seconds in offsets, historical local-mean-time offsets do).
fn format_offset(seconds: i32) -> String {
    let minutes = (i64::from(seconds).abs() + 30) / 60;
    if minutes == 0 {
        return "Z".to_owned();
    }
    let sign = if seconds < 0 { '-' } else { '+' };
    format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ny() -> Zone {
        Zone::parse("-05:00").unwrap()
    }

    fn dt(raw: &str, zone: &Zone) -> Option<String> {
        datetime(raw, zone).unwrap()
    }

    #[test]
    fn sheet_table_datetime() {
        let z = ny();
        assert_eq!(dt("2023", &z).as_deref(), Some("2023"));
        assert_eq!(dt("202306", &z).as_deref(), Some("2023-06"));
        assert_eq!(dt("20230615", &z).as_deref(), Some("2023-06-15"));
        assert_eq!(
            dt("2023061509", &z).as_deref(),
            Some("2023-06-15T09:00:00-05:00")
        );
        assert_eq!(
            dt("202306150930", &z).as_deref(),
            Some("2023-06-15T09:30:00-05:00")
        );
        assert_eq!(
            dt("20230615093000-0500", &Zone::utc()).as_deref(),
            Some("2023-06-15T09:30:00-05:00")
        );
        assert_eq!(
            dt("20230615093000.1234+0000", &z).as_deref(),
            Some("2023-06-15T09:30:00.1234Z")
        );
        assert_eq!(dt("20230615-0500", &z).as_deref(), Some("2023-06-15"));
    }

    #[test]
    fn sheet_table_date() {
        for raw in [
            "2023061509",
            "202306150930",
            "20230615093000-0500",
            "20230615093000.1234+0000",
            "20230615-0500",
            "20230615",
        ] {
            assert_eq!(date(raw).unwrap().as_deref(), Some("2023-06-15"), "{raw}");
        }
        assert_eq!(date("2023").unwrap().as_deref(), Some("2023"));
        assert_eq!(date("202306").unwrap().as_deref(), Some("2023-06"));
        // literal digits: no shift to UTC or the zone
        assert_eq!(
            date("20231231233000-1000").unwrap().as_deref(),
            Some("2023-12-31")
        );
    }

    #[test]
    fn offsets() {
        let z = ny();
        // the given offset wins over the zone
        assert_eq!(
            dt("198908181126+0215", &z).as_deref(),
            Some("1989-08-18T11:26:00+02:15")
        );
        assert_eq!(
            dt("20230615093000-0000", &z).as_deref(),
            Some("2023-06-15T09:30:00Z")
        );
        // no offset, UTC zone → Z
        assert_eq!(
            dt("20230615093000", &Zone::utc()).as_deref(),
            Some("2023-06-15T09:30:00Z")
        );
        let india = Zone::parse("+05:30").unwrap();
        assert_eq!(
            dt("20230615093000.5", &india).as_deref(),
            Some("2023-06-15T09:30:00.5+05:30")
        );
        assert_eq!(format_offset(-17762), "-04:56");
        assert_eq!(format_offset(29), "Z");
        assert_eq!(format_offset(i32::MIN), "-596523:14");
    }

    #[test]
    fn fraction_is_cut_to_nine_digits() {
        assert_eq!(
            dt("20230615093000.123456789012+0100", &ny()).as_deref(),
            Some("2023-06-15T09:30:00.123456789+01:00")
        );
    }

    #[test]
    fn empty_null_and_spaces() {
        let z = ny();
        assert_eq!(datetime("", &z), Ok(None));
        assert_eq!(datetime("  ", &z), Ok(None));
        assert_eq!(datetime("\"\"", &z), Ok(None));
        assert_eq!(date("\"\""), Ok(None));
        assert_eq!(instant("", &z), Ok(None));
        assert_eq!(time("\"\""), Ok(None));
        assert_eq!(dt(" 20230615 ", &z).as_deref(), Some("2023-06-15"));
    }

    #[test]
    fn bad_values_are_errors() {
        let z = ny();
        for raw in [
            "20231301",       // month 13
            "20230230",       // 30 February
            "20230229",       // not a leap year
            "20230001",       // month 0
            "20230600",       // day 0
            "2023061524",     // hour 24
            "202306150960",   // minute 60
            "20230615093060", // second 60
            "2023a615",       // letters
            "June 2023",
            "20230",            // odd length
            "20230615.5",       // fraction without seconds
            "20230615093000.",  // empty fraction
            "20230615093000+5", // short offset
            "20230615093000+1500",
            "20230615093000+0560",
            "20230615^M", // a TS with its precision still attached
            "2023-06-15", // ISO, not v2
            "0000",
            "+0100",
            "٢٠٢٣", // non-ASCII digits
        ] {
            assert!(datetime(raw, &z).is_err(), "{raw}");
            assert!(date(raw).is_err(), "{raw}");
        }
        assert_eq!(date("20240229").unwrap().as_deref(), Some("2024-02-29"));
        assert_eq!(date("20000229").unwrap().as_deref(), Some("2000-02-29"));
        assert!(date("19000229").is_err());
    }

    #[test]
    fn error_messages_do_not_quote_the_value() {
        let e = datetime("20231301", &ny()).unwrap_err();
        assert!(!e.to_string().contains("20231301"), "{e}");
        let e = datetime("Jane Doe", &ny()).unwrap_err();
        assert_eq!(e.to_string(), NOT_A_DTM);
    }

    #[test]
    fn instants() {
        let z = ny();
        assert_eq!(
            instant("20230615", &z).unwrap().as_deref(),
            Some("2023-06-15T00:00:00-05:00")
        );
        assert_eq!(
            instant("2023061509", &z).unwrap().as_deref(),
            Some("2023-06-15T09:00:00-05:00")
        );
        assert_eq!(
            instant("20230615-0100", &z).unwrap().as_deref(),
            Some("2023-06-15T00:00:00-01:00")
        );
        assert_eq!(
            instant("20230615093000.1234+0000", &z).unwrap().as_deref(),
            Some("2023-06-15T09:30:00.1234Z")
        );
        assert!(instant("202306", &z).is_err());
        assert!(instant("2023", &z).is_err());
    }

    #[test]
    fn times() {
        assert_eq!(time("09").unwrap().as_deref(), Some("09:00:00"));
        assert_eq!(time("0930").unwrap().as_deref(), Some("09:30:00"));
        assert_eq!(time("093015").unwrap().as_deref(), Some("09:30:15"));
        assert_eq!(time("093015.25").unwrap().as_deref(), Some("09:30:15.25"));
        assert_eq!(time("0930-0500").unwrap().as_deref(), Some("09:30:00"));
        for raw in ["2400", "0960", "093060", "9", "09:30", "0930.5", "0930+99"] {
            assert!(time(raw).is_err(), "{raw}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(raw in "\\PC*") {
            let z = ny();
            let _ = (datetime(&raw, &z), date(&raw), instant(&raw, &z), time(&raw));
        }

        #[test]
        fn never_panics_on_near_dates(raw in "[0-9]{0,16}(\\.[0-9]{0,12})?([+-][0-9]{0,5})?") {
            let z = ny();
            if let Ok(Some(v)) = datetime(&raw, &z) {
                prop_assert!(v.len() >= 4);
            }
            let _ = (date(&raw), instant(&raw, &z), time(&raw));
        }
    }
}
