//! A plugin as a [`SourceConnector`].
//!
//! `schema` runs the plugin's `schema` on a short-lived thread; `open`
//! starts the stream's reader thread (`RecordStream::from_blocking`),
//! which calls the plugin's `open`, hands its result back to the caller,
//! then calls `next_batch` in a loop and decodes each batch ([`Decoder`])
//! into the stream, and finally `close`: at the end, on an error, or when
//! the consumer dropped the stream. All calls for one stream are made on
//! its reader thread, so the plugin's per-thread `last_error` is the one
//! of the failed call. Every [`Buf`] goes back through the plugin's
//! `free_buf` ([`PluginBuf`]).

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use fhirlift_core::{
    ConnectorContext, ConnectorError, RecordStream, Schema, SourceConnector, SourceEvent,
    StreamSource,
};
use fhirlift_plugin_abi::{Buf, ERR_SETTING, Handle, OK, PluginDescriptor};
use serde_json::{Value as Json, json};

use crate::PluginInfo;
use crate::batch::{Decoder, Flow, string_list};

/// A buffer of the plugin's, freed by the plugin when dropped.
pub struct PluginBuf {
    descriptor: &'static PluginDescriptor,
    buf: Option<Buf>,
}

impl PluginBuf {
    pub fn new(descriptor: &'static PluginDescriptor, buf: Buf) -> PluginBuf {
        PluginBuf {
            descriptor,
            buf: Some(buf),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.buf {
            // SAFETY: the plugin wrote `len` bytes at `ptr` (the ABI), and
            // they live until `free_buf`.
            Some(b) => unsafe { b.as_slice() },
            None => &[],
        }
    }
}

impl Drop for PluginBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take()
            && !buf.ptr.is_null()
        {
            (self.descriptor.free_buf)(buf);
        }
    }
}

/// The text of the plugin's last error on this thread.
fn last_error(descriptor: &'static PluginDescriptor) -> String {
    let mut buf = Buf::EMPTY;
    let code = (descriptor.last_error)(&mut buf);
    let buf = PluginBuf::new(descriptor, buf);
    if code != OK {
        return "the plugin failed without saying why (last_error gave nothing)".into();
    }
    String::from_utf8_lossy(buf.bytes()).into_owned()
}

/// The error of a failed call, as the connector error it stands for.
fn call_error(info: &PluginInfo, code: i32) -> ConnectorError {
    let message = last_error(info.descriptor);
    let what = format!("plugin {}", info.name);
    if code == ERR_SETTING {
        ConnectorError::Setting { what, message }
    } else {
        ConnectorError::Source {
            location: what,
            message,
        }
    }
}

/// One plugin with the `source:` settings of a migration.
pub struct PluginConnector {
    info: Arc<PluginInfo>,
    settings: Json,
    context: ConnectorContext,
}

impl PluginConnector {
    pub fn new(info: Arc<PluginInfo>, settings: Json, context: ConnectorContext) -> Self {
        PluginConnector {
            info,
            settings,
            context,
        }
    }

    /// The JSON config of `schema` and `open` (see `fhirlift-plugin-abi`).
    fn config(&self, source: &StreamSource) -> Vec<u8> {
        let level = tracing::level_filters::LevelFilter::current().to_string();
        json!({
            "settings": self.settings,
            "base_dir": path_text(&self.context.base_dir),
            "stream": &*source.stream,
            "from": source.from,
            "key": source.key,
            "options": source.options,
            "resume_after": source.resume_after,
            "log_level": level.to_ascii_lowercase(),
        })
        .to_string()
        .into_bytes()
    }
}

fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl SourceConnector for PluginConnector {
    fn schema(&self, source: &StreamSource) -> Result<Arc<Schema>, ConnectorError> {
        let config = self.config(source);
        let info = &self.info;
        // off any async worker, on a thread of its own
        let columns = std::thread::scope(|s| {
            s.spawn(|| {
                let mut buf = Buf::EMPTY;
                let code = (info.descriptor.schema)(config.as_ptr(), config.len(), &mut buf);
                let buf = PluginBuf::new(info.descriptor, buf);
                if code != OK {
                    return Err(call_error(info, code));
                }
                serde_json::from_slice::<Json>(buf.bytes())
                    .ok()
                    .and_then(string_list)
                    .ok_or_else(|| ConnectorError::Source {
                        location: format!("plugin {}", info.name),
                        message: "malformed output: `schema` must give a JSON list of column names"
                            .into(),
                    })
            })
            .join()
            .unwrap_or_else(|_| {
                Err(ConnectorError::Source {
                    location: format!("plugin {}", info.name),
                    message: "the host's schema thread panicked".into(),
                })
            })
        })?;
        Ok(Arc::new(Schema::new(columns)))
    }

    fn open(&self, source: &StreamSource) -> Result<RecordStream, ConnectorError> {
        let config = self.config(source);
        let info = self.info.clone();
        let stream = source.stream.clone();
        let (opened_tx, opened_rx) = mpsc::sync_channel::<Result<(), ConnectorError>>(1);
        let name = format!("plugin-{}-{}", info.name, source.stream);
        let records = RecordStream::from_blocking(&name, move |sender| {
            let d = info.descriptor;
            let mut handle: Handle = std::ptr::null_mut();
            let code = (d.open)(config.as_ptr(), config.len(), &mut handle);
            if code != OK {
                let _ = opened_tx.send(Err(call_error(&info, code)));
                return;
            }
            if opened_tx.send(Ok(())).is_err() {
                (d.close)(handle);
                return;
            }
            let mut decoder = Decoder::new(Arc::from(info.name.as_str()), stream);
            loop {
                let mut buf = Buf::EMPTY;
                let code = (d.next_batch)(handle, &mut buf);
                let buf = PluginBuf::new(d, buf);
                if code != OK {
                    sender.send(SourceEvent::Failed(call_error(&info, code)));
                    break;
                }
                match decoder.batch(buf.bytes(), |event| sender.send(event)) {
                    Ok(Flow::More) => {}
                    Ok(Flow::End | Flow::Stop) => break,
                    Err(e) => {
                        sender.send(SourceEvent::Failed(e));
                        break;
                    }
                }
            }
            (d.close)(handle);
        })?;
        match opened_rx.recv() {
            Ok(Ok(())) => Ok(records),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectorError::Source {
                location: format!("plugin {}", self.info.name),
                message: "the stream's reader thread ended before the plugin opened it".into(),
            }),
        }
    }
}
