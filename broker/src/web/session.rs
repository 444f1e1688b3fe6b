//! Server-side sessions and the logins waiting for their identity provider, both in memory and
//! bounded: a cookie holds a random id only, never the person. Over a bound, the oldest entry
//! is dropped. A source address holds at most [`MAX_PENDING_LOGINS_PER_SOURCE`] pending logins
//! (its own oldest go first), and the sources of one IPv6 /48 at most
//! [`MAX_PENDING_LOGINS_PER_SITE`] together, so that a flood of login starts from one address or
//! site ends its own pending logins, not other people's; from enough addresses it ends other
//! people's pending logins at worst, never a logged-in session, which only a completed login
//! creates.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::shed::Source;
use crate::subject::Subject;

/// The longest a session lasts; it also ends when its ID token stops being evidence (the
/// identity provider's `max_token_age_seconds`), and the page says when.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Sessions held at once.
pub const MAX_SESSIONS: usize = 20_000;
/// Sessions one person (or one agent) holds at once: a person logs in from a few devices, and
/// with the identity provider's single sign-on one identity completes logins as fast as it
/// asks; their own oldest end first, never other people's.
pub const MAX_SESSIONS_PER_HOLDER: usize = 8;
/// Logins waiting for the identity provider at once.
pub const MAX_PENDING_LOGINS: usize = 20_000;
/// Logins waiting at once from one source address (as the web listener counts it, behind the
/// trusted proxies: docs/web.md): many people behind one address (a town hall, a carrier's
/// NAT) log in within minutes, a flood starts thousands.
pub const MAX_PENDING_LOGINS_PER_SOURCE: usize = 128;
/// Logins waiting at once from one IPv6 /48 (a site: anyone can get one from a tunnel broker,
/// and with it 65,536 sources): without it, 157 of its /64s would fill the table.
pub const MAX_PENDING_LOGINS_PER_SITE: usize = 4 * MAX_PENDING_LOGINS_PER_SOURCE;
/// How long a login may wait for the identity provider.
pub const LOGIN_WAIT: Duration = Duration::from_secs(10 * 60);

/// What a session table needs of its sessions: when each ends, and whose it is.
pub trait Ending {
    /// When the session ends.
    fn ends(&self) -> Instant;
    /// Who holds it (the person, the agent), in memory only: at most
    /// [`MAX_SESSIONS_PER_HOLDER`] each.
    fn holder(&self) -> String;
}

impl Ending for Session {
    fn ends(&self) -> Instant {
        self.ends
    }

    fn holder(&self) -> String {
        self.subject.as_str().to_string()
    }
}

/// A logged-in person.
#[derive(Clone)]
pub struct Session {
    /// The person the ID token proved (kept here only).
    pub subject: Subject,
    /// The ID token, the identity evidence each act presents.
    pub id_token: String,
    /// The token every form of this session carries.
    pub csrf: String,
    /// When the session ends.
    pub ends: Instant,
    /// The same, as a time people read.
    pub ends_at: time::OffsetDateTime,
    /// What the next page announces (« Votre consentement a été retiré »), once: kept here,
    /// never in a URL that anyone could forge.
    pub flash: Option<String>,
}

/// A login sent to an identity provider, waiting for its answer.
#[derive(Clone)]
pub struct PendingLogin {
    /// Whose login it is (an answer for one never completes another).
    pub kind: LoginKind,
    /// The random value of the browser's login cookie: the answer must come back to the very
    /// browser that asked (no login CSRF).
    pub browser: String,
    /// The `nonce` asked for, which the ID token must carry.
    pub nonce: String,
    /// The PKCE verifier.
    pub verifier: String,
    /// When it began, Unix seconds (wall clock): a login that asks for a fresh authentication
    /// checks that the person authenticated after it (`auth_time`).
    pub began_at: i64,
    created: Instant,
}

impl PendingLogin {
    /// A login of `kind` for `browser`, asking for `nonce`, with PKCE `verifier`.
    pub fn new(kind: LoginKind, browser: String, nonce: String, verifier: String) -> PendingLogin {
        PendingLogin {
            kind,
            browser,
            nonce,
            verifier,
            began_at: time::OffsetDateTime::now_utc().unix_timestamp(),
            created: Instant::now(),
        }
    }
}

/// Whose login is waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginKind {
    /// A citizen, at the citizen space.
    Citizen,
    /// An agent, at the agents' identity provider.
    Agent,
    /// The person present at a mediator's desk, at the citizens' identity provider.
    PersonAtDesk,
}

/// Both tables, of sessions `S`.
pub struct Sessions<S = Session> {
    sessions: Mutex<Held<S>>,
    pending: Mutex<Pending>,
}

/// The sessions, and the newest of each holder.
struct Held<S> {
    table: Bounded<S>,
    by_holder: Newest<String>,
}

/// The logins waiting, and the newest of each source and of each IPv6 site.
struct Pending {
    logins: Bounded<PendingLogin>,
    /// Each source's logins.
    by_source: Newest<Source>,
    /// Each IPv6 /48's logins.
    by_site: Newest<Source>,
}

/// The keys in a table (logins' `state`, sessions' ids) of each `K` (source, site, holder),
/// oldest first; some may have ended since.
struct Newest<K> {
    lists: HashMap<K, VecDeque<String>>,
    /// The states in `lists`, ended ones included.
    listed: usize,
    /// Logins held per list at most.
    cap: usize,
}

impl<K: std::hash::Hash + Eq> Newest<K> {
    fn new(cap: usize) -> Newest<K> {
        Newest {
            lists: HashMap::new(),
            listed: 0,
            cap: cap.max(1),
        }
    }

    /// Lists `state` under `key`, first ending that list's oldest entries beyond the cap.
    fn hold<T>(&mut self, key: K, state: &str, logins: &mut Bounded<T>) {
        let mine = self.lists.entry(key).or_default();
        let before = mine.len();
        mine.retain(|s| logins.get(s).is_some());
        while mine.len() >= self.cap {
            if let Some(oldest) = mine.pop_front() {
                logins.remove(&oldest);
            }
        }
        mine.push_back(state.to_owned());
        self.listed = self.listed + mine.len() - before;
        // The logins that ended (taken, expired, or pushed out of the table) leave the lists
        // once they list twice the table's capacity: at most once per capacity's worth of new
        // ones, and never more than that in memory.
        if self.listed > 2 * logins.capacity {
            self.lists.retain(|_, states| {
                states.retain(|s| logins.get(s).is_some());
                !states.is_empty()
            });
            self.listed = self.lists.values().map(VecDeque::len).sum();
        }
    }
}

impl Pending {
    fn insert(&mut self, state: String, login: PendingLogin, from: Source) {
        let now = Instant::now();
        self.logins.insert(state.clone(), login, |l| {
            now.duration_since(l.created) > LOGIN_WAIT
        });
        self.by_source.hold(from, &state, &mut self.logins);
        if let Some(site) = from.site() {
            self.by_site.hold(site, &state, &mut self.logins);
        }
    }
}

impl<S: Clone + Ending> Sessions<S> {
    /// Empty tables of at most `sessions` and `pending` entries.
    pub fn new(sessions: usize, pending: usize) -> Sessions<S> {
        Sessions {
            sessions: Mutex::new(Held {
                table: Bounded::new(sessions),
                by_holder: Newest::new(MAX_SESSIONS_PER_HOLDER),
            }),
            pending: Mutex::new(Pending {
                logins: Bounded::new(pending),
                by_source: Newest::new(MAX_PENDING_LOGINS_PER_SOURCE.min(pending)),
                by_site: Newest::new(MAX_PENDING_LOGINS_PER_SITE.min(pending)),
            }),
        }
    }

    /// The session `id`, if it has not ended.
    pub fn session(&self, id: &str) -> Option<S> {
        let sessions = &mut self.sessions.lock().ok()?.table;
        match sessions.get(id) {
            Some(s) if s.ends() > Instant::now() => Some(s.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// Holds `session` under `id`, ending its holder's oldest beyond
    /// [`MAX_SESSIONS_PER_HOLDER`].
    pub fn open(&self, id: String, session: S) {
        if let Ok(mut held) = self.sessions.lock() {
            let now = Instant::now();
            let holder = session.holder();
            let Held { table, by_holder } = &mut *held;
            table.insert(id.clone(), session, |s| s.ends() <= now);
            by_holder.hold(holder, &id, table);
        }
    }

    /// Takes the session's announcement with `take`, once.
    pub fn take_flash(
        &self,
        id: &str,
        take: impl FnOnce(&mut S) -> Option<String>,
    ) -> Option<String> {
        let mut taken = None;
        self.update(id, |s| taken = take(s));
        taken
    }

    /// Changes the session `id` with `change`, if it is still open; the session as changed.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut S)) -> Option<S> {
        let mut sessions = self.sessions.lock().ok()?;
        let session = sessions.table.get_mut(id)?;
        if session.ends() <= Instant::now() {
            return None;
        }
        change(session);
        Some(session.clone())
    }

    /// Ends the session `id`.
    pub fn close(&self, id: &str) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.table.remove(id);
        }
    }

    /// Holds a login started from `from` under its `state`.
    pub fn wait_login(&self, state: String, login: PendingLogin, from: Source) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(state, login, from);
        }
    }

    /// Takes the login waiting under `state` (once: a replayed answer finds nothing).
    pub fn take_login(&self, state: &str) -> Option<PendingLogin> {
        let login = self.pending.lock().ok()?.logins.remove(state)?;
        (login.created.elapsed() <= LOGIN_WAIT).then_some(login)
    }
}

/// A map of at most `capacity` entries that drops the oldest one to make room. Full, an
/// insertion costs the same as in an empty map, give or take: the oldest entry is found in
/// insertion order, and the expired ones are swept at most once per half capacity of
/// insertions. A scan of the whole table at each insertion, as before, let a flood of login
/// starts (unauthenticated) cost the broker a scan of 20,000 entries each.
pub(super) struct Bounded<T> {
    capacity: usize,
    entries: HashMap<String, (u64, T)>,
    /// Keys by insertion, oldest first, with the number each was inserted under: one whose
    /// entry was removed or replaced since is stale, skipped and dropped as met.
    order: VecDeque<(u64, String)>,
    next: u64,
    /// `next` at the last sweep of expired entries.
    swept: u64,
}

impl<T> Bounded<T> {
    pub(super) fn new(capacity: usize) -> Bounded<T> {
        Bounded {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            swept: 0,
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&T> {
        self.entries.get(key).map(|(_, v)| v)
    }

    pub(super) fn get_mut(&mut self, key: &str) -> Option<&mut T> {
        self.entries.get_mut(key).map(|(_, v)| v)
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<T> {
        let removed = self.entries.remove(key).map(|(_, v)| v);
        self.compact();
        removed
    }

    /// Inserts; when full, first drops what `expired` says (at most once per half capacity of
    /// insertions), then the oldest entries.
    pub(super) fn insert(&mut self, key: String, value: T, expired: impl Fn(&T) -> bool) {
        if self.entries.len() >= self.capacity
            && self.next - self.swept >= (self.capacity as u64 / 2).max(1)
        {
            self.entries.retain(|_, (_, v)| !expired(v));
            self.swept = self.next;
            self.compact();
        }
        while self.entries.len() >= self.capacity {
            let Some((n, oldest)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&oldest).is_some_and(|(m, _)| *m == n) {
                self.entries.remove(&oldest);
            }
        }
        self.next += 1;
        self.order.push_back((self.next, key.clone()));
        self.entries.insert(key, (self.next, value));
        self.compact();
    }

    /// Drops the stale keys of the insertion order once they outnumber the entries, so that
    /// it stays within twice the table.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.entries.len() + 16 {
            let entries = &self.entries;
            self.order
                .retain(|(n, k)| entries.get(k).is_some_and(|(m, _)| m == n));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A session of `holder`, an hour long.
    #[derive(Clone)]
    struct Of(&'static str);

    impl Ending for Of {
        fn ends(&self) -> Instant {
            Instant::now() + Duration::from_secs(3600)
        }

        fn holder(&self) -> String {
            self.0.to_string()
        }
    }

    #[test]
    fn logins_of_one_holder_end_their_own_oldest_sessions_only() {
        let sessions = Sessions::<Of>::new(100, 10);
        sessions.open("bob-1".into(), Of("bob"));
        for n in 0..MAX_SESSIONS_PER_HOLDER + 3 {
            sessions.open(format!("alice-{n}"), Of("alice"));
        }
        let open = |id: &str| sessions.session(id).is_some();
        assert!(open("bob-1"), "another person's session stays");
        for n in 0..3 {
            assert!(!open(&format!("alice-{n}")), "her oldest ended");
        }
        for n in 3..MAX_SESSIONS_PER_HOLDER + 3 {
            assert!(open(&format!("alice-{n}")), "her newest stay");
        }
    }

    #[test]
    fn a_full_table_drops_the_expired_then_the_oldest() {
        let mut table = Bounded::new(2);
        table.insert("a".into(), 1, |_| false);
        table.insert("b".into(), 2, |_| false);
        table.insert("c".into(), 3, |_| false);
        assert_eq!(
            (table.get("a"), table.get("b"), table.get("c")),
            (None, Some(&2), Some(&3))
        );
        // "c" is expired: it goes first, though "b" is older.
        table.insert("d".into(), 4, |v| *v == 3);
        assert_eq!(
            (table.get("b"), table.get("c"), table.get("d")),
            (Some(&2), None, Some(&4))
        );
    }

    #[test]
    fn the_oldest_goes_first_whatever_was_removed_or_replaced_meanwhile() {
        let mut table = Bounded::new(3);
        for key in ["a", "b", "c"] {
            table.insert(key.into(), key.to_string(), |_| false);
        }
        table.remove("a");
        // "b" inserted again: now the newest.
        table.insert("b".into(), "b2".into(), |_| false);
        table.insert("d".into(), "d".into(), |_| false);
        // Full (b, c, d): "c" is the oldest left.
        table.insert("e".into(), "e".into(), |_| false);
        assert_eq!(
            ["b", "c", "d", "e"].map(|k| table.get(k).cloned()),
            [Some("b2".into()), None, Some("d".into()), Some("e".into())]
        );
    }

    #[test]
    fn a_flooded_table_keeps_its_bound_and_its_newest_entries() {
        let mut table = Bounded::new(100);
        for i in 0..10_000 {
            table.insert(format!("k{i}"), i, |_| false);
            if i % 3 == 0 {
                table.remove(&format!("k{}", i / 2));
            }
        }
        assert!(table.entries.len() <= 100);
        assert!(table.order.len() <= 2 * table.entries.len() + 16);
        assert!((9_900..10_000).all(|i| table.get(&format!("k{i}")) == Some(&i)));
    }

    fn login() -> PendingLogin {
        PendingLogin::new(LoginKind::Citizen, "b".into(), "n".into(), "v".into())
    }

    fn from(ip: &str) -> Source {
        Source::of(ip.parse().unwrap())
    }

    #[test]
    fn a_login_is_taken_once() {
        let sessions: Sessions = Sessions::new(4, 4);
        sessions.wait_login("s1".into(), login(), from("10.0.0.1"));
        assert!(sessions.take_login("s1").is_some());
        assert!(sessions.take_login("s1").is_none());
    }

    #[test]
    fn a_flood_of_login_starts_from_one_address_ends_its_own_only() {
        let sessions: Sessions = Sessions::new(4, 1_000);
        sessions.wait_login("person".into(), login(), from("198.51.100.7"));
        for i in 0..5_000 {
            sessions.wait_login(format!("flood{i}"), login(), from("203.0.113.5"));
        }
        assert!(
            sessions.take_login("person").is_some(),
            "the person's login kept"
        );
        let pending = sessions.pending.lock().unwrap();
        let flood = pending.by_source.lists.get(&from("203.0.113.5")).unwrap();
        assert_eq!(flood.len(), MAX_PENDING_LOGINS_PER_SOURCE);
        assert_eq!(flood.back().map(String::as_str), Some("flood4999"));
        assert!(pending.logins.get("flood0").is_none());
    }

    #[test]
    fn a_flood_from_the_sources_of_one_ipv6_site_ends_that_sites_own_only() {
        let sessions: Sessions = Sessions::new(4, 2_000);
        sessions.wait_login("person".into(), login(), from("2001:db8:1::7"));
        // 100 /64s of one /48, 128 logins each: 12,800 logins, each /64 within its own cap.
        for net in 0..100_u32 {
            for i in 0..128 {
                let ip = format!("2001:db8:2:{net:x}::{i:x}");
                sessions.wait_login(format!("flood{net}-{i}"), login(), from(&ip));
            }
        }
        assert!(
            sessions.take_login("person").is_some(),
            "the person's login kept"
        );
        let pending = sessions.pending.lock().unwrap();
        let site = from("2001:db8:2::1").site().unwrap();
        let flood = pending.by_site.lists.get(&site).unwrap();
        assert_eq!(flood.len(), MAX_PENDING_LOGINS_PER_SITE);
        assert_eq!(flood.back().map(String::as_str), Some("flood99-127"));
        assert!(pending.logins.get("flood0-0").is_none());
        // An IPv4 address has no site.
        assert!(from("203.0.113.5").site().is_none());
    }

    #[test]
    fn sources_whose_logins_ended_are_forgotten() {
        let sessions: Sessions = Sessions::new(4, 10);
        for i in 0..1_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            sessions.wait_login(format!("s{i}"), login(), from(&ip));
        }
        let pending = sessions.pending.lock().unwrap();
        let sources = pending.by_source.lists.len();
        assert!(sources <= 20, "{sources}");
        assert!(pending.logins.get("s999").is_some());
        drop(pending);
        // Many sources each listing many logins the table no longer holds: the lists too stay
        // within twice the table.
        for i in 0..200_u32 {
            let ip = std::net::Ipv4Addr::from(0x0b00_0000 + i).to_string();
            for j in 0..20 {
                sessions.wait_login(format!("m{i}-{j}"), login(), from(&ip));
            }
        }
        let pending = sessions.pending.lock().unwrap();
        let listed: usize = pending.by_source.lists.values().map(VecDeque::len).sum();
        assert!(
            listed <= 20 && pending.by_source.listed == listed,
            "{listed}"
        );
    }
}
