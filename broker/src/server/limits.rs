//! Per-party admission: what one partner may hold of the broker at a time.
//!
//! A partner with a valid certificate is still a partner we must not trust to be well
//! behaved. Every resource a connection can pin is counted against the party (its OIN)
//! that holds it, so that a flood from one party is refused *for that party* while every
//! other party keeps being served:
//!
//! - handshakes in progress (before any identity is known): a global cap and a deadline;
//! - authenticated connections: per party, and in all;
//! - requests (streams) in flight: per party, across its connections;
//! - request bytes buffered: per connection, and a global budget.
//!
//! A refusal is audited once per *episode*: the first refusal of a party for a limit
//! writes a `limit_exceeded` record; further refusals stay silent until the party's use
//! has dropped below that limit again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ketenpost_schemas::ids::Oin;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::LimitsConfig;

/// Which limit a party ran into; its name is the reason code in the audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Authenticated connections of one party.
    ConnectionsPerParty,
    /// Authenticated connections of all parties together.
    Connections,
    /// Requests in flight of one party, across its connections.
    StreamsPerParty,
    /// Request bytes buffered by the broker for all connections together.
    BufferedBytes,
}

impl Limit {
    /// The reason code (snake_case).
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::ConnectionsPerParty => "connections_per_party",
            Limit::Connections => "connections",
            Limit::StreamsPerParty => "streams_per_party",
            Limit::BufferedBytes => "buffered_bytes",
        }
    }

    /// A readable sentence for the refused party (no personal data: limits only).
    pub fn explain(self, cfg: &LimitsConfig) -> String {
        match self {
            Limit::ConnectionsPerParty => format!(
                "this organisation already holds {} connections to the broker (the limit); \
                 close one or reuse it",
                cfg.max_connections_per_party
            ),
            Limit::Connections => format!(
                "the broker holds its limit of {} connections; try again shortly",
                cfg.max_connections
            ),
            Limit::StreamsPerParty => format!(
                "this organisation already has {} requests in flight (the limit); wait for \
                 answers before sending more",
                cfg.max_streams_per_party
            ),
            Limit::BufferedBytes => format!(
                "the broker's request buffer ({} bytes in all) stayed full for the request \
                 timeout; try again shortly",
                cfg.max_buffered_bytes
            ),
        }
    }
}

#[derive(Debug, Default)]
struct Usage {
    connections: usize,
    streams: usize,
}

/// A token bucket of handshakes for one remote address.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: std::time::Instant,
}

/// Most remote addresses tracked for the handshake rate; beyond it, idle (full) buckets
/// are forgotten. QUIC Initial packets can come from spoofed addresses, so the map must
/// stay bounded.
const MAX_TRACKED_ADDRESSES: usize = 16_384;

#[derive(Debug, Default)]
struct State {
    parties: HashMap<Oin, Usage>,
    connections: usize,
    /// (party, limit) pairs in an episode of refusals: already audited.
    episodes: HashSet<(Oin, Limit)>,
    /// Handshake token buckets per remote address.
    buckets: HashMap<std::net::IpAddr, Bucket>,
}

/// The admission state of a running broker. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Admission {
    cfg: LimitsConfig,
    state: Mutex<State>,
    handshakes: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

/// A refusal: the limit, and whether it opens a new episode (then it is to be audited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The limit.
    pub limit: Limit,
    /// The first refusal since the party was last under this limit.
    pub new_episode: bool,
}

impl Admission {
    /// Admission with the configured limits.
    pub fn new(cfg: &LimitsConfig) -> Arc<Admission> {
        Arc::new(Admission {
            cfg: cfg.clone(),
            state: Mutex::new(State::default()),
            handshakes: Arc::new(Semaphore::new(cfg.max_handshakes)),
            bytes: Arc::new(Semaphore::new(cfg.max_buffered_bytes)),
        })
    }

    /// The configured limits.
    pub fn config(&self) -> &LimitsConfig {
        &self.cfg
    }

    /// A slot for one handshake in progress from `from`, or `None` when the cap of
    /// handshakes in progress is reached or `from` is over its handshake rate (the caller
    /// refuses the connection attempt before any TLS work). A handshake costs the broker
    /// public-key operations; a party that reconnects in a loop would take the CPU from
    /// everybody else's requests.
    pub fn handshake(&self, from: std::net::IpAddr) -> Option<OwnedSemaphorePermit> {
        if !self.take_token(from, std::time::Instant::now()) {
            return None;
        }
        self.handshakes.clone().try_acquire_owned().ok()
    }

    fn take_token(&self, from: std::net::IpAddr, now: std::time::Instant) -> bool {
        let rate = self.cfg.handshakes_per_sec_per_address as f64;
        let burst = rate * 2.0;
        let mut s = self.state();
        if s.buckets.len() >= MAX_TRACKED_ADDRESSES && !s.buckets.contains_key(&from) {
            s.buckets
                .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
            if s.buckets.len() >= MAX_TRACKED_ADDRESSES {
                return false;
            }
        }
        let b = s.buckets.entry(from).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters inconsistent (every
        // update is a single assignment); keep serving with what is there.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refuse(state: &mut State, party: &Oin, limit: Limit) -> Refused {
        Refused {
            limit,
            new_episode: state.episodes.insert((party.clone(), limit)),
        }
    }

    /// Admit an authenticated connection of `party`.
    pub fn connect(self: &Arc<Self>, party: &Oin) -> Result<ConnectionGuard, Refused> {
        let mut s = self.state();
        let held = s.parties.get(party).map_or(0, |u| u.connections);
        if held >= self.cfg.max_connections_per_party {
            return Err(Self::refuse(&mut s, party, Limit::ConnectionsPerParty));
        }
        if s.connections >= self.cfg.max_connections {
            return Err(Self::refuse(&mut s, party, Limit::Connections));
        }
        s.connections += 1;
        s.parties.entry(party.clone()).or_default().connections += 1;
        Ok(ConnectionGuard {
            admission: self.clone(),
            party: party.clone(),
            budget: Arc::new(Semaphore::new(self.cfg.max_buffered_bytes_per_connection)),
        })
    }

    /// Admit one request (stream) of `party`.
    pub fn stream(self: &Arc<Self>, party: &Oin) -> Result<StreamGuard, Refused> {
        let mut s = self.state();
        let usage = s.parties.entry(party.clone()).or_default();
        if usage.streams >= self.cfg.max_streams_per_party {
            return Err(Self::refuse(&mut s, party, Limit::StreamsPerParty));
        }
        usage.streams += 1;
        Ok(StreamGuard {
            admission: self.clone(),
            party: party.clone(),
        })
    }

    /// A refusal of `party` for `limit` that the caller detected itself (the byte budget).
    pub fn refused(&self, party: &Oin, limit: Limit) -> Refused {
        Self::refuse(&mut self.state(), party, limit)
    }

    /// The episode of `party` for `limit` is over: the next refusal is audited again.
    pub fn recovered(&self, party: &Oin, limit: Limit) {
        let mut s = self.state();
        if !s.episodes.is_empty() {
            s.episodes.remove(&(party.clone(), limit));
        }
    }

    /// Connections held by `party` now.
    pub fn connections_of(&self, party: &Oin) -> usize {
        self.state().parties.get(party).map_or(0, |u| u.connections)
    }

    fn release_connection(&self, party: &Oin) {
        let mut s = self.state();
        s.connections = s.connections.saturating_sub(1);
        let left = match s.parties.get_mut(party) {
            Some(u) => {
                u.connections = u.connections.saturating_sub(1);
                if u.connections == 0 && u.streams == 0 {
                    s.parties.remove(party);
                }
                true
            }
            None => false,
        };
        if left {
            s.episodes
                .remove(&(party.clone(), Limit::ConnectionsPerParty));
        }
        // The global limit's episodes end for everyone once there is room again.
        if s.connections < self.cfg.max_connections {
            s.episodes.retain(|(_, l)| *l != Limit::Connections);
        }
    }

    fn release_stream(&self, party: &Oin) {
        let mut s = self.state();
        if let Some(u) = s.parties.get_mut(party) {
            u.streams = u.streams.saturating_sub(1);
            if u.connections == 0 && u.streams == 0 {
                s.parties.remove(party);
            }
        }
        s.episodes.remove(&(party.clone(), Limit::StreamsPerParty));
    }
}

/// Held while an authenticated connection is open; carries its byte budget.
#[derive(Debug)]
pub struct ConnectionGuard {
    admission: Arc<Admission>,
    party: Oin,
    budget: Arc<Semaphore>,
}

impl ConnectionGuard {
    /// Reserve `n` bytes of buffer for a request on this connection: first from the
    /// connection's own budget (waiting: QUIC flow control then slows this peer alone),
    /// then from the global budget (waiting at most until `deadline`).
    pub async fn reserve(
        &self,
        n: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Reservation, Limit> {
        let n32 = u32::try_from(n).map_err(|_| Limit::BufferedBytes)?;
        let own = tokio::time::timeout_at(deadline, self.budget.clone().acquire_many_owned(n32))
            .await
            .map_err(|_| Limit::BufferedBytes)?
            .map_err(|_| Limit::BufferedBytes)?;
        let global = tokio::time::timeout_at(
            deadline,
            self.admission.bytes.clone().acquire_many_owned(n32),
        )
        .await
        .map_err(|_| Limit::BufferedBytes)?
        .map_err(|_| Limit::BufferedBytes)?;
        Ok(Reservation {
            _own: own,
            _global: global,
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.admission.release_connection(&self.party);
    }
}

/// Held while a request is in flight.
#[derive(Debug)]
pub struct StreamGuard {
    admission: Arc<Admission>,
    party: Oin,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.admission.release_stream(&self.party);
    }
}

/// Bytes of request buffer held until the request is answered.
#[derive(Debug)]
pub struct Reservation {
    _own: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LimitsConfig {
        LimitsConfig {
            max_connections: 3,
            max_connections_per_party: 2,
            max_streams_per_party: 2,
            ..LimitsConfig::default()
        }
    }

    fn oin(n: u8) -> Oin {
        format!("{n:020}").parse().expect("oin")
    }

    #[test]
    fn one_party_over_its_limit_leaves_room_for_others() {
        let a = Admission::new(&cfg());
        let (p, q) = (oin(1), oin(2));
        let c1 = a.connect(&p).expect("first");
        let _c2 = a.connect(&p).expect("second");
        let r = a.connect(&p).expect_err("third is over the party's limit");
        assert_eq!(r.limit, Limit::ConnectionsPerParty);
        assert!(r.new_episode, "the first refusal opens an episode");
        assert!(!a.connect(&p).expect_err("still over").new_episode);
        let _d = a.connect(&q).expect("another party is served");
        assert_eq!(
            a.connect(&q).expect_err("global cap").limit,
            Limit::Connections
        );
        drop(c1);
        let _c3 = a.connect(&p).expect("room again after a close");
        drop(_c3);
        let r = a.connect(&p);
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn a_new_episode_is_audited_again_after_recovery() {
        let a = Admission::new(&cfg());
        let p = oin(1);
        let s1 = a.stream(&p).expect("one");
        let _s2 = a.stream(&p).expect("two");
        assert!(a.stream(&p).expect_err("over").new_episode);
        assert!(!a.stream(&p).expect_err("over").new_episode);
        drop(s1);
        let _s3 = a.stream(&p).expect("room again");
        assert!(a.stream(&p).expect_err("over again").new_episode);
    }

    #[test]
    fn handshakes_are_rate_limited_per_address() {
        let mut c = cfg();
        c.handshakes_per_sec_per_address = 10;
        let a = Admission::new(&c);
        let (x, y): (std::net::IpAddr, std::net::IpAddr) = (
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
        );
        let t0 = std::time::Instant::now();
        let taken = (0..100).filter(|_| a.take_token(x, t0)).count();
        assert_eq!(taken, 20, "the burst is twice the rate");
        assert!(a.take_token(y, t0), "another address has its own bucket");
        assert!(!a.take_token(x, t0));
        let later = t0 + std::time::Duration::from_millis(500);
        let refilled = (0..100).filter(|_| a.take_token(x, later)).count();
        assert_eq!(refilled, 5, "half a second refills half the rate");
    }

    #[tokio::test]
    async fn the_byte_budget_waits_then_refuses() {
        let mut c = cfg();
        c.max_buffered_bytes_per_connection = 100;
        let a = Admission::new(&c);
        let g = a.connect(&oin(1)).expect("conn");
        let soon = || tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        let r1 = g.reserve(80, soon()).await.expect("fits");
        assert_eq!(
            g.reserve(40, soon()).await.expect_err("over the budget"),
            Limit::BufferedBytes
        );
        drop(r1);
        g.reserve(100, soon()).await.expect("fits again");
    }
}
