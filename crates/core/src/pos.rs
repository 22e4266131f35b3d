//! Places in a mapping file, quoted by `check`, by every error about a
//! mapping line and by validation issues ([`TemplatePlaces`]).

use std::fmt;
use std::sync::Arc;

/// A place in a mapping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pos {
    pub file: Arc<str>,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Where a mapping's template wrote each element of the resources it
/// renders: what points a validation issue at its mapping line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplatePlaces {
    /// The template itself (its emit entry).
    pub entry: Pos,
    /// Element paths below the resource type (`name[0].given`), sorted,
    /// each with the place that writes it.
    pub elements: Vec<(String, Pos)>,
}

impl TemplatePlaces {
    /// The nearest place that writes the element at a FHIRPath-style
    /// `location` (`Patient.name[0].given[1]`; its first step, the type,
    /// is ignored): the element itself, else its nearest written parent,
    /// else the entry.
    pub fn place_of(&self, location: &str) -> &Pos {
        let start = location.find(['.', '[']).unwrap_or(location.len());
        let mut path = location[start..]
            .strip_prefix('.')
            .unwrap_or(&location[start..]);
        while !path.is_empty() {
            if let Ok(i) = self
                .elements
                .binary_search_by(|(p, _)| p.as_str().cmp(path))
            {
                return &self.elements[i].1;
            }
            let cut = path.rfind(['.', '[']).unwrap_or(0);
            path = &path[..cut];
        }
        &self.entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u32) -> Pos {
        Pos {
            file: "m.yaml".into(),
            line,
            column: 1,
        }
    }

    #[test]
    fn an_element_is_placed_at_itself_or_its_nearest_written_parent() {
        let mut elements = vec![
            ("name".to_owned(), at(3)),
            ("name[0]".to_owned(), at(4)),
            ("name[0].given".to_owned(), at(5)),
            ("resourceType".to_owned(), at(2)),
        ];
        elements.sort_by(|a, b| a.0.cmp(&b.0));
        let places = TemplatePlaces {
            entry: at(1),
            elements,
        };
        let line = |location: &str| places.place_of(location).line;
        assert_eq!(line("Patient.name[0].given[1]"), 5);
        assert_eq!(line("Patient.name[0].family"), 4);
        assert_eq!(line("Patient.name[2]"), 3);
        assert_eq!(line("resource.resourceType"), 2);
        assert_eq!(line("Patient.gender"), 1);
        assert_eq!(line("Patient"), 1);
        assert_eq!(line(""), 1);
    }
}
