//! A broker nobody scrapes must not keep every latency it measured: histogram samples are
//! folded into buckets by the upkeep thread (they grew by about 50 bytes per request before).

#![allow(missing_docs, clippy::unwrap_used)]

use std::alloc::System;
use std::time::{Duration, Instant};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not freed since `region` started.
fn live(region: &Region<'_, System>) -> isize {
    let change = region.change();
    change.bytes_allocated as isize - change.bytes_deallocated as isize + change.bytes_reallocated
}

#[test]
fn histogram_samples_are_folded_without_a_scrape() {
    let handle = broker::metrics::handle().expect("recorder installed");
    // Every series exists before the baseline.
    broker::metrics::fetch_duration("dgfip.revenu_fiscal_reference", "granted", 0.001);
    handle.run_upkeep();
    let region = Region::new(GLOBAL);

    // A burst, then a pause longer than the upkeep period with a trickle of samples (as a
    // quiet broker records), and no scrape: without upkeep every sample of the burst (an f64,
    // 8 bytes, and more with its bucket) would still be held.
    let record = |n: u32| {
        for i in 0..n {
            let seconds = f64::from(i % 1000) / 1e6;
            broker::metrics::fetch_duration("dgfip.revenu_fiscal_reference", "granted", seconds);
        }
    };
    let burst = 600_000u32;
    record(burst);
    let started = Instant::now();
    while started.elapsed() < broker::metrics::UPKEEP_EVERY * 2 {
        record(500);
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = live(&region);
    let unfolded = burst as isize * 8;
    assert!(
        held < unfolded / 4,
        "{held} bytes held after a burst of {burst} samples (they alone take {unfolded} bytes)"
    );
}
