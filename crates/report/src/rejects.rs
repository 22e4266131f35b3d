//! The rejects file read back as reasons with counts: each reason with
//! its quoted values and numbers folded (`"…"`, `#`), so that one mistake
//! on ten thousand records is one line, and the report quotes no value.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use serde::Serialize;

/// The most reasons the report lists.
const MOST_REASONS: usize = 20;
/// Longest reason shown, in characters.
const LONGEST_REASON: usize = 240;

/// One kind of reject.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Reason {
    pub stage: String,
    pub reason: String,
    pub count: u64,
    /// The first record with it: stream and provenance.
    pub first: String,
}

/// The rejects of a run by reason, the most frequent first (at most
/// [`MOST_REASONS`]), and how many rejects the file holds. A missing file
/// is no rejects; a line that does not read is counted under "unreadable".
pub fn reasons(path: &Path) -> std::io::Result<(Vec<Reason>, u64)> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut by_kind: HashMap<(String, String), Reason> = HashMap::new();
    let mut total = 0;
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        total += 1;
        let json: serde_json::Value =
            serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
        let stage = json["stage"].as_str().unwrap_or("unreadable").to_owned();
        let reason = fold(json["reason"].as_str().unwrap_or("(no reason)"));
        let first = format!(
            "{}: {}",
            json["stream"].as_str().unwrap_or("?"),
            provenance(&json["provenance"])
        );
        by_kind
            .entry((stage.clone(), reason.clone()))
            .or_insert(Reason {
                stage,
                reason,
                count: 0,
                first,
            })
            .count += 1;
    }
    let mut reasons: Vec<Reason> = by_kind.into_values().collect();
    reasons.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    reasons.truncate(MOST_REASONS);
    Ok((reasons, total))
}

/// A provenance as the rejects file writes it (an object or a string).
fn provenance(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(map) => map
            .values()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(":"),
        other => other.to_string(),
    }
}

/// Quoted values become `"…"`, runs of digits `#`; at most
/// [`LONGEST_REASON`] characters.
fn fold(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len().min(LONGEST_REASON));
    let mut chars = reason.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push_str("\"…\"");
                for d in chars.by_ref() {
                    if d == '"' {
                        break;
                    }
                }
            }
            d if d.is_ascii_digit() => {
                out.push('#');
                while chars.peek().is_some_and(char::is_ascii_digit) {
                    chars.next();
                }
            }
            other => out.push(other),
        }
        if out.chars().count() >= LONGEST_REASON {
            out.push('…');
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fold_values_and_count() {
        assert_eq!(
            fold(r#"HTTP 400: "bogus" is not a code of gender (line 12)"#),
            r#"HTTP #: "…" is not a code of gender (line #)"#
        );
        let dir = std::env::temp_dir().join(format!("fhirlift-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rejects.ndjson");
        std::fs::write(
            &path,
            concat!(
                r#"{"stream":"p","provenance":"p.csv:2","stage":"server","reason":"400: \"x\" is bad"}"#,
                "\n",
                r#"{"stream":"p","provenance":"p.csv:3","stage":"server","reason":"400: \"y\" is bad"}"#,
                "\n",
                r#"{"stream":"c","provenance":"c.csv:9","stage":"map","reason":"no row 7"}"#,
                "\n"
            ),
        )
        .unwrap();
        let (found, total) = reasons(&path).unwrap();
        assert_eq!(total, 3);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].count, 2);
        assert_eq!(found[0].first, "p: p.csv:2");
        assert_eq!(found[0].reason, "#: \"…\" is bad");
        assert!(reasons(&dir.join("none.ndjson")).unwrap().0.is_empty());
    }
}
