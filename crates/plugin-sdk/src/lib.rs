//! Write a fhirlift connector plugin: an ordinary [`SourceConnector`]
//! served over the plugin ABI (`fhirlift-plugin-abi`) from a shared library
//! that fhirlift loads at run time.
//!
//! ```ignore
//! // Cargo.toml: [lib] crate-type = ["cdylib"]; depends on fhirlift-core
//! // and fhirlift-plugin-sdk.
//! fn create(
//!     settings: &serde_json::Value,
//!     context: &ConnectorContext,
//! ) -> Result<Box<dyn SourceConnector>, ConnectorError> { ... }
//!
//! fhirlift_plugin_sdk::export_connector! {
//!     name: "fixed-width",
//!     description: "fixed-width text files",
//!     create: create,
//! }
//! ```
//!
//! [`export_connector!`] generates the `fhirlift_plugin_v1` symbol and the
//! C functions behind it ([`runtime`]):
//!
//! - every entry point runs inside `catch_unwind`: a panic becomes an
//!   error code and the message "the plugin panicked in next_batch: ..."
//!   (a panic must never unwind into the host: that would abort it). A
//!   panic on the connector's reader thread, which would otherwise end the
//!   stream as if it were complete, is reported the same way at its end;
//! - `open` builds the connector from the `source:` settings and opens the
//!   stream; `next_batch` takes the next chunk of the [`RecordStream`]
//!   (the connector's own thread; no async runtime is needed) and encodes
//!   it as newline-delimited JSON ([`encode`]);
//! - `tracing` events inside the plugin (the plugin has its own copy of
//!   `tracing`, whose dispatcher the host cannot reach) are buffered by a
//!   small subscriber ([`logging`]) and travel in the next batch as `log`
//!   messages; the host logs them with the plugin's name. Use
//!   `tracing::info!` and friends as a built-in connector would.
//!
//! A connector written for the plugin ABI is the same code as a built-in
//! one: only the registration differs (`register_connector!` links it into
//! the binary, `export_connector!` exports it from a library).
//!
//! [`SourceConnector`]: fhirlift_core::SourceConnector
//! [`RecordStream`]: fhirlift_core::RecordStream

pub mod encode;
pub mod logging;
pub mod runtime;

pub use fhirlift_core;
pub use fhirlift_plugin_abi as abi;

/// Exports a connector from this library as a fhirlift plugin.
///
/// `create` has the type of a built-in connector's factory:
/// `fn(&serde_json::Value, &ConnectorContext) -> Result<Box<dyn SourceConnector>, ConnectorError>`.
/// `config_schema`, optional, is the JSON Schema of the `source:` settings
/// as JSON text; the host checks the settings against it before calling
/// `create` (see `fhirlift_plugin_host::schema` for the keywords it
/// knows). `streams`, optional, the stream names the plugin knows.
/// The version is the plugin crate's own (`CARGO_PKG_VERSION`). Use once
/// per library.
#[macro_export]
macro_rules! export_connector {
    (
        name: $name:expr,
        description: $description:expr,
        create: $create:expr
        $(, config_schema: $schema:expr)?
        $(, streams: [$($stream:expr),* $(,)?])?
        $(,)?
    ) => {
        const _: () = {
            use $crate::abi::{Buf, Handle, PluginDescriptor};

            static PLUGIN: $crate::runtime::Plugin = $crate::runtime::Plugin {
                name: $name,
                version: env!("CARGO_PKG_VERSION"),
                description: $description,
                config_schema: $crate::__first!($(Some($schema),)? None),
                streams: $crate::__first!($(Some(&[$($stream),*]),)? None),
                create: $create,
            };

            extern "C" fn manifest() -> Buf {
                $crate::runtime::manifest(&PLUGIN)
            }
            extern "C" fn schema(config: *const u8, len: usize, out: *mut Buf) -> i32 {
                // SAFETY: the host passes `len` readable bytes and a writable `out` (the ABI).
                unsafe { $crate::runtime::schema(&PLUGIN, config, len, out) }
            }
            extern "C" fn open(config: *const u8, len: usize, out: *mut Handle) -> i32 {
                // SAFETY: as above.
                unsafe { $crate::runtime::open(&PLUGIN, config, len, out) }
            }
            extern "C" fn next_batch(handle: Handle, out: *mut Buf) -> i32 {
                // SAFETY: `handle` came from `open` and is not closed (the ABI).
                unsafe { $crate::runtime::next_batch(handle, out) }
            }
            extern "C" fn close(handle: Handle) {
                // SAFETY: as above; the host closes a handle once.
                unsafe { $crate::runtime::close(handle) }
            }
            extern "C" fn free_buf(buf: Buf) {
                // SAFETY: every Buf the host holds was made by this library.
                unsafe { $crate::runtime::free_buf(buf) }
            }
            extern "C" fn last_error(out: *mut Buf) -> i32 {
                // SAFETY: `out` is writable (the ABI).
                unsafe { $crate::runtime::last_error(out) }
            }

            static DESCRIPTOR: PluginDescriptor = PluginDescriptor {
                abi_version: $crate::abi::ABI_VERSION,
                manifest,
                schema,
                open,
                next_batch,
                close,
                free_buf,
                last_error,
            };

            #[unsafe(no_mangle)]
            pub extern "C" fn fhirlift_plugin_v1() -> *const PluginDescriptor {
                &DESCRIPTOR
            }
        };
    };
}

/// The first of its arguments (for the macro's optional parts).
#[doc(hidden)]
#[macro_export]
macro_rules! __first {
    ($first:expr $(, $rest:expr)* $(,)?) => {
        $first
    };
}
