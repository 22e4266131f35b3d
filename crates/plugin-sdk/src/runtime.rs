//! The plugin side of the ABI, called by the functions
//! [`export_connector!`](crate::export_connector) generates.
//!
//! Each entry point runs its work in `catch_unwind` ([`guard`]): an error
//! or a caught panic becomes an error code and a message kept for
//! `last_error`, per thread. `open` builds the connector and opens the
//! stream; the handle owns the [`RecordStream`] and is a boxed [`Open`].
//! `next_batch` blocks on the stream's next chunk (the connector's reader
//! thread fills it) and encodes it; a `Failed` event ends the batch before
//! it, and the next call returns its error. A panic hook counts panics
//! outside the entry points (on reader threads): a stream whose reader
//! died in a panic ends in an error, not as if it were complete.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

use fhirlift_core::registry::CreateConnector;
use fhirlift_core::{
    ConnectorContext, ConnectorError, Provenance, RecordStream, Schema, SourceConnector,
    SourceEvent, StreamSource,
};
use fhirlift_plugin_abi::{Buf, ERR_INVALID, ERR_PANIC, ERR_SETTING, ERR_SOURCE, Handle, OK};
use serde_json::{Value as Json, json};

use crate::{encode, logging};

/// What `export_connector!` knows about the plugin.
pub struct Plugin {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
    /// JSON Schema of the `source:` settings, as JSON text.
    pub config_schema: Option<&'static str>,
    pub streams: Option<&'static [&'static str]>,
    pub create: CreateConnector,
}

thread_local! {
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
    static IN_ENTRY: Cell<bool> = const { Cell::new(false) };
}

/// Panics on threads outside the entry points (reader threads), and the
/// last one's message.
static READER_PANICS: AtomicU64 = AtomicU64::new(0);
static READER_PANIC: Mutex<Option<String>> = Mutex::new(None);
static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_ENTRY.try_with(Cell::get).unwrap_or(false) {
                let thread = std::thread::current();
                let message = format!(
                    "{} (thread {})",
                    panic_text(info.payload()),
                    thread.name().unwrap_or("unnamed")
                );
                *READER_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
                READER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// An error on its way to `last_error`.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            code: ERR_INVALID,
            message: message.into(),
        }
    }
}

impl From<ConnectorError> for Failure {
    fn from(e: ConnectorError) -> Failure {
        let code = match e {
            ConnectorError::Setting { .. } => ERR_SETTING,
            ConnectorError::Source { .. } => ERR_SOURCE,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

/// Runs one entry point: errors and panics become a code and a message.
pub fn guard(entry: &str, work: impl FnOnce() -> Result<(), Failure>) -> i32 {
    install_hook();
    logging::install();
    IN_ENTRY.with(|c| c.set(true));
    let result = catch_unwind(AssertUnwindSafe(work));
    IN_ENTRY.with(|c| c.set(false));
    let (code, message) = match result {
        Ok(Ok(())) => return OK,
        Ok(Err(f)) => (f.code, f.message),
        Err(payload) => (
            ERR_PANIC,
            format!("the plugin panicked in {entry}: {}", panic_text(&*payload)),
        ),
    };
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(message));
    code
}

/// `manifest()`: the plugin's name, version, settings schema and streams.
pub fn manifest(plugin: &Plugin) -> Buf {
    let mut out = Buf::EMPTY;
    let code = guard("manifest", || {
        let schema = match plugin.config_schema {
            None => Json::Null,
            Some(text) => serde_json::from_str(text)
                .map_err(|e| Failure::invalid(format!("the config_schema is not JSON: {e}")))?,
        };
        let manifest = json!({
            "name": plugin.name,
            "version": plugin.version,
            "description": plugin.description,
            "config_schema": schema,
            "streams": plugin.streams,
        });
        out = Buf::from_vec(manifest.to_string().into_bytes());
        Ok(())
    });
    if code == OK { out } else { Buf::EMPTY }
}

/// The `open`/`schema` config, read.
struct OpenConfig {
    connector: Box<dyn SourceConnector>,
    source: StreamSource,
}

/// # Safety
/// `config` points to `len` readable bytes.
unsafe fn read_config(
    plugin: &Plugin,
    config: *const u8,
    len: usize,
) -> Result<OpenConfig, Failure> {
    if config.is_null() {
        return Err(Failure::invalid("the config pointer is null"));
    }
    // SAFETY: the caller guarantees `len` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(config, len) };
    let config: Json = serde_json::from_slice(bytes)
        .map_err(|e| Failure::invalid(format!("the host's config is not JSON: {e}")))?;
    let text = |key: &str| config.get(key).and_then(Json::as_str).unwrap_or("");
    if let Some(level) = config.get("log_level").and_then(Json::as_str) {
        logging::set_level(level);
    }
    let context = ConnectorContext {
        base_dir: PathBuf::from(text("base_dir")),
    };
    let settings = config.get("settings").cloned().unwrap_or(Json::Null);
    let resume_after = match config.get("resume_after") {
        None | Some(Json::Null) => None,
        Some(p) => Some(
            serde_json::from_value::<Provenance>(p.clone())
                .map_err(|e| Failure::invalid(format!("resume_after is not a provenance: {e}")))?,
        ),
    };
    let source = StreamSource {
        stream: Arc::from(text("stream")),
        from: text("from").to_owned(),
        key: config
            .get("key")
            .and_then(Json::as_array)
            .map(|k| {
                k.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        options: config.get("options").cloned().unwrap_or(Json::Null),
        resume_after,
    };
    let connector = (plugin.create)(&settings, &context)?;
    Ok(OpenConfig { connector, source })
}

/// `schema(config, len, out)`.
///
/// # Safety
/// `config` points to `len` readable bytes; `out` is writable.
pub unsafe fn schema(plugin: &Plugin, config: *const u8, len: usize, out: *mut Buf) -> i32 {
    guard("schema", || {
        if out.is_null() {
            return Err(Failure::invalid("the out pointer is null"));
        }
        // SAFETY: the caller's guarantee.
        let c = unsafe { read_config(plugin, config, len) }?;
        let schema = c.connector.schema(&c.source)?;
        let text = serde_json::to_vec(schema.columns()).expect("names serialize");
        // SAFETY: checked non-null; the caller guarantees it is writable.
        unsafe { out.write(Buf::from_vec(text)) };
        Ok(())
    })
}

/// One open stream, behind a [`Handle`].
pub struct Open {
    stream: RecordStream,
    /// The schema the host last heard of.
    schema: Option<Arc<Schema>>,
    /// An error to return on the next call (the batch before it went first).
    pending: Option<Failure>,
    finished: bool,
    /// Reader-thread panics counted when the stream opened.
    panics_at_open: u64,
    /// Keeps the connector alive as long as its stream.
    _connector: Box<dyn SourceConnector>,
}

/// `open(config, len, out)`.
///
/// # Safety
/// `config` points to `len` readable bytes; `out` is writable.
pub unsafe fn open(plugin: &Plugin, config: *const u8, len: usize, out: *mut Handle) -> i32 {
    guard("open", || {
        if out.is_null() {
            return Err(Failure::invalid("the out pointer is null"));
        }
        // SAFETY: the caller's guarantee.
        let c = unsafe { read_config(plugin, config, len) }?;
        let panics_at_open = READER_PANICS.load(Ordering::SeqCst);
        let stream = c.connector.open(&c.source)?;
        let open = Box::new(Open {
            stream,
            schema: None,
            pending: None,
            finished: false,
            panics_at_open,
            _connector: c.connector,
        });
        // SAFETY: checked non-null; the caller guarantees it is writable.
        unsafe { out.write(Box::into_raw(open).cast()) };
        Ok(())
    })
}

/// `next_batch(handle, out)`.
///
/// # Safety
/// `handle` came from [`open`] and is not closed; `out` is writable.
pub unsafe fn next_batch(handle: Handle, out: *mut Buf) -> i32 {
    guard("next_batch", || {
        if handle.is_null() || out.is_null() {
            return Err(Failure::invalid("a null handle or out pointer"));
        }
        // SAFETY: the caller guarantees a live handle, used by one thread at a time.
        let open = unsafe { &mut *handle.cast::<Open>() };
        let batch = open.next()?;
        // SAFETY: checked non-null; the caller guarantees it is writable.
        unsafe { out.write(Buf::from_vec(batch)) };
        Ok(())
    })
}

impl Open {
    fn next(&mut self) -> Result<Vec<u8>, Failure> {
        if let Some(failure) = self.pending.take() {
            return Err(failure);
        }
        let mut out = Vec::new();
        if self.finished {
            return Ok(out);
        }
        let chunk = self.stream.blocking_next_chunk();
        for (level, message) in logging::drain() {
            encode::log(&mut out, level, &message);
        }
        let Some(chunk) = chunk else {
            self.finished = true;
            if READER_PANICS.load(Ordering::SeqCst) != self.panics_at_open {
                let message = READER_PANIC
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_default();
                return Err(Failure {
                    code: ERR_PANIC,
                    message: format!("the plugin panicked in next_batch: {message}"),
                });
            }
            encode::end(&mut out);
            return Ok(out);
        };
        for event in chunk {
            match event {
                SourceEvent::Record(record) => {
                    if !self
                        .schema
                        .as_ref()
                        .is_some_and(|s| Arc::ptr_eq(s, &record.schema) || **s == *record.schema)
                    {
                        encode::schema(&mut out, &record.schema);
                        self.schema = Some(record.schema.clone());
                    }
                    encode::record(&mut out, &record);
                }
                SourceEvent::Rejected(rejected) => encode::reject(&mut out, &rejected),
                SourceEvent::Failed(e) => {
                    self.finished = true;
                    if out.is_empty() {
                        return Err(e.into());
                    }
                    self.pending = Some(e.into());
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// `close(handle)`.
///
/// # Safety
/// `handle` came from [`open`] and is closed once.
pub unsafe fn close(handle: Handle) {
    if handle.is_null() {
        return;
    }
    guard("close", || {
        // SAFETY: the caller's guarantee: a live handle, closed once.
        drop(unsafe { Box::from_raw(handle.cast::<Open>()) });
        Ok(())
    });
}

/// `free_buf(buf)`.
///
/// # Safety
/// `buf` came from this library and is freed once.
pub unsafe fn free_buf(buf: Buf) {
    guard("free_buf", || {
        // SAFETY: the caller's guarantee.
        drop(unsafe { buf.into_vec() });
        Ok(())
    });
}

/// `last_error(out)`: the last error on this thread; nonzero when none.
///
/// # Safety
/// `out` is writable.
pub unsafe fn last_error(out: *mut Buf) -> i32 {
    if out.is_null() {
        return ERR_INVALID;
    }
    let Some(message) = LAST_ERROR.with(|e| e.borrow().clone()) else {
        return ERR_INVALID;
    };
    // SAFETY: checked non-null; the caller guarantees it is writable.
    unsafe { out.write(Buf::from_vec(message.into_bytes())) };
    OK
}
