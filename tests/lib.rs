//! Support for fhirlift's end-to-end tests and benchmarks: a generator of
//! example-shaped source data, and helpers to run the `fhirlift` command
//! in-process.

pub mod datagen;

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
