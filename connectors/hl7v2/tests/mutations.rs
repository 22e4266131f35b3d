//! The built-in maps never panic on a message, however broken, and never
//! write invalid FHIR R4: every message of the shared corpus (or, without
//! it, a few of our own), cut, reordered and scribbled on by proptest,
//! either is refused with an error, or maps to resources of their type
//! that the validator finds no error in.

use std::path::{Path, PathBuf};

use fhirlift_connector_hl7v2::{MapOptions, MessageMap, map_message};
use fhirlift_hl7v2::{Message, split};
use proptest::prelude::*;

/// Messages of our own, one per kind of map, for a run without the corpus.
const OWN: &[&str] = &[
    "MSH|^~\\&|EHR|FAC|||202401011000||ADT^A01^ADT_A01|M1|P|2.5.1\rEVN|A01|202401011000\rPID|1||456^^^FAC^MR||Old^Retired||19700101|F|||1 Main St^^Town^ST^12345\rPV1|1|I|W^1^2||||1234^Doc^Ann|||||||||||V456^^^FAC^VN|||||||||||||||||||||||||202401011000\rPV2|||^Chest pain\rROL|1|AD|AT|1234^Doc^Ann\rAL1|1|DA|PEN^Penicillin^L|SV|Hives\rDG1|1||I10^Hypertension^I10\rPR1|1||0JH^Procedure^I10P||202401011100\rGT1|1||Old^Retired||1 Main St\rIN1|1|PLAN1^Plan|PAY1^^^FAC|Payer Inc|||||||||20240101|20241231|||Old^Retired|SEL|19700101||||||||||||||||||POL123\rIN2|1||||||||||||||||||||||||||||||||||||||||||||||||||||||||||MEM9\r",
    "MSH|^~\\&|EHR|FAC|||202401011200||ADT^A40^ADT_A39|M3|P|2.5.1\rEVN|A40|202401011200\rPID|1||123^^^FAC^MR||Doe^Jane||19800101|F\rMRG|456^^^FAC^MR\r",
    "MSH|^~\\&|EHR|FAC|||202401011400||ADT^A23^ADT_A21|M5|P|2.5.1\rPID|1||123^^^FAC^MR||Doe^Jane||19800101|F\rPV1|1|I|||||||||||||||||V123^^^FAC^VN\r",
    "MSH|^~\\&|LAB|FAC|||202401011200||ORU^R01^ORU_R01|MSG9|P|2.5.1\rPID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\rORC|RE|PL77^LIS|FL77^LAB||CM||||202401011100|||1234^Doc^Ann\rOBR|1|PL77^LIS|FL77^LAB|CBC^Blood count^L|||202401011000\rNTE|1||A note on the order\rOBX|1|NM|HGB^Hemoglobin^LN||13.5|g/dL^^UCUM|12-16|N|||F\rOBX|2|ST|TXT^Text^L||60~120||||||F\rOBX|3|CWE|ORG^Organism^L||123^Thing^SCT||||||F\rSPM|1|S1&LAB^S1F&LAB||119297000^Blood^SCT|||||||||||||202401011000|202401011030\r",
    "MSH|^~\\&|EHR|FAC|||202401011200||ORM^O01^ORM_O01|O1|P|2.5.1\rPID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\rORC|NW|PL1^EHR||G1^EHR|SC||||202401011100|||1234^Doc^Ann\rOBR|1|PL1^EHR||CBC^Blood count^L\rDG1|1||I10^Hypertension^I10\rOBX|1|NM|Q1^Question^L||5\r",
    "MSH|^~\\&|SCH|FAC|||202401011200||SIU^S12^SIU_S12|S1|P|2.5.1\rSCH|A1^SCH|A1F^SCH|||||||30|min|^^30^202401021000^202401021030|||||1234^Doc^Ann||||||||Booked\rPID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\rRGS|1\rAIS|1||CHK^Checkup^L|202401021000\rAIL|1||ROOM1^^^FAC\rAIP|1||1234^Doc^Ann|ATT\r",
    "MSH|^~\\&|DOC|FAC|||202401011200||MDM^T02^MDM_T02|D1|P|2.5.1\rEVN|T02|202401011200\rPID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\rPV1|1|O\rTXA|1|CN|TX|202401011100|1234^Doc^Ann||||||||DOC1^EHR||||note.txt|AU\rOBX|1|TX|NOTE^Note^L||First line~Second line\r",
    "MSH|^~\\&|IZ|FAC|||202401011200||VXU^V04^VXU_V04|V1|P|2.5.1\rPID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\rPV1|1|R\rORC|RE||IZ1^FAC\rRXA|0|1|20240101||08^HepB^CVX|0.5|mL^^UCUM||00^New^NIP001|||||LOT1||MSD^Merck^MVX\rOBX|1|CE|64994-7^Eligibility^LN||V02^VFC^HL70064\r",
];

/// Every message of the shared corpus, else ours.
fn messages() -> Vec<Vec<u8>> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let corpus = [
        std::env::var_os("FHIRLIFT_CORPUS").map(PathBuf::from),
        Some(workspace.join("../shared/corpus")),
    ]
    .into_iter()
    .flatten()
    .map(|p| p.join("hl7v2"))
    .find(|p| p.is_dir());
    let mut out: Vec<Vec<u8>> = OWN.iter().map(|m| m.as_bytes().to_vec()).collect();
    let Some(dir) = corpus else {
        return out;
    };
    let mut files = Vec::new();
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "hl7") {
                files.push(path);
            }
        }
    }
    files.sort();
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        out.extend(split(&bytes).into_iter().map(|m| m.bytes.to_vec()));
    }
    out
}

/// One change to a message's text.
#[derive(Debug, Clone)]
enum Mutation {
    DropSegment(usize),
    RepeatSegment(usize),
    SwapSegments(usize, usize),
    /// Keeps the first n fields of a segment.
    CutSegment(usize, usize),
    /// Puts the text at a byte position (rounded to a char boundary).
    Insert(usize, String),
    /// Replaces field n of segment i.
    SetField(usize, usize, String),
}

/// Field contents that broke or could break parsers: empty and null
/// values, bare delimiters, escapes, numbers and dates past any range,
/// non-ASCII, a segment end, a second header.
const ODD_TEXT: &[&str] = &[
    "",
    "\"\"",
    "^^^",
    "~~",
    "&&^~",
    "\\X41\\\\E\\\\F\\",
    "99999999999999999999",
    "20241345",
    "2024-13-45T99:99",
    "-0.00e-999",
    "é中\u{1F600}",
    "\r",
    "MSH|^~\\&",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(ODD_TEXT).prop_map(str::to_owned),
        "[|^~\\\\&a-z0-9 .:+-]{0,12}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let i = 0..40usize;
    prop_oneof![
        i.clone().prop_map(Mutation::DropSegment),
        i.clone().prop_map(Mutation::RepeatSegment),
        (i.clone(), i.clone()).prop_map(|(a, b)| Mutation::SwapSegments(a, b)),
        (i.clone(), 0..30usize).prop_map(|(s, n)| Mutation::CutSegment(s, n)),
        (0..4000usize, text()).prop_map(|(at, t)| Mutation::Insert(at, t)),
        (i, 0..40usize, text()).prop_map(|(s, n, t)| Mutation::SetField(s, n, t)),
    ]
}

/// `message` with `m` applied (indexes wrap around what is there).
fn apply(message: &str, m: &Mutation) -> String {
    let mut segments: Vec<String> = message
        .split('\r')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if segments.is_empty() {
        return message.to_owned();
    }
    let n = segments.len();
    match m {
        Mutation::DropSegment(i) => {
            segments.remove(i % n);
        }
        Mutation::RepeatSegment(i) => {
            let s = segments[i % n].clone();
            segments.insert(i % n, s);
        }
        Mutation::SwapSegments(a, b) => segments.swap(a % n, b % n),
        Mutation::CutSegment(i, keep) => {
            let s = &mut segments[i % n];
            let cut: Vec<&str> = s.split('|').take(*keep + 1).collect();
            *s = cut.join("|");
        }
        Mutation::Insert(at, t) => {
            let whole = segments.join("\r");
            let mut at = at % (whole.len() + 1);
            while !whole.is_char_boundary(at) {
                at -= 1;
            }
            return format!("{}{t}{}\r", &whole[..at], &whole[at..]);
        }
        Mutation::SetField(i, field, t) => {
            let s = &mut segments[i % n];
            let mut fields: Vec<String> = s.split('|').map(str::to_owned).collect();
            let f = field % fields.len().max(1);
            // MSH-1 and MSH-2 are the delimiters: leave them to Insert
            if !(fields[0] == "MSH" && f <= 1) {
                fields[f] = t.clone();
            }
            *s = fields.join("|");
        }
    }
    segments.join("\r") + "\r"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn no_broken_message_panics_the_maps(
        pick in any::<prop::sample::Index>(),
        changes in prop::collection::vec(mutation(), 1..5),
    ) {
        thread_local! {
            static MESSAGES: Vec<Vec<u8>> = messages();
        }
        let original = MESSAGES.with(|all| pick.get(all).clone());
        let mut text = String::from_utf8_lossy(&original).into_owned();
        for m in &changes {
            text = apply(&text, m);
        }
        let options = MapOptions {
            default_authority: Some("urn:example:mutations".into()),
            ..MapOptions::default()
        };
        if let Ok(message) = Message::parse(text.as_bytes(), 0)
            && let Ok(MessageMap::Mapped(resources)) = map_message(&message, &options)
        {
            for r in &resources {
                prop_assert_eq!(r.resource["resourceType"].as_str(), Some(r.resource_type));
                let errors: Vec<String> = fhirlift_fhir::validate(&r.resource)
                    .into_iter()
                    .filter(|i| i.is_error())
                    // an amendment names only what it changes
                    .filter(|i| !(r.amends && i.rule == fhirlift_fhir::Rule::Required))
                    .map(|i| i.to_string())
                    .collect();
                prop_assert!(errors.is_empty(), "{}: {:?}\n{}", r.resource_type, errors, text);
            }
        }
    }
}
