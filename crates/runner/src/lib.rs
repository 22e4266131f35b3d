//! The `fhirlift` command line: loads a migration, wires the chosen
//! connector through the mapper and planner to a sink, and reports.
//!
//! Exit codes: 0 everything went; 1 nothing ran (bad configuration, an
//! unreadable source); 2 the run finished but records were rejected or a
//! stream stopped early.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use fhirlift_core::config::MigrationConfig;
use fhirlift_core::pipeline::{DiscardSink, DryRunSink, Plan, RunSummary};
use fhirlift_core::registry::Registry;
use fhirlift_core::rejects::RejectWriter;

mod report;

// Links the built-in connectors named in Cargo.toml (see build.rs).
include!(concat!(env!("OUT_DIR"), "/connectors.rs"));

/// Exit code: the run finished but some records did not go.
pub const EXIT_REJECTS: u8 = 2;
/// Exit code: nothing ran.
pub const EXIT_ERROR: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "fhirlift",
    version,
    about = "Move a clinic's data into a FHIR R4 server, idempotently"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the connectors this build knows.
    Connectors,
    /// Validate the migration against its source and print the plan.
    Check {
        /// The migration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Skip the pass that maps every record to count requests and rejects.
        #[arg(long)]
        no_count: bool,
    },
    /// Print the FHIR resources the first records of a stream map to.
    Preview {
        #[arg(short, long)]
        config: PathBuf,
        /// The stream to preview.
        #[arg(short, long)]
        stream: String,
        /// How many records.
        #[arg(short, long, default_value_t = 3)]
        limit: usize,
    },
    /// Run the migration.
    Migrate {
        #[arg(short, long)]
        config: PathBuf,
        /// Write every request bundle to this folder instead of sending it.
        #[arg(long, value_name = "DIR")]
        dry_run: Option<PathBuf>,
        /// Where rejected records go (NDJSON, owner-only). Default: fhirlift-rejects.ndjson
        /// in the dry-run folder, or next to the migration file.
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
        /// Also write the summary as JSON to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
}

/// Runs the command line; returns the process exit code.
pub fn run(
    args: impl IntoIterator<Item = OsString>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_ERROR } else { 0 };
            let _ = if e.use_stderr() {
                write!(err, "{e}")
            } else {
                write!(out, "{e}")
            };
            return code;
        }
    };
    init_logging(matches!(cli.command, Command::Migrate { .. }));
    match execute(cli.command, out) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "error: {e:#}");
            EXIT_ERROR
        }
    }
}

fn init_logging(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if verbose { "info" } else { "warn" };
    let filter =
        EnvFilter::try_from_env("FHIRLIFT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn load(config: &Path) -> anyhow::Result<Plan> {
    let registry = Registry::from_inventory()?;
    let config = MigrationConfig::load(config).map_err(|e| anyhow!("{e}"))?;
    Plan::prepare(config, &registry).map_err(|e| anyhow!("the migration is not valid:\n{e}"))
}

fn execute(command: Command, out: &mut dyn Write) -> anyhow::Result<u8> {
    match command {
        Command::Connectors => {
            let registry = Registry::from_inventory()?;
            writeln!(
                out,
                "{:<12} {:<10} {:<9} description",
                "name", "origin", "version"
            )?;
            for c in registry.iter() {
                writeln!(
                    out,
                    "{:<12} {:<10} {:<9} {}",
                    c.name, "built-in", c.version, c.description
                )?;
            }
            Ok(0)
        }
        Command::Check { config, no_count } => {
            let plan = load(&config)?;
            report::write_plan(out, &plan)?;
            if no_count {
                return Ok(0);
            }
            let mut sink = DiscardSink::default();
            let mut rejects = RejectWriter::counting_only();
            let summary = plan.run(&mut sink, &mut rejects)?;
            writeln!(out)?;
            report::write_summary(out, &summary, "planned")?;
            if summary.rejected() > 0 {
                writeln!(
                    out,
                    "{} records would be rejected: `fhirlift migrate --dry-run DIR` writes them, with reasons, to DIR/fhirlift-rejects.ndjson",
                    summary.rejected()
                )?;
            }
            Ok(exit_code(&summary))
        }
        Command::Preview {
            config,
            stream,
            limit,
        } => {
            let plan = load(&config)?;
            let mapped = plan.preview(&stream, limit).map_err(|e| anyhow!(e))?;
            let mut failed = false;
            for item in mapped {
                match item {
                    Ok(json) => writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?,
                    Err(e) => {
                        failed = true;
                        writeln!(
                            out,
                            "{}",
                            serde_json::to_string_pretty(&serde_json::json!({
                                "record": e.provenance.to_string(),
                                "error": e.to_string(),
                            }))?
                        )?;
                    }
                }
            }
            Ok(if failed { EXIT_REJECTS } else { 0 })
        }
        Command::Migrate {
            config,
            dry_run,
            rejects,
            report,
        } => {
            let Some(dir) = dry_run else {
                return Err(anyhow!(
                    "this build of fhirlift plans requests but does not send them yet: pass --dry-run DIR to write the request bundles as files"
                ));
            };
            let plan = load(&config)?;
            let rejects_path = rejects.unwrap_or_else(|| dir.join("fhirlift-rejects.ndjson"));
            if rejects_path.exists() {
                std::fs::remove_file(&rejects_path).with_context(|| {
                    format!(
                        "cannot replace the old rejects file {}",
                        rejects_path.display()
                    )
                })?;
            }
            let mut sink = DryRunSink::create(&dir)?;
            let mut rejects = RejectWriter::new(&rejects_path);
            let summary = plan.run(&mut sink, &mut rejects)?;
            report::write_summary(out, &summary, "written")?;
            writeln!(out, "request bundles: {}", dir.display())?;
            if let Some(path) = &summary.rejects_file {
                writeln!(out, "rejected records, with reasons: {}", path.display())?;
            }
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
                    .with_context(|| format!("cannot write the report {}", path.display()))?;
            }
            Ok(exit_code(&summary))
        }
    }
}

fn exit_code(summary: &RunSummary) -> u8 {
    if summary.rejected() > 0 || summary.failed() {
        EXIT_REJECTS
    } else {
        0
    }
}
