//! HL7 v2 datatypes as FHIR R4 JSON (`serde_json::Value`).
//!
//! The building blocks the message maps use (mapping sheet
//! `HL7V2-TO-FHIR.md`, sections 2, 3, 4 and 7):
//! - [`Composite`] reads the components and subcomponents of one field
//!   repetition, escapes resolved, `""` (the explicit null) as absent.
//! - [`datetime`], [`date`], [`instant`], [`time`]: DTM / TS / DT / TM →
//!   FHIR `dateTime`, `date`, `instant`, `time`, with a configured
//!   [`Zone`](crate::Zone) for values written without an offset.
//! - datatypes: CX, EI, XPN, XAD, XTN, CWE, SN, NM → Identifier, HumanName,
//!   Address, ContactPoint, CodeableConcept, Quantity/Range/Ratio.
//! - [`tables`]: the v2 code tables (0001, 0002, 0004, …) → FHIR codes.
//!
//! Nothing here panics, whatever the input: a value that does not read is
//! `None` (or a [`DateError`] for dates), and the caller decides whether
//! to warn.

mod coding;
mod datatypes;
mod dtm;
pub mod tables;

pub use coding::*;
pub use datatypes::*;
pub use dtm::*;

use crate::{Delimiters, decode};

/// Reads one field repetition's components: raw = the repetition as written
/// (escaped).
#[derive(Debug, Clone, Copy)]
pub struct Composite<'a> {
    raw: &'a str,
    d: Delimiters,
}

impl<'a> Composite<'a> {
    pub fn new(raw: &'a str, d: &Delimiters) -> Composite<'a> {
        Composite { raw, d: *d }
    }

    /// Component `n` (1-based), decoded (escapes resolved); `None` when
    /// empty, blank, made of empty subcomponents only, or the explicit null
    /// `""`. The text is not trimmed.
    pub fn get(&self, n: usize) -> Option<String> {
        let component = self.raw(n)?;
        if self.subcomponents(component).all(|s| self.blank(s)) {
            return None;
        }
        decode(component, &self.d).filter(|v| !v.trim().is_empty())
    }

    /// Subcomponent `s` (1-based) of component `n`, decoded; `None` when
    /// empty, blank or `""`. Without a declared subcomponent separator the
    /// whole component is subcomponent 1.
    pub fn sub(&self, n: usize, s: usize) -> Option<String> {
        let component = self.raw(n)?;
        let part = self.subcomponents(component).nth(s.checked_sub(1)?)?;
        decode(part, &self.d).filter(|v| !v.trim().is_empty())
    }

    /// Component `n` as written (for HD parts that use subcomponents);
    /// `None` when absent or empty.
    pub fn raw(&self, n: usize) -> Option<&'a str> {
        self.raw
            .split(self.d.component)
            .nth(n.checked_sub(1)?)
            .filter(|c| !c.is_empty())
    }

    /// True when every component (and subcomponent) is empty, blank or
    /// `""`.
    pub fn is_empty(&self) -> bool {
        self.raw
            .split(self.d.component)
            .all(|c| self.subcomponents(c).all(|s| self.blank(s)))
    }

    /// The repetition as written.
    pub fn as_raw(&self) -> &'a str {
        self.raw
    }

    fn subcomponents(&self, component: &'a str) -> impl Iterator<Item = &'a str> + use<'a> {
        let sep = self.d.subcomponent;
        let mut whole = Some(component);
        let mut split = sep.map(|c| component.split(c));
        std::iter::from_fn(move || match split.as_mut() {
            Some(it) => it.next(),
            None => whole.take(),
        })
    }

    fn blank(&self, raw: &str) -> bool {
        // without an escape, nothing to decode: no allocation
        if self.d.escape.is_none_or(|e| !raw.contains(e)) {
            return raw == "\"\"" || raw.trim().is_empty();
        }
        decode(raw, &self.d).is_none_or(|v| v.trim().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn components_and_subcomponents() {
        let d = Delimiters::default();
        let c = Composite::new(
            "PATID1234^5^M11^test1&2.16.1&HCD^MR^GOOD HEALTH HOSPITAL",
            &d,
        );
        assert_eq!(c.get(1).as_deref(), Some("PATID1234"));
        assert_eq!(c.get(4).as_deref(), Some("test1&2.16.1&HCD"));
        assert_eq!(c.raw(4), Some("test1&2.16.1&HCD"));
        assert_eq!(c.sub(4, 2).as_deref(), Some("2.16.1"));
        assert_eq!(c.sub(4, 3).as_deref(), Some("HCD"));
        assert_eq!(c.sub(4, 4), None);
        assert_eq!(c.sub(1, 1).as_deref(), Some("PATID1234"));
        assert_eq!(c.get(6).as_deref(), Some("GOOD HEALTH HOSPITAL"));
        assert_eq!(c.get(7), None);
        assert_eq!(c.get(0), None);
        assert_eq!(c.raw(0), None);
        assert_eq!(c.sub(4, 0), None);
        assert!(!c.is_empty());
    }

    #[test]
    fn non_ascii_text_and_escapes() {
        let d = Delimiters::default();
        let c = Composite::new("Müller\\S\\Jörg^Zoë\\T\\Ünal^Straße \\F\\ 5", &d);
        assert_eq!(c.get(1).as_deref(), Some("Müller^Jörg"));
        // an escaped subcomponent separator is text, not a separator
        assert_eq!(c.get(2).as_deref(), Some("Zoë&Ünal"));
        assert_eq!(c.sub(2, 1).as_deref(), Some("Zoë&Ünal"));
        assert_eq!(c.get(3).as_deref(), Some("Straße | 5"));
        let x = Composite::new("\\XC3BC\\ber", &d);
        assert_eq!(x.get(1).as_deref(), Some("über"));
    }

    #[test]
    fn explicit_null_and_blank_parts() {
        let d = Delimiters::default();
        let c = Composite::new("\"\"^ ^&&^a&\"\"", &d);
        assert_eq!(c.get(1), None);
        assert_eq!(c.get(2), None);
        assert_eq!(c.get(3), None);
        assert_eq!(c.get(4).as_deref(), Some("a&\"\""));
        assert_eq!(c.sub(4, 1).as_deref(), Some("a"));
        assert_eq!(c.sub(4, 2), None);
        assert!(!c.is_empty());
        assert!(Composite::new("\"\"", &d).is_empty());
        assert!(Composite::new("^^&^ ", &d).is_empty());
        assert!(Composite::new("", &d).is_empty());
    }

    #[test]
    fn other_delimiters() {
        let d = Delimiters {
            field: '!',
            component: '$',
            repetition: '*',
            escape: Some('/'),
            subcomponent: Some('%'),
            truncation: None,
        };
        let c = Composite::new("a/S/b$x%y", &d);
        assert_eq!(c.get(1).as_deref(), Some("a$b"));
        assert_eq!(c.sub(2, 2).as_deref(), Some("y"));
        let plain = Delimiters {
            subcomponent: None,
            ..Delimiters::default()
        };
        let c = Composite::new("a&b^c", &plain);
        assert_eq!(c.sub(1, 1).as_deref(), Some("a&b"));
        assert_eq!(c.sub(1, 2), None);
    }

    proptest! {
        #[test]
        fn composite_never_panics(raw in "\\PC*", n in 0usize..20, s in 0usize..6) {
            let d = Delimiters::default();
            let c = Composite::new(&raw, &d);
            let _ = (c.get(n), c.sub(n, s), c.raw(n), c.is_empty());
        }
    }
}
