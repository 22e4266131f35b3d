//! `fhirlift verify`: the command line's side of `fhirlift-verify` (the
//! server or the embedded sandbox to read, credentials, the findings file).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use fhirlift_http::ServerReader;
use fhirlift_verify::VerifyOptions;

use crate::{AuthArgs, EXIT_REJECTS, PluginDirs, TargetArgs, load_with};

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The migration file.
    #[arg(short, long)]
    config: PathBuf,
    /// The FHIR server's base URL.
    #[arg(long, value_name = "URL", conflicts_with = "sandbox")]
    server: Option<String>,
    /// Read the embedded sandbox's store in DIR (never saved back).
    #[arg(long, value_name = "DIR")]
    sandbox: Option<PathBuf>,
    #[command(flatten)]
    auth: AuthArgs,
    /// Also list resources in the migration's identifier systems that no
    /// source record maps to (rows deleted at the source since).
    #[arg(long)]
    orphans: bool,
    /// Write every finding but `equal` to this file as NDJSON, with the
    /// values that differ (owner-only: it holds patient data).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Also write the counts as JSON to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Also write the findings' counts as one self-contained HTML page.
    #[arg(long, value_name = "FILE")]
    report_html: Option<PathBuf>,
    /// Batches searched at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// The longest one search may take.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    request_timeout: u64,
    /// Send credentials over plain http:// to a host that is not this machine.
    #[arg(long)]
    allow_insecure_http: bool,
}

pub(crate) fn verify(
    args: VerifyArgs,
    plugins: &mut PluginDirs<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    if !args.allow_insecure_http
        && let Some(host) = args
            .server
            .as_deref()
            .and_then(fhirlift_http::insecure_remote_host)
    {
        anyhow::bail!(
            "refusing to send credentials over plain http:// to {host}, which is not this \
             machine: use https://, or --allow-insecure-http"
        );
    }
    let plan = load_with(&args.config, &TargetArgs::default(), plugins, |_| Ok(None))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let embedded = match &args.sandbox {
        Some(dir) => {
            let store = fhirlift_sandbox::Store::load(dir)?;
            Some(runtime.block_on(fhirlift_sandbox::Sandbox::start_with(
                Default::default(),
                store,
            ))?)
        }
        None => None,
    };
    let base_url = match (&args.server, &embedded) {
        (Some(url), _) => url.clone(),
        (None, Some(sb)) => sb.base_url(),
        (None, None) => {
            return Err(anyhow!(
                "say which server to verify: --server URL (a FHIR R4 base) or --sandbox DIR"
            ));
        }
    };
    let reader = ServerReader::new(
        &base_url,
        args.auth.auth()?,
        Duration::from_secs(args.request_timeout.max(1)),
    )?;
    let options = VerifyOptions {
        orphans: args.orphans,
        concurrency: args.concurrency,
        out: args.out.clone(),
    };
    let summary = fhirlift_verify::verify(&plan, &reader, &runtime, &options)?;
    if let Some(sb) = embedded {
        runtime.block_on(sb.stop());
    }
    summary.write_table(out)?;
    if let Some(path) = &args.out {
        writeln!(
            out,
            "findings, with the values that differ: {}",
            path.display()
        )?;
    }
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("cannot write the report {}", path.display()))?;
    }
    if let Some(path) = &args.report_html {
        let target = match &args.sandbox {
            Some(dir) => dir.display().to_string(),
            None => base_url.clone(),
        };
        crate::html_report::write_verify(path, &args.config, &target, &summary)?;
        writeln!(out, "report: {}", path.display())?;
    }
    Ok(if summary.all_equal() { 0 } else { EXIT_REJECTS })
}
