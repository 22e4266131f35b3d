//! The rejects file: one NDJSON line per record that could not go, with its
//! provenance, the stage that refused it and why; and beside it the
//! collisions file (`fhirlift-collisions.ndjson`): one line per pair of
//! records of a run that wrote one identity with different content.
//!
//! The file may quote patient data (the reason can name a bad value), so it
//! is created readable by its owner only, and only once a reject occurs.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use fhirlift_core::record::Provenance;

/// Which step refused a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The connector could not read it.
    Source,
    /// The mapping failed for it.
    Map,
    /// A resource it maps to is not valid FHIR R4 (`target.validate: reject`).
    Validate,
    /// It does not fit the server's limits.
    Plan,
    /// It repeats another record's key, or writes another record's
    /// identity with other content (collisions: reject).
    Collision,
    /// The server refused it.
    Server,
}

/// One rejected record.
#[derive(Debug, Clone, Serialize)]
pub struct Reject<'a> {
    pub stream: &'a str,
    pub key: Option<&'a str>,
    pub provenance: &'a Provenance,
    pub stage: Stage,
    /// The mapping file:line and field, when a leaf failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping: Option<String>,
    pub reason: &'a str,
    /// The request entry the server refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<serde_json::Value>,
    /// The server's OperationOutcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<serde_json::Value>,
}

/// Two records of one run writing one identity with different content.
#[derive(Debug, Clone, Serialize)]
pub struct Collision<'a> {
    /// The identity, as the search that finds it.
    pub identity: &'a str,
    /// The record that wrote it first (stream, key, provenance).
    pub first: &'a serde_json::Value,
    /// The record that wrote it again.
    pub then: &'a serde_json::Value,
    /// What was done: `later-wins` or `reject`.
    pub policy: fhirlift_mapping::config::CollisionPolicy,
}

/// How many reasons `check` keeps to show.
const FIRST_REASONS: usize = 5;

/// Appends rejects to an NDJSON file, created on the first one, and
/// collisions to the collisions file beside it.
pub struct RejectWriter {
    /// `None`: count only (used by `check`).
    path: Option<PathBuf>,
    /// Unbuffered: each line goes out in one write, so a killed run
    /// leaves whole lines.
    out: Option<File>,
    collisions: Option<File>,
    count: u64,
    collision_count: u64,
    /// The first few rejects, as `provenance: reason`, for `check`.
    first: Vec<String>,
}

impl RejectWriter {
    pub fn new(path: impl Into<PathBuf>) -> RejectWriter {
        RejectWriter {
            path: Some(path.into()),
            out: None,
            collisions: None,
            count: 0,
            collision_count: 0,
            first: Vec::new(),
        }
    }

    /// A writer that counts rejects and writes nothing.
    pub fn counting_only() -> RejectWriter {
        RejectWriter {
            path: None,
            out: None,
            collisions: None,
            count: 0,
            collision_count: 0,
            first: Vec::new(),
        }
    }

    /// The file, when rejects are written to one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Rejects written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The collisions file: `fhirlift-collisions.ndjson` beside the rejects.
    pub fn collisions_path(&self) -> Option<PathBuf> {
        self.path
            .as_ref()
            .map(|p| p.with_file_name("fhirlift-collisions.ndjson"))
    }

    /// Collisions written so far.
    pub fn collision_count(&self) -> u64 {
        self.collision_count
    }

    /// The first rejects (up to five), as `provenance: reason`.
    pub fn first_reasons(&self) -> &[String] {
        &self.first
    }

    pub fn write_collision(&mut self, collision: &Collision<'_>) -> std::io::Result<()> {
        self.collision_count += 1;
        let Some(path) = self.collisions_path() else {
            return Ok(());
        };
        if self.collisions.is_none() {
            self.collisions = Some(create_private(&path)?);
        }
        let out = self.collisions.as_mut().expect("opened above");
        out.write_all(&line(collision)?)
    }

    pub fn write(&mut self, reject: &Reject<'_>) -> std::io::Result<()> {
        self.count += 1;
        if self.first.len() < FIRST_REASONS {
            self.first
                .push(format!("{}: {}", reject.provenance, reject.reason));
        }
        let Some(path) = &self.path else {
            return Ok(());
        };
        if self.out.is_none() {
            self.out = Some(create_private(path)?);
        }
        let out = self.out.as_mut().expect("opened above");
        out.write_all(&line(reject)?)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        if let Some(out) = self.collisions.as_mut() {
            out.flush()?;
        }
        match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for RejectWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// One NDJSON line, newline included, to be written in one call.
fn line(value: &impl Serialize) -> std::io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Creates (truncating) a file only its owner can read, and its folder.
pub(crate) fn create_private(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        // an existing file keeps its old mode through open(): narrow it
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path)
}
