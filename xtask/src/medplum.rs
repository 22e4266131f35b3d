//! The real Medplum 5.0.10 server of the kit in `../shared/medplum`
//! (`medplum-up`, `medplum-project`, `medplum-down`; see its README).
//!
//! - [`Medplum::for_tests`]: the server the tests and the real benchmark
//!   use: the one `MEDPLUM_URL` + `MEDPLUM_PROJECTS` name, or else the kit's,
//!   started with `medplum-up` and, when this process started it, stopped
//!   with `medplum-down` when the value is dropped (RAII, like `pg::Cluster`).
//! - [`Medplum::fresh_project`]: a new, empty project (`medplum-project --json`).
//! - [`task`]: `cargo xtask medplum [down [ARGS]]`, the server by hand.
//!
//! The kit is found at `FHIRLIFT_MEDPLUM_KIT`, else `<workspace>/../shared/medplum`
//! (CI runs a fresh clone with a copy of `shared/` beside it). When it cannot
//! start, the caller fails with the reason and the kit's server log: a test
//! run never skips Medplum silently.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

/// The FHIR base URL of the server the tests use.
pub const URL_VAR: &str = "MEDPLUM_URL";
/// The kit's `projects.json` (its folder is the kit's state directory).
pub const PROJECTS_VAR: &str = "MEDPLUM_PROJECTS";
/// The kit's directory, for `<kit>/medplum-project --json NAME PROFILE`.
pub const KIT_VAR: &str = "FHIRLIFT_MEDPLUM_KIT";

/// The kit's scripts.
#[derive(Debug, Clone)]
pub struct Kit {
    pub dir: PathBuf,
}

impl Kit {
    /// `FHIRLIFT_MEDPLUM_KIT`, else `<workspace>/../shared/medplum`; an error
    /// saying where it looked when `medplum-up` is not there.
    pub fn locate() -> anyhow::Result<Kit> {
        let (dir, from) = match std::env::var_os(KIT_VAR).filter(|v| !v.is_empty()) {
            Some(dir) => (PathBuf::from(dir), format!("{KIT_VAR} names it")),
            None => {
                let root = crate::root();
                let dir = root.parent().unwrap_or(&root).join("shared/medplum");
                (dir, "the default place, beside the workspace".to_owned())
            }
        };
        if !dir.join("medplum-up").is_file() {
            bail!(
                "the Medplum kit is not at {} ({from}): no medplum-up there. The tests need a \
                 real Medplum server: put a copy of shared/ beside the workspace, set {KIT_VAR} \
                 to the kit's directory, or set {URL_VAR} and {PROJECTS_VAR} to a server that \
                 is already running",
                dir.display()
            );
        }
        let dir = dir.canonicalize().unwrap_or(dir);
        Ok(Kit { dir })
    }

    fn script(&self, name: &str) -> Command {
        Command::new(self.dir.join(name))
    }
}

/// The kit's default state directory, as `medplum-up` computes it without
/// `--dir`: `${XDG_CACHE_HOME:-$HOME/.cache}/fhirlift-medplum`.
fn default_state_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    cache.join("fhirlift-medplum")
}

/// Whether the kit's server of `state_dir` runs: its `server.pid` names a
/// live process serving that directory's config (the check `medplum-up`
/// makes itself).
fn server_running(state_dir: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(state_dir.join("server.pid")) else {
        return false;
    };
    let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", pid.trim())) else {
        return false;
    };
    let config = state_dir.join("medplum.config.json");
    String::from_utf8_lossy(&cmdline).contains(config.to_string_lossy().as_ref())
}

/// Where the server came from, which decides whether dropping stops it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Origin {
    /// `MEDPLUM_URL` and `MEDPLUM_PROJECTS` were set: nothing started.
    Environment,
    /// The kit's server was up before: left running.
    AlreadyRunning,
    /// Started here: `medplum-down` when dropped (unless kept).
    Started,
}

/// A running Medplum server; stopped when dropped if this process started it.
pub struct Medplum {
    /// The FHIR base, e.g. http://127.0.0.1:8103/fhir/R4.
    pub url: String,
    /// The kit's projects.json.
    pub projects: PathBuf,
    /// The kit, when found (the environment may name a server without one).
    pub kit: Option<Kit>,
    origin: Origin,
    /// `cargo xtask medplum`: leave it running when dropped.
    keep: bool,
}

impl Medplum {
    /// The server the tests use: the one `MEDPLUM_URL` + `MEDPLUM_PROJECTS`
    /// name, else the kit's, started now if it is not up.
    pub fn for_tests() -> anyhow::Result<Medplum> {
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        match (var(URL_VAR), var(PROJECTS_VAR)) {
            (Some(url), Some(projects)) => Ok(Medplum {
                url,
                projects: PathBuf::from(projects),
                kit: Kit::locate().ok(),
                origin: Origin::Environment,
                keep: true,
            }),
            (None, None) => Medplum::up(&Kit::locate()?),
            (Some(_), None) | (None, Some(_)) => bail!(
                "set both {URL_VAR} and {PROJECTS_VAR} (to use a running Medplum), or neither \
                 (to start the kit's)"
            ),
        }
    }

    /// `medplum-up`: its progress passes through on stderr; its export
    /// lines are read from stdout. A server that was not up before is
    /// stopped again when the value is dropped; one whose start fails is
    /// stopped at once (whatever half of it came up).
    pub fn up(kit: &Kit) -> anyhow::Result<Medplum> {
        let state_dir = default_state_dir();
        let was_running = server_running(&state_dir);
        if !was_running {
            let first = if state_dir.join(".seeded").exists() {
                ""
            } else {
                "; a first start downloads Node and npm packages and takes about 2 minutes"
            };
            eprintln!(
                "medplum: starting the kit's server (medplum-up from {}{first})",
                kit.dir.display()
            );
        }
        let started_at = Instant::now();
        let output = kit
            .script("medplum-up")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run {}/medplum-up", kit.dir.display()))?;
        let failed = |why: String| {
            if !was_running {
                // Redis or PostgreSQL may be up without the server
                let _ = kit.script("medplum-down").stdin(Stdio::null()).status();
            }
            anyhow::anyhow!(
                "the Medplum kit did not start: {why}. Its server log is {} (the output of \
                 medplum-up is above)",
                state_dir.join("server.log").display()
            )
        };
        if !output.status.success() {
            return Err(failed(format!(
                "{}/medplum-up failed ({})",
                kit.dir.display(),
                output.status
            )));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (Some(url), Some(projects)) = (export(&stdout, URL_VAR), export(&stdout, PROJECTS_VAR))
        else {
            return Err(failed(format!(
                "medplum-up printed no `export {URL_VAR}=...` and `export {PROJECTS_VAR}=...` \
                 lines (it printed {stdout:?})"
            )));
        };
        let projects = PathBuf::from(projects);
        // the state directory medplum-up used is the one projects.json is in
        let state_dir = projects.parent().map_or(state_dir, Path::to_path_buf);
        let origin = if was_running {
            Origin::AlreadyRunning
        } else {
            eprintln!(
                "medplum: server up in {:.0} s ({})",
                started_at.elapsed().as_secs_f64(),
                state_dir.display()
            );
            Origin::Started
        };
        Ok(Medplum {
            url,
            projects,
            kit: Some(kit.clone()),
            origin,
            keep: false,
        })
    }

    /// Whether this process started the server (and will stop it).
    pub fn started_here(&self) -> bool {
        self.origin == Origin::Started && !self.keep
    }

    /// Leave the server running when this value is dropped.
    pub fn keep_running(&mut self) {
        self.keep = true;
    }

    /// One line: which Medplum, and what happens to it afterwards.
    pub fn describe(&self) -> String {
        let how = match (self.origin, self.keep) {
            (Origin::Environment, _) => {
                format!("{URL_VAR} and {PROJECTS_VAR} are set: nothing started")
            }
            (Origin::AlreadyRunning, _) => "the kit's, already running: left running".into(),
            (Origin::Started, false) => "the kit's, started now: stopped afterwards".into(),
            (Origin::Started, true) => "the kit's, started now: left running".into(),
        };
        format!(
            "Medplum {} ({how}; projects {})",
            self.url,
            self.projects.display()
        )
    }

    /// Passes the server to a command: `MEDPLUM_URL`, `MEDPLUM_PROJECTS`
    /// and, when the kit was found, `FHIRLIFT_MEDPLUM_KIT`.
    pub fn pass_to(&self, command: &mut Command) {
        command
            .env(URL_VAR, &self.url)
            .env(PROJECTS_VAR, &self.projects);
        if let Some(kit) = &self.kit {
            command.env(KIT_VAR, &kit.dir);
        }
    }

    /// A new, empty project: `medplum-project --json NAME PROFILE`
    /// (`default`, `tx` or `fast`).
    pub fn fresh_project(&self, name: &str, profile: &str) -> anyhow::Result<Project> {
        let kit = self.kit.as_ref().with_context(|| {
            format!("no Medplum kit to create a project with: set {KIT_VAR} to its directory")
        })?;
        let output = kit
            .script("medplum-project")
            .args(["--json", name, profile])
            .env(PROJECTS_VAR, &self.projects)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run {}/medplum-project", kit.dir.display()))?;
        if !output.status.success() {
            bail!(
                "medplum-project --json {name} {profile} failed ({})",
                output.status
            );
        }
        let json = serde_json::from_slice::<serde_json::Value>(&output.stdout)
            .context("medplum-project --json printed no JSON")?;
        let field = |key: &str| {
            json.get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("medplum-project --json printed no {key}"))
        };
        Ok(Project {
            id: field("projectId")?,
            client_id: field("clientId")?,
            client_secret: field("clientSecret")?,
        })
    }

    /// The kit's state directory (where its server log is).
    fn state_dir(&self) -> PathBuf {
        self.projects
            .parent()
            .map_or_else(default_state_dir, Path::to_path_buf)
    }
}

impl Drop for Medplum {
    fn drop(&mut self) {
        if !self.started_here() {
            return;
        }
        let Some(kit) = &self.kit else { return };
        eprintln!("medplum: stopping the server started for this run (medplum-down)");
        let status = kit
            .script("medplum-down")
            .arg("--dir")
            .arg(self.state_dir())
            .stdin(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("medplum: medplum-down failed ({s})"),
            Err(e) => eprintln!("medplum: cannot run medplum-down: {e}"),
        }
    }
}

/// A project's ids; the secret is never shown by `Debug`.
pub struct Project {
    pub id: String,
    pub client_id: String,
    pub client_secret: String,
}

impl fmt::Debug for Project {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Project")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .finish()
    }
}

/// The value of `export NAME=VALUE` in medplum-up's output, with the
/// shell quoting of `printf %q` undone (`'...'` or backslashes).
fn export(stdout: &str, name: &str) -> Option<String> {
    let prefix = format!("export {name}=");
    let raw = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix(&prefix))?;
    let value = if let Some(quoted) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        quoted.to_owned()
    } else {
        let mut out = String::new();
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                out.extend(chars.next());
            } else {
                out.push(c);
            }
        }
        out
    };
    (!value.is_empty()).then_some(value)
}

/// `cargo xtask medplum`: start the kit's server and leave it running,
/// printing the export lines and how to make a project;
/// `cargo xtask medplum down [ARGS]`: `medplum-down [ARGS]`.
pub fn task(args: &[String]) -> anyhow::Result<()> {
    let kit = Kit::locate()?;
    match args.first().map(String::as_str) {
        Some("down") => {
            let mut down = kit.script("medplum-down");
            down.args(&args[1..]);
            crate::run(down)
        }
        Some("up") | None => {
            let mut medplum = Medplum::up(&kit)?;
            medplum.keep_running();
            let kit_dir = kit.dir.display();
            println!(
                "\nready: {}\n\n  \
                 export {URL_VAR}={}\n  \
                 export {PROJECTS_VAR}={}\n  \
                 export {KIT_VAR}={kit_dir}\n\n\
                 a fresh, empty project (profiles: default, tx = atomic transactions, fast = raised quota):\n  \
                 read -r CID MEDPLUM_SECRET < <({kit_dir}/medplum-project my-bench fast); export MEDPLUM_SECRET\n  \
                 target/release/fhirlift migrate -c DIR/migration.yaml --server \"${URL_VAR}\" \\\n      \
                 --client-id \"$CID\" --client-secret-env MEDPLUM_SECRET\n\n\
                 the benchmark against it:  cargo xtask bench medplum --real [--patients N]\n\
                 stop it:                   cargo xtask medplum down   (data stays; --purge deletes it)",
                medplum.describe(),
                medplum.url,
                medplum.projects.display(),
            );
            Ok(())
        }
        Some(other) => {
            bail!("`cargo xtask medplum` takes `down [ARGS]` or nothing (got {other:?})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::export;

    #[test]
    fn reads_medplum_up_exports() {
        let out = "export MEDPLUM_URL=http://127.0.0.1:8103/fhir/R4\n\
                   export MEDPLUM_PROJECTS=/root/.cache/fhirlift\\ medplum/projects.json\n";
        assert_eq!(
            export(out, "MEDPLUM_URL").as_deref(),
            Some("http://127.0.0.1:8103/fhir/R4")
        );
        assert_eq!(
            export(out, "MEDPLUM_PROJECTS").as_deref(),
            Some("/root/.cache/fhirlift medplum/projects.json")
        );
        assert_eq!(export("export X='a b'\n", "X").as_deref(), Some("a b"));
        assert_eq!(export("progress\n", "MEDPLUM_URL"), None);
    }
}
