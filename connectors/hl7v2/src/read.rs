//! Reading archives: files of messages, streamed in blocks.
//!
//! A stream's `from:` is a file, a folder (every file in it and below,
//! in path order, hidden ones left out), a file pattern with `*` in its
//! last part (`archive/*.hl7`), or the same below a folder at any depth
//! (`archive/**/*.hl7`). Each file is read in blocks and cut into messages as
//! it goes (plain, batch or MLLP framing, decided on its first block), so a
//! file of any size holds only one block and one message in memory.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// How much of a file is read at a time.
const BLOCK: usize = 1 << 20;

/// The files a `from:` names, in the order they are read.
pub fn files(base: &Path, from: &str) -> Result<Vec<PathBuf>, String> {
    if let Some((root, pattern)) = from.split_once("**/") {
        let root = base.join(root);
        let mut all = Vec::new();
        walk(&root, &mut all).map_err(|e| format!("{}: {e}", root.display()))?;
        let mut out: Vec<PathBuf> = all
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| wildcard(pattern, &n.to_string_lossy()))
            })
            .collect();
        out.sort();
        if out.is_empty() {
            return Err(format!(
                "no file below {} matches {pattern}",
                root.display()
            ));
        }
        return Ok(out);
    }
    let path = base.join(from);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.contains('*') {
        let dir = path.parent().unwrap_or(base);
        let mut out = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| {
            format!(
                "{}: {e} (paths resolve against the migration file's folder)",
                dir.display()
            )
        })?;
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if wildcard(&name, &file) && entry.path().is_file() {
                out.push(entry.path());
            }
        }
        out.sort();
        if out.is_empty() {
            return Err(format!("no file in {} matches {name}", dir.display()));
        }
        return Ok(out);
    }
    if path.is_dir() {
        let mut out = Vec::new();
        walk(&path, &mut out).map_err(|e| format!("{}: {e}", path.display()))?;
        out.sort();
        return Ok(out);
    }
    if path.is_file() {
        return Ok(vec![path]);
    }
    Err(format!(
        "{} is neither a file nor a folder (paths resolve against the migration file's folder)",
        path.display()
    ))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// `*` matches any run of characters; everything else matches itself.
fn wildcard(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    rest.is_empty()
}

/// Reads a file message by message: `each(offset, bytes)` for every one,
/// until it returns false. An I/O error stops the file.
pub fn messages(path: &Path, mut each: impl FnMut(u64, &[u8]) -> bool) -> std::io::Result<()> {
    let mut file = File::open(path)?;
    let mut buf: Vec<u8> = Vec::with_capacity(BLOCK);
    let mut base: u64 = 0;
    let mut mllp: Option<bool> = None;
    loop {
        let before = buf.len();
        buf.resize(before + BLOCK, 0);
        let n = read_full(&mut file, &mut buf[before..])?;
        buf.truncate(before + n);
        let eof = n == 0;
        let framed = *mllp.get_or_insert_with(|| buf.contains(&0x0B));
        // cut where the next message (or frame) starts: everything before
        // it is complete
        let cut = if eof {
            buf.len()
        } else if framed {
            buf.iter().rposition(|&b| b == 0x0B).unwrap_or(0)
        } else {
            let found = fhirlift_hl7v2::split(&buf);
            match found.len() {
                0 | 1 => 0,
                n => found[n - 1].offset as usize,
            }
        };
        if cut > 0 {
            for m in fhirlift_hl7v2::split(&buf[..cut]) {
                if !each(base + m.offset, m.bytes) {
                    return Ok(());
                }
            }
            buf.drain(..cut);
            base += cut as u64;
        }
        if eof {
            return Ok(());
        }
    }
}

fn read_full(file: &mut File, mut out: &mut [u8]) -> std::io::Result<usize> {
    let mut total = 0;
    while !out.is_empty() {
        match file.read(out) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                out = &mut out[n..];
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let dir = std::env::temp_dir().join(format!("fhirlift-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.hl7", bytes.len()));
        std::fs::write(&path, bytes).unwrap();
        let mut out = Vec::new();
        messages(&path, |o, b| {
            out.push((o, b.to_vec()));
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn blocks_cut_between_messages_give_the_same_messages_as_the_whole_file() {
        // messages large enough that block ends fall inside them
        let mut plain = Vec::new();
        let mut framed = Vec::new();
        for i in 0..40 {
            let body = format!(
                "MSH|^~\\&|A|B|C|D|20230101||ADT^A01|{i}|P|2.5\rPID|1||{i}||{}\r",
                "x".repeat(70_000 + i * 13)
            );
            plain.extend_from_slice(body.as_bytes());
            framed.push(0x0B);
            framed.extend_from_slice(body.as_bytes());
            framed.extend_from_slice(b"\x1c\r");
        }
        for file in [&plain, &framed] {
            let whole: Vec<(u64, Vec<u8>)> = fhirlift_hl7v2::split(file)
                .into_iter()
                .map(|m| (m.offset, m.bytes.to_vec()))
                .collect();
            assert_eq!(whole.len(), 40);
            assert_eq!(collect(file), whole);
        }
    }

    #[test]
    fn patterns_match_names() {
        assert!(wildcard("*.hl7", "a.hl7"));
        assert!(wildcard("adt-*-2023.txt", "adt-01-2023.txt"));
        assert!(!wildcard("*.hl7", "a.hl7.bak"));
        assert!(wildcard("*", "x"));
    }
}
