//! Connections that hold a descriptor before they do anything useful (a TLS handshake in
//! progress, an HTTP/1 request whose headers are still coming), bounded by shedding: a newcomer
//! is admitted, and room is made by closing the oldest idle such connection of its own source
//! address (over the per-source cap), then the oldest idle one of all (over the total); a
//! connection answering (busy) is never closed, and when none can go the newcomer is closed
//! instead, unanswered. An attacker's
//! stalled connections are the oldest by construction, while an honest client's handshake lasts
//! milliseconds: the accept loops never wait, and nobody queues behind a flood.
//!
//! Also [`LogThrottle`], so that a flood of refusals cannot become a flood of log lines.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Where a connection comes from, as the per-source cap counts it: an IPv4 address, or the
/// /64 prefix of an IPv6 one (a single host commonly holds a whole /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a peer address.
    pub fn of(ip: IpAddr) -> Source {
        // An IPv4 address mapped into IPv6 is the IPv4 address.
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(prefix.into()))
            }
        }
    }

    /// The IPv6 /48 the source is in (a site: what a tunnel broker hands anyone, 65,536 /64s),
    /// for a cap above the source's own; `None` for an IPv4 address.
    pub fn site(self) -> Option<Source> {
        match self.0 {
            IpAddr::V4(_) => None,
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 80) - 1);
                Some(Source(IpAddr::V6(prefix.into())))
            }
        }
    }
}

/// Why a connection was shed to make room for a newcomer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// The newcomer's source held as many such connections as it may: its oldest idle one was
    /// closed.
    SameSource,
    /// The table was full: the oldest connection (that was not busy) was closed.
    Oldest,
}

/// The connections of one listener that may be shed.
pub struct ShedTable {
    max_total: usize,
    max_per_source: usize,
    on_change: fn(usize),
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    by_age: BTreeMap<u64, Entry>,
    by_source: HashMap<Source, BTreeSet<u64>>,
}

struct Entry {
    source: Source,
    busy: Arc<AtomicBool>,
    /// Dropped when the entry is shed: the connection's [`Ticket::shed`] then resolves.
    _shed: oneshot::Sender<()>,
}

impl Inner {
    fn remove(&mut self, id: u64) -> bool {
        let Some(entry) = self.by_age.remove(&id) else {
            return false;
        };
        if let Some(ids) = self.by_source.get_mut(&entry.source) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_source.remove(&entry.source);
            }
        }
        true
    }
}

/// What [`ShedTable::admit`] did.
pub struct Admitted {
    /// The newcomer's place; `None` when the table was full, or its source at its cap, of
    /// connections all busy: the newcomer is then refused (closed) instead.
    pub ticket: Option<Ticket>,
    /// The connections shed to make room, and why.
    pub shed: Vec<Shed>,
}

impl ShedTable {
    /// A table of at most `max_total` connections, `max_per_source` of them from one source;
    /// `on_change` hears the number of connections in the table after each change (a gauge; it
    /// is called under the table's lock, so that the last value set is the true one).
    pub fn new(max_total: usize, max_per_source: usize, on_change: fn(usize)) -> Arc<ShedTable> {
        Arc::new(ShedTable {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            on_change,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The table stays consistent at every await-free step: a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `source`, shedding what must go to make room (within the
    /// per-source cap when `capped`: not for a reverse proxy's). Never waits.
    pub fn admit(self: &Arc<Self>, source: Source, capped: bool) -> Admitted {
        let mut shed = Vec::new();
        let mut inner = self.lock();
        // Over its cap, the source's oldest idle connection goes; one answering is never cut
        // (its act may be on the record while its answer is lost): a source whose every
        // connection is answering has its newcomer closed instead (its client tries again).
        let over_cap = inner
            .by_source
            .get(&source)
            .filter(|ids| capped && ids.len() >= self.max_per_source)
            .map(|ids| {
                ids.iter().copied().find(|id| {
                    inner
                        .by_age
                        .get(id)
                        .is_some_and(|e| !e.busy.load(Ordering::Acquire))
                })
            });
        match over_cap {
            Some(Some(id)) if inner.remove(id) => shed.push(Shed::SameSource),
            Some(Some(_)) | None => {}
            Some(None) => {
                (self.on_change)(inner.by_age.len());
                return Admitted { ticket: None, shed };
            }
        }
        if inner.by_age.len() >= self.max_total {
            let oldest_idle = inner
                .by_age
                .iter()
                .find(|(_, e)| !e.busy.load(Ordering::Acquire))
                .map(|(id, _)| *id);
            match oldest_idle {
                Some(id) => {
                    inner.remove(id);
                    shed.push(Shed::Oldest);
                }
                None => {
                    (self.on_change)(inner.by_age.len());
                    return Admitted { ticket: None, shed };
                }
            }
        }
        let id = inner.next;
        inner.next += 1;
        let (tx, rx) = oneshot::channel();
        let busy = Arc::new(AtomicBool::new(false));
        inner.by_age.insert(
            id,
            Entry {
                source,
                busy: busy.clone(),
                _shed: tx,
            },
        );
        // A reverse proxy's connections do not count against its neighbours' cap, nor theirs
        // against it: it is not listed by source.
        if capped {
            inner.by_source.entry(source).or_default().insert(id);
        }
        (self.on_change)(inner.by_age.len());
        drop(inner);
        Admitted {
            ticket: Some(Ticket {
                id,
                table: self.clone(),
                shed: rx,
                busy,
            }),
            shed,
        }
    }

    /// Connections in the table.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_age.len()
    }
}

/// A connection's place in a [`ShedTable`]; dropping it leaves the table.
pub struct Ticket {
    id: u64,
    table: Arc<ShedTable>,
    shed: oneshot::Receiver<()>,
    busy: Arc<AtomicBool>,
}

impl Ticket {
    /// Resolves when the connection was shed: its task then closes it.
    pub async fn shed(&mut self) {
        let _ = (&mut self.shed).await;
    }

    /// A flag that keeps the connection from being shed while it is set (a request being
    /// answered on the operational listener).
    pub fn busy(&self) -> Arc<AtomicBool> {
        self.busy.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.table.lock();
        if inner.remove(self.id) {
            (self.table.on_change)(inner.by_age.len());
        }
    }
}

/// Lets through at most `burst` log lines per `window`, and counts the others, so that the next
/// line logged can say how many were left out.
pub struct LogThrottle {
    window: Duration,
    burst: u32,
    state: Mutex<ThrottleState>,
}

struct ThrottleState {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogThrottle {
    /// A throttle of `burst` lines per `window`.
    pub const fn new(window: Duration, burst: u32) -> LogThrottle {
        LogThrottle {
            window,
            burst,
            state: Mutex::new(ThrottleState {
                started: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether to log an event now: `Some(n)` to log it, saying that `n` like events were not
    /// logged since the last line; `None` to count it only.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if state
            .started
            .is_none_or(|started| now.duration_since(started) >= self.window)
        {
            state.started = Some(now);
            state.logged = 0;
        }
        if state.logged < self.burst {
            state.logged += 1;
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn was_shed(ticket: &mut Ticket) -> bool {
        matches!(
            ticket.shed.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        )
    }

    fn ip(s: &str) -> Source {
        Source::of(s.parse().expect("an address"))
    }

    #[test]
    fn a_source_over_its_cap_loses_its_own_oldest_then_the_table_its_oldest() {
        let table = ShedTable::new(4, 2, |_| {});
        let mut b1 = table.admit(ip("10.0.0.2"), true).ticket.expect("admitted");
        let mut a1 = table.admit(ip("10.0.0.1"), true).ticket.expect("admitted");
        let _a2 = table.admit(ip("10.0.0.1"), true).ticket.expect("admitted");
        let a3 = table.admit(ip("10.0.0.1"), true);
        assert_eq!(a3.shed, vec![Shed::SameSource]);
        assert!(was_shed(&mut a1), "a1 shed");
        let _b2 = table.admit(ip("10.0.0.2"), true).ticket;
        assert_eq!(table.len(), 4);
        // Full: the oldest left (b1) goes, whatever its source.
        let c = table.admit(ip("10.0.0.3"), true);
        assert_eq!(c.shed, vec![Shed::Oldest]);
        assert!(was_shed(&mut b1), "b1 shed");
        assert_eq!(table.len(), 4);
        drop(c);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn busy_connections_are_not_shed_and_a_full_busy_table_refuses() {
        let table = ShedTable::new(2, 2, |_| {});
        let a = table.admit(ip("10.0.0.1"), true).ticket.expect("admitted");
        let mut b = table.admit(ip("10.0.0.1"), true).ticket.expect("admitted");
        a.busy().store(true, Ordering::Release);
        // Full: the oldest idle one (b) goes, not the busy a.
        let c = table.admit(ip("10.0.0.2"), true);
        assert_eq!(c.shed, vec![Shed::Oldest]);
        assert!(was_shed(&mut b), "b shed");
        let c = c.ticket.expect("admitted");
        c.busy().store(true, Ordering::Release);
        // Full of busy connections: the newcomer is refused.
        let d = table.admit(ip("10.0.0.3"), true);
        assert!(d.ticket.is_none() && d.shed.is_empty());
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_source_over_its_cap_loses_an_idle_connection_never_a_busy_one() {
        let table = ShedTable::new(8, 2, |_| {});
        let mut a = table.admit(ip("10.0.0.1"), true).ticket.expect("admitted");
        a.busy().store(true, Ordering::Release);
        let mut b = table.admit(ip("10.0.0.1"), true).ticket.expect("admitted");
        // Over the cap: b, idle, goes; a is answering.
        let c = table.admit(ip("10.0.0.1"), true);
        assert_eq!(c.shed, vec![Shed::SameSource]);
        assert!(was_shed(&mut b), "b shed");
        assert!(!was_shed(&mut a), "a, answering, kept");
        let c = c.ticket.expect("admitted");
        c.busy().store(true, Ordering::Release);
        // Every connection of the source answering: the newcomer is refused, none cut.
        let d = table.admit(ip("10.0.0.1"), true);
        assert!(d.ticket.is_none() && d.shed.is_empty());
        assert!(!was_shed(&mut a), "a kept");
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_reverse_proxy_is_held_to_the_total_only() {
        let table = ShedTable::new(4, 2, |_| {});
        let mut first = table.admit(ip("10.0.0.9"), false).ticket.expect("admitted");
        let mut held = Vec::new();
        for _ in 0..2 {
            let more = table.admit(ip("10.0.0.9"), false);
            assert!(more.shed.is_empty());
            held.push(more.ticket.expect("admitted"));
        }
        assert!(!was_shed(&mut first), "not shed for its source's count");
        assert_eq!(table.len(), 3);
        // A neighbour in its source (an IPv6 /64, here the same address) is capped on its own
        // connections only.
        let neighbour = table.admit(ip("10.0.0.9"), true);
        assert!(neighbour.shed.is_empty());
        assert!(!was_shed(&mut first), "not shed for a neighbour");
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64_prefix() {
        assert_eq!(ip("2001:db8::1"), ip("2001:db8::ffff:1"));
        assert_ne!(ip("2001:db8::1"), ip("2001:db8:0:1::1"));
        assert_eq!(ip("::ffff:10.0.0.1"), ip("10.0.0.1"));
    }

    #[test]
    fn the_throttle_lets_a_burst_through_then_counts() {
        let throttle = LogThrottle::new(Duration::from_secs(3600), 2);
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), Some(0));
        for _ in 0..1000 {
            assert_eq!(throttle.allow(), None);
        }
        let quick = LogThrottle::new(Duration::ZERO, 1);
        assert_eq!(quick.allow(), Some(0));
    }
}
