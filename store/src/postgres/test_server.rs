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

    /// Kills the server as its machine's death would: the postmaster and every process it
    /// started (backends, walsenders, checkpointer, WAL writer…) stopped together, then
    /// SIGKILLed, nothing flushed; returns once none runs. The postmaster alone would not do:
    /// each of its children is a session of its own (a postmaster child calls `setsid`, so no
    /// process group holds them all), and they run on until they notice it is gone — a
    /// walsender still shipping WAL to a standby being promoted. Its children are the processes
    /// whose parent it is (`/proc/<pid>/stat`), listed once it is stopped and can start no
    /// other.
    pub fn kill(&mut self) {
        if self.stopped {
            return;
        }
        // Only this server's postmaster, whatever the pid file says (a stale one may name a
        // process reused since, the test's own included): one started with `-D` this data
        // folder (its command line, readable by anyone, unlike its working directory). Its
        // children are its own.
        let data = self.data();
        let ours = |pid: i32| {
            pid != std::process::id() as i32
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|line| {
                    line.split(|b| *b == 0)
                        .any(|arg| arg == data.as_os_str().as_encoded_bytes())
                })
        };
        let postmaster = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            .filter(|pid| state(*pid).is_some());
        if let Some(postmaster) = postmaster {
            assert!(
                ours(postmaster),
                "{}: its pid file names process {postmaster}, not its postmaster",
                data.display()
            );
            signal(postmaster, rustix::process::Signal::STOP);
            until(|| !matches!(state(postmaster), Some((s, _)) if s != 'T'));
            let mut all = children(postmaster);
            all.push(postmaster);
            for pid in &all {
                signal(*pid, rustix::process::Signal::STOP);
            }
            for pid in &all {
                signal(*pid, rustix::process::Signal::KILL);
            }
            until(|| {
                all.iter()
                    .all(|pid| !matches!(state(*pid), Some((s, _)) if s != 'Z' && s != 'X'))
            });
        }
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

fn signal(pid: i32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// The state letter (`R`, `S`, `T`, `Z`…) and the parent of process `pid`, from
/// `/proc/<pid>/stat`; `None` once it is gone.
fn state(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (name) state ppid …", the name possibly holding spaces and parentheses.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// The processes whose parent is `parent`.
fn children(parent: i32) -> Vec<i32> {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    processes
        .filter_map(|p| p.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| state(*pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}

/// Waits until `done` (5 s at most).
/// Waits until `done` (5 s at most, then fails the test: a server's process that neither
/// stops nor dies would leave a kill half done, and a standby promoted beside it).
#[track_caller]
fn until(done: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(
            Instant::now() < until,
            "a server's process did not stop or die in 5 s"
        );
        std::thread::sleep(Duration::from_millis(1));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A killed server leaves no process running: not a backend, not the walsender that
    /// streams to its standby.
    #[test]
    fn a_killed_server_leaves_no_process_running() {
        let mut primary = Server::primary("");
        let standby = Server::standby(&primary, "s1");
        primary.wait_for(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            "1",
            Duration::from_secs(30),
        );
        let postmaster: i32 = std::fs::read_to_string(primary.data().join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut all = children(postmaster);
        assert!(all.len() >= 5, "the checkpointer, the walsender…: {all:?}");
        all.push(postmaster);
        primary.kill();
        let running: Vec<String> = all
            .into_iter()
            .filter(|pid| matches!(state(*pid), Some((s, _)) if s != 'Z' && s != 'X'))
            .map(|pid| {
                let line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!(
                    "{pid} {}",
                    String::from_utf8_lossy(&line).trim_end_matches('\0')
                )
            })
            .collect();
        assert!(running.is_empty(), "still running: {running:?}");
        drop(standby);
    }
}
