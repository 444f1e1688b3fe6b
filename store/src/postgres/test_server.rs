//! Real PostgreSQL servers for tests (feature `test-server`): a primary, and standbys made with
//! `pg_basebackup`, each in its own temporary folder on a loopback port, stopped when dropped.
//! The binaries are found under `UNEFOIS_PG_BIN`, Debian's `/usr/lib/postgresql/<v>/bin`, or
//! the `PATH`; as root (CI), they run as the `postgres` user, as initdb requires.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One PostgreSQL server.
pub struct Server {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    stopped: bool,
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("UNEFOIS_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort();
    versions.pop().unwrap_or_default()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A free loopback port (released before the server takes it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    fn command(&self, program: &str) -> Command {
        command(&self.bin, program)
    }

    /// The folder of the server's data.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of its `postgres` database, as the broker's superuser-less role would use it.
    pub fn url(&self) -> String {
        format!("postgresql://unefois@127.0.0.1:{}/postgres", self.port)
    }

    /// A new primary, started; `settings` are appended to its configuration.
    pub fn primary(settings: &str) -> Server {
        let bin = bin_dir();
        assert!(
            bin.join("initdb").exists() || which("initdb"),
            "PostgreSQL's initdb was not found (install Debian's postgresql, or set UNEFOIS_PG_BIN)"
        );
        let server = Server {
            dir: owned_tempdir(),
            port: free_port(),
            bin,
            stopped: true,
        };
        let data = server.data();
        run(server.command("initdb").args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            "unefois",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]));
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = off\nfull_page_writes = off\nwal_level = replica\nmax_wal_senders = 8\n\
             wal_keep_size = '256MB'\nmax_connections = 200\nshared_buffers = '32MB'\n{settings}\n",
            server.port,
            server.dir.path().display(),
        );
        append(&data.join("postgresql.conf"), &conf);
        append(
            &data.join("pg_hba.conf"),
            "\nhost replication all 127.0.0.1/32 trust\n",
        );
        let mut server = server;
        server.start();
        server
    }

    /// A standby of `primary`, streaming under `application_name = name`, started.
    pub fn standby(primary: &Server, name: &str) -> Server {
        Server::standby_on(primary, name, free_port())
    }

    /// A standby of `primary` on `port` (a dead server's: the brokers' URL names it already).
    pub fn standby_on(primary: &Server, name: &str, port: u16) -> Server {
        let server = Server {
            dir: owned_tempdir(),
            port,
            bin: primary.bin.clone(),
            stopped: true,
        };
        let data = server.data();
        run(server.command("pg_basebackup").args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "unefois",
            "-D",
            data.to_str().unwrap(),
            "-R",
            "-X",
            "stream",
            "--no-sync",
            // A fast checkpoint: the default spread one can take minutes on a busy primary.
            "-c",
            "fast",
        ]));
        let conf = format!(
            "\nport = {}\nunix_socket_directories = '{}'\n\
             primary_conninfo = 'host=127.0.0.1 port={} user=unefois application_name={name}'\n",
            server.port,
            server.dir.path().display(),
            primary.port
        );
        append(&data.join("postgresql.auto.conf"), &conf);
        let mut server = server;
        server.start();
        server
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start(&mut self) {
        let data = self.data();
        let log = self.dir.path().join("log");
        run(self.command("pg_ctl").args([
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            "60",
            "start",
        ]));
        self.stopped = false;
    }

    /// Stops the server: `immediate` is a crash (no shutdown checkpoint), as a SIGKILL would be.
    pub fn stop(&mut self, mode: &str) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", data.to_str().unwrap(), "-m", mode, "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.stopped = true;
    }

    /// Kills the postmaster with SIGKILL: its backends die with it, nothing is flushed.
    pub fn kill(&mut self) {
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        // The orphaned backends notice their postmaster is gone and exit; a later start of a
        // standby promoted elsewhere does not need them.
        self.stopped = true;
    }

    /// Promotes a standby to primary and waits until it accepts writes.
    pub fn promote(&self) {
        let data = self.data();
        run(self
            .command("pg_ctl")
            .args(["-D", data.to_str().unwrap(), "-w", "promote"]));
    }

    /// Runs SQL with psql on this server; returns its output (tuples only, unaligned).
    pub fn sql(&self, sql: &str) -> String {
        let out = self.psql(sql).output().unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts SQL with psql on this server, in a session of its own, without waiting for it:
    /// someone else's transaction while the test goes on.
    pub fn sql_meanwhile(&self, sql: &str) -> std::process::Child {
        self.psql(sql)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    fn psql(&self, sql: &str) -> Command {
        let mut psql = self.command("psql");
        psql.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "unefois",
            "-d",
            "postgres",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]);
        psql
    }

    /// Waits until `sql` gives `expected` (or panics after `within`).
    pub fn wait_for(&self, sql: &str, expected: &str, within: Duration) {
        let until = Instant::now() + within;
        loop {
            let got = self.sql(sql);
            if got == expected {
                return;
            }
            assert!(
                Instant::now() < until,
                "{sql}: {got}, waited for {expected}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.stopped {
            self.stop("immediate");
        }
    }
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `program` from `bin` (or the PATH), as the `postgres` user when running as root.
fn command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    let program = match path.exists() {
        true => path.display().to_string(),
        false => program.to_string(),
    };
    match is_root() {
        true => {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &program]);
            c
        }
        false => Command::new(program),
    }
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// A temporary folder the server's user owns.
fn owned_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if is_root() {
        let out = Command::new("chown")
            .args(["postgres:postgres", dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "chown: {out:?}");
    }
    dir
}
