//! Filter names, checked when a mapping compiles.
//!
//! minijinja looks a filter up only when it runs, so a misspelled filter
//! (`| decmal`, `| regex_replace`) would pass `check` and reject every
//! record at run time. [`unknown_filters`] reads the names after each `|`
//! of an expression (outside string literals) and asks the environment
//! whether it knows each one, once per name; an unknown one comes back
//! with the nearest known name, if one is close.

use std::collections::HashMap;
use std::sync::Mutex;

use minijinja::{Environment, ErrorKind};

/// Filter names minijinja may know (its `builtins`), and ours: the
/// candidates for "did you mean". Only those the environment really knows
/// are offered.
const CANDIDATES: &[&str] = &[
    "abs",
    "attr",
    "batch",
    "bool",
    "capitalize",
    "chain",
    "count",
    "d",
    "default",
    "dictsort",
    "e",
    "escape",
    "first",
    "float",
    "groupby",
    "indent",
    "int",
    "items",
    "join",
    "last",
    "length",
    "lines",
    "list",
    "lower",
    "map",
    "max",
    "min",
    "pprint",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "safe",
    "select",
    "selectattr",
    "slice",
    "sort",
    "split",
    "string",
    "sum",
    "title",
    "tojson",
    "trim",
    "unique",
    "upper",
    "urlencode",
    "zip",
    "code",
    "decimal",
    "fhir_date",
    "fhir_datetime",
];

/// Whether `env` has a filter called `name` (cached per name).
fn knows(env: &Environment<'static>, name: &str) -> bool {
    static KNOWN: Mutex<Option<HashMap<String, bool>>> = Mutex::new(None);
    let mut cache = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(&known) = cache.get(name) {
        return known;
    }
    // A known filter may fail on this input (wrong arguments): only an
    // unknown filter fails with UnknownFilter.
    let known = match env.compile_expression(&format!("x | {name}")) {
        Ok(expr) => !matches!(
            expr.eval(minijinja::context! { x => "" }),
            Err(e) if e.kind() == ErrorKind::UnknownFilter
        ),
        Err(_) => true,
    };
    cache.insert(name.to_owned(), known);
    known
}

/// The filter names used in `expr`: each identifier after a `|` outside
/// string literals.
fn filter_names(expr: &str) -> Vec<&str> {
    let bytes = expr.as_bytes();
    let mut names = Vec::new();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'\'' | b'"' => quote = Some(c),
            b'|' => {
                let mut start = i + 1;
                while start < bytes.len() && bytes[start].is_ascii_whitespace() {
                    start += 1;
                }
                let mut end = start;
                while end < bytes.len()
                    && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_')
                {
                    end += 1;
                }
                if end > start {
                    names.push(&expr[start..end]);
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// The known filter nearest to `name`, if it is close.
fn nearest(env: &Environment<'static>, name: &str) -> Option<&'static str> {
    fhirlift_core::spelling::nearest(name, CANDIDATES.iter().copied().filter(|c| knows(env, c)))
}

/// Each filter `expr` uses that `env` does not know, with the nearest
/// known name (if any), in order of use, once each.
pub(crate) fn unknown_filters(
    env: &Environment<'static>,
    expr: &str,
) -> Vec<(String, Option<&'static str>)> {
    let mut unknown: Vec<(String, Option<&'static str>)> = Vec::new();
    for name in filter_names(expr) {
        if !knows(env, name) && !unknown.iter().any(|(n, _)| n == name) {
            unknown.push((name.to_owned(), nearest(env, name)));
        }
    }
    unknown
}

/// The error text for an unknown filter.
pub(crate) fn unknown_filter_message(name: &str, nearest: Option<&str>) -> String {
    match nearest {
        Some(n) => format!("unknown filter {name:?}: did you mean {n:?}?"),
        None => format!(
            "unknown filter {name:?}: the filters are minijinja's built-ins and code, \
             fhir_date, fhir_datetime"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> &'static Environment<'static> {
        static ENV: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
        ENV.get_or_init(crate::functions::environment)
    }

    #[test]
    fn misspelled_filters_are_named_with_the_nearest_known_one() {
        let found = unknown_filters(env(), "amount | decmal | trim | uper | checksum");
        assert_eq!(
            found,
            [
                ("decmal".to_owned(), Some("decimal")),
                ("uper".to_owned(), Some("upper")),
                ("checksum".to_owned(), None)
            ]
        );
        let found = unknown_filters(env(), "x | regex_replace('a', 'b')");
        assert_eq!(found, [("regex_replace".to_owned(), Some("replace"))]);
        let found = unknown_filters(env(), "x | fhir_dat");
        assert_eq!(found, [("fhir_dat".to_owned(), Some("fhir_date"))]);
    }

    #[test]
    fn known_filters_and_bars_in_strings_pass() {
        assert!(unknown_filters(env(), "x | default('a|b') | upper | code(M='male')").is_empty());
        assert!(unknown_filters(env(), "'a | nothing'").is_empty());
    }
}
