//! Source dates to FHIR `date` and `dateTime`.
//!
//! Without a format, only unambiguous forms are accepted: ISO 8601
//! (`2023-06-15`, `2023-06`, `2023`, `2023-06-15T09:30:00+02:00`, with a
//! space for the `T`) and compact `20230615[HHMM[SS]]`. Day-first and
//! month-first forms (`03/04/2001`) need an explicit format such as
//! `DD/MM/YYYY`, since guessing would silently swap days and months.

/// A date or time that could not be read; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateError(pub String);

#[derive(Debug, Default, Clone, Copy)]
struct Parts {
    year: u32,
    month: Option<u32>,
    day: Option<u32>,
    hour: Option<u32>,
    minute: Option<u32>,
    second: Option<u32>,
    /// Fractional seconds digits, as written.
    fraction: Option<(usize, usize)>,
    /// Offset in minutes east of UTC; `Some(0)` for `Z`.
    offset: Option<i32>,
}

/// Days in a month of the proleptic Gregorian calendar; 0 for a month
/// or year no calendar holds.
fn days_in_month(year: u32, month: u32) -> u32 {
    match (i16::try_from(year), i8::try_from(month)) {
        (Ok(y), Ok(m)) => jiff::civil::Date::new(y, m, 1).map_or(0, |d| d.days_in_month() as u32),
        _ => 0,
    }
}

fn digits(s: &[u8], at: usize, n: usize) -> Option<u32> {
    let part = s.get(at..at + n)?;
    if !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(part.iter().fold(0, |acc, d| acc * 10 + (d - b'0') as u32))
}

fn validate(p: &Parts, input: &str) -> Result<(), DateError> {
    let bad = |what: &str| Err(DateError(format!("{input:?} has an impossible {what}")));
    if p.year == 0 {
        return bad("year");
    }
    if let Some(m) = p.month {
        if !(1..=12).contains(&m) {
            return bad("month");
        }
        if let Some(d) = p.day
            && (d == 0 || d > days_in_month(p.year, m))
        {
            return bad("day");
        }
    }
    if p.hour.is_some_and(|h| h > 23) {
        return bad("hour");
    }
    if p.minute.is_some_and(|m| m > 59) {
        return bad("minute");
    }
    if p.second.is_some_and(|s| s > 60) {
        return bad("second");
    }
    if p.offset.is_some_and(|o| o.abs() > 14 * 60) {
        return bad("UTC offset");
    }
    Ok(())
}

/// Reads `Z`, `+hh:mm`, `+hhmm` or `+hh` at the end of a time.
fn parse_offset(s: &[u8]) -> Option<i32> {
    match s {
        [b'Z'] | [b'z'] => Some(0),
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest.len() {
                2 => (digits(rest, 0, 2)?, 0),
                4 => (digits(rest, 0, 2)?, digits(rest, 2, 2)?),
                5 if rest[2] == b':' => (digits(rest, 0, 2)?, digits(rest, 3, 2)?),
                _ => return None,
            };
            let total = (h * 60 + m) as i32;
            Some(if *sign == b'-' { -total } else { total })
        }
        _ => None,
    }
}

/// Parses `HH:MM[:SS[.fff]][offset]` or `HHMM[SS][offset]` starting at `at`.
fn parse_time(s: &[u8], at: usize, p: &mut Parts) -> Option<()> {
    let colon = s.get(at + 2) == Some(&b':');
    p.hour = Some(digits(s, at, 2)?);
    let mut i = at + 2;
    if colon {
        i += 1;
    }
    p.minute = Some(digits(s, i, 2)?);
    i += 2;
    if (colon && s.get(i) == Some(&b':')) || (!colon && s.get(i).is_some_and(u8::is_ascii_digit)) {
        if colon {
            i += 1;
        }
        p.second = Some(digits(s, i, 2)?);
        i += 2;
        if s.get(i) == Some(&b'.') {
            let start = i + 1;
            let mut end = start;
            while s.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            if end == start {
                return None;
            }
            p.fraction = Some((start, end));
            i = end;
        }
    }
    if i < s.len() {
        p.offset = Some(parse_offset(&s[i..])?);
    }
    Some(())
}

fn parse_auto(input: &str) -> Option<Parts> {
    let s = input.as_bytes();
    let mut p = Parts {
        year: digits(s, 0, 4)?,
        ..Parts::default()
    };
    match s.len() {
        4 => return Some(p),
        _ if s.get(4) == Some(&b'-') => {
            p.month = Some(digits(s, 5, 2)?);
            if s.len() == 7 {
                return Some(p);
            }
            if s.get(7) != Some(&b'-') {
                return None;
            }
            p.day = Some(digits(s, 8, 2)?);
            if s.len() == 10 {
                return Some(p);
            }
            if !matches!(s.get(10), Some(b'T' | b't' | b' ')) {
                return None;
            }
            parse_time(s, 11, &mut p)?;
        }
        _ => {
            // compact: YYYYMMDD[HHMM[SS[.f]]][offset]
            p.month = Some(digits(s, 4, 2)?);
            p.day = Some(digits(s, 6, 2)?);
            if s.len() == 8 {
                return Some(p);
            }
            let at = if matches!(s.get(8), Some(b'T' | b' ')) {
                9
            } else {
                8
            };
            parse_time(s, at, &mut p)?;
        }
    }
    Some(p)
}

/// Parses with a pattern of `YYYY`, `YY`?, `MM`, `DD`, `hh`, `mm`, `ss` and literal characters.
fn parse_pattern(input: &str, pattern: &str) -> Result<Parts, DateError> {
    let s = input.as_bytes();
    let pat = pattern.as_bytes();
    let mismatch = || DateError(format!("{input:?} does not match the format {pattern:?}"));
    let mut p = Parts::default();
    let (mut i, mut j) = (0usize, 0usize);
    while j < pat.len() {
        let token = [b"YYYY".as_slice(), b"MM", b"DD", b"hh", b"mm", b"ss"]
            .into_iter()
            .find(|t| pat[j..].starts_with(t));
        match token {
            Some(t) => {
                // a field may be written with one digit fewer (3/4/2001) unless it is the year
                let mut n = t.len();
                let next_is_digit = s.get(i + n - 1).is_some_and(u8::is_ascii_digit);
                if t != b"YYYY" && !next_is_digit {
                    n -= 1;
                }
                let v = digits(s, i, n).ok_or_else(mismatch)?;
                match t {
                    b"YYYY" => p.year = v,
                    b"MM" => p.month = Some(v),
                    b"DD" => p.day = Some(v),
                    b"hh" => p.hour = Some(v),
                    b"mm" => p.minute = Some(v),
                    _ => p.second = Some(v),
                }
                i += n;
                j += t.len();
            }
            None => {
                if s.get(i) != Some(&pat[j]) {
                    return Err(mismatch());
                }
                i += 1;
                j += 1;
            }
        }
    }
    if i < s.len() {
        p.offset = Some(parse_offset(&s[i..]).ok_or_else(mismatch)?);
    }
    if p.hour.is_some() && p.minute.is_none() {
        p.minute = Some(0);
    }
    Ok(p)
}

fn parse(input: &str, format: Option<&str>) -> Result<Parts, DateError> {
    let input = input.trim();
    let p = match format {
        Some(f) => parse_pattern(input, f)?,
        None => parse_auto(input).ok_or_else(|| {
            DateError(format!(
                "{input:?} is not a date fhirlift reads on its own (YYYY-MM-DD, YYYYMMDD, ISO 8601 date-times); give its format, e.g. fhir_date('DD/MM/YYYY')"
            ))
        })?,
    };
    validate(&p, input)?;
    Ok(p)
}

/// A FHIR `date` (`YYYY`, `YYYY-MM` or `YYYY-MM-DD`); any time part is dropped.
pub fn to_fhir_date(input: &str, format: Option<&str>) -> Result<String, DateError> {
    let p = parse(input, format)?;
    let mut out = format!("{:04}", p.year);
    if let Some(m) = p.month {
        out.push_str(&format!("-{m:02}"));
        if let Some(d) = p.day {
            out.push_str(&format!("-{d:02}"));
        }
    }
    Ok(out)
}

/// A FHIR `dateTime`. A date alone stays a date (FHIR allows it); a time
/// needs an offset: from the input, else `default_offset` (`Z`, `+02:00`),
/// else the offset an IANA `zone` (`America/New_York`, from the system's
/// time zone database, as the HL7v2 map reads its `zone:`) had at that
/// moment, daylight saving included (a time that happens twice takes the
/// earlier, one skipped by the clocks the later: jiff's `compatible`).
pub fn to_fhir_datetime(
    input: &str,
    format: Option<&str>,
    default_offset: Option<&str>,
    zone: Option<&str>,
) -> Result<String, DateError> {
    let trimmed = input.trim();
    let mut p = parse(trimmed, format)?;
    let (Some(month), Some(day), Some(hour)) = (p.month, p.day, p.hour) else {
        return to_fhir_date(trimmed, format);
    };
    if p.offset.is_none() {
        p.offset = Some(match (default_offset, zone) {
            (Some(_), Some(_)) => {
                return Err(DateError(
                    "fhir_datetime takes an offset or a zone, not both".into(),
                ));
            }
            (Some(d), None) => parse_offset(d.as_bytes())
                .ok_or_else(|| DateError(format!("offset {d:?} is not Z or ±hh:mm")))?,
            (None, Some(z)) => zone_offset(z, &p, month, day, hour)?,
            (None, None) => {
                return Err(DateError(format!(
                    "{trimmed:?} has a time but no UTC offset; FHIR needs one: pass it, e.g. fhir_datetime(offset='+01:00') or fhir_datetime(zone='Europe/Berlin'), or give the stream or source a `zone:`"
                )));
            }
        });
    }
    let mut out = format!(
        "{:04}-{month:02}-{day:02}T{hour:02}:{:02}:{:02}",
        p.year,
        p.minute.unwrap_or(0),
        p.second.unwrap_or(0)
    );
    if let Some((a, b)) = p.fraction {
        out.push('.');
        out.push_str(&trimmed[a..b]);
    }
    match p.offset.unwrap_or(0) {
        0 => out.push('Z'),
        o => out.push_str(&format!(
            "{}{:02}:{:02}",
            if o < 0 { '-' } else { '+' },
            o.abs() / 60,
            o.abs() % 60
        )),
    }
    Ok(out)
}

/// The offset (minutes east of UTC) `zone` had at the parsed local time.
/// Whether `s` is a fixed offset (`Z`, `+01:00`) rather than a zone name.
pub(crate) fn is_offset(s: &str) -> bool {
    parse_offset(s.as_bytes()).is_some()
}

fn zone_offset(zone: &str, p: &Parts, month: u32, day: u32, hour: u32) -> Result<i32, DateError> {
    let tz = jiff::tz::TimeZone::get(zone).map_err(|_| {
        DateError(format!(
            "zone {zone:?} is not a time zone of the system's database (an IANA name such as America/New_York)"
        ))
    })?;
    let int = |v: u32| i8::try_from(v).map_err(|_| DateError("a date part out of range".into()));
    let year = i16::try_from(p.year).map_err(|_| DateError("a year out of range".into()))?;
    let local = jiff::civil::DateTime::new(
        year,
        int(month)?,
        int(day)?,
        int(hour)?,
        int(p.minute.unwrap_or(0))?,
        int(p.second.unwrap_or(0))?,
        0,
    )
    .map_err(|e| DateError(format!("not a time: {e}")))?;
    let zoned = tz
        .to_ambiguous_zoned(local)
        .compatible()
        .map_err(|e| DateError(format!("no such time in {zone}: {e}")))?;
    Ok(zoned.offset().seconds() / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unambiguous_forms_are_read_without_a_format() {
        assert_eq!(to_fhir_date("1980-07-15", None).unwrap(), "1980-07-15");
        assert_eq!(to_fhir_date("19800715", None).unwrap(), "1980-07-15");
        assert_eq!(to_fhir_date(" 1980-07 ", None).unwrap(), "1980-07");
        assert_eq!(to_fhir_date("1980", None).unwrap(), "1980");
        assert_eq!(
            to_fhir_date("2023-06-15T09:30:00Z", None).unwrap(),
            "2023-06-15"
        );
    }

    #[test]
    fn ambiguous_and_impossible_dates_are_refused_with_a_hint() {
        let e = to_fhir_date("03/04/2001", None).unwrap_err().0;
        assert!(e.contains("DD/MM/YYYY"), "{e}");
        assert!(
            to_fhir_date("2023-02-29", None)
                .unwrap_err()
                .0
                .contains("day")
        );
        assert_eq!(to_fhir_date("2024-02-29", None).unwrap(), "2024-02-29");
        assert!(to_fhir_date("2023-13-01", None).is_err());
        assert!(to_fhir_date("", None).is_err());
    }

    #[test]
    fn explicit_formats_allow_short_fields() {
        assert_eq!(
            to_fhir_date("3/4/2001", Some("DD/MM/YYYY")).unwrap(),
            "2001-04-03"
        );
        assert_eq!(
            to_fhir_date("03/04/2001", Some("MM/DD/YYYY")).unwrap(),
            "2001-03-04"
        );
        assert_eq!(
            to_fhir_date("15.07.1980", Some("DD.MM.YYYY")).unwrap(),
            "1980-07-15"
        );
        assert!(to_fhir_date("15-07-1980", Some("DD.MM.YYYY")).is_err());
    }

    #[test]
    fn a_zone_gives_the_offset_of_its_day_daylight_saving_included() {
        let ny = |t: &str| to_fhir_datetime(t, None, None, Some("America/New_York")).unwrap();
        assert_eq!(ny("2023-01-15 09:30"), "2023-01-15T09:30:00-05:00");
        assert_eq!(ny("2023-07-15 09:30"), "2023-07-15T09:30:00-04:00");
        // 02:30 on 12 March 2023 never happened in New York: the later offset
        assert_eq!(ny("2023-03-12 02:30"), "2023-03-12T02:30:00-04:00");
        // an offset in the input wins; a date alone stays a date
        assert_eq!(ny("2023-07-15T09:30:00Z"), "2023-07-15T09:30:00Z");
        assert_eq!(ny("2023-07-15"), "2023-07-15");
        let bad =
            to_fhir_datetime("2023-07-15 09:30", None, None, Some("Mars/Olympus")).unwrap_err();
        assert!(bad.0.contains("Mars/Olympus"), "{}", bad.0);
        let both = to_fhir_datetime("2023-07-15 09:30", None, Some("Z"), Some("UTC")).unwrap_err();
        assert!(both.0.contains("not both"), "{}", both.0);
    }

    #[test]
    fn datetimes_keep_or_require_an_offset() {
        assert_eq!(
            to_fhir_datetime("2023-06-15 09:30", None, Some("+02:00"), None).unwrap(),
            "2023-06-15T09:30:00+02:00"
        );
        assert_eq!(
            to_fhir_datetime("2023-06-15T09:30:15.250-0500", None, None, None).unwrap(),
            "2023-06-15T09:30:15.250-05:00"
        );
        assert_eq!(
            to_fhir_datetime("20230615093000", None, Some("Z"), None).unwrap(),
            "2023-06-15T09:30:00Z"
        );
        assert_eq!(
            to_fhir_datetime("2023-06-15", None, None, None).unwrap(),
            "2023-06-15"
        );
        assert!(
            to_fhir_datetime("2023-06-15 09:30", None, None, None)
                .unwrap_err()
                .0
                .contains("offset")
        );
        assert_eq!(
            to_fhir_datetime("15/06/2023 9:05", Some("DD/MM/YYYY hh:mm"), Some("Z"), None).unwrap(),
            "2023-06-15T09:05:00Z"
        );
    }
}
