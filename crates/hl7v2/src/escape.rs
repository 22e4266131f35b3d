//! HL7 escape sequences: `\F\ \S\ \T\ \R\ \E\ \Xhh…\ \.br\` and the `""`
//! explicit null.

use crate::Delimiters;

/// Decodes a raw value. `None` is the explicit null `""`; escapes other
/// than the ones above (`\H\`, `\Zxx\`, `\.sp\`, …) are kept as written,
/// and so is an escape character with no closing one.
pub fn decode(raw: &str, d: &Delimiters) -> Option<String> {
    if raw == "\"\"" {
        return None;
    }
    let Some(esc) = d.escape else {
        return Some(raw.to_owned());
    };
    if !raw.contains(esc) {
        return Some(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find(esc) {
        out.push_str(&rest[..start]);
        let after = &rest[start + esc.len_utf8()..];
        let Some(end) = after.find(esc) else {
            // no closing escape: the rest is text
            out.push_str(&rest[start..]);
            return Some(out);
        };
        let seq = &after[..end];
        match seq {
            "F" => out.push(d.field),
            "S" => out.push(d.component),
            "R" => out.push(d.repetition),
            "E" => out.push(esc),
            "T" => match d.subcomponent {
                Some(t) => out.push(t),
                None => keep(&mut out, esc, seq),
            },
            ".br" => out.push('\n'),
            _ if seq.len() > 1 && seq.starts_with('X') => match hex(&seq[1..]) {
                Some(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => out.push_str(&text),
                    Err(e) => out.extend(e.into_bytes().iter().map(|&b| b as char)),
                },
                None => keep(&mut out, esc, seq),
            },
            _ => keep(&mut out, esc, seq),
        }
        rest = &after[end + esc.len_utf8()..];
    }
    out.push_str(rest);
    Some(out)
}

fn keep(out: &mut String, esc: char, seq: &str) {
    out.push(esc);
    out.push_str(seq);
    out.push(esc);
}

fn hex(digits: &str) -> Option<Vec<u8>> {
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(digits.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Encodes text so that it reads back as itself: separators and the
/// escape character escaped, line ends as `\.br\` (LF) and `\X0D\` (CR).
pub fn encode(text: &str, d: &Delimiters) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let esc = d.escape.unwrap_or('\\');
    let seq = |out: &mut String, s: &str| {
        out.push(esc);
        out.push_str(s);
        out.push(esc);
    };
    for c in text.chars() {
        if Some(c) == d.escape {
            seq(&mut out, "E");
        } else if c == d.field {
            seq(&mut out, "F");
        } else if c == d.component {
            seq(&mut out, "S");
        } else if c == d.repetition {
            seq(&mut out, "R");
        } else if Some(c) == d.subcomponent {
            seq(&mut out, "T");
        } else if c == '\n' {
            seq(&mut out, ".br");
        } else if c == '\r' {
            seq(&mut out, "X0D");
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_around_non_ascii_text_stay_intact() {
        let d = Delimiters::default();
        assert_eq!(decode("Müller\\S\\Jörg", &d).unwrap(), "Müller^Jörg");
        assert_eq!(
            decode("a\\F\\b\\R\\c\\T\\d\\E\\e\\.br\\f", &d).unwrap(),
            "a|b~c&d\\e\nf"
        );
        assert_eq!(decode("\\XC3BC\\ber", &d).unwrap(), "über");
        assert_eq!(decode("\\H\\bold\\N\\", &d).unwrap(), "\\H\\bold\\N\\");
        assert_eq!(decode("trailing \\", &d).unwrap(), "trailing \\");
        assert_eq!(decode("\"\"", &d), None);
        assert_eq!(decode("", &d).unwrap(), "");
    }
}
