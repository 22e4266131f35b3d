//! PostgreSQL values, read from the binary wire format into record values
//! without loss.
//!
//! Every value arrives as raw bytes ([`Raw`]) and is decoded here, so that
//! numerics keep every digit (never through `f64`), dates and timestamps
//! need no date library, and an unsupported type is found when the query is
//! prepared (`check`), not halfway through a run.

use base64::Engine as _;
use fhirlift_core::Value;
use jiff::civil::{Date, DateTime};
use jiff::{SignedDuration, Span};
use tokio_postgres::types::{FromSql, Kind, Type};

/// A column value as the server sent it, whatever its type.
pub struct Raw<'a>(pub &'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Whether values of this type can be read; `Err` names what cannot.
pub fn supported(ty: &Type) -> Result<(), String> {
    match ty.kind() {
        Kind::Array(inner) | Kind::Domain(inner) => supported(inner),
        Kind::Enum(_) => Ok(()),
        _ if scalar(ty).is_some() => Ok(()),
        _ => Err(format!(
            "type {} is not supported; cast it in the query (e.g. column::text)",
            ty.name()
        )),
    }
}

/// The scalar types read natively.
#[derive(Clone, Copy)]
enum Scalar {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Text,
    /// `char(n)`: trailing padding dropped.
    Bpchar,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Uuid,
    Json,
    Jsonb,
    Bytea,
}

fn scalar(ty: &Type) -> Option<Scalar> {
    Some(match *ty {
        Type::BOOL => Scalar::Bool,
        Type::INT2 => Scalar::Int2,
        Type::INT4 => Scalar::Int4,
        Type::INT8 => Scalar::Int8,
        Type::OID => Scalar::Oid,
        Type::FLOAT4 => Scalar::Float4,
        Type::FLOAT8 => Scalar::Float8,
        Type::NUMERIC => Scalar::Numeric,
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::UNKNOWN => Scalar::Text,
        Type::BPCHAR => Scalar::Bpchar,
        Type::DATE => Scalar::Date,
        Type::TIME => Scalar::Time,
        Type::TIMESTAMP => Scalar::Timestamp,
        Type::TIMESTAMPTZ => Scalar::Timestamptz,
        Type::UUID => Scalar::Uuid,
        Type::JSON => Scalar::Json,
        Type::JSONB => Scalar::Jsonb,
        Type::BYTEA => Scalar::Bytea,
        // extension types whose binary form is their text
        _ if ty.name() == "citext" => Scalar::Text,
        _ => return None,
    })
}

/// Decodes one non-null value of type `ty`.
pub fn decode(ty: &Type, raw: &[u8]) -> Result<Value, String> {
    match ty.kind() {
        Kind::Array(inner) => decode_array(inner, raw),
        Kind::Domain(inner) => decode(inner, raw),
        Kind::Enum(_) => text(raw).map(Value::Text),
        _ => match scalar(ty) {
            Some(s) => decode_scalar(s, raw),
            None => Err(format!("type {} is not supported", ty.name())),
        },
    }
}

fn bytes<const N: usize>(raw: &[u8]) -> Result<[u8; N], String> {
    raw.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", raw.len()))
}

fn text(raw: &[u8]) -> Result<String, String> {
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|e| format!("text is not UTF-8: {e}"))
}

fn decode_scalar(s: Scalar, raw: &[u8]) -> Result<Value, String> {
    Ok(match s {
        Scalar::Bool => Value::Bool(bytes::<1>(raw)?[0] != 0),
        Scalar::Int2 => Value::Integer(i16::from_be_bytes(bytes(raw)?) as i64),
        Scalar::Int4 => Value::Integer(i32::from_be_bytes(bytes(raw)?) as i64),
        Scalar::Int8 => Value::Integer(i64::from_be_bytes(bytes(raw)?)),
        Scalar::Oid => Value::Integer(u32::from_be_bytes(bytes(raw)?) as i64),
        Scalar::Float4 => {
            let f = f32::from_be_bytes(bytes(raw)?);
            float(f.is_finite(), f.to_string())
        }
        Scalar::Float8 => {
            let f = f64::from_be_bytes(bytes(raw)?);
            float(f.is_finite(), f.to_string())
        }
        Scalar::Numeric => numeric(raw)?,
        Scalar::Text => Value::Text(text(raw)?),
        Scalar::Bpchar => Value::Text(text(raw)?.trim_end_matches(' ').to_owned()),
        Scalar::Date => Value::Text(date(i32::from_be_bytes(bytes(raw)?))),
        Scalar::Time => Value::Text(time_of_day(i64::from_be_bytes(bytes(raw)?))),
        Scalar::Timestamp => Value::Text(timestamp(i64::from_be_bytes(bytes(raw)?), "")),
        Scalar::Timestamptz => Value::Text(timestamp(i64::from_be_bytes(bytes(raw)?), "Z")),
        Scalar::Uuid => Value::Text(uuid(&bytes::<16>(raw)?)),
        Scalar::Json => Value::Json(json(raw)?),
        Scalar::Jsonb => match raw.split_first() {
            Some((1, rest)) => Value::Json(json(rest)?),
            _ => return Err("jsonb in an unknown format version".into()),
        },
        Scalar::Bytea => Value::Text(base64(raw)),
    })
}

/// A float as its shortest round-trip digits; NaN and infinities as text.
fn float(finite: bool, shortest: String) -> Value {
    if finite {
        Value::Decimal(shortest)
    } else {
        Value::Text(shortest)
    }
}

fn json(raw: &[u8]) -> Result<serde_json::Value, String> {
    serde_json::from_slice(raw).map_err(|e| format!("json: {e}"))
}

/// `numeric` from its base-10000 digits, exactly, keeping its scale.
fn numeric(raw: &[u8]) -> Result<Value, String> {
    let field = |i: usize| -> Result<u16, String> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "numeric is cut short".to_owned())
    };
    let ndigits = field(0)? as usize;
    let weight = field(1)? as i16 as i64;
    let sign = field(2)?;
    let dscale = field(3)? as usize;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok(Value::Text("NaN".into())),
        0xD000 => return Ok(Value::Text("Infinity".into())),
        0xF000 => return Ok(Value::Text("-Infinity".into())),
        other => return Err(format!("numeric sign {other:#x} is unknown")),
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| field(4 + i))
        .collect::<Result<_, _>>()?;
    if digits.iter().any(|&d| d > 9999) {
        return Err("numeric digit out of range".into());
    }
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    // the integer part: digit groups 0..=weight
    if weight < 0 {
        out.push('0');
    } else {
        for g in 0..=weight {
            let d = digits.get(g as usize).copied().unwrap_or(0);
            if g == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        let mut fraction = String::with_capacity(dscale + 4);
        let mut g = weight + 1;
        while fraction.len() < dscale {
            let d = if g >= 0 {
                digits.get(g as usize).copied().unwrap_or(0)
            } else {
                0
            };
            fraction.push_str(&format!("{d:04}"));
            g += 1;
        }
        fraction.truncate(dscale);
        out.push('.');
        out.push_str(&fraction);
    }
    if out == "-0" || (out.starts_with("-0.") && out[3..].bytes().all(|b| b == b'0')) {
        out.remove(0);
    }
    Ok(Value::Decimal(out))
}

/// PostgreSQL's epoch for dates and timestamps.
const PG_EPOCH: Date = jiff::civil::date(2000, 1, 1);

/// Days since 2000-01-01 as `YYYY-MM-DD`. A date beyond the years a
/// calendar library holds (±9999, and FHIR holds 1-9999) is said as days
/// from the epoch, which no FHIR date accepts: the server names the record.
fn date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => match Span::new()
            .try_days(i64::from(d))
            .and_then(|span| PG_EPOCH.checked_add(span))
        {
            Ok(date) => format!(
                "{}-{:02}-{:02}",
                year(date.year()),
                date.month(),
                date.day()
            ),
            Err(_) => out_of_range(i64::from(d), "days"),
        },
    }
}

fn out_of_range(n: i64, unit: &str) -> String {
    format!("{n} {unit} from 2000-01-01 (beyond years -9999..9999)")
}

fn year(y: i16) -> String {
    if (0..=9999).contains(&y) {
        format!("{y:04}")
    } else {
        y.to_string()
    }
}

/// Microseconds since midnight as `HH:MM:SS[.ffffff]`.
fn time_of_day(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let mut out = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    fraction(&mut out, frac);
    out
}

fn fraction(out: &mut String, micros: i64) {
    if micros != 0 {
        let f = format!("{micros:06}");
        out.push('.');
        out.push_str(f.trim_end_matches('0'));
    }
}

/// Microseconds since 2000-01-01T00:00:00 as an ISO date-time, with `zone`
/// appended (`Z` for `timestamptz`, which the server sends in UTC).
fn timestamp(micros: i64, zone: &str) -> String {
    match micros {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let epoch = DateTime::from(PG_EPOCH);
    let Ok(at) = epoch.checked_add(SignedDuration::from_micros(micros)) else {
        return out_of_range(micros, "microseconds");
    };
    let mut out = format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}",
        year(at.year()),
        at.month(),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    );
    fraction(&mut out, i64::from(at.subsec_nanosecond() / 1_000));
    out.push_str(zone);
    out
}

fn uuid(b: &[u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    fhirlift_core::group::write_uuid(u128::from_be_bytes(*b), &mut out);
    out
}

fn base64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// A one- or many-dimensional array as (nested) lists; NULL elements stay null.
fn decode_array(element: &Type, raw: &[u8]) -> Result<Value, String> {
    let mut at = 0usize;
    fn int(raw: &[u8], at: &mut usize) -> Result<i32, String> {
        let b = raw
            .get(*at..*at + 4)
            .ok_or_else(|| "array is cut short".to_owned())?;
        *at += 4;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    let ndim = int(raw, &mut at)?;
    let _has_nulls = int(raw, &mut at)?;
    let _element_oid = int(raw, &mut at)?;
    if !(0..=6).contains(&ndim) {
        return Err(format!("array of {ndim} dimensions"));
    }
    let mut dims = Vec::with_capacity(ndim as usize);
    for _ in 0..ndim {
        let len = int(raw, &mut at)?;
        let _lower = int(raw, &mut at)?;
        if len < 0 {
            return Err("array with a negative length".into());
        }
        dims.push(len as usize);
    }
    let total: usize = dims.iter().product();
    let mut items = Vec::with_capacity(total.min(1 << 16));
    for _ in 0..if ndim == 0 { 0 } else { total } {
        let len = int(raw, &mut at)?;
        if len < 0 {
            items.push(Value::Null);
            continue;
        }
        let bytes = raw
            .get(at..at + len as usize)
            .ok_or_else(|| "array element is cut short".to_owned())?;
        at += len as usize;
        items.push(decode(element, bytes)?);
    }
    Ok(nest(items, &dims))
}

/// Folds a flat element list into nested lists, innermost dimension last.
fn nest(items: Vec<Value>, dims: &[usize]) -> Value {
    if dims.len() <= 1 {
        return Value::List(items);
    }
    let inner: usize = dims[1..].iter().product();
    let mut out = Vec::with_capacity(dims[0]);
    let mut it = items.into_iter();
    for _ in 0..dims[0] {
        let chunk: Vec<Value> = it.by_ref().take(inner).collect();
        out.push(nest(chunk, &dims[1..]));
    }
    Value::List(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((digits.len() as u16).to_be_bytes());
        b.extend(weight.to_be_bytes());
        b.extend(sign.to_be_bytes());
        b.extend(dscale.to_be_bytes());
        for d in digits {
            b.extend(d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_keep_every_digit() {
        // 12345678901234567890.123456789
        let raw = numeric_bytes(4, 0, 9, &[1234, 5678, 9012, 3456, 7890, 1234, 5678, 9000]);
        assert_eq!(
            numeric(&raw).unwrap(),
            Value::Decimal("12345678901234567890.123456789".into())
        );
        // -0.0012, scale 4
        let raw = numeric_bytes(-1, 0x4000, 4, &[12]);
        assert_eq!(numeric(&raw).unwrap(), Value::Decimal("-0.0012".into()));
        // 0.00 keeps its scale
        assert_eq!(
            numeric(&numeric_bytes(0, 0, 2, &[])).unwrap(),
            Value::Decimal("0.00".into())
        );
        // 10000 (weight 1, one digit group)
        assert_eq!(
            numeric(&numeric_bytes(1, 0, 0, &[1])).unwrap(),
            Value::Decimal("10000".into())
        );
        assert_eq!(
            numeric(&numeric_bytes(0, 0xC000, 0, &[])).unwrap(),
            Value::Text("NaN".into())
        );
        assert!(
            numeric(&[0, 1]).is_err(),
            "cut short is an error, not a panic"
        );
    }

    #[test]
    fn dates_and_times_read_like_postgres_prints_them() {
        assert_eq!(date(0), "2000-01-01");
        assert_eq!(date(-1), "1999-12-31");
        assert_eq!(date(60), "2000-03-01");
        assert_eq!(date(i32::MAX), "infinity");
        assert_eq!(date(-730_485), "0000-01-01");
        assert!(
            date(3_000_000).contains("beyond years"),
            "{}",
            date(3_000_000)
        );
        assert_eq!(timestamp(0, "Z"), "2000-01-01T00:00:00Z");
        assert_eq!(timestamp(-1, ""), "1999-12-31T23:59:59.999999");
        assert_eq!(
            timestamp(((9_132 * 86_400) + 3_723) * 1_000_000 + 500_000, "Z"),
            "2025-01-01T01:02:03.5Z"
        );
        assert_eq!(time_of_day(3_723_000_000), "01:02:03");
    }

    #[test]
    fn small_encodings() {
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
        assert_eq!(
            uuid(&[
                0x0f, 0x8f, 0xad, 0x5b, 0xd9, 0xcb, 0x46, 0x9f, 0xa1, 0x65, 0x70, 0x86, 0x77, 0x28,
                0x95, 0x0e
            ]),
            "0f8fad5b-d9cb-469f-a165-70867728950e"
        );
    }
}
