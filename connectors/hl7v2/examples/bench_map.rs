//! Parse + map throughput of the built-in maps on ORU^R01 lab results.
//!
//! `cargo run --release -p fhirlift-connector-hl7v2 --example bench_map -- [N]`
//! (or `cargo xtask bench hl7v2 [N]`): builds N (default 100,000) distinct
//! ORU^R01 messages (1 OBR + 5 OBX each, modelled on the corpus lab
//! samples), writes them back-to-back (CR segment separators) to one
//! archive in the temp directory, then streams it back the way the
//! connector does ([`read_messages`]: 1 MiB blocks, one callback per
//! message) and times parse and map_message (with dropping the message and
//! its resources) for every message; read+split is the rest of the total. Mapped resources are counted and dropped at
//! once, so memory stays flat: one block and one message at a time,
//! whatever the archive's size.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fhirlift_connector_hl7v2::{MapOptions, MessageMap, map_message, read_messages};
use fhirlift_hl7v2::Message;

/// SplitMix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    /// A value in [low, high) with `decimals` digits.
    fn decimal(&mut self, low: f64, high: f64, decimals: usize) -> String {
        let x = low + (high - low) * (self.below(1_000_000) as f64 / 1_000_000.0);
        format!("{x:.decimals$}")
    }
}

// Double-barrelled family names, non-ASCII, joined by `&` as senders
// escape it (`\T\`): every message decodes an escape in PID-5.
const FAMILIES: &[&str] = &[
    "Lindqvist",
    "Müller",
    "Nguyễn",
    "Ó Briain",
    "García",
    "Smith",
    "Kowalczyk",
    "Dubois",
    "Okafor",
    "Åberg",
];
const SECOND_FAMILIES: &[&str] = &["Peña", "Lüdenscheidt", "Søndergaard", "Trần", "Ñúñez"];
const GIVEN: &[&str] = &[
    "Zoë", "Søren", "José", "Anaïs", "Mary", "James", "Ngozi", "Łukasz", "Ines", "Hiroshi",
];
const STREETS: &[&str] = &[
    "Maple Ave",
    "Main St",
    "Rue de la Paix",
    "Königstraße",
    "Oak Lane",
    "Elm Court",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("Springfield", "IL", "62701"),
    ("Madison", "WI", "53703"),
    ("Ann Arbor", "MI", "48104"),
    ("Bozeman", "MT", "59715"),
    ("Fresno", "CA", "93721"),
];
const COMMENTS: &[&str] = &[
    "Specimen slightly hemolyzed.\\.br\\Results verified by Dr. Søren Ærø.",
    "Probe leicht hämolysiert\\.br\\Befund geprüft \\T\\ freigegeben.",
    "Fasting specimen.",
    "Non-fasting specimen; interpret glucose with care.",
    "Repeat requested by Dr. Núñez\\.br\\Same-day retest.",
];

const ORDERER: &str = "1234567893^Welby^Marcus^J^^Dr^MD^^NPI&2.16.840.1.113883.4.6&ISO^L";
const LAB: &str = "CITYLAB^2.16.840.1.113883.3.72.5.21^ISO";

/// `YYYYMMDDHHMM` in 2024, spread over the year by `i`.
fn when(i: u64, minutes_later: u64) -> String {
    let month = 1 + (i / 28) % 12;
    let day = 1 + i % 28;
    let minute_of_day = 6 * 60 + (i * 7) % (12 * 60) + minutes_later;
    format!(
        "2024{month:02}{day:02}{:02}{:02}",
        minute_of_day / 60,
        minute_of_day % 60
    )
}

fn flag(value: &str, low: f64, high: f64) -> &'static str {
    match value.parse::<f64>() {
        Ok(v) if v < low => "L",
        Ok(v) if v > high => "H",
        _ => "N",
    }
}

/// Message `i`, segments ended by CR, appended to `out`.
fn message(i: u64, rng: &mut Rng, out: &mut String) {
    use std::fmt::Write as _;
    let family = format!("{}\\T\\{}", rng.pick(FAMILIES), rng.pick(SECOND_FAMILIES));
    let given = rng.pick(GIVEN);
    let middle = rng.pick(GIVEN);
    let (city, state, zip) = CITIES[rng.below(CITIES.len() as u64) as usize];
    let sex = if rng.below(2) == 0 { "F" } else { "M" };
    let dob = format!(
        "{}{:02}{:02}",
        1930 + rng.below(90),
        1 + rng.below(12),
        1 + rng.below(28)
    );
    let mrn = 100_000_000 + i * 7 + rng.below(7);
    let placer = 500_000_000 + i;
    let filler = format!("L{:010}", 9_000_000_000 + i);
    let ordered = when(i, 0);
    let collected = when(i, 20);
    let received = when(i, 45);
    let analysed = when(i, 90);
    let reported = when(i, 120);
    let glucose = rng.decimal(55.0, 240.0, 0);
    let creatinine = rng.decimal(0.4, 2.5, 2);
    let potassium = rng.decimal(2.9, 6.1, 1);
    let sodium = rng.decimal(128.0, 150.0, 0);
    let glucose_flag = flag(&glucose, 70.0, 99.0);
    let creatinine_flag = flag(&creatinine, 0.74, 1.35);
    let potassium_flag = flag(&potassium, 3.5, 5.1);
    let sodium_flag = flag(&sodium, 135.0, 145.0);
    let comment = rng.pick(COMMENTS);
    let street = format!("{} {}", 1 + rng.below(9999), rng.pick(STREETS));
    let phone = format!(
        "^PRN^PH^^1^{}^{}",
        200 + rng.below(800),
        5_550_000 + rng.below(9999)
    );
    let _ = write!(
        out,
        "MSH|^~\\&|LIS^2.16.840.1.113883.3.72.5.20^ISO|{LAB}|EHR^2.16.840.1.113883.3.72.5.22^ISO|GENHOSP^2.16.840.1.113883.3.72.5.23^ISO|{reported}00-0500||ORU^R01^ORU_R01|LAB{i:010}|P|2.5.1|||AL|NE|USA|UNICODE UTF-8\r\
         PID|1||{mrn}^^^GENHOSP&2.16.840.1.113883.3.72.5.9&ISO^MR||{family}^{given}^{middle}^^^^L||{dob}|{sex}||2106-3^White^CDCREC|{street}^Apt {apt}^{city}^{state}^{zip}^USA^H||{phone}|||M^Married^HL70002|||||2186-5^Not Hispanic or Latino^CDCREC\r\
         PV1|1|O|LAB^^^GENHOSP^^^^^Outpatient Laboratory||||{ORDERER}|||||||||||V{visit}^^^GENHOSP^VN|||||||||||||||||||||||||{ordered}\r\
         ORC|RE|{placer}^EHR^2.16.840.1.113883.3.72.5.24^ISO|{filler}^{LAB}||CM||||{ordered}|||{ORDERER}\r\
         OBR|1|{placer}^EHR^2.16.840.1.113883.3.72.5.24^ISO|{filler}^{LAB}|24323-8^Comprehensive metabolic 2000 panel - Serum or Plasma^LN|||{collected}|||||||{received}||{ORDERER}||||||{reported}-0500|||F\r\
         OBX|1|NM|2345-7^Glucose [Mass/volume] in Serum or Plasma^LN||{glucose}|mg/dL^milligram per deciliter^UCUM|70-99|{glucose_flag}|||F|||{collected}|||||{analysed}||||City Laboratory^L^^^^CLIA&2.16.840.1.113883.4.7&ISO^XX^^^05D0123456|12 Lab Way^^Springfield^IL^62701^USA\r\
         OBX|2|NM|2160-0^Creatinine [Mass/volume] in Serum or Plasma^LN||{creatinine}|mg/dL^milligram per deciliter^UCUM|0.74-1.35|{creatinine_flag}|||F|||{collected}|||||{analysed}\r\
         OBX|3|NM|2823-3^Potassium [Moles/volume] in Serum or Plasma^LN||{potassium}|mmol/L^millimole per liter^UCUM|3.5-5.1|{potassium_flag}|||F|||{collected}|||||{analysed}\r\
         OBX|4|SN|2951-2^Sodium [Moles/volume] in Serum or Plasma^LN||^{sodium}|mmol/L^millimole per liter^UCUM|135-145|{sodium_flag}|||F|||{collected}|||||{analysed}\r\
         OBX|5|TX|8251-1^Service comment^LN||{comment}||||||F|||{collected}\r",
        apt = 1 + rng.below(40),
        visit = 700_000_000 + i,
    );
}

/// Peak resident set size (VmHWM), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Removes the archive however the run ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = match std::env::args().nth(1) {
        Some(a) => match a.replace('_', "").parse() {
            Ok(n) => n,
            Err(_) => {
                eprintln!(
                    "usage: bench_map [N]   (N: how many messages, 100000 by default; not {a:?})"
                );
                std::process::exit(2);
            }
        },
        None => 100_000,
    };

    // the archive
    let archive = TempFile(
        std::env::temp_dir().join(format!("fhirlift-bench-oru-{n}-{}.hl7", std::process::id())),
    );
    let started = Instant::now();
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&archive.0)?);
        let mut rng = Rng(0x5EED);
        let mut buf = String::with_capacity(4096);
        for i in 0..n {
            buf.clear();
            message(i, &mut rng, &mut buf);
            file.write_all(buf.as_bytes())?;
        }
        file.flush()?;
    }
    let size = std::fs::metadata(&archive.0)?.len();
    println!(
        "bench_map: {n} ORU^R01 messages (1 OBR + 5 OBX each), {:.1} MiB archive written in {:.2} s ({})",
        mib(size),
        secs(started.elapsed()),
        archive.0.display()
    );
    let rss_before = peak_rss_kib();

    // read → split (streamed) → parse → map
    let options = MapOptions::default();
    let (mut parse_time, mut map_time) = (Duration::ZERO, Duration::ZERO);
    let (mut count, mut mapped, mut unreadable, mut resources) = (0u64, 0u64, 0u64, 0u64);
    let mut by_type: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut unmapped: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut failed = 0u64;
    let started = Instant::now();
    read_messages(&archive.0, |offset, bytes| {
        count += 1;
        let t = Instant::now();
        let parsed = Message::parse(bytes, offset);
        parse_time += t.elapsed();
        let message = match parsed {
            Ok(m) => m,
            Err(e) => {
                unreadable += 1;
                if failures.len() < 5 {
                    failures.push(format!("unreadable @{offset}: {e}"));
                }
                return true;
            }
        };
        // map, counting and dropping the resources and the message (nothing
        // is kept)
        let t = Instant::now();
        let outcome = map_message(&message, &options);
        if let Ok(MessageMap::Mapped(out)) = &outcome {
            mapped += 1;
            resources += out.len() as u64;
            for r in out {
                *by_type.entry(r.resource_type).or_default() += 1;
            }
        }
        let outcome = outcome.map(|m| match m {
            MessageMap::Mapped(_) => None,
            MessageMap::Unmapped { message_type } => Some(message_type),
        });
        drop(message);
        map_time += t.elapsed();
        match outcome {
            Ok(None) => {}
            Ok(Some(message_type)) => {
                *unmapped.entry(message_type).or_default() += 1;
            }
            Err(e) => {
                failed += 1;
                if failures.len() < 5 {
                    failures.push(format!("map failure @{offset}: {e}"));
                }
            }
        }
        true
    })?;
    let total = started.elapsed();
    let read_split = total.saturating_sub(parse_time + map_time);

    println!(
        "  read+split {:>7.3} s\n  parse      {:>7.3} s\n  map        {:>7.3} s\n  total      {:>7.3} s  →  {:.0} messages/s ({:.1} µs each)",
        secs(read_split),
        secs(parse_time),
        secs(map_time),
        secs(total),
        count as f64 / secs(total),
        1e6 * secs(total) / count.max(1) as f64,
    );
    let types: Vec<String> = by_type.iter().map(|(t, c)| format!("{t} {c}")).collect();
    println!(
        "  resources: {resources} ({:.1} per message{}{})",
        resources as f64 / count.max(1) as f64,
        if types.is_empty() { "" } else { ": " },
        types.join(", ")
    );
    let unmapped_text: Vec<String> = unmapped.iter().map(|(t, c)| format!("{t} × {c}")).collect();
    println!(
        "  messages: {count} split, {mapped} mapped, {} unmapped{}, {failed} map failures, {unreadable} unreadable",
        unmapped.values().sum::<u64>(),
        if unmapped_text.is_empty() {
            String::new()
        } else {
            format!(" ({})", unmapped_text.join(", "))
        },
    );
    for f in &failures {
        println!("    {f}");
    }
    if count != n {
        println!("  warning: the archive split into {count} messages, not {n}");
    }
    match (rss_before, peak_rss_kib()) {
        (Some(before), Some(peak)) => println!(
            "  peak RSS (VmHWM): {:.1} MiB (before the run: {:.1} MiB; the {:.1} MiB archive is streamed in 1 MiB blocks)",
            before.max(peak) as f64 / 1024.0,
            before as f64 / 1024.0,
            mib(size)
        ),
        _ => println!("  peak RSS: unknown (no /proc/self/status)"),
    }
    Ok(())
}
