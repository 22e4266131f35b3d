//! Generates the example's four tables at any size: about two conditions and
//! two encounters per patient, names with non-ASCII letters and apostrophes,
//! notes with commas and quotes. Deterministic for a given seed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

const FIRST: &[&str] = &[
    "John",
    "Jane",
    "José",
    "Zoë",
    "Björn",
    "Chloé",
    "François",
    "Siobhán",
    "Łukasz",
    "Mei",
    "Ngozi",
    "Ana",
    "D'Andre",
    "Søren",
    "Ōta",
    "Renée",
    "Mary-Kate",
    "Ümit",
    "Aoife",
    "Ravi",
];
const LAST: &[&str] = &[
    "Doe",
    "Smith",
    "O'Brien",
    "Müller",
    "García",
    "D'Angelo",
    "Nguyễn",
    "Kowalski",
    "Ó Súilleabháin",
    "Jensen",
    "Okafor",
    "Dubois",
    "Van der Berg",
    "Yılmaz",
    "Tanaka",
    "Núñez",
    "MacLeod",
    "Schäfer",
    "Al-Hashimi",
    "Li",
];
const CONDITIONS: &[(&str, &str, &str, &str)] = &[
    (
        "HT001",
        "Hypertension",
        "I10",
        "Essential (primary) hypertension",
    ),
    ("DM002", "Diabetes", "E11", "Type 2 diabetes mellitus"),
    ("AS003", "Asthma", "J45", "Asthma"),
    (
        "HL004",
        "High cholesterol",
        "E78.5",
        "Hyperlipidemia, unspecified",
    ),
    ("OB005", "Obesity", "E66.9", "Obesity, unspecified"),
    (
        "DP006",
        "Depression",
        "F32.9",
        "Major depressive disorder, single episode, unspecified",
    ),
    (
        "AF007",
        "Atrial fibrillation",
        "I48.91",
        "Unspecified atrial fibrillation",
    ),
    (
        "CK008",
        "Chronic kidney disease",
        "N18.9",
        "Chronic kidney disease, unspecified",
    ),
    (
        "OA009",
        "Osteoarthritis of knee",
        "M17.9",
        "Osteoarthritis of knee, unspecified",
    ),
    (
        "MG010",
        "Migraine",
        "G43.909",
        "Migraine, unspecified, not intractable, without status migrainosus",
    ),
];
const NOTES: &[&str] = &[
    "Routine check-up. Blood pressure stable, continue current plan.",
    "Patient's symptoms improved; follow up in 3 months.",
    "Reports headache, \"worse in the morning\". Ordered tests.",
    "Medication adjusted, discussed diet, exercise and sleep.",
    "Emergency visit: fall at home, no fracture. Observation advised.",
];

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn date(&mut self, from_year: u64, years: u64) -> String {
        let y = from_year + self.below(years);
        let m = 1 + self.below(12);
        let d = 1 + self.below(28);
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// Writes a CSV field, quoted when it must be.
fn field(out: &mut impl Write, value: &str) -> std::io::Result<()> {
    if value.contains([',', '"', '\n', '\r']) {
        write!(out, "\"{}\"", value.replace('"', "\"\""))
    } else {
        out.write_all(value.as_bytes())
    }
}

fn row(out: &mut impl Write, fields: &[&str]) -> std::io::Result<()> {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        field(out, f)?;
    }
    out.write_all(b"\n")
}

/// Counts of what was written.
#[derive(Debug, Default, Clone, Copy)]
pub struct Generated {
    pub patients: u64,
    pub conditions: u64,
    pub encounters: u64,
}

impl Generated {
    /// Every resource the example's migration writes for these rows: a
    /// Patient each, a Condition each, an Encounter and its note each.
    pub fn resources(&self) -> u64 {
        self.patients + self.conditions + 2 * self.encounters
    }
}

/// Writes patients.csv, conditions.csv, patient_conditions.csv and
/// encounters.csv into `dir`, shaped like the bundled example.
pub fn write_example_tables(dir: &Path, patients: u64, seed: u64) -> std::io::Result<Generated> {
    write_tables(dir, patients, seed, None)
}

/// Like [`write_example_tables`], with exactly `conditions_each` conditions
/// per patient when given (0 to 4 at random otherwise).
pub fn write_tables(
    dir: &Path,
    patients: u64,
    seed: u64,
    conditions_each: Option<u64>,
) -> std::io::Result<Generated> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Rng(seed);
    let open = |name: &str| -> std::io::Result<BufWriter<File>> {
        Ok(BufWriter::with_capacity(
            1 << 20,
            File::create(dir.join(name))?,
        ))
    };
    let mut conditions = open("conditions.csv")?;
    row(
        &mut conditions,
        &[
            "condition_id",
            "condition_name",
            "icd10_code",
            "icd10_display",
        ],
    )?;
    for (id, name, code, display) in CONDITIONS {
        row(&mut conditions, &[id, name, code, display])?;
    }
    conditions.flush()?;
    let mut p = open("patients.csv")?;
    let mut pc = open("patient_conditions.csv")?;
    let mut en = open("encounters.csv")?;
    row(
        &mut p,
        &[
            "patient_id",
            "first_name",
            "last_name",
            "birth_date",
            "gender",
        ],
    )?;
    row(
        &mut pc,
        &[
            "patient_condition_id",
            "patient_id",
            "condition_id",
            "onset_date",
        ],
    )?;
    row(
        &mut en,
        &["encounter_id", "patient_id", "date", "type", "note"],
    )?;
    let mut counts = Generated::default();
    for i in 1..=patients {
        let id = format!("P{i:07}");
        let birth = rng.date(1930, 90);
        let gender = ["M", "F", "F", "M", "O", "U"][rng.below(6) as usize];
        let (first, last) = (rng.pick(FIRST), rng.pick(LAST));
        row(&mut p, &[&id, first, last, &birth, gender])?;
        counts.patients += 1;
        let conditions_here = conditions_each.unwrap_or_else(|| rng.below(5));
        for _ in 0..conditions_here {
            counts.conditions += 1;
            let (cid, ..) = CONDITIONS[rng.below(CONDITIONS.len() as u64) as usize];
            let pcid = format!("PC{:08}", counts.conditions);
            row(&mut pc, &[&pcid, &id, cid, &rng.date(2000, 25)])?;
        }
        for _ in 0..rng.below(5) {
            counts.encounters += 1;
            let eid = format!("E{:08}", counts.encounters);
            let kind = if rng.below(5) == 0 {
                "emergency"
            } else {
                "checkup"
            };
            row(
                &mut en,
                &[&eid, &id, &rng.date(2015, 10), kind, rng.pick(NOTES)],
            )?;
        }
    }
    p.flush()?;
    pc.flush()?;
    en.flush()?;
    Ok(counts)
}

/// Writes the tables under `dir/data` and a copy of the bundled example's
/// migration file as `dir/migration.yaml`, ready for `fhirlift`.
pub fn write_example(dir: &Path, patients: u64, seed: u64) -> std::io::Result<Generated> {
    write_example_shaped(dir, patients, seed, None)
}

/// [`write_example`] with exactly `conditions_each` conditions per patient.
pub fn write_example_shaped(
    dir: &Path,
    patients: u64,
    seed: u64,
    conditions_each: Option<u64>,
) -> std::io::Result<Generated> {
    let counts = write_tables(&dir.join("data"), patients, seed, conditions_each)?;
    std::fs::copy(crate::guide_example(), dir.join("migration.yaml"))?;
    Ok(counts)
}

/// Writes `to`: the migration file `from` cut just before the stream
/// `stop_at` (the example's streams are patients, conditions, encounters).
pub fn streams_before(from: &Path, stop_at: &str, to: &Path) -> std::io::Result<()> {
    let text = std::fs::read_to_string(from)?;
    let cut = text.find(&format!("\n  {stop_at}:")).unwrap_or(text.len());
    std::fs::write(to, &text[..cut])
}
