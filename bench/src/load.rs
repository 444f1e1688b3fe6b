//! The load generator: N HTTP/2 connections (one tonic `Channel` each, its own TCP and TLS
//! connection), M requests in flight in total spread over them (M workers, worker i on
//! connection i mod N), for a duration and at most a number of requests, optionally paced at a
//! total rate.
//!
//! A failed request is counted by label and the worker goes on: a `Channel` reconnects by
//! itself after an HTTP/2 GOAWAY or a lost connection, so a proxy recycling its connections or
//! a restarted server costs errors, never the run. Latencies of successful requests go into
//! one hdrhistogram per worker, merged at the end. When paced, a request's latency counts from
//! the time it was due, not the time it could be sent (no coordinated omission). The due times
//! come from a pacer thread that sleeps to each of them (tens of µs late), not from Tokio's
//! timer, which rounds every sleep up to its next millisecond and so added up to 1 ms to each
//! paced latency; how late each request left after it was due is reported beside.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::report::{
    ProcSample, Report, ServerUsage, clock_ticks_per_second, machine_busy_ticks, reset_peak_rss,
};
use crate::scenario::Workload;

/// Latencies above this are recorded as this (one minute, in µs).
const MAX_LATENCY_US: u64 = 60_000_000;

/// The shape of a run.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The scenario's name, for the report.
    pub scenario: String,
    /// `host:port`, for the report.
    pub target: String,
    /// Requests in flight, in total.
    pub in_flight: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it (same load).
    pub warmup: Duration,
    /// At most this many requests in the measured time.
    pub max_requests: Option<u64>,
    /// Total rate to pace the requests at, in requests/s.
    pub rate: Option<f64>,
    /// Server processes to measure.
    pub server_pids: Vec<String>,
    /// Other processes of the bench (a provider behind the server), measured apart.
    pub aux_pids: Vec<String>,
}

/// What one worker saw.
struct WorkerResult {
    ok: u64,
    errors: BTreeMap<String, u64>,
    latency_us: Histogram<u64>,
    /// Paced runs: how long after it was due each measured request left.
    lag_us: Histogram<u64>,
    /// The worst latency (µs) of the requests due in each window of the measured time.
    worst_by_window: Vec<u64>,
}

/// The windows of `Report::worst_by_window_us`: a stall shows as a run of slow windows.
pub const WINDOW: Duration = Duration::from_millis(250);
/// Windows kept at most: an hour's.
const MAX_WINDOWS: usize = (3600 * 1000 / WINDOW.as_millis()) as usize;

/// Shared between the workers and the conductor.
struct Shared {
    workload: Workload,
    /// Start of the measured time.
    measure_from: Instant,
    /// Set when the run is over.
    stop: AtomicBool,
    /// Requests started in the measured time.
    started: AtomicU64,
    max_requests: u64,
    /// Workers (request numbers advance by this, so that they never repeat).
    workers: u64,
    /// Whether a request budget was set (then every started request is counted).
    budget: bool,
}

/// Runs the load over `channels` (connected already) and reports.
pub async fn run(
    channels: Vec<Channel>,
    workload: Workload,
    options: &LoadOptions,
) -> anyhow::Result<Report> {
    anyhow::ensure!(!channels.is_empty(), "no connection");
    anyhow::ensure!(options.in_flight > 0, "--in-flight must be at least 1");
    if let Some(rate) = options.rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number"
        );
    }
    let start = Instant::now();
    let shared = Arc::new(Shared {
        workload,
        measure_from: start + options.warmup,
        stop: AtomicBool::new(false),
        started: AtomicU64::new(0),
        max_requests: options.max_requests.unwrap_or(u64::MAX),
        budget: options.max_requests.is_some(),
        workers: options.in_flight as u64,
    });

    // Paced: one queue of due times per worker, filled by the pacer thread in turn.
    let (pacer, mut queues) = match options.rate {
        Some(rate) => {
            let (dues, queues): (Vec<_>, Vec<_>) = (0..options.in_flight)
                .map(|_| {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    (tx, Some(rx))
                })
                .unzip();
            let shared = shared.clone();
            let interval = Duration::from_secs_f64(1.0 / rate);
            let pacer = std::thread::Builder::new()
                .name("pacer".into())
                .spawn(move || pace(start.into_std(), interval, &dues, &shared.stop))
                .context("pacer thread")?;
            (Some(pacer), queues)
        }
        None => (None, Vec::new()),
    };

    let mut workers = Vec::with_capacity(options.in_flight);
    for id in 0..options.in_flight {
        let channel = channels[id % channels.len()].clone();
        let dues = queues.get_mut(id).and_then(Option::take);
        workers.push(tokio::spawn(worker(
            id as u64,
            channel,
            shared.clone(),
            dues,
            new_histogram()?,
            new_histogram()?,
        )));
    }

    tokio::time::sleep_until(shared.measure_from).await;
    let peak_reset = reset_peak_rss(&options.server_pids);
    let server_before = ProcSample::read(&options.server_pids)?;
    let client_before = ProcSample::read(&["self".to_string()])?;
    let aux_before = ProcSample::read(&options.aux_pids)?;
    let machine_before = machine_busy_ticks()?;
    let measured_from = Instant::now();
    let deadline = measured_from + options.duration;
    // The end: the duration, or the request budget (checked every 10 ms).
    while Instant::now() < deadline && shared.started.load(Ordering::Relaxed) < shared.max_requests
    {
        tokio::time::sleep(Duration::from_millis(10).min(deadline - Instant::now())).await;
    }
    // Without a budget, answers arriving after the deadline are not counted; with one, the
    // last requests of the budget finish before the clock stops.
    shared.stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    if shared.budget {
        results = join(workers).await;
        workers = Vec::new();
    }
    let elapsed = measured_from.elapsed();
    let server_after = ProcSample::read(&options.server_pids)?;
    let client_after = ProcSample::read(&["self".to_string()])?;
    let aux_after = ProcSample::read(&options.aux_pids)?;
    let machine_after = machine_busy_ticks()?;
    results.extend(join(workers).await);

    let mut ok = 0;
    let mut errors = BTreeMap::new();
    if let Some(pacer) = pacer
        && pacer.join().is_err()
    {
        eprintln!("the pacer thread panicked");
    }
    let mut latency_us = new_histogram()?;
    let mut lag_us = new_histogram()?;
    let mut worst_by_window: Vec<u64> = Vec::new();
    for result in results {
        if worst_by_window.len() < result.worst_by_window.len() {
            worst_by_window.resize(result.worst_by_window.len(), 0);
        }
        for (worst, &us) in worst_by_window.iter_mut().zip(&result.worst_by_window) {
            *worst = (*worst).max(us);
        }
        ok += result.ok;
        for (label, n) in result.errors {
            *errors.entry(label).or_insert(0) += n;
        }
        latency_us.add(&result.latency_us)?;
        lag_us.add(&result.lag_us)?;
    }

    let ticks = clock_ticks_per_second() as f64;
    let server = (!options.server_pids.is_empty()).then(|| ServerUsage {
        pids: options.server_pids.clone(),
        cpu_s: server_after
            .cpu_ticks
            .saturating_sub(server_before.cpu_ticks) as f64
            / ticks,
        system_s: server_after
            .system_ticks
            .saturating_sub(server_before.system_ticks) as f64
            / ticks,
        peak_rss_mib: server_after.peak_rss_kib as f64 / 1024.0,
        peak_reset,
    });
    Ok(Report {
        scenario: options.scenario.clone(),
        target: options.target.clone(),
        connections: channels.len(),
        in_flight: options.in_flight,
        rate: options.rate,
        elapsed,
        ok,
        errors,
        latency_us,
        pace_lag_us: options.rate.map(|_| lag_us),
        worst_by_window_us: worst_by_window,
        server,
        client_cpu_s: client_after
            .cpu_ticks
            .saturating_sub(client_before.cpu_ticks) as f64
            / ticks,
        aux_cpu_s: (!options.aux_pids.is_empty())
            .then(|| aux_after.cpu_ticks.saturating_sub(aux_before.cpu_ticks) as f64 / ticks),
        machine_cpu_s: machine_after.saturating_sub(machine_before) as f64 / ticks,
    })
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("histogram bounds")
}

/// Waits for the workers; a worker that panicked is reported and left out.
async fn join(workers: Vec<tokio::task::JoinHandle<WorkerResult>>) -> Vec<WorkerResult> {
    let mut results = Vec::with_capacity(workers.len());
    for w in workers {
        match w.await {
            Ok(result) => results.push(result),
            Err(e) => eprintln!("a worker failed: {e}"),
        }
    }
    results
}

/// The pacer: sends the run's due times (`start`, then one every `interval`) to the workers'
/// queues in turn, each once it has come, until the run stops. A worker still busy finds its
/// due times waiting, and its latencies count from them.
fn pace(
    start: std::time::Instant,
    interval: Duration,
    dues: &[tokio::sync::mpsc::UnboundedSender<Instant>],
    stop: &AtomicBool,
) {
    let mut due = start;
    for nth in 0usize.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = std::time::Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if dues[nth % dues.len()].send(Instant::from_std(due)).is_err() {
            break;
        }
        due += interval;
    }
}

/// One request in flight at a time, until the run stops; paced when given its due times.
async fn worker(
    id: u64,
    channel: Channel,
    shared: Arc<Shared>,
    mut dues: Option<tokio::sync::mpsc::UnboundedReceiver<Instant>>,
    latency_us: Histogram<u64>,
    lag_us: Histogram<u64>,
) -> WorkerResult {
    let mut result = WorkerResult {
        ok: 0,
        errors: BTreeMap::new(),
        latency_us,
        lag_us,
        worst_by_window: Vec::new(),
    };
    let mut seq = id;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let due = match dues.as_mut() {
            Some(dues) => {
                let Some(due) = dues.recv().await else { break };
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                if due >= shared.measure_from {
                    let lag = due.elapsed().as_micros().min(u128::from(MAX_LATENCY_US)) as u64;
                    let _ = result.lag_us.record(lag.max(1));
                }
                due
            }
            None => Instant::now(),
        };
        let measured = due >= shared.measure_from;
        if measured && shared.started.fetch_add(1, Ordering::Relaxed) >= shared.max_requests {
            break;
        }
        let outcome = shared.workload.call(&channel, seq).await;
        seq = seq.wrapping_add(shared.workers);
        if shared.stop.load(Ordering::Relaxed) && !shared.budget {
            break;
        }
        if !measured {
            continue;
        }
        match outcome {
            Ok(()) => {
                result.ok += 1;
                let us = due.elapsed().as_micros().min(u128::from(MAX_LATENCY_US)) as u64;
                let _ = result.latency_us.record(us.max(1));
                let window = (due
                    .saturating_duration_since(shared.measure_from)
                    .as_millis()
                    / WINDOW.as_millis()) as usize;
                if window < MAX_WINDOWS {
                    if result.worst_by_window.len() <= window {
                        result.worst_by_window.resize(window + 1, 0);
                    }
                    result.worst_by_window[window] = result.worst_by_window[window].max(us);
                }
            }
            Err(label) => {
                *result.errors.entry(label).or_insert(0) += 1;
                // A connection being re-established: do not spin on it.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_go_to_the_workers_in_turn_and_never_early() {
        let (senders, mut receivers): (Vec<_>, Vec<_>) = (0..3)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let stop = Arc::new(AtomicBool::new(false));
        let start = std::time::Instant::now() + Duration::from_millis(5);
        let interval = Duration::from_micros(500);
        let pacer = {
            let stop = stop.clone();
            std::thread::spawn(move || pace(start, interval, &senders, &stop))
        };
        // Each worker's k-th due time is the (3k + worker)-th of the run, and it is handed out
        // once it has come.
        for k in 0..10u32 {
            for (worker, queue) in receivers.iter_mut().enumerate() {
                let due = queue.blocking_recv().expect("a due time");
                assert!(Instant::now() >= due, "handed out before it was due");
                let nth = 3 * k + worker as u32;
                assert_eq!(due.into_std(), start + interval * nth);
            }
        }
        stop.store(true, Ordering::Relaxed);
        drop(receivers);
        pacer.join().expect("the pacer ends when the run stops");
    }
}
