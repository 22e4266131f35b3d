//! "Did you mean": the known name nearest to a misspelled one.

/// Levenshtein distance, for short names.
pub fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

/// The candidate nearest to `name`, if it is close: at most a third of the
/// letters differ, or (for names of 4 letters or more) one contains the
/// other (`regex_replace` → `replace`).
pub fn nearest<'c>(name: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| {
            let d = distance(name, c);
            let related = c.len() >= 4 && name.len() >= 4 && (name.contains(c) || c.contains(name));
            (if related { d.min(1) } else { d }, c)
        })
        .filter(|&(d, c)| d <= (name.len().max(c.len()) / 3).max(1))
        .min()
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_names_are_found_and_far_ones_are_not() {
        assert_eq!(nearest("emitt", ["from", "emit", "key"]), Some("emit"));
        assert_eq!(nearest("lookups", ["lookup", "after"]), Some("lookup"));
        assert_eq!(nearest("decimal", ["d", "e", "upper"]), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
