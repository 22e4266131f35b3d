//! Reading the server's clock: HTTP dates and FHIR instants, to tell an
//! unchanged resource (last modified before this request) from an update.

/// `Sun, 06 Nov 1994 08:49:37 GMT` (IMF-fixdate) to Unix seconds.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let at = jiff::fmt::rfc2822::parse(s).ok()?;
    Some(at.timestamp().as_second())
}

/// `2024-01-02T03:04:05.678Z` or with `+hh:mm` to Unix milliseconds; a
/// time with no offset is read as UTC.
pub fn parse_instant_ms(s: &str) -> Option<i64> {
    if s.len() < 19 || s.as_bytes()[10] != b'T' {
        return None; // a date alone is not an instant
    }
    let at = match s.parse::<jiff::Timestamp>() {
        Ok(at) => at,
        Err(_) => s
            .parse::<jiff::civil::DateTime>()
            .ok()?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp(),
    };
    Some(at.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_agree() {
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:10 GMT"), Some(10));
        let http = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_instant_ms("1994-11-06T08:49:37.250Z"),
            Some(http * 1000 + 250)
        );
        assert_eq!(
            parse_instant_ms("1994-11-06T10:49:37+02:00"),
            Some(http * 1000)
        );
        assert_eq!(parse_instant_ms("1994-11-06T08:49:37"), Some(http * 1000));
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_instant_ms("1994-11-06"), None);
    }
}
