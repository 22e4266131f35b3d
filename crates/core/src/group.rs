//! Write groups: what one record turns into.
//!
//! A [`WriteGroup`] holds one or more idempotent write operations that must
//! succeed or fail together. Identity comes from each resource's first
//! identifier: `PUT Type?identifier=system|value`, never a bare POST unless
//! the mapping asks for one explicitly.

use std::sync::Arc;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::record::Provenance;

/// How an operation writes its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Method {
    /// Conditional update on the identifier: idempotent.
    Put,
    /// A plain create: only when the mapping says `write: create`.
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Put => "PUT",
            Method::Post => "POST",
        }
    }
}

/// A resource's identity: its first identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub resource_type: String,
    pub system: String,
    pub value: String,
}

impl Identity {
    /// The search that finds this resource: `Type?identifier=system|value`.
    pub fn search_url(&self) -> String {
        conditional_url(&self.resource_type, &self.system, &self.value)
    }
}

/// A FHIR resource as compact JSON text, exactly as it will be sent.
///
/// Mappers render straight to JSON bytes; nothing downstream re-serializes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceJson(String);

impl ResourceJson {
    /// Wraps text the caller guarantees is one compact JSON object (the
    /// template renderer's output); nothing checks it again downstream.
    #[doc(hidden)]
    pub fn from_rendered(json: String) -> ResourceJson {
        ResourceJson(json)
    }

    pub fn from_value(value: &serde_json::Value) -> ResourceJson {
        ResourceJson(value.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parsed, for the rare consumer that needs to look inside.
    pub fn to_value(&self) -> serde_json::Value {
        self.try_to_value().expect("ResourceJson holds valid JSON")
    }

    /// Parsed, or why not. The renderer writes only JSON that a reader
    /// holding numbers as 64-bit floats reads, so an error is a bug (a
    /// plugin's mapper, or a number fhirlift let through): the pipeline
    /// rejects the record with it instead of stopping the stream.
    pub fn try_to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// The first identifier's system and value, read without building a tree.
    pub fn first_identifier(&self) -> Option<(String, String)> {
        #[derive(serde::Deserialize)]
        struct Probe<'a> {
            #[serde(borrow, default)]
            identifier: Option<Vec<IdentifierProbe<'a>>>,
        }
        #[derive(serde::Deserialize)]
        struct IdentifierProbe<'a> {
            #[serde(borrow, default)]
            system: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow, default)]
            value: Option<std::borrow::Cow<'a, str>>,
        }
        let probe: Probe<'_> = serde_json::from_str(&self.0).ok()?;
        let first = probe.identifier?.into_iter().next()?;
        Some((first.system?.into_owned(), first.value?.into_owned()))
    }
}

/// One write.
#[derive(Debug, Clone)]
pub struct Operation {
    pub resource_type: String,
    pub method: Method,
    /// The request URL: `Type?identifier=…` for PUT, `Type` for POST.
    pub url: String,
    /// `urn:uuid:…` when other resources of the group point at this one.
    pub full_url: Option<String>,
    pub identity: Option<Identity>,
    pub resource: ResourceJson,
    /// Where the ledger says the target stores this identity, for a
    /// changed record (set by the pipeline; mappers leave `None`): the
    /// resolve strategy writes to it by id without searching first.
    pub stored: Option<StoredAt>,
    /// [`content_hash`] of the resource as mapped (set by the pipeline;
    /// mappers leave `None`): what the ledger keeps, even when the planner
    /// later rewrites references in the text (a split transaction).
    pub mapped_hash: Option<u128>,
    /// Where the mapping file wrote each element, when a template rendered
    /// it: validation issues name their mapping line with it.
    pub template: Option<std::sync::Arc<crate::pos::TemplatePlaces>>,
    /// An amendment (a merge's `active: false` and `link`, a deletion's
    /// `entered-in-error`): its elements go onto the resource the target
    /// stores ([`crate::content::amend`]) instead of replacing it, so that
    /// what other records wrote there is kept. Nothing stored: written as
    /// given. The sender reads the stored resource first, whatever the
    /// strategy.
    pub amends: bool,
}

/// A resource as the target acknowledged it: its server id and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAt {
    pub id: String,
    pub version: Option<String>,
}

impl Operation {
    /// An idempotent write: `PUT Type?identifier=system|value`.
    pub fn update_on(
        identity: Identity,
        full_url: Option<String>,
        resource: ResourceJson,
    ) -> Operation {
        Operation {
            resource_type: identity.resource_type.clone(),
            method: Method::Put,
            url: conditional_url(&identity.resource_type, &identity.system, &identity.value),
            full_url,
            identity: Some(identity),
            resource,
            stored: None,
            mapped_hash: None,
            template: None,
            amends: false,
        }
    }

    /// An amendment of the resource stored under `identity`
    /// ([`Operation::amends`]), written on it like [`Operation::update_on`].
    pub fn amend_on(
        identity: Identity,
        full_url: Option<String>,
        resource: ResourceJson,
    ) -> Operation {
        Operation {
            amends: true,
            ..Operation::update_on(identity, full_url, resource)
        }
    }
}

/// The hash of a resource's content as rendered (deterministic JSON): what
/// the ledger compares to tell an unchanged record without a request.
pub fn content_hash(json: &str) -> u128 {
    stable_hash128(&[json])
}

/// Everything one record emits.
///
/// No two of its operations may share an identity: the second would
/// overwrite the first on the server, silently ([`WriteGroup::shared_identity`]).
#[derive(Debug, Clone)]
pub struct WriteGroup {
    pub stream: Arc<str>,
    pub key: String,
    pub provenance: Provenance,
    /// All operations succeed or fail together (a transaction).
    pub atomic: bool,
    /// A transaction over the profile's size may be cut into several
    /// transactions, written one after the other (an HL7 message with 120
    /// OBX). Without it such a group is rejected.
    pub may_split: bool,
    /// The record's place in its stream's reading order (set by the
    /// pipeline; mappers leave 0): the ledger's low-water mark follows it.
    pub seq: u64,
    pub operations: Vec<Operation>,
}

impl WriteGroup {
    /// The first two operations (by index) written on one identity, if any.
    pub fn shared_identity(&self) -> Option<(usize, usize)> {
        let mut seen: std::collections::HashMap<&Identity, usize> = Default::default();
        for (i, op) in self.operations.iter().enumerate() {
            if let Some(id) = &op.identity
                && let Some(&first) = seen.get(id)
            {
                return Some((first, i));
            }
            if let Some(id) = &op.identity {
                seen.insert(id, i);
            }
        }
        None
    }
}

/// Escapes a token value for a FHIR search: `\` `|` `,` `$` get a backslash.
pub fn escape_search_value(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '|', ',', '$']) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        if matches!(c, '\\' | '|' | ',' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    std::borrow::Cow::Owned(out)
}

/// Percent-encodes what may not stand raw in a query parameter value.
///
/// Kept raw: unreserved characters and `:/@!'()*;?` (so systems stay
/// readable, as servers and the FHIR guides write them). `|` inside a part
/// is encoded; the one between system and value is added raw by
/// [`conditional_url`].
pub fn encode_query_part(part: &str, out: &mut String) {
    out.extend(utf8_percent_encode(part, QUERY_PART));
}

/// What [`encode_query_part`] encodes: everything but unreserved
/// characters and `:/@!'()*;?`.
const QUERY_PART: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'/')
    .remove(b'@')
    .remove(b'!')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b';')
    .remove(b'?');

/// `Type?identifier=system|value`, with the value escaped for search and
/// both parts URL-encoded.
pub fn conditional_url(resource_type: &str, system: &str, value: &str) -> String {
    let mut url = String::with_capacity(resource_type.len() + system.len() + value.len() + 16);
    url.push_str(resource_type);
    url.push_str("?identifier=");
    encode_query_part(system, &mut url);
    url.push('|');
    encode_query_part(&escape_search_value(value), &mut url);
    url
}

/// Reads `Type?identifier=system|value` (as [`conditional_url`] writes it,
/// or as a mapping spells a conditional reference) back into an identity.
/// Any other search, or several values, is `None`.
pub fn parse_conditional_url(url: &str) -> Option<Identity> {
    let (resource_type, query) = url.split_once('?')?;
    if resource_type.is_empty() || !resource_type.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let token = query.strip_prefix("identifier=")?;
    if token.contains('&') {
        return None;
    }
    let (system, value) = token.split_once('|')?;
    let system = percent_decode(system)?;
    let value = percent_decode(value)?;
    // an unescaped comma or bar means several values or a malformed token
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            ',' | '|' => return None,
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return None;
    }
    Some(Identity {
        resource_type: resource_type.to_owned(),
        system,
        value: out,
    })
}

/// Percent-decodes a URL part; `None` when the bytes are not UTF-8.
fn percent_decode(part: &str) -> Option<String> {
    percent_decode_str(part)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

/// A stable 128-bit hash (FNV-1a, finalised twice with splitmix64).
/// Stable across runs, builds and platforms: used for urn:uuid values and
/// to tell identities apart within a bundle; not for security.
pub fn stable_hash128(parts: &[&str]) -> u128 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.as_bytes() {
            h = (h ^ b as u64).wrapping_mul(PRIME);
        }
        // a separator no UTF-8 text contains
        h = (h ^ 0xff).wrapping_mul(PRIME);
    }
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    ((mix(h) as u128) << 64) | mix(h ^ 0x5bd1_e995_5bd1_e995) as u128
}

/// A deterministic `urn:uuid:` from the given parts (a version-8 UUID).
pub fn derived_urn_uuid(parts: &[&str]) -> String {
    let mut h = stable_hash128(parts);
    h = (h & !(0xf << 76)) | (0x8 << 76); // version 8
    h = (h & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
    let mut out = String::with_capacity(45);
    out.push_str("urn:uuid:");
    write_uuid(h, &mut out);
    out
}

/// Whether `s` is a UUID's text: hex digits of either case grouped
/// 8-4-4-4-12 (FHIR's `uuid` type wants them lower-case after `urn:uuid:`).
pub fn is_uuid_text(s: &str) -> bool {
    s.len() == 36
        && s.split('-').map(str::len).eq([8, 4, 4, 4, 12])
        && s.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
}

/// Appends a UUID's text: 32 lower-case hex digits grouped 8-4-4-4-12.
pub fn write_uuid(uuid: u128, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        out.push(HEX[((uuid >> (124 - 4 * i)) & 0xf) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_values_are_escaped_then_encoded() {
        assert_eq!(escape_search_value("B,1|x"), "B\\,1\\|x");
        assert_eq!(escape_search_value("a\\b$c"), "a\\\\b\\$c");
        assert_eq!(
            conditional_url("Patient", "http://sys.example/id", "P001"),
            "Patient?identifier=http://sys.example/id|P001"
        );
        assert_eq!(
            conditional_url("Patient", "urn:oid:1.2", "B,1|x y&z=Ü"),
            "Patient?identifier=urn:oid:1.2|B%5C%2C1%5C%7Cx%20y%26z%3D%C3%9C"
        );
    }

    #[test]
    fn conditional_urls_read_back_into_identities() {
        for (system, value) in [
            ("http://sys.example/id", "P001"),
            ("urn:oid:1.2", "B,1|x y&z=Ü"),
            ("http://s", "a\\b$c"),
        ] {
            let url = conditional_url("Patient", system, value);
            let id = parse_conditional_url(&url).unwrap_or_else(|| panic!("{url}"));
            assert_eq!(
                (
                    id.resource_type.as_str(),
                    id.system.as_str(),
                    id.value.as_str()
                ),
                ("Patient", system, value)
            );
        }
        assert_eq!(
            parse_conditional_url("Patient?identifier=s|a\\,b").map(|i| i.value),
            Some("a,b".into())
        );
        assert!(parse_conditional_url("Patient?identifier=s|a,s|b").is_none());
        assert!(parse_conditional_url("Patient?name=x").is_none());
        assert!(parse_conditional_url("Patient/123").is_none());
        assert!(parse_conditional_url("Patient?identifier=s|a&_count=1").is_none());
    }

    #[test]
    fn derived_uuids_are_stable_and_well_formed() {
        let a = derived_urn_uuid(&["encounters", "E001", "encounter"]);
        assert_eq!(a, derived_urn_uuid(&["encounters", "E001", "encounter"]));
        assert_ne!(a, derived_urn_uuid(&["encounters", "E002", "encounter"]));
        // parts are separated: ("ab","c") differs from ("a","bc")
        assert_ne!(
            derived_urn_uuid(&["ab", "c"]),
            derived_urn_uuid(&["a", "bc"])
        );
        let uuid = a.strip_prefix("urn:uuid:").unwrap();
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "8");
        assert!(matches!(&uuid[19..20], "8" | "9" | "a" | "b"));
    }
}
