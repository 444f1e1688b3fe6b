//! The crash soak: round after round, a random node dies under load — a broker (SIGKILL, then
//! restarted on its home) or the database's primary (SIGKILL, the standby promoted, a new
//! standby made) — and at the end every receipt any broker gave is in the log at its index.
//! `UNEFOIS_CLUSTER_ROUNDS` rounds (2 in CI; `bench/cluster-soak.sh` runs 20).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::crash::{Acked, all_in_the_log, load, wait_served};
use crate::harness::{Database, Process, processes};

fn rounds() -> usize {
    std::env::var("UNEFOIS_CLUSTER_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_nodes_die_under_load_and_no_acknowledged_record_is_lost() -> anyhow::Result<()> {
    unefois_tests::install_crypto();
    let mut db = Database::start().await?;
    let url = db.url();
    let (homes, mut brokers) = processes(&url, 3).await?;
    let mut killed = [0usize; 4];
    let started = Instant::now();
    let (mut acked_total, mut seed) = (Acked::default(), started.elapsed().subsec_nanos() as usize);
    for round in 0..rounds() {
        let (stop, acked) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(Acked::default())),
        );
        let tasks = load(&brokers, &stop, &acked);
        wait_served(&acked, &[0, 1, 2], Instant::now()).await?;
        // A small linear congruential step: the victim varies from run to run and round to round.
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let victim = (seed >> 8) % 4;
        let at = Instant::now();
        // The others keep serving (after a fail-over, all three find the new primary).
        let serving: Vec<usize> = match victim {
            3 => {
                tokio::task::block_in_place(|| db.fail_over());
                vec![0, 1, 2]
            }
            b => {
                brokers[b].kill();
                (0..3).filter(|i| *i != b).collect()
            }
        };
        killed[victim] += 1;
        wait_served(&acked, &serving, at).await?;
        stop.store(true, Ordering::Release);
        for task in tasks {
            task.await?;
        }
        // A killed broker restarts on its home (the next round's load goes to its new port).
        if victim < 3 {
            brokers[victim] = Process::start(homes[victim].path(), &url).await?;
        }
        let round_acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|e| e.into_inner()));
        eprintln!(
            "round {round}: {} killed, {} receipts",
            if victim == 3 {
                "the primary".to_string()
            } else {
                format!("broker {victim}")
            },
            round_acked.receipts.len()
        );
        acked_total.extend(round_acked);
    }
    let size = all_in_the_log(&brokers[0], &acked_total).await?;
    eprintln!(
        "soak: {} rounds in {:.0} s (brokers killed {:?}, primaries {}), {} receipts acknowledged, \
         all in the log of {size} entries: 0 lost",
        rounds(),
        started.elapsed().as_secs_f64(),
        &killed[..3],
        killed[3],
        acked_total.receipts.len()
    );
    Ok(())
}
