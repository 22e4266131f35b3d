//! Map + plan throughput (no network): a generated patients CSV read by the
//! csv connector, mapped by the example's Patient mapping, packed into
//! medplum-profile batches and discarded.
//!
//! `cargo bench -p fhirlift-tests --bench map_plan` measures 1M rows
//! (FHIRLIFT_BENCH_PATIENTS to change it) and prints the peak RSS;
//! under `cargo test` it runs once on 1,000 rows to show it still works.

use std::path::Path;

use criterion::{Criterion, Throughput};
use fhirlift_core::registry::Registry;
use fhirlift_core::transport::DiscardSink;
use fhirlift_mapping::config::MigrationConfig;
use fhirlift_pipeline::Plan;
use fhirlift_pipeline::rejects::RejectWriter;
use fhirlift_tests::{datagen, workspace};

fn plan_for(dir: &Path) -> Plan {
    // the patients stream only: one stream, one phase
    let path = dir.join("patients-only.yaml");
    datagen::streams_before(&dir.join("migration.yaml"), "conditions", &path).unwrap();
    let config = MigrationConfig::load(&path).unwrap();
    Plan::prepare(config, &Registry::from_inventory().unwrap()).unwrap()
}

fn peak_rss_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let patients: u64 = match std::env::var("FHIRLIFT_BENCH_PATIENTS") {
        Ok(n) => n.parse().expect("FHIRLIFT_BENCH_PATIENTS is a number"),
        Err(_) if benchmarking => 1_000_000,
        Err(_) => 1_000,
    };
    let dir = workspace().join(format!("target/bench-data/criterion-{patients}"));
    if !dir.join("data/patients.csv").exists() {
        datagen::write_example(&dir, patients, 42).unwrap();
    }
    let plan = plan_for(&dir);

    let mut criterion = Criterion::default().configure_from_args().sample_size(10);
    let mut group = criterion.benchmark_group("map_plan");
    group.throughput(Throughput::Elements(patients));
    group.bench_function(format!("patients_{patients}"), |b| {
        b.iter(|| {
            let mut sink = DiscardSink::default();
            let mut rejects = RejectWriter::counting_only();
            let summary = plan.run(&mut sink, &mut rejects).unwrap();
            assert_eq!(summary.resources(), patients);
            sink.requests
        })
    });
    group.finish();
    criterion.final_summary();
    if let Some(mb) = peak_rss_mb() {
        println!("peak RSS of the benchmark process: {mb} MB ({patients} patient rows)");
    }
}
