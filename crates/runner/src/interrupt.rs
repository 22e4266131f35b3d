//! Ctrl-C during a run: the first stops it gracefully (no new requests,
//! those in flight settled, the ledger kept), the second ends the process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Turns the first Ctrl-C into `stop` and the second into exit 130.
///
/// The handler is installed before this returns, not when the watching
/// task first runs: a signal that arrives while the run is starting is a
/// graceful stop, never the default "kill the process".
pub(crate) fn watch_ctrl_c(runtime: &tokio::runtime::Runtime, stop: Arc<AtomicBool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let installed = runtime.block_on(async { signal(SignalKind::interrupt()) });
        match installed {
            Ok(mut interrupts) => {
                runtime.spawn(async move {
                    if interrupts.recv().await.is_some() {
                        tracing::warn!("Ctrl-C: no new requests; waiting for those in flight (Ctrl-C again to quit now)");
                        stop.store(true, Ordering::Relaxed);
                        if interrupts.recv().await.is_some() {
                            std::process::exit(130);
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for Ctrl-C; it will end the run at once")
            }
        }
    }
    #[cfg(not(unix))]
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!(
                "Ctrl-C: no new requests; waiting for those in flight (Ctrl-C again to quit now)"
            );
            stop.store(true, Ordering::Relaxed);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
}
