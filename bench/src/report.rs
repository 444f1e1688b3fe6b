//! The result of a run: throughput, errors, the latency distribution (hdrhistogram, in
//! microseconds) and, for the server processes named with `--server-pid`, their CPU time per
//! request (utime + stime from /proc/PID/stat, with cutime + cstime: what their children that
//! ended spent, PostgreSQL's autovacuum workers) and peak resident memory (VmHWM from
//! /proc/PID/status). Printed as a table for people, or as one JSON object.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::json;

/// CPU time and peak memory of a set of processes at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// utime + stime of all their threads, in clock ticks.
    pub cpu_ticks: u64,
    /// stime alone (time in the kernel: syscalls, network, disk), in clock ticks.
    pub system_ticks: u64,
    /// Sum of their VmHWM, in KiB.
    pub peak_rss_kib: u64,
}

impl ProcSample {
    /// Reads /proc for each pid (`self` for the current process). A process that ended is
    /// left out: a child's CPU is then in its parent's (PostgreSQL's postmaster, listed too).
    pub fn read(pids: &[String]) -> anyhow::Result<ProcSample> {
        let mut sample = ProcSample::default();
        for pid in pids {
            let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Ok(stat) => stat,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("/proc/{pid}/stat")),
            };
            let (user, system) = cpu_ticks(&stat).with_context(|| format!("/proc/{pid}/stat"))?;
            sample.cpu_ticks += user + system;
            sample.system_ticks += system;
            // Gone between the two reads: its peak memory is unknown.
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            sample.peak_rss_kib += vm_hwm_kib(&status).unwrap_or(0);
        }
        Ok(sample)
    }
}

/// utime + cutime and stime + cstime (fields 14 to 17) of a /proc/PID/stat line: the
/// process's own time and that of its children it waited for. The command name (field 2) may
/// hold spaces and parentheses: fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> anyhow::Result<(u64, u64)> {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        bail!("no command name");
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, index 11.
    let (Some(utime), Some(stime), Some(cutime), Some(cstime)) = (
        fields.get(11),
        fields.get(12),
        fields.get(13),
        fields.get(14),
    ) else {
        bail!("too few fields");
    };
    let (utime, stime): (u64, u64) = (utime.parse()?, stime.parse()?);
    // A child's times are signed in the kernel's format; never negative in practice.
    let (cutime, cstime): (i64, i64) = (cutime.parse()?, cstime.parse()?);
    let children = |t: i64| u64::try_from(t).unwrap_or(0);
    Ok((utime + children(cutime), stime + children(cstime)))
}

/// VmHWM of a /proc/PID/status text, in KiB.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Busy time of the whole machine so far, in clock ticks (all CPUs): user, nice, system, irq,
/// softirq and steal from the first line of /proc/stat. Compared with the processes measured,
/// it shows how much other work shared the cores during a run.
pub fn machine_busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        bail!("/proc/stat: no cpu line");
    };
    busy_ticks(line)
}

/// user + nice + system + irq + softirq + steal of a /proc/stat `cpu` line (idle and iowait
/// are not busy; guest time is already in user).
fn busy_ticks(line: &str) -> anyhow::Result<u64> {
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("/proc/stat: not a number")?;
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    Ok(field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// Resets the peak RSS (VmHWM) of each pid to its current RSS (`5` into /proc/PID/clear_refs,
/// Linux ≥ 4.0; needs the right to write there). Returns whether every reset worked.
pub fn reset_peak_rss(pids: &[String]) -> bool {
    pids.iter()
        .all(|pid| std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when it cannot be asked).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// A finished run.
#[derive(Debug)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The address loaded.
    pub target: String,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Requests in flight, in total.
    pub in_flight: usize,
    /// Target rate in requests/s, if the run was paced.
    pub rate: Option<f64>,
    /// Measured time.
    pub elapsed: Duration,
    /// Successful requests (their latencies are in `latency_us`).
    pub ok: u64,
    /// Failed requests by label.
    pub errors: BTreeMap<String, u64>,
    /// Latencies of the successful requests, in µs (from the intended send time when paced).
    pub latency_us: Histogram<u64>,
    /// Paced runs: how long after it was due each measured request left (the load generator's
    /// own lateness, included in `latency_us`).
    pub pace_lag_us: Option<Histogram<u64>>,
    /// The worst latency (µs) of the requests due in each quarter second of the measured time.
    pub worst_by_window_us: Vec<u64>,
    /// The server processes' CPU and memory over the run, when pids were given.
    pub server: Option<ServerUsage>,
    /// The load generator's own CPU time, in seconds.
    pub client_cpu_s: f64,
    /// CPU time of the auxiliary processes (`--aux-pid`), in seconds.
    pub aux_cpu_s: Option<f64>,
    /// CPU time of the whole machine during the run (all CPUs), in seconds.
    pub machine_cpu_s: f64,
}

/// What the server processes used during the run.
#[derive(Clone, Debug)]
pub struct ServerUsage {
    /// The pids measured.
    pub pids: Vec<String>,
    /// Their CPU time over the run, in seconds.
    pub cpu_s: f64,
    /// The part of it spent in the kernel, in seconds.
    pub system_s: f64,
    /// Sum of their peak RSS (VmHWM) at the end of the run, in MiB.
    pub peak_rss_mib: f64,
    /// Whether the peak was reset at the start of the run (else it is the process lifetime's).
    pub peak_reset: bool,
}

impl Report {
    /// All requests, failed or not.
    pub fn total(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }

    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Server CPU microseconds per request (failed ones included: they cost too).
    pub fn server_cpu_us_per_request(&self) -> Option<f64> {
        let server = self.server.as_ref()?;
        (self.total() > 0).then(|| server.cpu_s * 1e6 / self.total() as f64)
    }

    /// Cores kept busy during the run by anything but the server processes and the load
    /// generator (another build, say): the figures are skewed when it is not near 0.
    pub fn other_busy_cores(&self) -> f64 {
        let server = self.server.as_ref().map_or(0.0, |s| s.cpu_s);
        let aux = self.aux_cpu_s.unwrap_or(0.0);
        ((self.machine_cpu_s - server - aux - self.client_cpu_s)
            / self.elapsed.as_secs_f64().max(1e-9))
        .max(0.0)
    }

    fn percentile(&self, q: f64) -> u64 {
        if self.latency_us.is_empty() {
            0
        } else {
            self.latency_us.value_at_quantile(q)
        }
    }

    /// Paced runs with measured requests: how late they left.
    fn pace_lag(&self) -> Option<&Histogram<u64>> {
        self.pace_lag_us.as_ref().filter(|h| !h.is_empty())
    }

    /// The report as one JSON object (latencies in µs).
    pub fn to_json(&self) -> serde_json::Value {
        let server = self.server.as_ref().map(|s| {
            json!({
                "pids": s.pids,
                "cpu_s": s.cpu_s,
                "system_s": s.system_s,
                "cpu_us_per_request": self.server_cpu_us_per_request(),
                "cpu_cores_used": s.cpu_s / self.elapsed.as_secs_f64().max(1e-9),
                "peak_rss_mib": s.peak_rss_mib,
                "peak_rss_reset_at_start": s.peak_reset,
            })
        });
        json!({
            "scenario": self.scenario,
            "target": self.target,
            "connections": self.connections,
            "in_flight": self.in_flight,
            "rate": self.rate,
            "duration_s": self.elapsed.as_secs_f64(),
            "requests": self.total(),
            "ok": self.ok,
            "errors": self.errors.values().sum::<u64>(),
            "errors_by_kind": self.errors,
            "rps": self.rps(),
            "latency_us": {
                "p50": self.percentile(0.50),
                "p90": self.percentile(0.90),
                "p99": self.percentile(0.99),
                "max": self.latency_us.max(),
                "mean": self.latency_us.mean(),
            },
            "pace_lag_us": self.pace_lag().map(|h| json!({
                "p50": h.value_at_quantile(0.50),
                "p99": h.value_at_quantile(0.99),
                "max": h.max(),
            })),
            "worst_latency_ms_per_quarter_second": self
                .worst_by_window_us
                .iter()
                .map(|us| (*us as f64 / 100.0).round() / 10.0)
                .collect::<Vec<_>>(),
            "server": server,
            "client_cpu_us_per_request": (self.total() > 0)
                .then(|| self.client_cpu_s * 1e6 / self.total() as f64),
            "aux_cpu_us_per_request": self
                .aux_cpu_s
                .filter(|_| self.total() > 0)
                .map(|cpu| cpu * 1e6 / self.total() as f64),
            "machine_busy_cores": self.machine_cpu_s / self.elapsed.as_secs_f64().max(1e-9),
            "other_busy_cores": self.other_busy_cores(),
        })
    }

    /// The report as a table for people.
    pub fn table(&self) -> String {
        let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
        let mut rows: Vec<(String, String)> = vec![
            ("scenario".into(), self.scenario.clone()),
            ("target".into(), self.target.clone()),
            (
                "load".into(),
                format!(
                    "{} connection(s), {} in flight{}",
                    self.connections,
                    self.in_flight,
                    self.rate
                        .map(|r| format!(", paced at {r:.0} req/s"))
                        .unwrap_or_default()
                ),
            ),
            (
                "duration".into(),
                format!("{:.1} s", self.elapsed.as_secs_f64()),
            ),
            (
                "requests".into(),
                format!("{} ok, {} failed", self.ok, self.total() - self.ok),
            ),
            ("throughput".into(), format!("{:.0} req/s", self.rps())),
            ("latency p50".into(), ms(self.percentile(0.50))),
            ("latency p90".into(), ms(self.percentile(0.90))),
            ("latency p99".into(), ms(self.percentile(0.99))),
            ("latency max".into(), ms(self.latency_us.max())),
        ];
        if let Some(lag) = self.pace_lag() {
            rows.push((
                "sent after due".into(),
                format!(
                    "p50 {}, p99 {}, max {} (included in the latencies)",
                    ms(lag.value_at_quantile(0.50)),
                    ms(lag.value_at_quantile(0.99)),
                    ms(lag.max())
                ),
            ));
        }
        for (label, count) in &self.errors {
            rows.push((format!("errors {label}"), count.to_string()));
        }
        if let Some(server) = &self.server {
            rows.push((
                "server CPU".into(),
                format!(
                    "{:.1} µs/request ({:.2} cores, {:.0} % in the kernel, pids {})",
                    self.server_cpu_us_per_request().unwrap_or(0.0),
                    server.cpu_s / self.elapsed.as_secs_f64().max(1e-9),
                    100.0 * server.system_s / server.cpu_s.max(1e-9),
                    server.pids.join(",")
                ),
            ));
            rows.push((
                "server peak RSS".into(),
                format!(
                    "{:.1} MiB{}",
                    server.peak_rss_mib,
                    if server.peak_reset {
                        " (during the run)"
                    } else {
                        " (process lifetime)"
                    }
                ),
            ));
        }
        if self.total() > 0 {
            rows.push((
                "client CPU".into(),
                format!(
                    "{:.1} µs/request",
                    self.client_cpu_s * 1e6 / self.total() as f64
                ),
            ));
        }
        if let Some(aux) = self.aux_cpu_s.filter(|_| self.total() > 0) {
            rows.push((
                "auxiliary CPU".into(),
                format!("{:.1} µs/request", aux * 1e6 / self.total() as f64),
            ));
        }
        rows.push((
            "other load".into(),
            format!(
                "{:.2} cores busy with other work during the run",
                self.other_busy_cores()
            ),
        ));
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn proc_fields_are_read_after_the_command_name() {
        let stat = "1234 (tokio (rt) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 731 269 0 0 20 0 9 0";
        assert_eq!(cpu_ticks(stat).unwrap(), (731, 269));
        // With what its children that ended spent (a postmaster's reaped workers).
        let parent = "77 (postgres) S 1 77 77 0 -1 4194560 500 0 0 0 700 200 40 9 20 0 9 0";
        assert_eq!(cpu_ticks(parent).unwrap(), (740, 209));
        // A process that ended is left out, not an error.
        let gone = ProcSample::read(&["999999999".to_string()]).unwrap();
        assert_eq!(gone.cpu_ticks, 0);
        assert!(cpu_ticks("garbage").is_err());
        let status = "Name:\tunefois\nVmPeak:\t  100 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(51234));
        assert_eq!(vm_hwm_kib("Name: x"), None);
        let cpu = "cpu  897346 67759 218406 873697 18561 0 4970 730 0 0";
        assert_eq!(
            busy_ticks(cpu).unwrap(),
            897346 + 67759 + 218406 + 4970 + 730
        );
        assert!(busy_ticks("cpu x").is_err());
    }

    #[test]
    fn this_process_can_be_measured() {
        let sample = ProcSample::read(&["self".to_string()]).unwrap();
        assert!(sample.peak_rss_kib > 0);
        assert!(clock_ticks_per_second() > 0);
        assert!(machine_busy_ticks().unwrap() > 0);
    }
}
