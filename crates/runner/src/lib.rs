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
use fhirlift_core::pipeline::{
    DiscardSink, DryRunSink, LogProgress, Plan, ProgressObserver, RunSummary,
};
use fhirlift_core::registry::Registry;
use fhirlift_core::rejects::RejectWriter;
use fhirlift_core::sender::{Auth, SenderConfig, SenderSink};

mod progress;
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
        #[command(flatten)]
        target: TargetArgs,
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
        #[arg(long, value_name = "DIR", conflicts_with_all = ["server", "sandbox"])]
        dry_run: Option<PathBuf>,
        /// The FHIR server's base URL (e.g. https://api.medplum.com/fhir/R4).
        #[arg(long, value_name = "URL", conflicts_with = "sandbox")]
        server: Option<String>,
        /// Start the embedded sandbox server for this run, loading its store
        /// from DIR and saving it back afterwards.
        #[arg(long, value_name = "DIR")]
        sandbox: Option<PathBuf>,
        #[command(flatten)]
        auth: AuthArgs,
        #[command(flatten)]
        target: TargetArgs,
        /// The most requests in flight (the window adapts below it).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Attempts per request before its entries are rejected.
        #[arg(long, default_value_t = 12)]
        max_attempts: u32,
        /// Where rejected records go (NDJSON, owner-only). Default: fhirlift-rejects.ndjson
        /// in the dry-run folder, or next to the migration file.
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
        /// Also write the summary as JSON to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
}

/// How to write to the server, replacing the migration file's `target:`.
#[derive(Debug, Default, clap::Args)]
struct TargetArgs {
    /// The server profile (generic, medplum, hapi, or auto to read the
    /// server's /metadata).
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// conditional (every write a conditional PUT) or resolve (search
    /// identifiers, then create / update by id / skip unchanged). Default:
    /// resolve on the medplum profile, conditional elsewhere.
    #[arg(long, value_name = "NAME")]
    strategy: Option<String>,
    /// Send batches as async jobs (`Prefer: respond-async`) and poll them:
    /// larger bodies, quota waits on the server's side.
    #[arg(long = "async")]
    asynchronous: bool,
}

/// Credentials: secrets come from the environment or files, never argv.
#[derive(Debug, clap::Args)]
struct AuthArgs {
    /// A bearer token, from this environment variable.
    #[arg(long, value_name = "VAR")]
    token_env: Option<String>,
    /// A bearer token, from this file.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// OAuth2 client credentials: the client id.
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// The client secret, from this environment variable.
    #[arg(long, value_name = "VAR")]
    client_secret_env: Option<String>,
    /// The client secret, from this file.
    #[arg(long, value_name = "FILE")]
    client_secret_file: Option<PathBuf>,
    /// The token endpoint (default: from {server}/.well-known/smart-configuration).
    #[arg(long, value_name = "URL")]
    token_url: Option<String>,
    /// HTTP Basic: the user.
    #[arg(long, value_name = "USER")]
    basic_user: Option<String>,
    /// HTTP Basic: the password, from this environment variable.
    #[arg(long, value_name = "VAR")]
    basic_password_env: Option<String>,
    /// HTTP Basic: the password, from this file.
    #[arg(long, value_name = "FILE")]
    basic_password_file: Option<PathBuf>,
}

/// A secret from an environment variable or a file (trimmed); never printed.
fn secret(
    env: &Option<String>,
    file: &Option<PathBuf>,
    what: &str,
) -> anyhow::Result<Option<String>> {
    if let Some(var) = env {
        let value = std::env::var(var)
            .map_err(|_| anyhow!("{what}: the environment variable {var} is not set"))?;
        return Ok(Some(value.trim().to_owned()));
    }
    if let Some(path) = file {
        let value = std::fs::read_to_string(path)
            .with_context(|| format!("{what}: cannot read {}", path.display()))?;
        return Ok(Some(value.trim().to_owned()));
    }
    Ok(None)
}

impl AuthArgs {
    fn auth(&self) -> anyhow::Result<Auth> {
        if let Some(token) = secret(&self.token_env, &self.token_file, "the bearer token")? {
            return Ok(Auth::Bearer(token));
        }
        if let Some(client_id) = &self.client_id {
            let client_secret = secret(
                &self.client_secret_env,
                &self.client_secret_file,
                "the client secret",
            )?
            .ok_or_else(|| {
                anyhow!("--client-id needs --client-secret-env VAR or --client-secret-file FILE")
            })?;
            return Ok(Auth::ClientCredentials {
                client_id: client_id.clone(),
                client_secret,
                token_url: self.token_url.clone(),
            });
        }
        if let Some(user) = &self.basic_user {
            let password = secret(
                &self.basic_password_env,
                &self.basic_password_file,
                "the password",
            )?
            .ok_or_else(|| {
                anyhow!("--basic-user needs --basic-password-env VAR or --basic-password-file FILE")
            })?;
            return Ok(Auth::Basic {
                user: user.clone(),
                password,
            });
        }
        Ok(Auth::None)
    }
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

/// Progress bars on a terminal, periodic log lines elsewhere.
fn observer() -> Box<dyn ProgressObserver> {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        Box::new(progress::BarProgress::new())
    } else {
        Box::new(LogProgress::new())
    }
}

fn init_logging(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    // on a terminal the progress bars say what info lines would
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let default = if verbose && !on_terminal {
        "info"
    } else {
        "warn"
    };
    let filter =
        EnvFilter::try_from_env("FHIRLIFT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn load(config: &Path) -> anyhow::Result<Plan> {
    load_with(config, &TargetArgs::default(), |_| Ok(None))
}

/// Loads a migration with the command line's target choices replacing the
/// file's; profile `auto` asks `detect` for the server's profile.
fn load_with(
    config: &Path,
    target: &TargetArgs,
    detect: impl FnOnce(&MigrationConfig) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<Plan> {
    let registry = Registry::from_inventory()?;
    let mut config = MigrationConfig::load(config).map_err(|e| anyhow!("{e}"))?;
    if let Some(p) = &target.profile {
        config.target.profile = p.clone();
    }
    if let Some(s) = &target.strategy {
        config.target.strategy = Some(s.clone());
    }
    if target.asynchronous {
        config.target.asynchronous = true;
    }
    if config.target.profile == "auto"
        && let Some(found) = detect(&config)?
    {
        tracing::info!(profile = %found, "server profile chosen from /metadata");
        config.target.profile = found;
    }
    Plan::prepare(config, &registry).map_err(|e| anyhow!("the migration is not valid:\n{e}"))
}

/// The profile for `auto`: the embedded sandbox is a generic server; a real
/// one says what it is at `/metadata`.
fn detect_profile(
    server: Option<&str>,
    sandbox: bool,
    auth: &AuthArgs,
) -> anyhow::Result<Option<String>> {
    if sandbox {
        return Ok(Some("generic".into()));
    }
    let Some(url) = server else {
        return Ok(None);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let metadata = runtime
        .block_on(fhirlift_core::sender::fetch_capability(url, auth.auth()?))
        .map_err(|e| anyhow!("profile auto: {e}; name a profile with --profile instead"))?;
    Ok(Some(
        fhirlift_core::profile::ServerProfile::name_for_capability(&metadata).to_owned(),
    ))
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
            let mut maps = registry.maps().peekable();
            if maps.peek().is_some() {
                writeln!(out, "\nbuilt-in maps (a stream's `map:`):")?;
                for m in maps {
                    writeln!(out, "{:<12} {}", m.name, m.description)?;
                }
            }
            Ok(0)
        }
        Command::Check {
            config,
            no_count,
            target,
        } => {
            let plan = load_with(&config, &target, |_| Ok(None))?;
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
            server,
            sandbox,
            auth,
            target,
            concurrency,
            max_attempts,
            rejects,
            report,
        } => {
            let plan = load_with(&config, &target, |_| {
                detect_profile(server.as_deref(), sandbox.is_some(), &auth)
            })?;
            let default_dir = match (&dry_run, &sandbox) {
                (Some(dir), _) | (None, Some(dir)) => dir.clone(),
                (None, None) => config.parent().map(Path::to_path_buf).unwrap_or_default(),
            };
            let rejects_path =
                rejects.unwrap_or_else(|| default_dir.join("fhirlift-rejects.ndjson"));
            if rejects_path.exists() {
                std::fs::remove_file(&rejects_path).with_context(|| {
                    format!(
                        "cannot replace the old rejects file {}",
                        rejects_path.display()
                    )
                })?;
            }
            let mut rejects = RejectWriter::new(&rejects_path);
            let summary = if let Some(dir) = dry_run {
                let mut sink = DryRunSink::create(&dir)?;
                let summary = plan.run_observed(&mut sink, &mut rejects, observer().as_mut())?;
                report::write_summary(out, &summary, "planned")?;
                writeln!(out, "request bundles: {}", dir.display())?;
                summary
            } else {
                send(
                    &plan,
                    server,
                    sandbox,
                    &auth,
                    concurrency,
                    max_attempts,
                    &mut rejects,
                    out,
                )?
            };
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

/// Runs the plan against a server (or the embedded sandbox).
#[allow(clippy::too_many_arguments)]
fn send(
    plan: &Plan,
    server: Option<String>,
    sandbox: Option<PathBuf>,
    auth: &AuthArgs,
    concurrency: usize,
    max_attempts: u32,
    rejects: &mut RejectWriter,
    out: &mut dyn Write,
) -> anyhow::Result<RunSummary> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let embedded = match &sandbox {
        Some(dir) => {
            let store = fhirlift_sandbox::Store::load(dir)?;
            let sb = runtime.block_on(fhirlift_sandbox::Sandbox::start_with(
                Default::default(),
                store,
            ))?;
            tracing::info!(url = %sb.base_url(), store = %dir.display(), "sandbox started");
            Some(sb)
        }
        None => None,
    };
    let base_url = match (&server, &embedded) {
        (Some(url), _) => url.clone(),
        (None, Some(sb)) => sb.base_url(),
        (None, None) => {
            return Err(anyhow!(
                "say where to write: --server URL (a FHIR R4 base), --sandbox DIR (the embedded test server), or --dry-run DIR (files)"
            ));
        }
    };
    let mut config = SenderConfig::new(&base_url);
    config.auth = auth.auth()?;
    config.max_in_flight = concurrency.max(1);
    config.max_attempts = max_attempts.max(1);
    config.strategy = plan.profile.strategy;
    config.resolve_references = plan.profile.resolves_references_itself();
    config.asynchronous = plan.profile.asynchronous;
    tracing::info!(
        profile = %plan.profile.name,
        strategy = plan.profile.strategy.as_str(),
        asynchronous = plan.profile.asynchronous,
        "writing"
    );
    let mut sink = SenderSink::start(runtime.handle(), config)?;
    let result = plan.run_observed(&mut sink, rejects, observer().as_mut());
    // every phase ends settled; anything left comes from a run that stopped
    let _ = sink.finish();
    let summary = result?;
    report::write_summary(out, &summary, "accounted for")?;
    if let (Some(sb), Some(dir)) = (embedded, &sandbox) {
        sb.save(dir)?;
        writeln!(out, "sandbox store saved to {}", dir.display())?;
        runtime.block_on(sb.stop());
    }
    Ok(summary)
}

fn exit_code(summary: &RunSummary) -> u8 {
    if summary.rejected() > 0 || summary.failed() {
        EXIT_REJECTS
    } else {
        0
    }
}
