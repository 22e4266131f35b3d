//! Reading the server's clock: HTTP dates and FHIR instants, to tell an
//! unchanged resource (last modified before this request) from an update.

use fhirlift_core::civil::days_from_civil;

fn num(s: &str) -> Option<i64> {
    s.parse().ok()
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (IMF-fixdate) to Unix seconds.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u32
        + 1;
    let mut hms = time.split(':');
    let (h, mi, sec) = (num(hms.next()?)?, num(hms.next()?)?, num(hms.next()?)?);
    Some(days_from_civil(num(year)?, month, num(day)? as u32) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// `2024-01-02T03:04:05.678Z` or with `+hh:mm` to Unix milliseconds.
pub fn parse_instant_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let (y, m, d) = (
        num(&s[0..4])?,
        num(&s[5..7])? as u32,
        num(&s[8..10])? as u32,
    );
    let (h, mi, sec) = (num(&s[11..13])?, num(&s[14..16])?, num(&s[17..19])?);
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.chars().take_while(char::is_ascii_digit).count();
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        ms = num(&padded)?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "" => 0,
        _ => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (num(&rest[1..3])? * 60 + num(&rest[4..6])?)
        }
    };
    let secs = days_from_civil(y, m, d) * 86_400 + h * 3600 + mi * 60 + sec - offset * 60;
    Some(secs * 1000 + ms)
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
    }
}
