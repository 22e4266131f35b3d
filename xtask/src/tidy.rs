//! `cargo xtask tidy`: the checks rustfmt and clippy do not make, run as a
//! test too (`cargo test -p xtask`, so `cargo xtask test` runs it):
//!
//! - every Rust file starts with module docs (`//!`);
//! - no source file grows past [`FILE_BUDGET`] lines, but for the ones
//!   [`OVER_BUDGET`] names with their ceiling (a ratchet: a file that
//!   shrank must have its ceiling lowered, so the list only shrinks);
//! - no library gains a `Result<_, String>`: [`STRING_ERRORS`] holds the
//!   count each file had when the rule came, ratcheted the same way.
//!
//! - no import cycle between the modules of one crate: a file's top-level
//!   module (`src/a.rs`, `src/a/*.rs`) may name another with `crate::b`
//!   only if `b` does not, through any chain, name it back (tests aside).
//!
//! `cargo xtask tidy --report [DIR]` prints the largest files and functions
//! (of another checkout when DIR is given).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Lines a source file may have.
const FILE_BUDGET: usize = 800;

/// Files over the budget when it came, with the most lines they may have.
/// Split them, then take them off.
const OVER_BUDGET: &[(&str, usize)] = &[
    ("connectors/hl7v2/tests/fhir_converter.rs", 1297),
    ("connectors/postgres/src/lib.rs", 903),
    ("crates/hl7v2/src/fhir/datatypes.rs", 981),
    ("crates/runner/src/lib.rs", 864),
    ("crates/sandbox/src/bundle.rs", 852),
    ("crates/sandbox/tests/fhir.rs", 889),
    ("tests/e2e/postgres.rs", 820),
];

/// Library files with `Result<_, String>` signatures when the rule came,
/// and how many; a file may only go down. Binaries (runner, xtask, tests)
/// use anyhow and are not counted.
const STRING_ERRORS: &[(&str, usize)] = &[
    ("connectors/hl7v2/src/read.rs", 1),
    ("connectors/hl7v2/src/register.rs", 2),
    ("connectors/postgres/src/lib.rs", 4),
    ("connectors/postgres/src/tls.rs", 1),
    ("connectors/postgres/src/types.rs", 10),
    ("crates/core/src/planner.rs", 1),
    ("crates/core/src/registry.rs", 1),
    ("crates/hl7v2/src/lib.rs", 2),
    ("crates/http/src/auth.rs", 1),
    ("crates/http/src/resolve.rs", 1),
    ("crates/mapping/src/config.rs", 1),
    ("crates/mapping/src/stream.rs", 1),
    ("crates/mapping/src/template/mod.rs", 1),
    ("crates/mapping/src/template/render.rs", 1),
    ("crates/plugin-host/src/batch.rs", 4),
];

/// Directories holding libraries (for the `Result<_, String>` rule).
const LIBRARY_DIRS: &[&str] = &["crates", "connectors", "plugins"];
/// Crates that are binaries, whatever directory they sit in.
const BINARY_CRATES: &[&str] = &["crates/runner", "crates/sandbox/src/main.rs"];

pub fn tidy(args: &[String]) -> anyhow::Result<()> {
    let root = crate::root();
    if let Some(at) = args.iter().position(|a| a == "--report") {
        // `--report DIR`: another checkout (a before-and-after record)
        let dir = args.get(at + 1).map_or(root.clone(), PathBuf::from);
        print!("{}", report(&dir)?);
        return Ok(());
    }
    let mut problems = check(&root)?;
    problems.extend(stale_entries(&root));
    problems.extend(module_cycles(&root)?);
    if problems.is_empty() {
        println!("tidy: ok");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("tidy: {p}");
        }
        bail!("tidy: {} problem(s); see above", problems.len())
    }
}

/// Every tracked or new Rust file, relative to the root.
fn rust_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = std::process::Command::new("git")
        .args([
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "*.rs",
        ])
        .current_dir(root)
        .output()
        .context("tidy lists the files with git")?;
    if !output.status.success() {
        bail!("git ls-files failed: tidy runs in a git checkout");
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(PathBuf::from)
        .filter(|p| root.join(p).exists())
        .collect())
}

/// What is wrong, one line each.
pub fn check(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    for file in rust_files(root)? {
        let name = file.to_string_lossy().replace('\\', "/");
        let text =
            std::fs::read_to_string(root.join(&file)).with_context(|| format!("reading {name}"))?;
        if !text.trim_start().starts_with("//!") {
            problems.push(format!(
                "{name}: no module docs; start it with `//!` lines saying what it is for"
            ));
        }
        let lines = text.lines().count();
        let budget = OVER_BUDGET
            .iter()
            .find(|(f, _)| *f == name)
            .map_or(FILE_BUDGET, |(_, n)| *n);
        if lines > budget {
            problems.push(format!(
                "{name}: {lines} lines, over its budget of {budget}: split it by job"
            ));
        } else if budget > FILE_BUDGET && lines < budget {
            problems.push(if lines <= FILE_BUDGET {
                format!("{name}: {lines} lines, within budget: take it off OVER_BUDGET (xtask/src/tidy.rs)")
            } else {
                format!("{name}: {lines} lines: lower its ceiling in OVER_BUDGET (xtask/src/tidy.rs) to {lines}")
            });
        }
        if is_library(&name) {
            let count = string_errors(&text);
            let allowed = STRING_ERRORS
                .iter()
                .find(|(f, _)| *f == name)
                .map_or(0, |(_, n)| *n);
            if count > allowed {
                problems.push(format!(
                    "{name}: {count} `Result<_, String>` (allowed {allowed}): give the library a typed error (thiserror)"
                ));
            } else if count < allowed {
                problems.push(format!(
                    "{name}: {count} `Result<_, String>`: lower its count in STRING_ERRORS (xtask/src/tidy.rs) to {count}"
                ));
            }
        }
    }
    Ok(problems)
}

/// Import cycles between the top-level modules of each crate, one line per
/// cycle found.
fn module_cycles(root: &Path) -> anyhow::Result<Vec<String>> {
    use std::collections::{BTreeMap, BTreeSet};
    // crate source folder → top-level module → the modules it names
    let mut crates: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in rust_files(root)? {
        let name = file.to_string_lossy().replace('\\', "/");
        let Some((krate, rest)) = name.split_once("/src/") else {
            continue;
        };
        let module = rest
            .split('/')
            .next()
            .unwrap_or(rest)
            .trim_end_matches(".rs");
        if matches!(module, "lib" | "main") || rest.starts_with("bin/") {
            continue;
        }
        let text = std::fs::read_to_string(root.join(&file))?;
        let code = text.split("#[cfg(test)]").next().unwrap_or(&text);
        let named = crates
            .entry(krate.to_owned())
            .or_default()
            .entry(module.to_owned())
            .or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let after = &line[at + "crate::".len()..];
                let names: Vec<&str> = match after.strip_prefix('{') {
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap_or(""))
                        .collect(),
                    None => vec![
                        after
                            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .next()
                            .unwrap_or(""),
                    ],
                };
                named.extend(
                    names
                        .into_iter()
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned),
                );
            }
        }
    }
    let mut problems = Vec::new();
    for (krate, modules) in &crates {
        let edges = |m: &str| -> Vec<&str> {
            modules
                .get(m)
                .into_iter()
                .flatten()
                .map(String::as_str)
                .filter(|n| *n != m && modules.contains_key(*n))
                .collect()
        };
        let mut reported = BTreeSet::new();
        for start in modules.keys() {
            // a path back to `start`, by depth-first search
            let mut stack = vec![(start.as_str(), vec![start.as_str()])];
            let mut seen = BTreeSet::new();
            while let Some((at, path)) = stack.pop() {
                for next in edges(at) {
                    if next == start {
                        let mut cycle = path.clone();
                        cycle.sort_unstable();
                        if reported.insert(cycle) {
                            problems.push(format!(
                                "{krate}: modules import each other: {} -> {start}; move what both need below them",
                                path.join(" -> ")
                            ));
                        }
                    } else if seen.insert(next) {
                        let mut longer = path.clone();
                        longer.push(next);
                        stack.push((next, longer));
                    }
                }
            }
        }
    }
    Ok(problems)
}

/// Entries of the two lists whose files are gone.
fn stale_entries(root: &Path) -> Vec<String> {
    OVER_BUDGET
        .iter()
        .chain(STRING_ERRORS)
        .filter(|(f, _)| !root.join(f).exists())
        .map(|(f, _)| format!("{f}: no such file: take it off the lists in xtask/src/tidy.rs"))
        .collect()
}

fn is_library(name: &str) -> bool {
    LIBRARY_DIRS
        .iter()
        .any(|d| name.starts_with(&format!("{d}/")))
        && name.contains("/src/")
        && !BINARY_CRATES.iter().any(|b| name.starts_with(b))
        && !name.contains("/examples/")
}

/// `Result<…, String>` in signatures and types, outside tests.
fn string_errors(text: &str) -> usize {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .filter(|l| l.contains("Result<") && l.contains(", String>"))
        .count()
}

/// The largest files and functions, for the record of a clean-up.
fn report(root: &Path) -> anyhow::Result<String> {
    let mut files = Vec::new();
    let mut functions = Vec::new();
    for file in rust_files(root)? {
        let name = file.to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(root.join(&file))?;
        files.push((text.lines().count(), name.clone()));
        for (line, fn_name, len) in function_lengths(&text) {
            functions.push((len, format!("{name}:{line} {fn_name}")));
        }
    }
    files.sort_by(|a, b| b.cmp(a));
    functions.sort_by(|a, b| b.cmp(a));
    let mut out = String::new();
    let over = |n: usize| files.iter().filter(|(l, _)| *l > n).count();
    writeln!(out, "files over 800 lines: {}", over(800))?;
    for (lines, name) in files.iter().take(15) {
        writeln!(out, "{lines:>6}  {name}")?;
    }
    let long = |n: usize| functions.iter().filter(|(l, _)| *l > n).count();
    writeln!(
        out,
        "functions over 100 lines: {}, over 80: {}",
        long(100),
        long(80)
    )?;
    for (lines, name) in functions.iter().take(15) {
        writeln!(out, "{lines:>6}  {name}")?;
    }
    Ok(out)
}

/// `(line, name, length)` of every `fn` in rustfmt-formatted text: from
/// its `fn` line to the `}` at the same indentation.
fn function_lengths(text: &str) -> Vec<(usize, String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let Some(at) = trimmed.find("fn ") else {
            continue;
        };
        let head = &trimmed[..at];
        let is_item = head.split_whitespace().all(|w| {
            matches!(
                w,
                "pub" | "pub(crate)" | "pub(super)" | "async" | "const" | "unsafe" | "extern"
            ) || w.starts_with("pub(")
                || w.starts_with('"')
        });
        if !is_item || trimmed.ends_with(';') {
            continue;
        }
        let name: String = trimmed[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        let close = format!("{}}}", " ".repeat(indent));
        if let Some(end) = lines[i + 1..]
            .iter()
            .position(|l| l.starts_with(&close) && l[indent..].starts_with('}'))
        {
            out.push((i + 1, name, end + 2));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_is_tidy() {
        let root = crate::root();
        let mut problems = check(&root).unwrap();
        problems.extend(stale_entries(&root));
        problems.extend(module_cycles(&root).unwrap());
        assert!(problems.is_empty(), "tidy:\n{}", problems.join("\n"));
    }

    #[test]
    fn function_lengths_follow_rustfmt_layout() {
        let text = "//! x\nfn a() {\n    1;\n}\n\nimpl X {\n    pub fn b(\n        x: u8,\n    ) -> u8 {\n        x\n    }\n}\n";
        let found = function_lengths(text);
        assert_eq!(found, vec![(2, "a".to_owned(), 3), (7, "b".to_owned(), 5)]);
    }

    #[test]
    fn module_cycles_are_found_and_named() {
        let dir = std::env::temp_dir().join(format!("tidy-cycles-{}", std::process::id()));
        let src = dir.join("k/src");
        std::fs::create_dir_all(src.join("c")).unwrap();
        std::fs::write(src.join("lib.rs"), "//! k\nmod a;\nmod b;\nmod c;\n").unwrap();
        std::fs::write(src.join("a.rs"), "//! a\nuse crate::b::X;\n").unwrap();
        std::fs::write(src.join("b.rs"), "//! b\nuse crate::{c::Y, a};\n").unwrap();
        std::fs::write(src.join("c/mod.rs"), "//! c\n#[cfg(test)]\nuse crate::a;\n").unwrap();
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap()
        };
        git(&["init", "-q"]);
        let found = module_cycles(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("a -> b -> a"), "{found:?}");
    }

    #[test]
    fn string_errors_are_counted_outside_tests_only() {
        let text = "//! x\nfn a() -> Result<u8, String> { 1 }\n// Result<u8, String>\n#[cfg(test)]\nfn b() -> Result<u8, String> {}\n";
        assert_eq!(string_errors(text), 1);
    }
}
