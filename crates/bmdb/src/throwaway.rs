//! A disposable local PostgreSQL: for tests, and for `bmaas-server --bmdb-eat-my-data` (upstream
//! started an in-memory CockroachDB there).
//!
//! * The server listens on a unix socket in its own temporary directory only (no TCP unless
//!   asked), so parallel test processes never race for ports.
//! * Durability is off (`fsync`, `synchronous_commit`, `full_page_writes`): the data is thrown
//!   away anyway.
//! * PostgreSQL refuses to run as root. As root we run `initdb` and `postgres` as the `postgres`
//!   user, by the same means `runuser -u postgres` uses (setgid, setgroups(0), setuid, here via
//!   std's `Command::uid/gid`), but without the intermediate `runuser` process, so that what we
//!   start is our direct child: we can wait for it and give it a parent-death signal.
//! * `initdb` runs once per machine (and PostgreSQL build) into a cached template directory
//!   under a file lock; every server starts from a copy of it (tens of milliseconds instead of
//!   half a second, which matters under cargo-nextest where every test is its own process).
//! * Nothing outlives its owner: `postgres` runs under a small supervising shell spawned from
//!   a thread that lives as long as the owning process. When that thread dies, whatever the way
//!   the process ends, the shell gets a parent-death signal, shuts postgres down immediately
//!   and deletes its data. What little remains of owners that died (a log file) is removed by
//!   the next start.
//!
//! [`shared`] is one server per process (tests); [`fresh_database`] gives each test its own
//! database on it, so tests run in parallel without seeing each other's rows.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::{Error, Result};

/// Overrides the directory holding `initdb`, `postgres` and `pg_ctl`.
pub const BIN_DIR_ENV: &str = "BMDB_POSTGRES_BIN_DIR";
/// Where Debian installs PostgreSQL (`/usr/lib/postgresql/<major>/bin`).
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// Prefix of instance directories in the temporary directory: `bmdb-pg-<owner pid>-<random>`.
const INSTANCE_PREFIX: &str = "bmdb-pg-";
/// The superuser created by initdb.
pub const SUPERUSER: &str = "postgres";
/// Runs postgres ("$@"), forwards SIGTERM as SIGQUIT (immediate shutdown), and deletes the
/// data directory once postgres has exited.
const SUPERVISOR_SCRIPT: &str = r#""$@" & pid=$!
trap 'kill -QUIT $pid' TERM
wait $pid
status=$?
wait $pid 2>/dev/null
rm -rf "$BMDB_PG_DATA"
exit $status"#;

/// How long starting may take before we give up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Also listen on 127.0.0.1 at this TCP port (for poking at it with psql from elsewhere).
    pub tcp_port: Option<u16>,
}

/// A running throwaway PostgreSQL. Stopped and deleted on drop.
#[derive(Debug)]
pub struct Postgres {
    dir: Option<tempfile::TempDir>,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    exited: Arc<AtomicBool>,
    keeper: Option<JoinHandle<()>>,
}

/// One server per process, started on first use and never stopped explicitly: it receives
/// its parent-death signal when the process exits.
pub fn shared() -> Result<&'static Postgres> {
    static SHARED: OnceLock<std::result::Result<Postgres, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| Postgres::start(&Options::default()).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Throwaway(e.clone()))
}

/// A new, empty database (`test_<random>`) on the [`shared`] server.
pub async fn fresh_database() -> Result<PgConnectOptions> {
    let server = tokio::task::spawn_blocking(shared)
        .await
        .map_err(|e| Error::Throwaway(format!("starting PostgreSQL panicked: {e}")))??;
    server.create_database("test").await
}

impl Postgres {
    /// Starts a server in a new temporary directory and waits until it accepts connections.
    /// Blocking (about 0.1 s with a cached template, 1 s without).
    pub fn start(options: &Options) -> Result<Postgres> {
        let bin = find_bin_dir()?;
        let run_as = if rustix::process::geteuid().is_root() {
            Some(lookup_user(SUPERUSER)?)
        } else {
            None
        };
        let tmp = std::env::temp_dir();
        remove_stale_instances(&tmp, &bin, run_as);
        let template = ensure_template(&tmp, &bin, run_as)?;

        let dir = tempfile::Builder::new()
            .prefix(&format!("{INSTANCE_PREFIX}{}-", std::process::id()))
            .tempdir_in(&tmp)
            .map_err(|e| io_err("creating the instance directory", e))?;
        chown_to(dir.path(), run_as)?;
        let data = dir.path().join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()
            .map_err(|e| io_err("running cp", e))?;
        if !status.success() {
            return Err(Error::Throwaway(format!(
                "copying {} to {} failed: {status}",
                template.display(),
                data.display()
            )));
        }
        let port = options.tcp_port.unwrap_or(5432);
        let log_path = dir.path().join("postgres.log");
        let log = File::create(&log_path).map_err(|e| io_err("creating the log", e))?;
        let log2 = log.try_clone().map_err(|e| io_err("creating the log", e))?;

        // postgres runs under a small shell that outlives it just long enough to delete the
        // data directory (tens of MB) once it exited, whoever stopped it: so even an owner
        // killed with SIGKILL leaves only a few KB of log behind (removed by the next start).
        // The shell is our direct child and gets the parent-death signal; it turns that into
        // an immediate shutdown (SIGQUIT) of postgres.
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(SUPERVISOR_SCRIPT)
            .arg("bmdb-postgres")
            .arg(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .arg("-p")
            .arg(port.to_string())
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "max_connections=300"])
            .args(["-c", "log_min_messages=warning"])
            .arg("-c")
            .arg(match options.tcp_port {
                Some(_) => "listen_addresses=127.0.0.1",
                None => "listen_addresses=",
            })
            .env("BMDB_PG_DATA", &data)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .current_dir(dir.path())
            // Its own process group: a Ctrl-C meant for the owner must not stop the database
            // under it; the owner stops it when it is done with it.
            .process_group(0);
        as_user(&mut cmd, run_as);
        sys::set_parent_death_signal(&mut cmd, sys::Signal::TERM);

        let exited = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let keeper = {
            let exited = exited.clone();
            std::thread::Builder::new()
                .name("bmdb-postgres".into())
                .spawn(move || {
                    // This thread must live as long as postgres should: its exit is what
                    // triggers the parent-death signal.
                    match cmd.spawn() {
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                        Ok(mut child) => {
                            let _ = tx.send(Ok(child.id()));
                            let status = child.wait();
                            exited.store(true, Ordering::SeqCst);
                            tracing::debug!("throwaway PostgreSQL exited: {status:?}");
                        }
                    }
                })
                .map_err(|e| io_err("spawning the keeper thread", e))?
        };
        let spawned = rx
            .recv()
            .map_err(|_| Error::Throwaway("keeper thread died".into()))?;
        spawned.map_err(|e| io_err("starting postgres", e))?;

        let mut server = Postgres {
            socket_dir: dir.path().to_path_buf(),
            dir: Some(dir),
            data,
            port,
            bin,
            run_as,
            exited,
            keeper: Some(keeper),
        };
        server.wait_ready(&log_path)?;
        tracing::debug!(dir = %server.socket_dir.display(), "throwaway PostgreSQL ready");
        Ok(server)
    }

    /// Polls `postmaster.pid` until the postmaster reports `ready` (what `pg_ctl -w` does).
    fn wait_ready(&mut self, log_path: &Path) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let pid_file = self.data.join("postmaster.pid");
        loop {
            if self.exited.load(Ordering::SeqCst) {
                return Err(Error::Throwaway(format!(
                    "postgres exited during startup: {}",
                    log_tail(log_path)
                )));
            }
            if let Ok(contents) = fs::read_to_string(&pid_file)
                && contents.lines().nth(7).is_some_and(|l| l.trim() == "ready")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.stop();
                return Err(Error::Throwaway(format!(
                    "postgres not ready after {START_TIMEOUT:?}: {}",
                    log_tail(log_path)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Connection options for `database` as the superuser.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .socket(&self.socket_dir)
            .port(self.port)
            .username(SUPERUSER)
            .database(database)
    }

    /// A connection URL for `database`, e.g. for a `--bmdb-dsn` flag or psql.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@localhost:{}/{database}?host={}",
            self.port,
            self.socket_dir.display()
        )
    }

    /// Creates a database named `<prefix>_<random>` and returns options to connect to it.
    pub async fn create_database(&self, prefix: &str) -> Result<PgConnectOptions> {
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(Error::Throwaway(format!(
                "invalid database prefix {prefix:?}"
            )));
        }
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        self.create_named_database(&name).await?;
        Ok(self.connect_options(&name))
    }

    /// Creates a database called `name` (letters, digits, `_`).
    pub async fn create_named_database(&self, name: &str) -> Result<()> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::Throwaway(format!("invalid database name {name:?}")));
        }
        let mut conn = PgConnection::connect_with(&self.connect_options("postgres")).await?;
        // Identifiers can't be bind parameters; the name was checked above.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
    }

    /// Stops the server (fast shutdown, immediate if that does not work) and waits for it to
    /// exit. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        let Some(keeper) = self.keeper.take() else {
            return Ok(());
        };
        // pg_ctl's own verdict is not what counts: its wait can lose the race with the
        // supervising shell deleting the data directory. Whether the supervisor exited is.
        let mut last_error = None;
        for (mode, wait) in [
            ("fast", Duration::from_secs(30)),
            ("immediate", Duration::from_secs(10)),
        ] {
            if self.exited.load(Ordering::SeqCst) {
                break;
            }
            if let Err(e) = self.pg_ctl_stop(mode) {
                last_error = Some(e);
            }
            let deadline = Instant::now() + wait;
            while !self.exited.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if !self.exited.load(Ordering::SeqCst) {
            self.keeper = Some(keeper);
            return Err(
                last_error.unwrap_or_else(|| Error::Throwaway("postgres did not stop".into()))
            );
        }
        let _ = keeper.join();
        Ok(())
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut cmd, self.run_as);
        let out = cmd.output().map_err(|e| io_err("running pg_ctl", e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Throwaway(format!(
                "pg_ctl stop -m {mode}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("stopping throwaway PostgreSQL: {e}");
            // Keep the directory: deleting it under a running server helps nobody, and the
            // next start removes it once the server is gone.
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

fn io_err(what: &str, e: std::io::Error) -> Error {
    Error::Throwaway(format!("{what}: {e}"))
}

fn log_tail(path: &Path) -> String {
    let mut s = String::new();
    let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut s));
    let lines: Vec<&str> = s.lines().collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    if tail.is_empty() {
        "(no log output)".to_string()
    } else {
        tail.join("\n")
    }
}

/// Runs `cmd` as `run_as` (uid, gid), like `runuser -u postgres` does.
fn as_user(cmd: &mut Command, run_as: Option<(u32, u32)>) {
    if let Some((uid, gid)) = run_as {
        // std calls setgroups(0) when dropping root, so no supplementary group survives.
        cmd.uid(uid).gid(gid);
        cmd.env("HOME", "/tmp").env("USER", SUPERUSER);
    }
}

fn chown_to(path: &Path, run_as: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| io_err(&format!("chown {}", path.display()), e))?;
    }
    Ok(())
}

/// `$BMDB_POSTGRES_BIN_DIR`, else the newest `/usr/lib/postgresql/<major>/bin`.
fn find_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let dir = PathBuf::from(dir);
        if dir.join("postgres").is_file() {
            return Ok(dir);
        }
        return Err(Error::Throwaway(format!(
            "{BIN_DIR_ENV}={} holds no postgres binary",
            dir.display()
        )));
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir(DEBIAN_ROOT) {
        for entry in entries.flatten() {
            let Some(major) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let bin = entry.path().join("bin");
            if bin.join("postgres").is_file() && best.as_ref().is_none_or(|(m, _)| major > *m) {
                best = Some((major, bin));
            }
        }
    }
    best.map(|(_, bin)| bin).ok_or_else(|| {
        Error::Throwaway(format!(
            "no PostgreSQL found in {DEBIAN_ROOT}/*/bin (install Debian's postgresql, e.g. \
             `make deps`, or set {BIN_DIR_ENV})"
        ))
    })
}

/// uid and gid of `user` from /etc/passwd.
fn lookup_user(user: &str) -> Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(|e| io_err("reading /etc/passwd", e))?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == user {
            let uid = fields[2].parse().ok();
            let gid = fields[3].parse().ok();
            if let (Some(uid), Some(gid)) = (uid, gid) {
                return Ok((uid, gid));
            }
        }
    }
    Err(Error::Throwaway(format!(
        "PostgreSQL refuses to run as root and there is no {user:?} user to run it as"
    )))
}

/// The initdb'd template for this PostgreSQL build, creating it if needed (under a lock, so
/// that concurrent test processes run initdb once).
fn ensure_template(tmp: &Path, bin: &Path, run_as: Option<(u32, u32)>) -> Result<PathBuf> {
    let key = template_key(bin, run_as);
    let root = tmp.join(format!("bmdb-pg-template-{key}"));
    let data = root.join("data");
    let ready = root.join("ready");
    let lock_path = tmp.join(format!("bmdb-pg-template-{key}.lock"));
    let lock = File::create(&lock_path).map_err(|e| io_err("creating the template lock", e))?;
    lock.lock()
        .map_err(|e| io_err("locking the template lock", e))?;
    if ready.is_file() && data.join("PG_VERSION").is_file() {
        return Ok(data);
    }
    if root.exists() {
        fs::remove_dir_all(&root).map_err(|e| io_err("removing a broken template", e))?;
    }
    fs::create_dir(&root).map_err(|e| io_err("creating the template directory", e))?;
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
        .map_err(|e| io_err("chmod template directory", e))?;
    chown_to(&root, run_as)?;
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(&data)
        .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale"])
        .args(["--no-instructions", "--no-sync"])
        .current_dir(&root)
        .stdin(Stdio::null());
    as_user(&mut cmd, run_as);
    let out = cmd.output().map_err(|e| io_err("running initdb", e))?;
    if !out.status.success() {
        return Err(Error::Throwaway(format!(
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    File::create(&ready).map_err(|e| io_err("marking the template ready", e))?;
    Ok(data)
}

/// Distinguishes templates of different PostgreSQL builds and users.
fn template_key(bin: &Path, run_as: Option<(u32, u32)>) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bin.hash(&mut h);
    if let Ok(meta) = fs::metadata(bin.join("postgres")) {
        meta.len().hash(&mut h);
        meta.modified().ok().hash(&mut h);
    }
    run_as.hash(&mut h);
    rustix::process::geteuid().as_raw().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Removes instance directories whose owning process is gone, stopping a server still running
/// in one (possible only if its parent-death signal was lost).
fn remove_stale_instances(tmp: &Path, bin: &Path, run_as: Option<(u32, u32)>) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = instance_owner(&name) else {
            continue;
        };
        if Path::new("/proc").join(owner.to_string()).exists() {
            continue;
        }
        let dir = entry.path();
        let data = dir.join("data");
        if let Some(pm) = fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
            && Path::new("/proc").join(pm.to_string()).exists()
        {
            let mut cmd = Command::new(bin.join("pg_ctl"));
            cmd.arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            as_user(&mut cmd, run_as);
            let _ = cmd.status();
        }
        tracing::debug!(
            "removing stale throwaway PostgreSQL directory {}",
            dir.display()
        );
        let _ = fs::remove_dir_all(&dir);
    }
}

/// The owner PID encoded in an instance directory name.
fn instance_owner(name: &OsStr) -> Option<u32> {
    let rest = name.to_str()?.strip_prefix(INSTANCE_PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names() {
        assert_eq!(
            instance_owner(OsStr::new("bmdb-pg-1234-abcdef")),
            Some(1234)
        );
        assert_eq!(instance_owner(OsStr::new("bmdb-pg-template-00ff")), None);
        assert_eq!(
            instance_owner(OsStr::new("bmdb-pg-template-00ff.lock")),
            None
        );
        assert_eq!(instance_owner(OsStr::new("other")), None);
    }
}
