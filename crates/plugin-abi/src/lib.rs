//! The C ABI between fhirlift and a connector plugin (version 1).
//!
//! A plugin is a shared library (`.so`, `.dylib`, `.dll`) that fhirlift
//! loads at run time from a plugins folder. Rust trait objects have no
//! stable layout across compilers, and a loaded library has its own copies
//! of `inventory`, `tracing` and `tokio` statics, so the two sides only
//! share what this crate defines: plain C functions, bytes and JSON.
//! Plugins written in Rust use `fhirlift-plugin-sdk`, which implements all
//! of this from an ordinary `SourceConnector`; this page is for anyone
//! writing one by hand (in Rust, C, Zig, ...).
//!
//! # Entry point
//!
//! The library exports one symbol, [`ENTRY_SYMBOL`] (`fhirlift_plugin_v1`):
//! a C function without arguments returning a pointer to a static
//! [`PluginDescriptor`]. `abi_version` is its first field and stays first
//! in every future version, so the host reads it before anything else and
//! refuses a plugin whose version is not [`ABI_VERSION`].
//!
//! # Calls
//!
//! - `manifest()` gives a [`Buf`] of JSON: `{"name", "version",
//!   "description", "config_schema" (a JSON Schema of the `source:`
//!   settings, or null; the host refuses settings that do not match it
//!   before `schema` or `open` is called), "streams" (a list of stream
//!   names the plugin knows, or null)}`. `name` is non-empty and made of `[a-z0-9_-]`; it
//!   is what a migration's `source.connector` names.
//! - `schema(config, len, out)` writes a JSON array of column names.
//! - `open(config, len, out)` starts reading one stream and writes an
//!   opaque [`Handle`].
//! - `next_batch(handle, out)` writes the next batch of messages (below);
//!   it may block until data is there.
//! - `close(handle)` stops reading and releases the handle; called exactly
//!   once per opened handle, also after an error.
//! - `free_buf(buf)` releases a [`Buf`] the plugin handed out.
//! - `last_error(out)` writes the message (UTF-8 text) of the last failed
//!   call made **on the calling thread**; returns nonzero when there is none.
//!
//! `config` (for `schema` and `open`) is UTF-8 JSON: `{"settings": the
//! migration's source: settings, "base_dir": the migration file's folder,
//! "stream", "from", "key": [columns], "options": the stream's connector
//! options, "resume_after": a provenance (below) or null, "log_level":
//! "error" | "warn" | "info" | "debug" | "trace"}`.
//!
//! Functions returning `i32` return [`OK`] or an error code
//! ([`ERR_SETTING`] for a configuration the user must fix, [`ERR_SOURCE`]
//! when the source cannot be read, [`ERR_PANIC`] when the plugin caught a
//! panic of its own, [`ERR_INVALID`] for a call the host got wrong); after
//! an error, `last_error` says what happened. A panic must never unwind
//! out of any of these functions: that aborts the host.
//!
//! # Batches
//!
//! A batch is UTF-8, newline-delimited JSON; each line is one message:
//!
//! ```text
//! {"schema": ["id", "name", ...]}                  columns of the records that follow (first)
//! {"record": {"key": "...", "values": {"id": ..., ...}, "provenance": {...}}}
//! {"reject": {"provenance": {...}, "reason": "...", "hint": "..."}}
//! {"log": {"level": "info", "message": "..."}}
//! {"end": true}                                    the stream is complete
//! ```
//!
//! An empty batch also means the end. Values are `null`, a string (text),
//! an integer (integer), `{"decimal": "12.50"}` (exact digits), a boolean,
//! `{"json": any}`, or an array of values. A provenance is
//! `{"kind": "file", "file", "line"}`, `{"kind": "table", "table", "key"}`
//! or `{"kind": "message", "file", "offset", "control_id"}`; resuming,
//! the plugin skips every record at or before `resume_after`, in its own
//! reading order. Reasons and hints go to the owner-only rejects file; log
//! messages must not quote patient data.
//!
//! # Checkpoints
//!
//! A record's provenance is also its checkpoint: there is no separate state
//! message. The host's ledger keeps, per stream, the provenance of the last
//! record below which every record is acknowledged by the server, and hands
//! it back as `resume_after` on the next run. A source whose position is
//! not a line, a key or an offset (an API's paging cursor, a change-log
//! sequence) writes its position into a `table` provenance's `key` (any
//! string, JSON included) and reads it back from `resume_after`. Records
//! must come in the same order on every run for a checkpoint to mean
//! anything; a stream read to its end starts from the beginning next time.
//!
//! # Memory and threads
//!
//! Memory is freed by the side that allocated it: every [`Buf`] the plugin
//! writes is released by the host through the plugin's `free_buf`, and
//! `config` stays owned by the host (valid during the call only). The host
//! calls `schema` and `open` from its planning thread and `next_batch` and
//! `close` from one dedicated thread per stream, never from an async
//! runtime's worker; several streams may be open at once. The host never
//! unloads a plugin.

use std::ffi::c_void;

/// The ABI version this crate describes.
pub const ABI_VERSION: u32 = 1;

/// The one symbol a plugin exports, with its C string terminator.
pub const ENTRY_SYMBOL: &[u8] = b"fhirlift_plugin_v1\0";

/// The symbol's name, for messages.
pub const ENTRY_NAME: &str = "fhirlift_plugin_v1";

/// The call succeeded.
pub const OK: i32 = 0;
/// A setting or option is wrong: the user must change the migration.
pub const ERR_SETTING: i32 = 1;
/// The source cannot be read (I/O, a lost connection, bad data).
pub const ERR_SOURCE: i32 = 2;
/// The plugin panicked; it caught the panic and reports it.
pub const ERR_PANIC: i32 = 3;
/// The host passed something invalid (a null pointer, bad JSON, an unknown handle).
pub const ERR_INVALID: i32 = 4;

/// An opaque pointer to one open stream, owned by the plugin.
pub type Handle = *mut c_void;

/// Bytes allocated by the plugin; freed only by the plugin's `free_buf`.
///
/// `ptr` may be null when `len` and `cap` are 0 (nothing was allocated).
#[repr(C)]
#[derive(Debug)]
pub struct Buf {
    pub ptr: *mut u8,
    pub len: usize,
    pub cap: usize,
}

impl Buf {
    /// An empty buffer: nothing to free.
    pub const EMPTY: Buf = Buf {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };

    /// Hands a vector over as a `Buf` (the plugin side). The vector is
    /// freed by [`Buf::into_vec`] in the same library.
    pub fn from_vec(bytes: Vec<u8>) -> Buf {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        Buf {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            cap: bytes.capacity(),
        }
    }

    /// Takes back a vector made by [`Buf::from_vec`] (the plugin side,
    /// in `free_buf`).
    ///
    /// # Safety
    /// `self` came from `Buf::from_vec` in this very library and was not
    /// taken back before.
    pub unsafe fn into_vec(self) -> Vec<u8> {
        if self.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: the caller guarantees the parts come from a Vec<u8> of this allocator.
        unsafe { Vec::from_raw_parts(self.ptr, self.len, self.cap) }
    }

    /// The bytes, borrowed (the host side, before `free_buf`).
    ///
    /// # Safety
    /// `ptr` points to `len` readable bytes, or is null with `len` 0.
    pub unsafe fn as_slice(&self) -> &[u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: the caller guarantees ptr/len describe live bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// What the entry symbol returns. `abi_version` stays the first field in
/// every version of the ABI.
#[repr(C)]
pub struct PluginDescriptor {
    /// [`ABI_VERSION`] of the crate the plugin was built with.
    pub abi_version: u32,
    /// The manifest, as JSON (see the crate docs).
    pub manifest: extern "C" fn() -> Buf,
    /// The columns of a stream: JSON array of names in `out`.
    pub schema: extern "C" fn(config: *const u8, len: usize, out: *mut Buf) -> i32,
    /// Opens a stream; the handle goes to `out`.
    pub open: extern "C" fn(config: *const u8, len: usize, out: *mut Handle) -> i32,
    /// The next batch of NDJSON messages in `out`; empty at the end.
    pub next_batch: extern "C" fn(handle: Handle, out: *mut Buf) -> i32,
    /// Closes a stream opened by `open`.
    pub close: extern "C" fn(handle: Handle),
    /// Frees a buffer the plugin handed out.
    pub free_buf: extern "C" fn(buf: Buf),
    /// The last error on the calling thread, as text in `out`.
    pub last_error: extern "C" fn(out: *mut Buf) -> i32,
}

/// The type of the entry symbol.
pub type EntryFn = unsafe extern "C" fn() -> *const PluginDescriptor;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buf_round_trips_a_vector() {
        let buf = Buf::from_vec(b"hello".to_vec());
        assert_eq!(unsafe { buf.as_slice() }, b"hello");
        assert_eq!(unsafe { buf.into_vec() }, b"hello");
        assert_eq!(unsafe { Buf::EMPTY.as_slice() }, b"");
        assert!(unsafe { Buf::EMPTY.into_vec() }.is_empty());
    }

    #[test]
    fn the_symbol_is_nul_terminated_and_named() {
        assert_eq!(
            &ENTRY_SYMBOL[..ENTRY_SYMBOL.len() - 1],
            ENTRY_NAME.as_bytes()
        );
        assert_eq!(ENTRY_SYMBOL.last(), Some(&0));
    }
}
