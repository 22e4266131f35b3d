//! `--dry-run DIR`: the request bundles written as files, exactly the
//! bytes that would be sent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fhirlift_core::planner::Request;
use fhirlift_core::transport::{RequestSink, SinkError};

/// Writes every request bundle as a numbered JSON file per phase:
/// `DIR/phase-1/000001-patients.json`, exactly the bytes that would be sent.
pub struct DryRunSink {
    pub(crate) dir: PathBuf,
    pub(crate) numbers: BTreeMap<usize, u64>,
}

impl DryRunSink {
    /// Empties (or creates) `dir` for a fresh set of bundles.
    pub fn create(dir: &Path) -> Result<DryRunSink, SinkError> {
        let io = |e: std::io::Error| SinkError::caused(dir.display().to_string(), e);
        if dir.exists() {
            for entry in std::fs::read_dir(dir).map_err(io)? {
                let path = entry.map_err(io)?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if path.is_dir() && name.starts_with("phase-") {
                    std::fs::remove_dir_all(&path).map_err(io)?;
                }
            }
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        Ok(DryRunSink {
            dir: dir.to_path_buf(),
            numbers: BTreeMap::new(),
        })
    }
}

impl RequestSink for DryRunSink {
    fn submit(&mut self, request: Request) -> Result<(), SinkError> {
        let n = self.numbers.entry(request.phase).or_default();
        *n += 1;
        let dir = self.dir.join(format!("phase-{}", request.phase));
        let path = dir.join(format!("{:06}-{}.json", n, request.stream));
        // bundles hold names and birth dates: readable by their owner only
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut file = crate::rejects::create_private(&path)?;
            file.write_all(&request.body)?;
            file.flush()
        };
        write().map_err(|e| SinkError::caused(path.display().to_string(), e))
    }
}
