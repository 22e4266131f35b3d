//! FHIR R4's primitive types as JSON: which JSON type each takes and the
//! format its text must have (the regular expressions of the
//! specification, written out; the calendar by jiff).

use base64::Engine as _;
use fhirlift_core::group::is_uuid_text;
use fhirlift_core::terminology::is_oid;
use serde_json::Value;

/// Why a value is not a valid primitive of its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrong {
    /// The JSON type itself is wrong (a number where a string goes).
    pub wrong_json: bool,
    /// What is expected, without the value.
    pub message: String,
}

fn json(message: &str) -> Result<(), Wrong> {
    Err(Wrong {
        wrong_json: true,
        message: message.to_owned(),
    })
}

fn format(message: &str) -> Result<(), Wrong> {
    Err(Wrong {
        wrong_json: false,
        message: message.to_owned(),
    })
}

/// Checks a value of the primitive type `type_name`.
pub fn check(type_name: &str, value: &Value) -> Result<(), Wrong> {
    match type_name {
        "boolean" => match value {
            Value::Bool(_) => Ok(()),
            _ => json("a boolean: true or false (not in quotes)"),
        },
        "integer" | "positiveInt" | "unsignedInt" => {
            let Some(n) = value.as_i64() else {
                return json("a whole number (not in quotes)");
            };
            let (low, what) = match type_name {
                "positiveInt" => (1, "at least 1"),
                "unsignedInt" => (0, "at least 0"),
                _ => (i64::from(i32::MIN), "a 32-bit integer"),
            };
            if n < low || n > i64::from(i32::MAX) {
                return format(&format!("{type_name}: {what}, at most 2147483647"));
            }
            Ok(())
        }
        "decimal" => match value {
            Value::Number(_) => Ok(()),
            _ => json("a decimal number (not in quotes)"),
        },
        _ => {
            let Some(text) = value.as_str() else {
                return json(&format!("a {type_name}, written as a JSON string"));
            };
            text_format(type_name, text)
        }
    }
}

fn text_format(type_name: &str, text: &str) -> Result<(), Wrong> {
    if text.is_empty() {
        return format("an empty string: leave the element out");
    }
    let ok = match type_name {
        "string" | "markdown" => true,
        "code" => {
            !text.starts_with(char::is_whitespace)
                && !text.ends_with(char::is_whitespace)
                && !text.contains("  ")
                && !text.contains(['\t', '\n', '\r'])
        }
        "id" => {
            text.len() <= 64
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
        "uri" | "url" | "canonical" => !text.contains(char::is_whitespace),
        "oid" => text.strip_prefix("urn:oid:").is_some_and(is_oid),
        "uuid" => text.strip_prefix("urn:uuid:").is_some_and(is_uuid),
        "base64Binary" => base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .is_ok(),
        "date" => is_date(text),
        "dateTime" => is_date(text) || is_date_time(text, false),
        "instant" => is_date_time(text, true),
        "time" => is_time(text),
        "xhtml" => text.trim_start().starts_with("<div"),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        format(expected(type_name))
    }
}

fn expected(type_name: &str) -> &'static str {
    match type_name {
        "code" => "a code: no leading, trailing or doubled spaces",
        "id" => "an id: 1 to 64 letters, digits, '-' and '.'",
        "uri" | "url" | "canonical" => "a URI: no spaces",
        "oid" => "an OID: urn:oid:1.2.3",
        "uuid" => "a UUID: urn:uuid: and 36 lower-case hex characters with dashes",
        "base64Binary" => "base64 (A-Z a-z 0-9 + /, padded with =)",
        "date" => "a date: YYYY, YYYY-MM or YYYY-MM-DD, a real day",
        "dateTime" => "a dateTime: a date, or YYYY-MM-DDThh:mm:ss with an offset (Z or +hh:mm)",
        "instant" => "an instant: YYYY-MM-DDThh:mm:ss[.sss] with an offset (Z or +hh:mm)",
        "time" => "a time: hh:mm:ss",
        "xhtml" => "XHTML in a <div>",
        _ => "a valid value",
    }
}

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// FHIR's `uuid`: lower-case hex only.
fn is_uuid(s: &str) -> bool {
    is_uuid_text(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, a day that exists, year 1 or later.
fn is_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let Some(year) = parts.first().and_then(|y| digits(y, 4)).filter(|y| *y >= 1) else {
        return false;
    };
    match parts[1..] {
        [] => true,
        [m] => digits(m, 2).is_some_and(|m| (1..=12).contains(&m)),
        [m, d] => match (digits(m, 2), digits(d, 2)) {
            (Some(m), Some(d)) => jiff::civil::Date::new(year as i16, m as i8, d as i8).is_ok(),
            _ => false,
        },
        _ => false,
    }
}

/// `hh:mm:ss[.fff]`, 24-hour.
fn is_time(s: &str) -> bool {
    let (main, fraction) = match s.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (s, None),
    };
    let parts: Vec<&str> = main.split(':').collect();
    let [h, m, sec] = parts[..] else {
        return false;
    };
    digits(h, 2).is_some_and(|h| h < 24)
        && digits(m, 2).is_some_and(|m| m < 60)
        && digits(sec, 2).is_some_and(|s| s < 60)
        && fraction.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

/// `YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm|-hh:mm)`; an instant needs seconds
/// and an offset, which a dateTime with a time needs too.
fn is_date_time(s: &str, _instant: bool) -> bool {
    let Some((date, rest)) = s.split_once('T') else {
        return false;
    };
    if date.len() != 10 || !is_date(date) {
        return false;
    }
    let (time, offset) = if let Some(t) = rest.strip_suffix('Z') {
        (t, "Z")
    } else if rest.len() > 6 {
        rest.split_at(rest.len() - 6)
    } else {
        return false;
    };
    let offset_ok = offset == "Z"
        || (offset.starts_with(['+', '-'])
            && offset.as_bytes()[3] == b':'
            && digits(&offset[1..3], 2).is_some_and(|h| h <= 14)
            && digits(&offset[4..6], 2).is_some_and(|m| m < 60));
    offset_ok && is_time(time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn primitives_by_type() {
        let good = [
            ("boolean", json!(true)),
            ("integer", json!(-3)),
            ("positiveInt", json!(1)),
            ("unsignedInt", json!(0)),
            ("decimal", json!(3.5)),
            ("string", json!("x")),
            ("code", json!("entered-in-error")),
            ("id", json!("Patient-1.a")),
            ("uri", json!("http://loinc.org")),
            ("oid", json!("urn:oid:2.16.840.1.113883")),
            (
                "uuid",
                json!("urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e"),
            ),
            ("base64Binary", json!("TWFu")),
            ("date", json!("2024-02-29")),
            ("date", json!("2024-02")),
            ("date", json!("2024")),
            ("dateTime", json!("2024-02-29T10:00:00+01:00")),
            ("dateTime", json!("2024-02-29")),
            ("instant", json!("2024-02-29T10:00:00.123Z")),
            ("time", json!("23:59:59")),
        ];
        for (t, v) in good {
            assert_eq!(check(t, &v), Ok(()), "{t} {v}");
        }
        let bad = [
            ("boolean", json!("true"), true),
            ("integer", json!(1.5), true),
            ("positiveInt", json!(0), false),
            ("decimal", json!("3.5"), true),
            ("string", json!(""), false),
            ("code", json!(" male"), false),
            ("id", json!("a b"), false),
            ("uri", json!("http://x y"), false),
            ("oid", json!("1.2.3"), false),
            (
                "uuid",
                json!("urn:uuid:0F8FAD5B-D9CB-469F-A165-70867728950E"),
                false,
            ),
            ("base64Binary", json!("not base64!"), false),
            ("date", json!("2023-02-29"), false),
            ("date", json!("29/02/2024"), false),
            ("dateTime", json!("2024-02-29T10:00"), false),
            ("dateTime", json!("2024-02-29T10:00:00"), false),
            ("instant", json!("2024-02-29"), false),
            ("time", json!("24:00:00"), false),
        ];
        for (t, v, wrong_json) in bad {
            let e = check(t, &v).expect_err(&format!("{t} {v}"));
            assert_eq!(e.wrong_json, wrong_json, "{t} {v}");
            assert!(
                !e.message.contains(&v.to_string()),
                "no value in {}",
                e.message
            );
        }
    }
}
