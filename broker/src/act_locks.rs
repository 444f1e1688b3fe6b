//! This broker's locks of the acts that read, then record, about one person or one request id
//! (`crate::idempotency::serialised`): one lock per key, so that acts about different people
//! go on together (one lock for all acts made every consent grant wait for every other, about
//! 600 a second at most on PostgreSQL; BENCHMARKS.md, run AA) while two acts about the same
//! person, or under the same request id, go one at a time. Keys are taken in their order, as
//! the store's holds across brokers are, so two acts never wait on each other crosswise.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedMutexGuard;

/// How many entries the table may hold before those no act holds are swept out.
const SWEEP_FROM: usize = 1024;

type KeyLock = tokio::sync::Mutex<()>;

/// The locks, by key; an entry lives while an act holds or waits for it.
#[derive(Default)]
pub struct ActLocks {
    locks: Mutex<HashMap<String, Weak<KeyLock>>>,
}

/// An act's locks, held until dropped.
pub struct Held {
    _guards: Vec<OwnedMutexGuard<()>>,
}

impl ActLocks {
    /// Waits for the locks of `keys` (each once, in their order) and holds them.
    pub async fn hold(&self, keys: &[&str]) -> Held {
        let mut keys: Vec<&str> = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let locks: Vec<Arc<KeyLock>> = keys.iter().map(|key| self.lock_of(key)).collect();
        let mut guards = Vec::with_capacity(locks.len());
        for lock in locks {
            guards.push(lock.lock_owned().await);
        }
        Held { _guards: guards }
    }

    /// The lock of `key`, made if no act holds or waits for it.
    fn lock_of(&self, key: &str) -> Arc<KeyLock> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = locks.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        if locks.len() >= SWEEP_FROM {
            locks.retain(|_, lock| lock.strong_count() > 0);
        }
        let lock = Arc::new(KeyLock::new(()));
        locks.insert(key.to_string(), Arc::downgrade(&lock));
        lock
    }

    /// How many entries the table holds (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `keys` can be held within 50 ms while the others are.
    async fn free(locks: &ActLocks, keys: &[&str]) -> bool {
        tokio::time::timeout(Duration::from_millis(50), locks.hold(keys))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn acts_about_other_keys_go_on_and_those_about_a_held_one_wait() {
        let locks = ActLocks::default();
        let held = locks.hold(&["person\0alice", "request\0caf\0r1"]).await;
        assert!(free(&locks, &["person\0bob"]).await);
        assert!(free(&locks, &["person\0bob", "request\0caf\0r2"]).await);
        assert!(!free(&locks, &["person\0alice"]).await);
        assert!(!free(&locks, &["person\0carol", "request\0caf\0r1"]).await);
        drop(held);
        assert!(free(&locks, &["person\0alice", "request\0caf\0r1"]).await);
        // A key given twice is held once (not waited for by its own act).
        assert!(free(&locks, &["person\0alice", "person\0alice"]).await);
    }

    #[tokio::test]
    async fn the_locks_no_act_holds_are_swept_out() {
        let locks = ActLocks::default();
        for i in 0..3 * SWEEP_FROM {
            drop(locks.hold(&[&format!("person\0{i}")]).await);
        }
        assert!(locks.len() <= SWEEP_FROM, "{}", locks.len());
        let held = locks.hold(&["person\0kept"]).await;
        for i in 0..3 * SWEEP_FROM {
            drop(locks.hold(&[&format!("person\0{i}")]).await);
        }
        assert!(
            !free(&locks, &["person\0kept"]).await,
            "a held lock was swept out"
        );
        drop(held);
    }
}
