//! Test support shared by Orchion's suites.
//!
//! [`sqlite_database`] hands each test a SQLite database in a directory of its own, removed
//! when the test drops it.
//!
//! [`postgres_database`] hands each test a fresh, empty PostgreSQL database. It uses
//! `ORCHION_TEST_DATABASE_URL` when that is set; otherwise it starts one throwaway cluster per
//! test process with the `initdb` it finds and stops it when the process ends. Only when neither
//! is possible does it return `None` after printing a loud line, and under `CI=true` it panics
//! instead, because CI must run the PostgreSQL half.
//!
//! [`tls::TestCa`] makes an authority and the server and client certificates it signs.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a failure here should stop the test

use std::{
    io::Write,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use sqlx::{Connection, PgConnection};

pub mod tls;

/// A SQLite database in a temporary directory, which lives as long as this value.
#[derive(Debug)]
pub struct SqliteDatabase {
    url: String,
    _dir: tempfile::TempDir,
}

impl SqliteDatabase {
    /// The `sqlite:` URL to open it with.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A new SQLite database for one test.
pub fn sqlite_database() -> SqliteDatabase {
    let dir = tempfile::tempdir().expect("a temporary directory");
    SqliteDatabase {
        url: format!("sqlite:{}", dir.path().join("orchion.db").display()),
        _dir: dir,
    }
}

/// The variable that points the tests at an existing PostgreSQL server.
pub const DATABASE_URL_VAR: &str = "ORCHION_TEST_DATABASE_URL";

/// A PostgreSQL server the tests can create databases on.
#[derive(Debug)]
struct Server {
    /// A URL of a database on the server that may create databases (ends in `/postgres` or the
    /// given database name).
    admin_url: String,
}

static SERVER: OnceLock<Option<Server>> = OnceLock::new();

/// A URL of a new, empty database for one test, or `None` (after a loud line on stderr) when
/// no PostgreSQL can be had on this machine.
pub async fn postgres_database() -> Option<String> {
    let server = SERVER
        .get_or_init(|| match std::env::var(DATABASE_URL_VAR) {
            Ok(url) if !url.is_empty() => Some(Server { admin_url: url }),
            _ => start_cluster(),
        })
        .as_ref()?;
    let name = format!("orchion_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = PgConnection::connect(&server.admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL server: {e}"));
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let _ = conn.close().await;
    Some(with_database(&server.admin_url, &name))
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_path(&format!("/{name}"));
            parsed.into()
        }
        Err(e) => panic!("the test PostgreSQL URL does not parse: {e}"),
    }
}

fn skip(reason: &str) -> Option<Server> {
    let line = format!(
        "\n!!!!!!!! PostgreSQL half SKIPPED: {reason}. Set {DATABASE_URL_VAR} or install PostgreSQL (initdb, pg_ctl) to run it. !!!!!!!!\n"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true requires the PostgreSQL half of the suite: {reason}");
    }
    let _ = std::io::stderr().write_all(line.as_bytes());
    None
}

/// Finds the directory holding `initdb` and `pg_ctl`: on `PATH`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn postgres_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .collect();
    debian.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    on_path
        .chain(debian.into_iter().rev())
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .map(|dir| std::fs::canonicalize(&dir).unwrap_or(dir))
        .map(|dir| {
            // `initdb` on PATH may be a link into the real bin directory, where `postgres` is.
            std::fs::canonicalize(dir.join("initdb"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or(dir)
        })
}

/// The user to run PostgreSQL as: ourselves, or, when we are root (which `initdb` refuses),
/// `postgres` or else `nobody`.
fn run_as() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    ["postgres", "nobody"]
        .into_iter()
        .find(|user| {
            Command::new("id")
                .arg(user)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_owned)
}

fn command(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(user) => {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", user, "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

fn start_cluster() -> Option<Server> {
    let Some(bin) = postgres_bin_dir() else {
        return skip("no initdb/pg_ctl on PATH or under /usr/lib/postgresql/*/bin");
    };
    let cluster = Cluster::start(bin, false);
    Some(Server {
        admin_url: cluster.admin_url(),
    })
}

/// A PostgreSQL cluster of this test's own, to restart under load, durable as a real one
/// (`fsync` and synchronous commits on); stopped and removed when the test process ends. `None` (after a loud line; a panic under `CI=true`) without
/// PostgreSQL on this machine.
pub fn private_postgres() -> Option<Cluster> {
    match postgres_bin_dir() {
        Some(bin) => Some(Cluster::start(bin, true)),
        None => {
            skip("no initdb/pg_ctl on PATH or under /usr/lib/postgresql/*/bin");
            None
        }
    }
}

/// A throwaway PostgreSQL cluster.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    user: Option<String>,
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    /// The URL of its `postgres` database, as the superuser.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Restarts it with `pg_ctl restart -m <mode>` (`fast` or `immediate`): every connection is
    /// cut, and it accepts connections again when this returns.
    pub fn restart(&self, mode: &str) {
        let out = command(self.user.as_deref(), &self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", mode, "-w", "-t", "60", "restart"])
            .arg("-l")
            .arg(self.dir.join("log"))
            .stdout(Stdio::null())
            .output()
            .expect("cannot run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl restart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until_accepting(self.port);
    }

    /// Starts a cluster; a shared test cluster (`durable` false) skips `fsync` for speed.
    fn start(bin: PathBuf, durable: bool) -> Cluster {
        let user = run_as();
        let dir = tempfile::Builder::new()
            .prefix("orchion-pg-")
            .tempdir()
            .expect("cannot create a temp dir for PostgreSQL")
            .keep();
        if let Some(user) = &user {
            let status = Command::new("chown")
                .args(["-R", user])
                .arg(&dir)
                .status()
                .expect("cannot run chown");
            assert!(
                status.success(),
                "chown of {} to {user} failed",
                dir.display()
            );
        }
        let data = dir.join("data");
        let out = command(user.as_deref(), &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--no-locale",
            ])
            .output()
            .expect("cannot run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let port = free_port();
        let speed = if durable {
            ""
        } else {
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        };
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1{speed} -c max_connections=400",
            dir.display()
        );
        let out = command(user.as_deref(), &bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(dir.join("log"))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .output()
            .expect("cannot run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        spawn_reaper(user.as_deref(), &bin, &dir);
        wait_until_accepting(port);
        Cluster {
            bin,
            user,
            dir,
            port,
        }
    }
}

/// Stops the cluster and removes its files once this test process has exited, however it
/// exits: statics are never dropped, so a watcher process does it.
fn spawn_reaper(user: Option<&str>, bin: &Path, dir: &Path) {
    let pg_ctl = bin.join("pg_ctl");
    let stop = match user {
        Some(user) => format!(
            "runuser -u {user} -- {} -D {}/data -m immediate stop",
            pg_ctl.display(),
            dir.display()
        ),
        None => format!(
            "{} -D {}/data -m immediate stop",
            pg_ctl.display(),
            dir.display()
        ),
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.display()
    );
    // Deliberately never waited on: the reaper must outlive this process to do its job.
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start the PostgreSQL reaper");
}

fn wait_until_accepting(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not accept connections on port {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_swapped_in_urls() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
