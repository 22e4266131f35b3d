//! Support for fhirlift's end-to-end tests and benchmarks: a generator of
//! example-shaped source data, helpers to run the `fhirlift` command
//! in-process, and a client for the real Medplum server of the kit.

pub mod datagen;
pub mod medplum;
pub mod pg;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

// Link the runner's built-in connectors into test binaries.
use fhirlift as _;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The bundled example's migration file.
pub fn guide_example() -> PathBuf {
    workspace().join("examples/medplum-guide/migration.yaml")
}

/// A fresh, empty folder under the target directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir = workspace()
        .join("target/test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("target/ is writable");
    dir
}

/// A sandbox FHIR server running on its own runtime, for one test.
pub struct TestServer {
    pub sandbox: fhirlift_sandbox::Sandbox,
    /// Runs the server's task; dropped after it (field order).
    _runtime: tokio::runtime::Runtime,
}

impl TestServer {
    pub fn start(config: fhirlift_sandbox::SandboxConfig) -> TestServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime starts");
        let sandbox = runtime
            .block_on(fhirlift_sandbox::Sandbox::start(config))
            .expect("the sandbox binds a loopback port");
        TestServer {
            sandbox,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        self.sandbox.base_url()
    }
}

/// The `fhirlift` binary built beside this test binary (by `cargo test
/// --workspace`, which `cargo xtask test` runs).
pub fn fhirlift_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/");
    let bin = dir.join(format!("fhirlift{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo xtask test builds every binary)",
        bin.display()
    );
    bin
}

/// What one `fhirlift` invocation printed and returned.
pub struct Outcome {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `fhirlift ARGS` in this process.
pub fn fhirlift<I, S>(args: I) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once(OsString::from("fhirlift")).chain(args.into_iter().map(Into::into));
    let code = fhirlift::run(argv, &mut out, &mut err);
    Outcome {
        code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    }
}

/// Reads a CSV table the generator wrote as rows of column → value. Fields
/// are split at every comma, so only the columns before the first quoted
/// field (the ids, in every generated table) read true.
pub fn read_table(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(|v| v.trim_matches('"').to_owned()))
                .collect()
        })
        .collect()
}
