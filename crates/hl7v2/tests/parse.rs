//! The parser on generated messages (round trips, arbitrary bytes) and on
//! every real message of the shared corpus.

use fhirlift_hl7v2::{Delimiters, Message, Path, encode, split};
use proptest::prelude::*;

type Field = Vec<Vec<Vec<String>>>; // repetitions of components of subcomponents

fn text() -> impl Strategy<Value = String> {
    // any characters, separators and line ends included; `""` alone would
    // read back as the explicit null
    any::<String>().prop_filter("not the null literal", |s| s != "\"\"")
}

fn field() -> impl Strategy<Value = Field> {
    prop::collection::vec(
        prop::collection::vec(prop::collection::vec(text(), 1..3), 1..4),
        1..3,
    )
}

fn segment() -> impl Strategy<Value = (String, Vec<Field>)> {
    (
        "[A-Z][A-Z][A-Z0-9]".prop_filter("not a header", |n| {
            !matches!(n.as_str(), "MSH" | "FHS" | "BHS" | "BTS" | "FTS")
        }),
        prop::collection::vec(field(), 1..5),
    )
}

fn print(segments: &[(String, Vec<Field>)], d: &Delimiters) -> String {
    let mut out = String::from("MSH|^~\\&|SEND|FAC|||20240101||ADT^A01|CTRL1|P|2.5.1\r");
    for (name, fields) in segments {
        out.push_str(name);
        for f in fields {
            out.push('|');
            let reps: Vec<String> = f
                .iter()
                .map(|rep| {
                    rep.iter()
                        .map(|comp| {
                            comp.iter()
                                .map(|s| encode(s, d))
                                .collect::<Vec<_>>()
                                .join("&")
                        })
                        .collect::<Vec<_>>()
                        .join("^")
                })
                .collect();
            out.push_str(&reps.join("~"));
        }
        out.push('\r');
    }
    out
}

proptest! {
    #[test]
    fn parse_of_print_gives_every_value_back(segments in prop::collection::vec(segment(), 1..6)) {
        let d = Delimiters::default();
        let text = print(&segments, &d);
        let message = Message::parse(text.as_bytes(), 0).unwrap();
        let control_id = message.control_id();
        prop_assert_eq!(control_id.as_deref(), Some("CTRL1"));
        let parsed: Vec<_> = message.segments().skip(1).collect();
        prop_assert_eq!(parsed.len(), segments.len());
        for (seg, (name, fields)) in parsed.iter().zip(&segments) {
            prop_assert_eq!(seg.name(), name.as_str());
            for (f, field) in fields.iter().enumerate() {
                for (r, rep) in field.iter().enumerate() {
                    for (c, comp) in rep.iter().enumerate() {
                        for (s, sub) in comp.iter().enumerate() {
                            let path = Path {
                                segment: name.clone(),
                                field: f + 1,
                                repetition: Some(r + 1),
                                component: Some(c + 1),
                                subcomponent: Some(s + 1),
                            };
                            let raw = seg.raw(&path).unwrap();
                            prop_assert_eq!(&message.value(raw), sub);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        for raw in split(&bytes) {
            if let Ok(m) = Message::parse(raw.bytes, raw.offset) {
                let _ = m.control_id();
                let _ = m.message_type();
                let _ = m.get("PID-3(2).4.1");
                for s in m.segments() {
                    let _ = s.repetitions(2);
                }
            }
        }
    }

    #[test]
    fn damaged_headers_never_panic(tail in "[|^~\\\\&#\r\nA-Z0-9]{0,40}") {
        let text = format!("MSH{tail}");
        if let Ok(m) = Message::parse(text.as_bytes(), 7) {
            let _ = m.get("MSH-10");
            let _ = m.get("MSH-2");
        }
    }
}

#[test]
fn non_ascii_text_around_escapes_survives() {
    let text = "MSH|^~\\&|S|F|||20240101||ADT^A08|X1|P|2.5.1|||||||UNICODE UTF-8\rPID|1||123^^^HOSP^MR||Müller\\S\\Jörg^Ærøskøbing~Ölçer\r";
    let m = Message::parse(text.as_bytes(), 0).unwrap();
    assert_eq!(m.get("PID-5.1").unwrap(), "Müller^Jörg");
    assert_eq!(m.get("PID-5.2").unwrap(), "Ærøskøbing");
    assert_eq!(m.get("PID-5(2).1").unwrap(), "Ölçer");
    assert_eq!(m.get("PID-3.4").unwrap(), "HOSP");
    assert_eq!(m.message_type(), Some(("ADT".into(), "A08".into())));
    assert_eq!(m.get("MSH-2").unwrap(), "^~\\&");
}

#[test]
fn msh_18_latin1_is_decoded() {
    let mut bytes =
        b"MSH|^~\\&|S|F|||20240101||ADT^A08|X2|P|2.5|||||||8859/1\rPID|1||1||M".to_vec();
    bytes.push(0xFC); // ü in Latin-1
    bytes.extend_from_slice(b"ller\r");
    let m = Message::parse(&bytes, 0).unwrap();
    assert_eq!(m.get("PID-5").unwrap(), "Müller");
}

#[test]
fn a_damaged_message_is_an_error_with_its_offset() {
    let err = Message::parse(b"MSHA^~\\&|x", 120).unwrap_err();
    assert_eq!(err.offset, 120);
    assert!(err.message.contains("MSH-1"), "{}", err.message);
    let err = Message::parse(b"PID|1", 5).unwrap_err();
    assert!(err.message.contains("MSH"), "{}", err.message);
}

fn corpus() -> std::path::PathBuf {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [
        std::env::var_os("FHIRLIFT_CORPUS").map(std::path::PathBuf::from),
        Some(workspace.join("../shared/corpus")),
        Some("/work/shared/corpus".into()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("hl7v2").is_dir())
        .expect("the shared corpus (../shared/corpus beside the workspace, or FHIRLIFT_CORPUS)")
}

fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("hl7") || e.eq_ignore_ascii_case("txt"))
        {
            out.push(path);
        }
    }
}

#[test]
fn every_corpus_message_reads_and_the_damaged_ones_say_where() {
    let mut all = Vec::new();
    files(&corpus().join("hl7v2"), &mut all);
    assert!(all.len() >= 300, "{} files", all.len());
    let (mut messages, mut read, mut failed) = (0, 0, Vec::new());
    for path in &all {
        let bytes = std::fs::read(path).unwrap();
        for raw in split(&bytes) {
            messages += 1;
            match Message::parse(raw.bytes, raw.offset) {
                Ok(m) => {
                    read += 1;
                    // every segment and field is reachable
                    for s in m.segments() {
                        for f in 1..=s.field_count() {
                            for rep in s.repetitions(f) {
                                let _ = m.value(rep);
                            }
                        }
                    }
                }
                Err(e) => failed.push(format!("{}@{}: {e}", path.display(), e.offset)),
            }
        }
    }
    eprintln!("{read} of {messages} messages read; refused: {failed:#?}");
    assert!(messages >= 354, "{messages} messages");
    // the one damaged header of the corpus: MSH-2 written `^~\\&` (copied
    // from Java source), the escape character declared twice
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert!(
        failed[0].contains("sample_unix.hl7@0: MSH-2"),
        "{failed:#?}"
    );
}
