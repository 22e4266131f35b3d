//! A YAML tree that remembers where each node was written.
//!
//! Mapping files are read into [`Node`]s (via serde-saphyr's `Spanned`) so
//! that every later error, from a misspelt key to a failing expression, can
//! point at `file:line` in the mapping.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use fhirlift_core::Pos;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A YAML value with the position of every node.
#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

/// The shape of a YAML node.
#[derive(Debug, Clone)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
    Seq(Vec<Node>),
    /// Keys in file order, each with its own position.
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value under `key` in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// What kind of node this is, in words, for error messages.
    pub fn describe(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Integer(_) | NodeKind::Float(_) => "a number",
            NodeKind::String(_) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    /// The node as plain JSON (positions dropped), e.g. for connector settings.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.kind {
            NodeKind::Null => serde_json::Value::Null,
            NodeKind::Bool(b) => serde_json::Value::Bool(*b),
            NodeKind::Integer(i) => serde_json::Value::from(*i),
            NodeKind::Float(f) => serde_json::Value::from(*f),
            NodeKind::String(s) => serde_json::Value::String(s.clone()),
            NodeKind::Seq(items) => items.iter().map(Node::to_json).collect(),
            NodeKind::Map(entries) => entries
                .iter()
                .map(|(k, v)| (k.key_text(), v.to_json()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }

    /// A mapping key as text (YAML allows non-string keys; we print them).
    pub fn key_text(&self) -> String {
        match &self.kind {
            NodeKind::String(s) => s.clone(),
            NodeKind::Integer(i) => i.to_string(),
            NodeKind::Float(f) => f.to_string(),
            NodeKind::Bool(b) => b.to_string(),
            NodeKind::Null => "null".into(),
            _ => self.to_json().to_string(),
        }
    }
}

/// A YAML file that could not be read as a tree.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct YamlError {
    pub file: String,
    pub message: String,
}

/// Parses YAML text into a positioned tree; `file` names it in positions.
pub fn parse(file: &Path, text: &str) -> Result<Node, YamlError> {
    let spanned: Spanned<RawNode> = serde_saphyr::from_str(text).map_err(|e| YamlError {
        file: file.display().to_string(),
        message: in_our_words(&e.to_string(), &file.display().to_string()),
    })?;
    let name: Arc<str> = Arc::from(file.display().to_string());
    Ok(convert(spanned, &name))
}

/// The YAML library's message, in words the user can act on: the snippet
/// names the file (not `<input>`), and a duplicate key says what to do
/// rather than naming a library option.
fn in_our_words(message: &str, file: &str) -> String {
    let message = message
        .replace("<input>", file)
        .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    let first = message.lines().next().unwrap_or_default();
    let Some(at) = first.find("duplicate mapping key: ") else {
        return message;
    };
    let key = first[at + "duplicate mapping key: ".len()..]
        .split(',')
        .next()
        .unwrap_or_default()
        .trim();
    let place = first[..at]
        .trim_start_matches("error: ")
        .trim_end_matches([' ', ':']);
    let rest: Vec<&str> = message.lines().skip(1).collect();
    format!(
        "{place}: the key `{key}` is written twice in one mapping; YAML keeps only one of \
         them, so fhirlift refuses the file rather than guess: remove or rename one\n{}",
        rest.join("\n")
    )
}

fn convert(spanned: Spanned<RawNode>, file: &Arc<str>) -> Node {
    let pos = Pos {
        file: file.clone(),
        line: spanned.referenced.line() as u32,
        column: spanned.referenced.column() as u32,
    };
    let kind = match spanned.value {
        RawNode::Null => NodeKind::Null,
        RawNode::Bool(b) => NodeKind::Bool(b),
        RawNode::Integer(i) => NodeKind::Integer(i),
        RawNode::Float(f) => NodeKind::Float(f),
        RawNode::String(s) => NodeKind::String(s),
        RawNode::Seq(items) => NodeKind::Seq(items.into_iter().map(|n| convert(n, file)).collect()),
        RawNode::Map(entries) => NodeKind::Map(
            entries
                .into_iter()
                .map(|(k, v)| (convert(k, file), convert(v, file)))
                .collect(),
        ),
    };
    Node { pos, kind }
}

/// The tree as serde sees it; children carry their spans.
enum RawNode {
    Null,
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
    Seq(Vec<Spanned<RawNode>>),
    Map(Vec<(Spanned<RawNode>, Spanned<RawNode>)>),
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawNodeVisitor)
    }
}

struct RawNodeVisitor;

impl<'de> Visitor<'de> for RawNodeVisitor {
    type Value = RawNode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawNode, D::Error> {
        RawNode::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawNode, E> {
        Ok(RawNode::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawNode, E> {
        Ok(RawNode::Integer(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawNode, E> {
        match i64::try_from(v) {
            Ok(i) => Ok(RawNode::Integer(i)),
            Err(_) => Ok(RawNode::Float(v as f64)),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawNode, E> {
        Ok(RawNode::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawNode, E> {
        Ok(RawNode::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<RawNode, E> {
        Ok(RawNode::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<RawNode>>()? {
            items.push(item);
        }
        Ok(RawNode::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNode, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<RawNode>>()? {
            let value = map.next_value::<Spanned<RawNode>>()?;
            entries.push((key, value));
        }
        Ok(RawNode::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_key_is_named_with_what_to_do() {
        let err = parse(Path::new("m.yaml"), "a: 1\nb:\n  c: 2\n  c: 3\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("m.yaml: line 4 column 3: the key `c` is written twice"),
            "{text:?}"
        );
        assert!(!text.contains("DuplicateKeyPolicy"), "{text}");
        assert!(!text.contains("<input>"), "{text}");
    }

    #[test]
    fn positions_point_at_the_line_of_each_leaf() {
        let text = "streams:\n  patients:\n    from: p.csv\n    emit:\n      - resourceType: Patient\n        gender: \"{{ g }}\"\n";
        let root = parse(Path::new("m.yaml"), text).unwrap();
        let emit = root
            .get("streams")
            .unwrap()
            .get("patients")
            .unwrap()
            .get("emit")
            .unwrap();
        let NodeKind::Seq(items) = &emit.kind else {
            panic!("emit is a list")
        };
        let gender = items[0].get("gender").unwrap();
        assert_eq!(gender.as_str(), Some("{{ g }}"));
        assert_eq!(gender.pos.line, 6);
        assert_eq!(gender.pos.to_string(), "m.yaml:6:17");
    }

    #[test]
    fn broken_yaml_is_an_error_not_a_panic() {
        let err = parse(Path::new("bad.yaml"), "a: [1, 2\nb: {").unwrap_err();
        assert!(err.to_string().starts_with("bad.yaml:"), "{err}");
    }
}
