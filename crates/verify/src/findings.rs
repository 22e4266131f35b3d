//! What verify finds, counted per stream and resource type, and written
//! one line per finding to the `--out` file.
//!
//! Counts and logs never hold a value; the `--out` file does (the source's
//! and the server's values where they differ), so it is created readable
//! by its owner only, like the rejects file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

/// What became of one identity (or one stored reference, or one stored
/// resource no record maps to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Stored once, with the content the mapping gives now.
    Equal,
    /// Stored once, with other content (drift).
    Different,
    /// No resource holds the identifier.
    Missing,
    /// More than one resource holds the identifier.
    Duplicated,
    /// A stored resource of this migration refers to a resource that is
    /// not there.
    Dangling,
    /// A resource in one of the migration's identifier systems that no
    /// source record maps to (with `--orphans`).
    Orphan,
    /// A record that does not map (it would be rejected): nothing of it
    /// can be on the server.
    Unmapped,
    /// A resource written with `write: create`: no identifier to find it
    /// by, so not verified (counted, never a failure).
    Unverifiable,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Equal => "equal",
            Kind::Different => "different",
            Kind::Missing => "missing",
            Kind::Duplicated => "duplicated",
            Kind::Dangling => "dangling",
            Kind::Orphan => "orphan",
            Kind::Unmapped => "unmapped",
            Kind::Unverifiable => "unverifiable",
        }
    }
}

/// One place where the source and the server part ways.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub finding: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    pub resource_type: String,
    /// `system|value` of the identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
    /// The source record (file:line, table + key, message control id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// The stored resources concerned (`Type/id`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server: Vec<String>,
    /// Where the content differs, or the reference that dangles.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// The values at `paths`: `{path: {source, server}}` (file only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Value>,
    /// Why, for an unmapped record or a dangling reference's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Finding {
    pub fn new(finding: Kind, resource_type: impl Into<String>) -> Finding {
        Finding {
            finding,
            stream: None,
            resource_type: resource_type.into(),
            identifier: None,
            record: None,
            server: Vec::new(),
            paths: Vec::new(),
            values: None,
            reason: None,
        }
    }
}

/// Counts of one stream and resource type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub equal: u64,
    pub different: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub dangling: u64,
    pub orphan: u64,
    pub unmapped: u64,
    pub unverifiable: u64,
}

impl Counts {
    fn of(&self, kind: Kind) -> &u64 {
        match kind {
            Kind::Equal => &self.equal,
            Kind::Different => &self.different,
            Kind::Missing => &self.missing,
            Kind::Duplicated => &self.duplicated,
            Kind::Dangling => &self.dangling,
            Kind::Orphan => &self.orphan,
            Kind::Unmapped => &self.unmapped,
            Kind::Unverifiable => &self.unverifiable,
        }
    }

    fn add(&mut self, kind: Kind) {
        let slot = match kind {
            Kind::Equal => &mut self.equal,
            Kind::Different => &mut self.different,
            Kind::Missing => &mut self.missing,
            Kind::Duplicated => &mut self.duplicated,
            Kind::Dangling => &mut self.dangling,
            Kind::Orphan => &mut self.orphan,
            Kind::Unmapped => &mut self.unmapped,
            Kind::Unverifiable => &mut self.unverifiable,
        };
        *slot += 1;
    }

    /// Whether anything is not equal.
    pub fn any_problem(&self) -> bool {
        self.different
            + self.missing
            + self.duplicated
            + self.dangling
            + self.orphan
            + self.unmapped
            > 0
    }
}

/// Everything verify found, counted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifySummary {
    /// By stream, then resource type; orphans under stream "-".
    pub counts: BTreeMap<String, BTreeMap<String, Counts>>,
    /// Identities compared with the server.
    pub identities: u64,
    /// Records skipped by their mapping (nothing to verify).
    pub skipped: u64,
    /// Searches sent (each page one).
    pub searches: u64,
    pub seconds: f64,
}

impl VerifySummary {
    pub fn count(&mut self, finding: &Finding) {
        let stream = finding.stream.clone().unwrap_or_else(|| "-".into());
        self.counts
            .entry(stream)
            .or_default()
            .entry(finding.resource_type.clone())
            .or_default()
            .add(finding.finding);
    }

    /// Whether the server holds exactly what the source maps to.
    pub fn all_equal(&self) -> bool {
        !self
            .counts
            .values()
            .flat_map(BTreeMap::values)
            .any(Counts::any_problem)
    }

    /// The total of one kind.
    pub fn total(&self, kind: Kind) -> u64 {
        self.counts
            .values()
            .flat_map(BTreeMap::values)
            .map(|c| *c.of(kind))
            .sum()
    }

    /// The table the terminal shows: one line per stream and type.
    pub fn write_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{:<20} {:<22} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8} {:>8}",
            "stream",
            "resource",
            "equal",
            "different",
            "missing",
            "duplicated",
            "dangling",
            "orphan",
            "unmapped"
        )?;
        let rows = self
            .counts
            .iter()
            .flat_map(|(s, types)| types.iter().map(move |(t, c)| (s, t, c)));
        for (stream, resource_type, c) in rows {
            writeln!(
                out,
                "{:<20} {:<22} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8} {:>8}",
                stream,
                resource_type,
                c.equal,
                c.different,
                c.missing,
                c.duplicated,
                c.dangling,
                c.orphan,
                c.unmapped
            )?;
        }
        let rate = if self.seconds > 0.0 {
            self.identities as f64 / self.seconds
        } else {
            0.0
        };
        let unverifiable = self.total(Kind::Unverifiable);
        if unverifiable > 0 {
            writeln!(
                out,
                "{unverifiable} resources are written with write: create: no identifier finds them, so they are not verified"
            )?;
        }
        writeln!(
            out,
            "{} identities verified in {:.2} s ({rate:.0}/s, {} searches); {}",
            self.identities,
            self.seconds,
            self.searches,
            if self.all_equal() {
                "the server holds what the source maps to"
            } else {
                "the server does NOT hold exactly what the source maps to"
            }
        )
    }
}

/// The `--out` file: NDJSON, one non-equal finding per line, owner-only.
pub struct FindingWriter {
    file: std::io::BufWriter<std::fs::File>,
}

impl FindingWriter {
    pub fn create(path: &Path) -> std::io::Result<FindingWriter> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        Ok(FindingWriter {
            file: std::io::BufWriter::new(options.open(path)?),
        })
    }

    pub fn write(&mut self, finding: &Finding) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.file, finding)?;
        self.file.write_all(b"\n")
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
