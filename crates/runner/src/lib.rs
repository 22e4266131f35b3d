//! The `fhirlift` command line: loads a migration, wires the chosen
//! connector through the mapper and planner to a sink, and reports.
//!
//! Exit codes: 0 everything went; 1 nothing ran (bad configuration, an
//! unreadable source); 2 the run finished but records were rejected or a
//! stream stopped early.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use fhirlift_core::registry::Registry;
use fhirlift_core::transport::DiscardSink;
use fhirlift_http::{Auth, SenderConfig, SenderSink};
use fhirlift_ledger::Ledger;
use fhirlift_mapping::config::MigrationConfig;
use fhirlift_pipeline::rejects::RejectWriter;
use fhirlift_pipeline::{DryRunSink, LogProgress, Plan, ProgressObserver, RunOptions, RunSummary};

mod delta_probe;
mod html_report;
mod interrupt;
mod progress;
mod report;
mod schema;
mod verify;

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
    /// A folder of connector plugins (shared libraries) to load, besides
    /// the `plugins/` folder next to the migration file (or the current
    /// folder for `connectors`).
    #[arg(long, global = true, value_name = "DIR", env = "FHIRLIFT_PLUGINS")]
    plugins: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the connectors this build knows, and the plugins it finds.
    Connectors,
    /// Print a JSON Schema of migration files, for an editor's YAML
    /// language server: `fhirlift schema > migration.schema.json`.
    Schema,
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
    Migrate(MigrateArgs),
    /// Run again only the records the ledger holds as rejected (after the
    /// mapping or the data was fixed); each one that succeeds is cleared.
    RetryRejects(MigrateArgs),
    /// Compare what the source maps to now with what the server holds
    /// (writes nothing; needs no ledger): equal, different, missing,
    /// duplicated, dangling references, and with --orphans resources no
    /// record maps to. Exit 0 when everything is equal, 2 otherwise.
    Verify(verify::VerifyArgs),
    /// What the ledger knows per stream: done, rejected, pending, last run.
    Status {
        #[arg(short, long)]
        config: PathBuf,
        #[command(flatten)]
        ledger: LedgerArgs,
    },
}

#[derive(Debug, clap::Args)]
struct MigrateArgs {
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
    #[command(flatten)]
    ledger: LedgerArgs,
    /// Send every record and start every stream at its beginning, whatever
    /// the ledger says (the ledger is still updated).
    #[arg(long)]
    full: bool,
    /// Run only this phase (`fhirlift check` lists them). Shards of one
    /// migration run each phase on every shard before the next.
    #[arg(long, value_name = "N")]
    phase: Option<usize>,
    /// The most requests in flight (the window adapts below it).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Attempts per request before its entries are rejected.
    #[arg(long, default_value_t = 12)]
    max_attempts: u32,
    /// Stop the run (exit 1, nothing rejected, the ledger kept) when the
    /// server has answered no request for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    give_up_after: u64,
    /// The longest one request may take before it counts as unanswered.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    request_timeout: u64,
    /// Where rejected records go (NDJSON, owner-only). Default: fhirlift-rejects.ndjson
    /// in the dry-run folder, or next to the migration file.
    #[arg(long, value_name = "FILE")]
    rejects: Option<PathBuf>,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Also write the run as one self-contained HTML page to this file.
    #[arg(long, value_name = "FILE")]
    report_html: Option<PathBuf>,
    /// Send credentials and patient data over plain http:// to a host that
    /// is not this machine (refused without it; use https).
    #[arg(long)]
    allow_insecure_http: bool,
}

/// The ledger file and the shard this process takes.
#[derive(Debug, Default, clap::Args)]
struct LedgerArgs {
    /// The ledger (state) file. Default: beside the migration file,
    /// `<name>.fhirlift-state` (`<name>.shard-K-of-N.fhirlift-state` for a shard).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Take only the records whose key hashes to shard K of N (`K/N`,
    /// K from 0; `auto/N` reads K from JOB_COMPLETION_INDEX). Each shard
    /// keeps its own ledger.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
}

impl LedgerArgs {
    /// `(K, N)` from `--shard`.
    fn shard(&self) -> anyhow::Result<Option<(u64, u64)>> {
        let Some(spec) = &self.shard else {
            return Ok(None);
        };
        let bad = || {
            anyhow!(
                "--shard {spec:?}: write K/N with 0 <= K < N (e.g. 0/4), or auto/N to read K from JOB_COMPLETION_INDEX"
            )
        };
        let (k, n) = spec.split_once('/').ok_or_else(bad)?;
        let n: u64 = n.trim().parse().map_err(|_| bad())?;
        let k: u64 = if k.trim() == "auto" {
            std::env::var("JOB_COMPLETION_INDEX")
                .map_err(|_| anyhow!("--shard auto/{n}: JOB_COMPLETION_INDEX is not set"))?
                .trim()
                .parse()
                .map_err(|_| bad())?
        } else {
            k.trim().parse().map_err(|_| bad())?
        };
        if n == 0 || k >= n {
            return Err(bad());
        }
        Ok(Some((k, n)))
    }

    fn path(&self, config: &Path) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.state {
            return Ok(p.clone());
        }
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        let stem = config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "migration".into());
        Ok(match self.shard()? {
            Some((k, n)) => dir.join(format!("{stem}.shard-{k}-of-{n}.fhirlift-state")),
            None => dir.join(format!("{stem}.fhirlift-state")),
        })
    }
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
    let mut plugins = PluginDirs {
        explicit: cli.plugins,
        warnings: err,
    };
    match execute(cli.command, &mut plugins, out) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(plugins.warnings, "error: {e:#}");
            EXIT_ERROR
        }
    }
}

/// Where connector plugins are looked for, and where a plugin that cannot
/// be used is reported (as a warning: the others load, fhirlift goes on).
struct PluginDirs<'a> {
    /// `--plugins DIR` or `$FHIRLIFT_PLUGINS`.
    explicit: Option<PathBuf>,
    warnings: &'a mut dyn Write,
}

impl PluginDirs<'_> {
    /// The built-in connectors and the plugins of `--plugins` and of
    /// `plugins/` in `beside` (when that folder exists).
    fn registry(&mut self, beside: &Path) -> anyhow::Result<Registry> {
        let mut registry = Registry::from_inventory()?;
        let mut dirs: Vec<PathBuf> = self.explicit.iter().cloned().collect();
        let default = beside.join("plugins");
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if default.is_dir() && !dirs.iter().any(|d| same(d, &default)) {
            dirs.push(default);
        }
        for e in fhirlift_plugin_host::load_into(&mut registry, &dirs) {
            writeln!(self.warnings, "warning: {e}")?;
        }
        Ok(registry)
    }

    /// The registry for a migration file: `plugins/` beside it.
    fn for_config(&mut self, config: &Path) -> anyhow::Result<Registry> {
        self.registry(config.parent().unwrap_or(Path::new("")))
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

fn load(config: &Path, plugins: &mut PluginDirs<'_>) -> anyhow::Result<Plan> {
    load_with(config, &TargetArgs::default(), plugins, |_| Ok(None))
}

/// Loads a migration with the command line's target choices replacing the
/// file's; profile `auto` asks `detect` for the server's profile.
fn load_with(
    config: &Path,
    target: &TargetArgs,
    plugins: &mut PluginDirs<'_>,
    detect: impl FnOnce(&MigrationConfig) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<Plan> {
    let registry = plugins.for_config(config)?;
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
        .block_on(fhirlift_http::fetch_capability(url, auth.auth()?))
        .map_err(|e| anyhow!("profile auto: {e}; name a profile with --profile instead"))?;
    Ok(Some(
        fhirlift_core::profile::ServerProfile::name_for_capability(&metadata).to_owned(),
    ))
}

fn execute(
    command: Command,
    plugins: &mut PluginDirs<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    match command {
        Command::Connectors => {
            report::write_connectors(out, &plugins.registry(Path::new(""))?)?;
            Ok(0)
        }
        Command::Schema => schema::print(&plugins.registry(Path::new(""))?, out),
        Command::Check {
            config,
            no_count,
            target,
        } => {
            let plan = load_with(&config, &target, plugins, |_| Ok(None))?;
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
                    "{} records would be rejected; the first:",
                    summary.rejected()
                )?;
                for reason in &summary.first_rejects {
                    writeln!(out, "  {reason}")?;
                }
                writeln!(
                    out,
                    "`fhirlift migrate --dry-run DIR` writes them all, with reasons, to DIR/fhirlift-rejects.ndjson"
                )?;
            }
            if summary.collisions() > 0 {
                writeln!(
                    out,
                    "{} collisions: two records of a stream write one identity with different content \
                     (`--dry-run DIR` lists both records of each in DIR/fhirlift-collisions.ndjson)",
                    summary.collisions()
                )?;
            }
            Ok(exit_code(&summary))
        }
        Command::Preview {
            config,
            stream,
            limit,
        } => {
            let plan = load(&config, plugins)?;
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
        Command::Migrate(args) => migrate(args, false, plugins, out),
        Command::RetryRejects(args) => migrate(args, true, plugins, out),
        Command::Verify(args) => verify::verify(args, plugins, out),
        Command::Status { config, ledger } => {
            let path = ledger.path(&config)?;
            if !path.exists() {
                writeln!(
                    out,
                    "no ledger at {}: nothing was migrated with it yet",
                    path.display()
                )?;
                return Ok(0);
            }
            let targets = {
                let probe = Ledger::open(&path, "").map_err(|e| anyhow!("{e}"))?;
                probe.targets().map_err(|e| anyhow!("{e}"))?
            };
            writeln!(out, "ledger {}", path.display())?;
            for target in targets.into_iter().filter(|t| !t.is_empty()) {
                let state = Ledger::open(&path, &target).map_err(|e| anyhow!("{e}"))?;
                report::write_status(out, &target, &state.status().map_err(|e| anyhow!("{e}"))?)?;
            }
            Ok(0)
        }
    }
}

fn migrate(
    args: MigrateArgs,
    only_rejected: bool,
    plugins: &mut PluginDirs<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let MigrateArgs {
        config,
        dry_run,
        server,
        sandbox,
        auth,
        target,
        ledger,
        full,
        phase,
        concurrency,
        max_attempts,
        rejects,
        report,
        report_html,
        allow_insecure_http,
        give_up_after,
        request_timeout,
    } = args;
    // before anything is read or sent (profile auto asks the server)
    if !allow_insecure_http {
        for url in [server.as_deref(), auth.token_url.as_deref()]
            .into_iter()
            .flatten()
        {
            if let Some(host) = fhirlift_http::insecure_remote_host(url) {
                anyhow::bail!(
                    "refusing to send credentials and patient data over plain http:// to {host}, \
                     which is not this machine: use https://, or --allow-insecure-http if the \
                     network between here and {host} is one you trust"
                );
            }
        }
    }
    let plan = load_with(&config, &target, plugins, |_| {
        detect_profile(server.as_deref(), sandbox.is_some(), &auth)
    })?;
    // as --help says: in the dry-run folder, else beside the migration file
    // (never in a sandbox's store folder, which is the server's)
    let default_dir = match &dry_run {
        Some(dir) => dir.clone(),
        None => config.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let rejects_path = rejects.unwrap_or_else(|| default_dir.join("fhirlift-rejects.ndjson"));
    if rejects_path.exists() {
        std::fs::remove_file(&rejects_path).with_context(|| {
            format!(
                "cannot replace the old rejects file {}",
                rejects_path.display()
            )
        })?;
    }
    let mut rejects = RejectWriter::new(&rejects_path);
    if let Some(old) = rejects.collisions_path().filter(|p| p.exists()) {
        std::fs::remove_file(&old)
            .with_context(|| format!("cannot replace the old collisions file {}", old.display()))?;
    }
    let shard = ledger.shard()?;
    let target_shown = match (&server, &sandbox, &dry_run) {
        (Some(url), _, _) => url.clone(),
        (None, Some(dir), _) | (None, None, Some(dir)) => dir.display().to_string(),
        (None, None, None) => String::new(),
    };
    let (summary, timeline) = if let Some(dir) = dry_run {
        if only_rejected {
            return Err(anyhow!(
                "retry-rejects sends to a server: give --server or --sandbox"
            ));
        }
        let mut sink = DryRunSink::create(&dir)?;
        let options = RunOptions {
            shard,
            phase,
            full: true,
            ..RunOptions::default()
        };
        let summary = plan.run_observed(&mut sink, &mut rejects, observer().as_mut(), options)?;
        report::write_summary(out, &summary, "planned")?;
        writeln!(out, "request bundles: {}", dir.display())?;
        (summary, Vec::new())
    } else {
        let state = ledger.path(&config)?;
        // a new sandbox store holds nothing the ledger may have seen
        let fresh_sandbox = sandbox
            .as_ref()
            .is_some_and(|d| std::fs::read_dir(d).map_or(true, |mut e| e.next().is_none()));
        let run = Run {
            state,
            phase,
            full: full || fresh_sandbox,
            shard,
            only_rejected,
        };
        send(
            &plan,
            server,
            sandbox,
            &auth,
            concurrency,
            Patience {
                max_attempts,
                give_up_after: Duration::from_secs(give_up_after.max(1)),
                request_timeout: Duration::from_secs(request_timeout.max(1)),
            },
            &mut rejects,
            run,
            report_html.is_some(),
            out,
        )?
    };
    if let Some(path) = &summary.rejects_file {
        writeln!(out, "rejected records, with reasons: {}", path.display())?;
    }
    if let Some(path) = &summary.collisions_file {
        writeln!(
            out,
            "{} collisions (two records, one identity, other content), with both records: {}",
            summary.collisions(),
            path.display()
        )?;
    }
    if let Some(path) = report {
        std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("cannot write the report {}", path.display()))?;
    }
    if let Some(path) = report_html {
        let command = if only_rejected {
            "retry-rejects"
        } else {
            "migrate"
        };
        let (at, rejects) = (&target_shown, &rejects_path);
        html_report::write_run(&path, command, &config, at, &summary, &timeline, rejects)?;
        writeln!(out, "report: {}", path.display())?;
    }
    Ok(exit_code(&summary))
}

/// How a run to a server uses its ledger.
struct Run {
    state: PathBuf,
    phase: Option<usize>,
    full: bool,
    shard: Option<(u64, u64)>,
    only_rejected: bool,
}

/// How long a run waits for a server before it gives up on a request, and
/// on the server.
struct Patience {
    max_attempts: u32,
    give_up_after: Duration,
    request_timeout: Duration,
}

/// Runs the plan against a server (or the embedded sandbox).
#[allow(clippy::too_many_arguments)]
fn send(
    plan: &Plan,
    server: Option<String>,
    sandbox: Option<PathBuf>,
    auth: &AuthArgs,
    concurrency: usize,
    patience: Patience,
    rejects: &mut RejectWriter,
    run: Run,
    timeline: bool,
    out: &mut dyn Write,
) -> anyhow::Result<(RunSummary, Vec<fhirlift_report::Sample>)> {
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
    config.max_attempts = patience.max_attempts.max(1);
    config.give_up_after = patience.give_up_after;
    config.timeout = patience.request_timeout;
    config.strategy = plan.profile.strategy;
    config.resolve_references = plan.profile.resolves_references_itself();
    config.asynchronous = plan.profile.asynchronous;
    // Ctrl-C: stop reading, settle what is in flight, keep the ledger; the
    // sender drops what waits to be retried
    let stop = Arc::new(AtomicBool::new(false));
    config.interrupted = Some(stop.clone());
    tracing::info!(
        profile = %plan.profile.name,
        strategy = plan.profile.strategy.as_str(),
        asynchronous = plan.profile.asynchronous,
        "writing"
    );
    // nothing is sent before the plan runs, but for the questions below
    let mut sink = SenderSink::start(runtime.handle(), config)?;
    let recorder = timeline.then(|| html_report::recorder(sink.stats.clone()));
    // the ledger is per target: a server by its URL and who writes there
    // (one Medplum URL serves many projects), a sandbox by its store folder
    let target = match (&server, &sandbox) {
        (Some(url), _) => {
            let url = url.trim_end_matches('/');
            let who = sink
                .principal()
                .map_err(|e| anyhow!("cannot tell who the credentials write as: {e}"))?;
            match who {
                Some(who) => format!("{url} as {who}"),
                None => url.to_owned(),
            }
        }
        (None, Some(dir)) => format!(
            "sandbox:{}",
            // the same name whether the store exists yet or not
            std::path::absolute(dir)
                .unwrap_or_else(|_| dir.clone())
                .display()
        ),
        (None, None) => base_url.clone(),
    };
    let mut ledger = Ledger::open(&run.state, &target).map_err(|e| anyhow!("{e}"))?;
    tracing::info!(state = %run.state.display(), target = %target, "ledger opened");
    let full_streams = if run.full || run.only_rejected {
        Default::default()
    } else {
        delta_probe::streams_the_server_lost(plan, &sink, &ledger, out)?
    };
    interrupt::watch_ctrl_c(&runtime, stop.clone());
    let options = RunOptions {
        ledger: Some(&mut ledger),
        full: run.full,
        shard: run.shard,
        only_rejected: run.only_rejected,
        stop: Some(stop),
        phase: run.phase,
        full_streams,
    };
    let result = plan.run_observed(&mut sink, rejects, observer().as_mut(), options);
    // every phase ends settled; anything left comes from a run that stopped
    let _ = sink.finish();
    let samples = recorder.map(fhirlift_report::Recorder::finish);
    let summary = result?;
    report::write_summary(out, &summary, "accounted for")?;
    writeln!(out, "ledger: {}", run.state.display())?;
    if let (Some(sb), Some(dir)) = (embedded, &sandbox) {
        sb.save(dir)?;
        writeln!(out, "sandbox store saved to {}", dir.display())?;
        runtime.block_on(sb.stop());
    }
    Ok((summary, samples.unwrap_or_default()))
}

fn exit_code(summary: &RunSummary) -> u8 {
    if summary.rejected() > 0 || summary.failed() {
        EXIT_REJECTS
    } else {
        0
    }
}
