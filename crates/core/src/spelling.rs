//! "Did you mean": the known name nearest to a misspelled one.

/// Edit distance with adjacent transpositions (`fecth` is one edit from
/// `fetch`), for short names.
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows i-2, i-1 and i of the table
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut last: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (last[j - 1] + cost).min(last[j] + 1).min(row[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut last, row);
    }
    last[b.len()]
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
        assert_eq!(distance("fecth", "fetch"), 1);
        assert_eq!(nearest("fecth", ["fetch"]), Some("fetch"));
    }
}
