//! Terser-style paths: `PID-5`, `PID-5.1`, `PID-3(2).4.1`, `OBX-5`.

/// A path into a segment: field, optional repetition (1-based),
/// component and subcomponent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub segment: String,
    pub field: usize,
    pub repetition: Option<usize>,
    pub component: Option<usize>,
    pub subcomponent: Option<usize>,
}

/// A path that does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path:?} is not an HL7 path ({why}); write it like PID-5.1 or PID-3(2).4.1")]
pub struct PathError {
    pub path: String,
    pub why: &'static str,
}

impl Path {
    pub fn parse(text: &str) -> Result<Path, PathError> {
        let bad = |why| PathError {
            path: text.to_owned(),
            why,
        };
        let (segment, rest) = text
            .split_once('-')
            .ok_or_else(|| bad("no '-' after the segment"))?;
        if segment.len() != 3
            || !segment
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(bad("a segment name is three capitals or digits"));
        }
        let (field_part, parts) = match rest.split_once('.') {
            Some((f, p)) => (f, Some(p)),
            None => (rest, None),
        };
        let (field, repetition) = match field_part.split_once(['(', '[']) {
            Some((f, r)) => {
                let r = r
                    .strip_suffix([')', ']'])
                    .ok_or_else(|| bad("an unclosed repetition"))?;
                (
                    f,
                    Some(number(r).ok_or_else(|| bad("a repetition is a number from 1"))?),
                )
            }
            None => (field_part, None),
        };
        let field = number(field).ok_or_else(|| bad("a field is a number from 1"))?;
        let mut component = None;
        let mut subcomponent = None;
        if let Some(parts) = parts {
            let mut it = parts.split('.');
            component = Some(
                it.next()
                    .and_then(number)
                    .ok_or_else(|| bad("a component is a number from 1"))?,
            );
            if let Some(s) = it.next() {
                subcomponent =
                    Some(number(s).ok_or_else(|| bad("a subcomponent is a number from 1"))?);
            }
            if it.next().is_some() {
                return Err(bad("too many parts"));
            }
        }
        Ok(Path {
            segment: segment.to_owned(),
            field,
            repetition,
            component,
            subcomponent,
        })
    }
}

fn number(s: &str) -> Option<usize> {
    s.parse::<usize>().ok().filter(|&n| n >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_like_terser() {
        let p = Path::parse("PID-3(2).4.1").unwrap();
        assert_eq!(
            (
                p.segment.as_str(),
                p.field,
                p.repetition,
                p.component,
                p.subcomponent
            ),
            ("PID", 3, Some(2), Some(4), Some(1))
        );
        assert_eq!(Path::parse("OBX-5").unwrap().component, None);
        for bad in [
            "PID",
            "PID-0",
            "pid-5",
            "PID-5.0",
            "PID-3(2.1",
            "PID-1.2.3.4",
        ] {
            assert!(Path::parse(bad).is_err(), "{bad}");
        }
    }
}
