//! Throwaway PostgreSQL clusters for the tests and for trying examples:
//! `initdb` + `pg_ctl` of the machine's PostgreSQL (installed with apt-get
//! when missing and run as root), stopped when the [`Cluster`] is dropped.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};

/// A running cluster of our own: `pg_ctl -m immediate stop` when dropped.
pub struct Cluster {
    /// postgres://postgres@127.0.0.1:PORT/postgres (trust authentication)
    pub url: String,
    tools: Tools,
    data: PathBuf,
    /// a directory of ours under /tmp holding `data`, removed once stopped
    temp: Option<PathBuf>,
}

impl Cluster {
    /// Wipes target/pg-test/NAME, then initdb and pg_ctl start there (or
    /// in a fresh directory under /tmp when the postgres user cannot
    /// reach the workspace, or the socket path would be too long).
    pub fn start(name: &str) -> anyhow::Result<Cluster> {
        let root_user = is_root();
        let tools = Tools::find(root_user)?;
        let version = tools.version()?;
        let base = crate::root().join("target/pg-test").join(name);
        // a cluster left running by a run that was killed outright
        if base.join("data/postmaster.pid").exists() {
            let _ = tools
                .command("pg_ctl", ["-D".as_ref(), base.join("data").as_os_str()])
                .args(["-m", "immediate", "stop"])
                .output();
        }
        if base.exists() {
            std::fs::remove_dir_all(&base)
                .with_context(|| format!("cannot wipe {}", base.display()))?;
        }
        std::fs::create_dir_all(&base)
            .with_context(|| format!("cannot create {}", base.display()))?;
        let mut cluster = Cluster {
            url: String::new(),
            data: base.join("data"),
            temp: None,
            tools,
        };
        if root_user {
            // parents inside the workspace must let postgres through
            let target = crate::root().join("target");
            for dir in [&target, &target.join("pg-test"), &base] {
                chmod_o_x(dir)?;
            }
        }
        if !socket_fits(&cluster.data) || (root_user && !cluster.tools.can_enter(&base)) {
            let temp = temp_dir()?;
            if root_user {
                chown_postgres(&temp)?;
            }
            cluster.data = temp.join("data");
            cluster.temp = Some(temp);
        }
        cluster.init()?;
        let port = cluster.launch()?;
        cluster.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        println!(
            "postgres: {version} from {}, throwaway cluster at {} (data in {}{})",
            cluster.tools.bin.display(),
            cluster.url,
            cluster.data.display(),
            if root_user {
                ", run as user postgres"
            } else {
                ""
            },
        );
        Ok(cluster)
    }

    /// Whether the postmaster is still up (its pid file is there).
    pub fn running(&self) -> bool {
        self.data.join("postmaster.pid").exists()
    }

    pub fn log(&self) -> PathBuf {
        self.data.join("log")
    }

    /// initdb with `--locale=C.UTF-8`, or `C` where that locale is missing.
    fn init(&self) -> anyhow::Result<()> {
        let mut failures = String::new();
        for locale in ["C.UTF-8", "C"] {
            self.fresh_data_dir()?;
            let output = self
                .tools
                .command("initdb", ["-D".as_ref(), self.data.as_os_str()])
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
                .arg(format!("--locale={locale}"))
                .output()
                .context("cannot run initdb")?;
            if output.status.success() {
                return Ok(());
            }
            failures += &format!("--locale={locale}: {}\n", text(&output));
        }
        bail!("initdb -D {} failed:\n{failures}", self.data.display())
    }

    /// An empty data directory, owned by whoever runs the server.
    fn fresh_data_dir(&self) -> anyhow::Result<()> {
        if self.data.exists() {
            std::fs::remove_dir_all(&self.data)?;
        }
        std::fs::create_dir_all(&self.data)
            .with_context(|| format!("cannot create {}", self.data.display()))?;
        if self.tools.as_postgres.is_some() {
            chown_postgres(&self.data)?;
        }
        Ok(())
    }

    /// pg_ctl start on a free port; another port if that one was taken
    /// in the meantime.
    fn launch(&self) -> anyhow::Result<u16> {
        let log = self.log();
        for _attempt in 0..3 {
            let port = std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|listener| listener.local_addr())
                .context("cannot find a free port on 127.0.0.1")?
                .port();
            // pg_ctl hands -o to /bin/sh: quote the socket directory
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off",
                sh_quote(&self.data.to_string_lossy())
            );
            let output = self
                .tools
                .command("pg_ctl", ["-D".as_ref(), self.data.as_os_str()])
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(options)
                .args(["-w", "-t", "60", "start"])
                .output()
                .context("cannot run pg_ctl")?;
            if output.status.success() {
                return Ok(port);
            }
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            if !log_text.contains("could not bind") {
                bail!(
                    "pg_ctl start failed: {}\n--- {} ---\n{}",
                    text(&output),
                    log.display(),
                    tail(&log_text, 30)
                );
            }
        }
        bail!(
            "pg_ctl start failed three times: ports taken; see {}",
            log.display()
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // always: even without its pid file a postmaster may be running
        let was_running = self.running();
        let stop = self
            .tools
            .command("pg_ctl", ["-D".as_ref(), self.data.as_os_str()])
            .args(["-m", "immediate", "stop"])
            .output();
        match stop {
            Ok(output) if output.status.success() || !was_running => {}
            Ok(output) => eprintln!(
                "postgres: pg_ctl stop -D {} failed: {}",
                self.data.display(),
                text(&output)
            ),
            Err(e) => eprintln!("postgres: cannot run pg_ctl stop: {e}"),
        }
        if let Some(temp) = &self.temp {
            let _ = std::fs::remove_dir_all(temp);
        }
    }
}

/// The server's programs, and how to run them.
struct Tools {
    /// the directory holding initdb, pg_ctl and postgres
    bin: PathBuf,
    /// as root: runuser (or su) to the postgres user
    as_postgres: Option<Switch>,
}

enum Switch {
    Runuser(PathBuf),
    Su,
}

impl Tools {
    fn find(root_user: bool) -> anyhow::Result<Tools> {
        let bin = match find_bin() {
            Some(bin) => bin,
            None if root_user => {
                install_postgresql()?;
                find_bin().context(
                    "apt-get installed postgresql, yet no initdb is on PATH or in \
                     /usr/lib/postgresql/*/bin",
                )?
            }
            None => bail!(
                "PostgreSQL not found: no initdb on PATH or in /usr/lib/postgresql/*/bin. \
                 Install it (Debian: `sudo apt-get install postgresql`), or set \
                 {} to a server the tests may use",
                crate::TEST_PG_URL_VAR
            ),
        };
        let as_postgres = if root_user {
            ensure_postgres_user()?;
            Some(match which("runuser") {
                Some(runuser) => Switch::Runuser(runuser),
                None => Switch::Su,
            })
        } else {
            None
        };
        Ok(Tools { bin, as_postgres })
    }

    fn version(&self) -> anyhow::Result<String> {
        let output = Command::new(self.bin.join("postgres"))
            .arg("--version")
            .output()
            .context("cannot run postgres --version")?;
        let version = String::from_utf8_lossy(&output.stdout);
        // "postgres (PostgreSQL) 15.18 (Debian ...)"
        Ok(version
            .trim()
            .strip_prefix("postgres (PostgreSQL) ")
            .map_or_else(|| version.trim().to_owned(), |v| format!("PostgreSQL {v}")))
    }

    /// `bin/TOOL FIRST_ARGS...`, as the postgres user when we are root.
    fn command<'a>(&self, tool: &str, first: impl IntoIterator<Item = &'a OsStr>) -> Command {
        let program = self.bin.join(tool);
        let first: Vec<&OsStr> = first.into_iter().collect();
        let mut command = match &self.as_postgres {
            None => Command::new(program),
            Some(Switch::Runuser(runuser)) => {
                let mut c = Command::new(runuser);
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            }
            Some(Switch::Su) => return SuCommand::new(program).args(first).into(),
        };
        command.args(first).current_dir("/");
        command
    }

    /// Whether the postgres user can traverse to `dir`.
    fn can_enter(&self, dir: &Path) -> bool {
        let mut command = match &self.as_postgres {
            None => return true,
            Some(Switch::Runuser(runuser)) => {
                let mut c = Command::new(runuser);
                c.args(["-u", "postgres", "--", "test", "-x"]).arg(dir);
                c
            }
            Some(Switch::Su) => SuCommand::new("test".into())
                .args(["-x".as_ref(), dir.as_os_str()])
                .into(),
        };
        command
            .current_dir("/")
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

/// `su postgres -s /bin/sh -c 'PROGRAM ARGS...'`, arguments added later
/// are quoted into the one command line as well: see `Into<Command>`.
struct SuCommand {
    words: Vec<OsString>,
}

impl SuCommand {
    fn new(program: PathBuf) -> SuCommand {
        SuCommand {
            words: vec![program.into_os_string()],
        }
    }

    fn args<'a>(mut self, args: impl IntoIterator<Item = &'a OsStr>) -> SuCommand {
        self.words.extend(args.into_iter().map(OsStr::to_owned));
        self
    }
}

impl From<SuCommand> for Command {
    fn from(su: SuCommand) -> Command {
        // The program and the first arguments go into the -c script;
        // further arguments reach it as "$@" (su passes them on after
        // `--`, with $0 named by the first one).
        let mut script: Vec<String> = su
            .words
            .iter()
            .map(|w| sh_quote(&w.to_string_lossy()))
            .collect();
        script.push("\"$@\"".into());
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c"])
            .arg(script.join(" "))
            .args(["--", "sh"])
            .current_dir("/");
        c
    }
}

/// initdb's directory: from PATH (symlinks followed), else the newest
/// /usr/lib/postgresql/VERSION/bin.
fn find_bin() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|t| dir.join(t).is_file())
    };
    if let Some(initdb) = which("initdb")
        && let Some(dir) = initdb.canonicalize().ok()?.parent()
        && complete(dir)
    {
        return Some(dir.to_path_buf());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn install_postgresql() -> anyhow::Result<()> {
    println!("postgres: no PostgreSQL found; installing it with apt-get");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if apt(&["install", "-y", "postgresql"]) {
        return Ok(());
    }
    // a fresh machine may have no package lists yet
    if apt(&["update"]) && apt(&["install", "-y", "postgresql"]) {
        return Ok(());
    }
    bail!(
        "`apt-get install -y postgresql` failed: install PostgreSQL, or set {} \
         to a server the tests may use",
        crate::TEST_PG_URL_VAR
    )
}

/// initdb and postgres refuse root: they run as `postgres`, which the
/// Debian package creates; create it when only the binaries are there.
fn ensure_postgres_user() -> anyhow::Result<()> {
    let exists = || {
        Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if exists() {
        return Ok(());
    }
    println!("postgres: creating the system user postgres to run the server");
    let created = Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home"])
        .args(["--shell", "/bin/sh", "postgres"])
        .status()
        .is_ok_and(|s| s.success());
    if !created || !exists() {
        bail!(
            "running as root, and there is no user postgres to run PostgreSQL as \
             (useradd failed): create one, or set {}",
            crate::TEST_PG_URL_VAR
        );
    }
    Ok(())
}

/// `id -u` says 0.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn chmod_o_x(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("chmod")
        .arg("o+x")
        .arg(dir)
        .status()
        .context("cannot run chmod")?;
    if !status.success() {
        bail!("chmod o+x {} failed", dir.display());
    }
    Ok(())
}

fn chown_postgres(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .args(["-R", "postgres:"])
        .arg(dir)
        .status()
        .context("cannot run chown")?;
    if !status.success() {
        bail!("chown -R postgres: {} failed", dir.display());
    }
    Ok(())
}

/// A new, private directory under /tmp.
fn temp_dir() -> anyhow::Result<PathBuf> {
    use std::time::{SystemTime, UNIX_EPOCH};
    for n in 0..100u32 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = PathBuf::from(format!(
            "/tmp/fhirlift-pg-{}-{nanos:08x}{n}",
            std::process::id()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                let status = Command::new("chmod").arg("700").arg(&dir).status()?;
                if !status.success() {
                    bail!("chmod 700 {} failed", dir.display());
                }
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).context(format!("cannot create {}", dir.display())),
        }
    }
    bail!("cannot create a directory under /tmp")
}

/// Unix socket paths hold at most 107 bytes.
fn socket_fits(data: &Path) -> bool {
    data.join(".s.PGSQL.65535.lock").as_os_str().len() < 100
}

fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn text(output: &Output) -> String {
    let mut all = String::from_utf8_lossy(&output.stderr).into_owned();
    all += &String::from_utf8_lossy(&output.stdout);
    let all = all.trim();
    if all.is_empty() {
        format!("{}", output.status)
    } else {
        all.to_owned()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
