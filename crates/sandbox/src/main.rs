//! `fhirlift-sandbox`: the sandbox FHIR server on its own (`cargo xtask sandbox`).

use std::time::Duration;

use fhirlift_sandbox::{MedplumBehaviour, Mode, Sandbox, SandboxConfig, Store};

const USAGE: &str = "usage: fhirlift-sandbox [--port N] [--sink] [--store DIR]
       [--rate-429 R] [--rate-409 R] [--rate-412 R] [--rate-503 R] [--rate-reset R] [--latency-ms MIN,MAX] [--seed N]
       [--max-batch-entries N] [--max-body-bytes N] [--max-transaction-entries N]
       [--quota UNITS,SECONDS,WRITE_COST] [--no-validation]
       [--medplum [--transaction-bundles] [--write-cost-ms N] [--search-cost-ms N]
                  [--workers N] [--conflict-rate F]]

Serves FHIR R4 at http://127.0.0.1:PORT/fhir/R4 until Ctrl-C; with --store,
loads DIR/*.ndjson first and saves the store there on exit. Rates are 0..1.
Writes that are not valid FHIR R4 are refused with a 400 OperationOutcome,
as a real server does; --no-validation stores them.

--medplum behaves like a Medplum 5 server (shared/MEDPLUM.md): software.name
\"medplum\" in /metadata, a RateLimit header on every answer, 400 \"File too
large\" over 1 MB, batch entries bucketed (transactions, creates, updates),
serialization conflicts among concurrent conditional writes, non-atomic
transactions, a display on resolved conditional references, async batches
(Prefer: respond-async). The options below imply --medplum:
  --transaction-bundles  the project has the feature: atomic transactions,
                         at most 8 entries with a conditional one, 50 updates
  --write-cost-ms N      server time per write (default 0)
  --search-cost-ms N     server time per search or conditional resolution (default 0)
  --workers N            requests worked on at once, the others queue (default 4)
  --conflict-rate F      409 chance per conditional write for each other request
                         with conditional writes in flight (default 0.05)";

fn main() {
    let mut config = SandboxConfig {
        port: 8103,
        ..SandboxConfig::default()
    };
    let mut store_dir = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    let fail = |msg: &str| -> ! {
        eprintln!("error: {msg}\n{USAGE}");
        std::process::exit(1)
    };
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| fail(&format!("{a} needs a value")))
        };
        let rate = |v: String| {
            v.parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .unwrap_or_else(|| fail(&format!("{a}: {v} is not a rate between 0 and 1")))
        };
        let number = |v: String| {
            v.parse::<u64>()
                .unwrap_or_else(|_| fail(&format!("{a}: {v} is not a number")))
        };
        match a.as_str() {
            "--port" => config.port = number(value()) as u16,
            "--sink" => config.mode = Mode::Sink,
            "--store" => store_dir = Some(std::path::PathBuf::from(value())),
            "--rate-429" => config.faults.rate_429 = rate(value()),
            "--rate-409" => config.faults.rate_409 = rate(value()),
            "--rate-412" => config.faults.rate_412 = rate(value()),
            "--rate-503" => config.faults.rate_503 = rate(value()),
            "--rate-reset" => config.faults.rate_reset = rate(value()),
            "--seed" => config.faults.seed = number(value()),
            "--latency-ms" => {
                let v = value();
                let (lo, hi) = v.split_once(',').unwrap_or((&v, &v));
                config.faults.latency = Some((
                    Duration::from_millis(number(lo.into())),
                    Duration::from_millis(number(hi.into())),
                ));
            }
            "--max-batch-entries" => {
                config.limits.max_batch_entries = Some(number(value()) as usize)
            }
            "--max-body-bytes" => config.limits.max_body_bytes = Some(number(value()) as usize),
            "--max-transaction-entries" => {
                config.limits.max_transaction_entries = Some(number(value()) as usize)
            }
            "--quota" => {
                let v = value();
                let parts: Vec<u64> = v.split(',').map(|p| number(p.to_owned())).collect();
                let [units, secs, cost] = parts[..] else {
                    fail("--quota takes UNITS,SECONDS,WRITE_COST, e.g. 50000,60,120")
                };
                config.limits.quota = Some(fhirlift_sandbox::Quota {
                    units,
                    window: Duration::from_secs(secs),
                    write_cost: cost,
                });
            }
            "--medplum" => {
                config.medplum.get_or_insert_with(MedplumBehaviour::default);
            }
            "--no-validation" => config.no_validation = true,
            "--transaction-bundles" => {
                config
                    .medplum
                    .get_or_insert_with(MedplumBehaviour::default)
                    .transaction_bundles = true
            }
            "--write-cost-ms" => {
                let cost = Duration::from_millis(number(value()));
                config
                    .medplum
                    .get_or_insert_with(MedplumBehaviour::default)
                    .write_cost = cost;
            }
            "--search-cost-ms" => {
                let cost = Duration::from_millis(number(value()));
                config
                    .medplum
                    .get_or_insert_with(MedplumBehaviour::default)
                    .search_cost = cost;
            }
            "--workers" => {
                let workers = number(value()).max(1) as usize;
                config
                    .medplum
                    .get_or_insert_with(MedplumBehaviour::default)
                    .workers = workers;
            }
            "--conflict-rate" => {
                let r = rate(value());
                config
                    .medplum
                    .get_or_insert_with(MedplumBehaviour::default)
                    .conflict_rate = r;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => fail(&format!("unknown option {other}")),
        }
    }
    let runtime = tokio::runtime::Runtime::new()
        .unwrap_or_else(|e| fail(&format!("cannot start a runtime: {e}")));
    runtime.block_on(async {
        let store = match &store_dir {
            Some(dir) => Store::load(dir).unwrap_or_else(|e| fail(&e.to_string())),
            None => Store::default(),
        };
        let sandbox = Sandbox::start_with(config, store)
            .await
            .unwrap_or_else(|e| fail(&e.to_string()));
        println!(
            "sandbox FHIR server at {} (Ctrl-C stops it)",
            sandbox.base_url()
        );
        let _ = tokio::signal::ctrl_c().await;
        if let Some(dir) = &store_dir {
            match sandbox.save(dir) {
                Ok(()) => println!("store saved to {}", dir.display()),
                Err(e) => eprintln!("error: {e}"),
            }
        }
        let stats = sandbox.stats();
        let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "{} requests, {} entries, {} searches, {} faults injected, {} conflicts, {} throttled",
            n(&stats.requests),
            n(&stats.entries),
            n(&stats.searches),
            n(&stats.faults),
            n(&stats.conflicts),
            n(&stats.throttled)
        );
        sandbox.stop().await;
    });
}
