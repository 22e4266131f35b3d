//! Forwards the plugin's `tracing` events to the host.
//!
//! A plugin library carries its own copy of `tracing`: the host's
//! subscriber never sees the plugin's events. The SDK installs, as the
//! plugin's global default, a small subscriber that formats each event
//! (its message and fields) and buffers the line; `next_batch` sends the
//! buffered lines as `log` messages and the host re-emits them with the
//! plugin's name. The level is the host's (`log_level` in the open
//! config); spans are ignored. At most [`MAX_BUFFERED`] lines wait between
//! two batches; beyond that they are counted and dropped.

use std::fmt::Write;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use tracing::field::{Field, Visit};
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// Log lines held between two batches.
pub const MAX_BUFFERED: usize = 10_000;

static LINES: Mutex<Vec<(Level, String)>> = Mutex::new(Vec::new());
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// 1 error .. 5 trace; 0 off.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(3);
static INSTALL: Once = Once::new();

fn rank(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Installs the forwarding subscriber (once per plugin library).
pub fn install() {
    INSTALL.call_once(|| {
        // a plugin that installed its own subscriber keeps it
        let _ = tracing::subscriber::set_global_default(Forward);
    });
}

/// Sets the most detailed level forwarded, from the host's name for it
/// (`off`, `error`, `warn`, `info`, `debug`, `trace`).
pub fn set_level(name: &str) {
    let rank = match name.to_ascii_lowercase().as_str() {
        "off" => 0,
        "error" => 1,
        "warn" => 2,
        "info" => 3,
        "debug" => 4,
        "trace" => 5,
        _ => return,
    };
    MAX_LEVEL.store(rank, Ordering::Relaxed);
}

/// Takes the buffered lines as (level name, message).
pub fn drain() -> Vec<(&'static str, String)> {
    let lines = std::mem::take(&mut *LINES.lock().unwrap_or_else(|e| e.into_inner()));
    let mut out: Vec<(&'static str, String)> = lines
        .into_iter()
        .map(|(level, message)| (level_name(&level), message))
        .collect();
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        out.push((
            "warn",
            format!("{dropped} log lines of the plugin were dropped (more than {MAX_BUFFERED} between two batches)"),
        ));
    }
    out
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

struct Forward;

#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for Forward {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // the level can change (per open): ask every time
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && rank(metadata.level()) <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        line.message.push_str(&line.fields);
        let mut lines = LINES.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() >= MAX_BUFFERED {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        } else {
            lines.push((*event.metadata().level(), line.message));
        }
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}
