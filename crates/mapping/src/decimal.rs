//! Exact decimals: source text to a FHIR `decimal` that keeps every digit.
//!
//! `| float` reads a number into an `f64`, which keeps about 15 significant
//! digits (a 17-digit latitude loses its last). `| decimal` checks that the
//! text is a decimal number and writes those very digits as the JSON
//! number: the template writer puts them in the rendered JSON unchanged
//! ([`DecimalDigits`] in expressions), never through `f64`.

use std::fmt;
use std::sync::Arc;

use minijinja::value::{Object, ObjectRepr, Value as Mj};

/// A decimal number as its digits, from `| decimal`: what a typed leaf
/// writes verbatim as a JSON number (and a text leaf as its digits).
#[derive(Debug, Clone)]
pub struct DecimalDigits(pub String);

impl Object for DecimalDigits {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Source text that is no decimal number, with what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecimalError(pub String);

/// The value as an expression sees it.
pub fn to_mj(digits: String) -> Mj {
    Mj::from_object(DecimalDigits(digits))
}

/// The digits of a FHIR `decimal` read from source text: an optional sign,
/// digits with an optional point and fraction, an optional exponent.
/// Surrounding spaces and a `+` sign are dropped, and leading zeros of the
/// integer part (`007.50` → `7.50`); the fraction's digits, trailing zeros
/// included, are kept (FHIR decimals carry their precision).
pub fn to_fhir_decimal(input: &str) -> Result<String, DecimalError> {
    let text = input.trim();
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    let (negative, body) = match unsigned.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, unsigned),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (integer, fraction) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        digits(e)
    });
    if !digits(integer) || !fraction.is_none_or(digits) || !exponent_ok {
        return Err(DecimalError(format!(
            "{text:?} is not a decimal number (digits, an optional point and fraction, an optional exponent); fix the source value, or convert it first (a decimal comma: `| replace(',', '.') | decimal`)"
        )));
    }
    let integer = integer.trim_start_matches('0');
    let mut out = String::with_capacity(text.len());
    if negative {
        out.push('-');
    }
    out.push_str(if integer.is_empty() { "0" } else { integer });
    if let Some(f) = fraction {
        out.push('.');
        out.push_str(f);
    }
    if let Some(e) = exponent {
        out.push('e');
        out.push_str(e);
    }
    if out == "-0" {
        out.remove(0);
    }
    // JSON readers, fhirlift's own and FHIR servers' (Medplum's is
    // JavaScript), hold a number as a 64-bit float: past its range the
    // number is lost (an error, an infinity, or a silent 0)
    let float: f64 = out.parse().unwrap_or(f64::INFINITY);
    let nonzero = mantissa.bytes().any(|b| matches!(b, b'1'..=b'9'));
    if !float.is_finite() || (float == 0.0 && nonzero) {
        return Err(DecimalError(format!(
            "{text:?} is beyond what a JSON number can carry to a server (a 64-bit float: about 1e-308 to 1.8e308); write it as text (a string element), or rescale it with its unit"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::to_fhir_decimal;

    #[test]
    fn digits_are_kept_exactly_and_bad_text_is_refused_with_what_to_do() {
        for (input, want) in [
            ("42.12345678901234567", "42.12345678901234567"),
            (" -71.06 ", "-71.06"),
            ("+5", "5"),
            ("007.50", "7.50"),
            ("0.000", "0.000"),
            ("1.5E-3", "1.5e-3"),
            ("-0", "0"),
        ] {
            assert_eq!(to_fhir_decimal(input).as_deref(), Ok(want), "{input}");
        }
        for bad in ["", "1,5", "12 mg", ".5", "5.", "1e", "NaN", "--1"] {
            let e = to_fhir_decimal(bad).unwrap_err().0;
            assert!(e.contains("is not a decimal number"), "{bad}: {e}");
        }
    }

    /// Regression: `1e999` passed as digits, and the JSON reader of the
    /// validation step (serde_json) refused the rendered resource: the
    /// mapping thread panicked and the stream stopped. `1e-999` would have
    /// reached a server as 0.
    #[test]
    fn numbers_no_json_reader_can_carry_are_refused() {
        for bad in ["1e999", "-1e309", "1e-999", "0.1e-400"] {
            let e = to_fhir_decimal(bad).unwrap_err().0;
            assert!(
                e.contains("beyond what a JSON number can carry"),
                "{bad}: {e}"
            );
        }
        let huge = format!("1{}", "0".repeat(300));
        for fine in ["0e-999", "0.000e999", "1.7e308", "2.2e-308", huge.as_str()] {
            assert_eq!(to_fhir_decimal(fine).as_deref(), Ok(fine), "{fine}");
        }
    }
}
