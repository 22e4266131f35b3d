//! FHIR request URLs: `Type?identifier=system|value,…` with percent-encoding
//! and FHIR's backslash escapes, `_count`, `_offset` and `_summary=count`;
//! form-encoded bodies of `POST Type/_search`.

/// Percent-decodes a query component (`+` stays `+`; bytes that are not
/// UTF-8 become U+FFFD).
pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Splits at `sep` where it is not escaped by a backslash.
pub fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                parts.last_mut().expect("never empty").push('\\');
                parts.last_mut().expect("never empty").push(next);
            }
        } else if c == sep {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("never empty").push(c);
        }
    }
    parts
}

/// Removes FHIR search escapes (`\|` → `|`).
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Turns a form-encoded body (`application/x-www-form-urlencoded`, where `+`
/// is a space) into a query string with the same meaning.
pub fn form_to_query(body: &str) -> String {
    body.trim().replace('+', "%20")
}

/// The query without the parameters named (`_count`, `_offset`, …), for links.
pub fn without(query: &str, names: &[&str]) -> String {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            !names.contains(&percent_decode(name).as_str())
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// One token to search for: `system|value` (either may be empty; a system
/// with an empty value, `system|`, matches every identifier in the system).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub system: Option<String>,
    pub value: String,
}

/// The parameters of a search or conditional URL.
#[derive(Debug, Default)]
pub struct Search {
    pub identifiers: Vec<Token>,
    /// `_id=a,b`: server ids.
    pub ids: Vec<String>,
    pub count: Option<usize>,
    /// `_offset`: how many matches to skip (paging).
    pub offset: Option<usize>,
    pub summary_count: bool,
    /// Parameters this server does not support.
    pub unsupported: Vec<String>,
}

/// Parses `a=b&c=d` (already split from the path).
pub fn parse_search(query: &str) -> Search {
    let mut search = Search::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(raw);
        match percent_decode(name).as_str() {
            "identifier" => {
                for token in split_unescaped(&value, ',') {
                    let parts = split_unescaped(&token, '|');
                    let t = match parts.as_slice() {
                        [v] => Token {
                            system: None,
                            value: unescape(v),
                        },
                        [s, v, ..] => Token {
                            system: Some(unescape(s)),
                            value: unescape(v),
                        },
                        [] => continue,
                    };
                    search.identifiers.push(t);
                }
            }
            "_id" => search.ids.extend(
                value
                    .split(',')
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned),
            ),
            // which elements to return: a hint a server may ignore (this one does)
            "_elements" => {}
            "_count" => search.count = value.parse().ok(),
            "_offset" => search.offset = value.parse().ok(),
            "_summary" => search.summary_count = value == "count",
            other => search.unsupported.push(other.to_owned()),
        }
    }
    search
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_separators_stay_in_values() {
        let s = parse_search("identifier=http://s/id%7CB%5C%2C1%5C%7Cx,http://s/id|P2&_count=5");
        assert_eq!(
            s.identifiers,
            vec![
                Token {
                    system: Some("http://s/id".into()),
                    value: "B,1|x".into()
                },
                Token {
                    system: Some("http://s/id".into()),
                    value: "P2".into()
                },
            ]
        );
        assert_eq!(s.count, Some(5));
    }

    #[test]
    fn system_only_forms_and_links() {
        let s = parse_search("identifier=http://s/id%7C&_offset=40");
        assert_eq!(
            s.identifiers,
            vec![Token {
                system: Some("http://s/id".into()),
                value: String::new()
            }]
        );
        assert_eq!(s.offset, Some(40));
        assert_eq!(form_to_query("identifier=a+b%2B"), "identifier=a%20b%2B");
        assert_eq!(
            without(
                "identifier=x&_count=5&_o%66fset=3&_summary=count",
                &["_count", "_offset"]
            ),
            "identifier=x&_summary=count"
        );
    }
}
