//! HL7v2 merges and deletions end to end, in the sandbox and in the real
//! Medplum of the kit: after ADT^A40 the retired Patient keeps what earlier
//! messages wrote, is inactive and `replaced-by` the survivor, the survivor
//! `replaces` it, nothing points at a Patient that is not there, and a
//! re-run writes nothing. Both write strategies (the amendment is read and
//! written by id in each).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fhirlift_tests::medplum::Kit;
use fhirlift_tests::{Outcome, scratch};
use serde_json::Value;

use crate::rerun::{hl7_migration, migrate_into_store_with, stored};
use crate::support::{migrate, report, total};

/// An archive: two patients admitted (the one to retire with an allergy),
/// their merge, a merge whose retired patient was never sent, and a visit
/// entered in error.
fn archive() -> String {
    [
        "MSH|^~\\&|EHR|FAC|||202401011000||ADT^A01^ADT_A01|M1|P|2.5.1\r\
         PID|1||456^^^FAC^MR||Old^Retired||19700101|F\r\
         PV1|1|I|||||||||||||||||V456^^^FAC^VN\r\
         AL1|1|DA|PEN^Penicillin^L|SV|Hives\r",
        "MSH|^~\\&|EHR|FAC|||202401011100||ADT^A01^ADT_A01|M2|P|2.5.1\r\
         PID|1||123^^^FAC^MR||Doe^Jane||19800101|F\r\
         PV1|1|I|||||||||||||||||V123^^^FAC^VN\r",
        "MSH|^~\\&|EHR|FAC|||202401011200||ADT^A40^ADT_A39|M3|P|2.5.1\r\
         EVN|A40|202401011200\r\
         PID|1||123^^^FAC^MR||Doe^Jane||19800101|F\r\
         MRG|456^^^FAC^MR\r",
        "MSH|^~\\&|EHR|FAC|||202401011300||ADT^A40^ADT_A39|M4|P|2.5.1\r\
         EVN|A40|202401011300\r\
         PID|1||777^^^FAC^MR||Moe^Max||19600101|M\r\
         MRG|778^^^FAC^MR\r",
        "MSH|^~\\&|EHR|FAC|||202401011400||ADT^A23^ADT_A21|M5|P|2.5.1\r\
         PID|1||123^^^FAC^MR||Doe^Jane||19800101|F\r\
         PV1|1|I|||||||||||||||||V123^^^FAC^VN\r",
    ]
    .concat()
}

/// The archive and a migration of it, in `dir`.
fn migration(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("merges.hl7"), archive()).unwrap();
    hl7_migration(dir, "merges.hl7")
}

/// The value of a resource's first identifier (PID-3, PV1-19).
fn mrn(resource: &Value) -> &str {
    resource["identifier"][0]["value"]
        .as_str()
        .unwrap_or_default()
}

/// Checks what the server holds after the archive: `all(type)` lists a
/// type's resources.
fn assert_merged(all: &dyn Fn(&str) -> Vec<Value>) {
    let patients = all("Patient");
    assert_eq!(patients.len(), 4, "123, 456, 777, 778: {patients:#?}");
    let by_mrn: HashMap<&str, &Value> = patients.iter().map(|p| (mrn(p), p)).collect();
    let id_of = |m: &str| format!("Patient/{}", by_mrn[m]["id"].as_str().unwrap());
    let (survivor, retired) = (by_mrn["123"], by_mrn["456"]);
    assert_eq!(retired["active"], false, "{retired}");
    assert_eq!(
        retired["name"][0]["family"], "Old",
        "the merge keeps what the A01 wrote: {retired}"
    );
    assert_eq!(retired["birthDate"], "1970-01-01");
    assert_eq!(retired["link"].as_array().unwrap().len(), 1, "{retired}");
    assert_eq!(retired["link"][0]["type"], "replaced-by");
    assert_eq!(retired["link"][0]["other"]["reference"], id_of("123"));
    assert_eq!(survivor["link"][0]["type"], "replaces");
    assert_eq!(survivor["link"][0]["other"]["reference"], id_of("456"));
    assert_ne!(survivor["active"], false);
    // never sent before its merge: created inactive, linked both ways
    let (never, kept) = (by_mrn["778"], by_mrn["777"]);
    assert_eq!(never["active"], false);
    assert_eq!(never["link"][0]["other"]["reference"], id_of("777"));
    assert_eq!(kept["link"][0]["other"]["reference"], id_of("778"));
    // A23: the visit is marked, not removed, and keeps what A01 wrote
    let encounters = all("Encounter");
    assert_eq!(encounters.len(), 2);
    let v123 = encounters.iter().find(|e| mrn(e) == "V123").unwrap();
    assert_eq!(v123["status"], "entered-in-error");
    assert_eq!(v123["class"]["code"], "IMP");
    assert_eq!(v123["subject"]["reference"], id_of("123"));
    // nothing points at a Patient that is not there
    let ids: Vec<String> = patients.iter().map(|p| id_of(mrn(p))).collect();
    let allergies = all("AllergyIntolerance");
    assert_eq!(allergies.len(), 1);
    let mut pointers: Vec<&Value> = vec![&allergies[0]["patient"]["reference"]];
    pointers.extend(encounters.iter().map(|e| &e["subject"]["reference"]));
    for p in &patients {
        pointers.extend(
            p["link"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| &l["other"]["reference"]),
        );
    }
    for reference in pointers {
        let reference = reference.as_str().unwrap();
        assert!(ids.iter().any(|i| i == reference), "{reference} dangles");
    }
}

fn assert_ran(out: &Outcome, what: &str) {
    assert_eq!(out.code, 0, "{what}\n{}\n{}", out.stdout, out.stderr);
}

/// Writes of the last run in `dir`.
fn writes(dir: &Path) -> u64 {
    let r = report(dir);
    total(&r, "created") + total(&r, "updated") + total(&r, "rejected")
}

fn merge_in_the_sandbox(strategy: &str) {
    let dir = scratch(&format!("merges-sandbox-{strategy}"));
    let config = migration(&dir);
    let run = || migrate_into_store_with(&config, &dir, &["--strategy", strategy]);
    let stored = |t: &str| stored(&dir, t).into_values().collect();
    assert_ran(&run(), "first run");
    assert_merged(&stored);
    assert_ran(&run(), "re-run");
    assert_eq!(writes(&dir), 0, "a re-run writes nothing");
    assert_merged(&stored);
}

#[test]
fn a40_merges_link_both_patients_and_keep_the_retired_ones_data_in_the_sandbox_under_resolve() {
    merge_in_the_sandbox("resolve");
}

#[test]
fn a40_merges_link_both_patients_and_keep_the_retired_ones_data_in_the_sandbox_under_conditional() {
    merge_in_the_sandbox("conditional");
}

fn merge_in_medplum(strategy: &str) {
    let project = Kit::from_env().project(&format!("fhirlift-e2e-merges-{strategy}"), "fast");
    let dir = scratch(&format!("merges-medplum-{strategy}"));
    let config = migration(&dir);
    let mut args = project.credentials();
    args.extend(["--strategy".to_owned(), strategy.to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ran(&migrate(&config, &project.url, &dir, &args), "first run");
    let fhir = project.fhir();
    assert_merged(&|t| fhir.all(t, &[]));
    assert_ran(&migrate(&config, &project.url, &dir, &args), "re-run");
    assert_eq!(writes(&dir), 0, "a re-run writes nothing");
    assert_merged(&|t| fhir.all(t, &[]));
}

#[test]
fn a40_merges_link_both_patients_and_keep_the_retired_ones_data_in_real_medplum_under_resolve() {
    merge_in_medplum("resolve");
}

#[test]
fn a40_merges_link_both_patients_and_keep_the_retired_ones_data_in_real_medplum_under_conditional()
{
    merge_in_medplum("conditional");
}
