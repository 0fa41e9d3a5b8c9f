//! Limits per source address, for every door that must not let one client take
//! all of a shared pool (enrollments, large REST answers, the connections of a
//! listener): a count per address and a guard that gives the place back when
//! dropped. Also the limits doors read from the core's settings, with their
//! defaults: the SSH door's admission (`MaxStartups`) and the REST door's live
//! execution streams.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// The address a per-source limit counts: IPv4 as is (an IPv4-mapped IPv6
/// address as its IPv4), IPv6 by its /64, since one client commonly holds a
/// whole /64 and could otherwise take a place per address.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
    }
}

/// Counts per key (a source address, a user), with a guard that gives the
/// place back when dropped.
#[derive(Debug, Clone)]
pub struct PerKey<K> {
    max: usize,
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

/// A place held at a [`PerKey`].
#[derive(Debug)]
pub struct KeyGuard<K: Eq + Hash> {
    key: K,
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Eq + Hash> Drop for KeyGuard<K> {
    fn drop(&mut self) {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl<K: Eq + Hash + Clone> PerKey<K> {
    pub fn new(max: usize) -> PerKey<K> {
        PerKey {
            max,
            counts: Arc::default(),
        }
    }

    /// A place for `key`, or `None` when it holds its maximum already.
    pub fn admit(&self, key: K) -> Option<KeyGuard<K>> {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(KeyGuard {
            key,
            counts: self.counts.clone(),
        })
    }
}

/// Counts per source address (see [`source_key`]).
#[derive(Debug, Clone)]
pub struct PerSource(PerKey<IpAddr>);

pub type SourceGuard = KeyGuard<IpAddr>;

impl PerSource {
    pub fn new(max: usize) -> PerSource {
        PerSource(PerKey::new(max))
    }

    /// A place for `ip`, or `None` when its source holds its maximum already.
    pub fn admit(&self, ip: IpAddr) -> Option<SourceGuard> {
        self.0.admit(source_key(ip))
    }
}

/// The connections a TLS listener holds: at most `max` in all and
/// `per_source` from one source (see [`source_key`]), so one client cannot
/// fill it. A connection counts until its [`Admitted`] is dropped.
#[derive(Debug)]
pub struct Gate {
    what: &'static str,
    all: Arc<tokio::sync::Semaphore>,
    sources: PerSource,
}

/// A connection's place at a [`Gate`].
#[derive(Debug)]
pub struct Admitted {
    _all: tokio::sync::OwnedSemaphorePermit,
    /// `None` once the connection has authenticated (see [`Admitted::authenticated`]).
    _source: Option<SourceGuard>,
}

impl Admitted {
    /// Gives the source's place back and keeps the listener's. For a listener
    /// whose per-source limit is on connections that have not yet proved who
    /// they are: on the agent port, thousands of agents may share one NAT
    /// address once their certificates are verified, while a stranger's
    /// handshakes from one address stay bounded.
    pub fn authenticated(&mut self) {
        self._source = None;
    }
}

impl Gate {
    /// `what` names the listener in logs ("peer port").
    pub fn new(what: &'static str, max: usize, per_source: usize) -> Gate {
        Gate {
            what,
            all: Arc::new(tokio::sync::Semaphore::new(max)),
            sources: PerSource::new(per_source),
        }
    }

    /// The next connection the gate admits, with no delay on the socket;
    /// `None` once `shutdown` fires. Connections refused (from a source, or
    /// the listener, that is full) are dropped and counted in `refused`;
    /// failures to accept (EMFILE and friends) back off briefly instead of
    /// spinning.
    pub async fn accept(
        &self,
        listener: &tokio::net::TcpListener,
        shutdown: &tokio_util::sync::CancellationToken,
        refused: &std::sync::atomic::AtomicU64,
    ) -> Option<(tokio::net::TcpStream, std::net::SocketAddr, Admitted)> {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return None,
                a = listener.accept() => match a {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, listener = self.what, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(source) = self.sources.admit(peer.ip()) else {
                crate::metrics::inc(refused);
                tracing::debug!(%peer, listener = self.what, "too many connections from one address; dropping");
                continue;
            };
            let Ok(all) = self.all.clone().try_acquire_owned() else {
                crate::metrics::inc(refused);
                tracing::warn!(%peer, listener = self.what, "listener full; dropping a connection");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            return Some((
                tcp,
                peer,
                Admitted {
                    _all: all,
                    _source: Some(source),
                },
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let k = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:10.0.0.1"), k("10.0.0.1"));
        let p = PerSource::new(1);
        let _g = p.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(
            p.admit("2001:db8::2".parse().unwrap()).is_none(),
            "same /64"
        );
    }

    /// The next connection `gate` admits within 300 ms.
    async fn admitted_soon(
        gate: &Gate,
        listener: &tokio::net::TcpListener,
        refused: &std::sync::atomic::AtomicU64,
    ) -> Option<Admitted> {
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::time::timeout(
            std::time::Duration::from_millis(300),
            gate.accept(listener, &stop, refused),
        )
        .await
        .ok()
        .flatten()
        .map(|(_, _, admitted)| admitted)
    }

    /// A connection that has authenticated leaves its source's count (another
    /// from that address is admitted) and stays in the listener's total.
    #[tokio::test]
    async fn an_authenticated_connection_counts_against_the_listener_only() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Gate::new("test", 3, 1);
        let refused = AtomicU64::new(0);
        let mut clients = Vec::new();
        clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        let mut first = admitted_soon(&gate, &listener, &refused).await.unwrap();
        // The source holds its one place: the next from it is dropped.
        clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        assert!(admitted_soon(&gate, &listener, &refused).await.is_none());
        assert_eq!(refused.load(Ordering::Relaxed), 1);
        // Authenticated, the first leaves the source's count.
        first.authenticated();
        clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        let mut second = admitted_soon(&gate, &listener, &refused).await.unwrap();
        second.authenticated();
        clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        let mut third = admitted_soon(&gate, &listener, &refused).await.unwrap();
        third.authenticated();
        // Three in all, each authenticated: the source is free, the listener full.
        clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        assert!(admitted_soon(&gate, &listener, &refused).await.is_none());
        assert_eq!(refused.load(Ordering::Relaxed), 2);
        // A place given back in the total admits the next.
        drop(first);
        clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        assert!(admitted_soon(&gate, &listener, &refused).await.is_some());
        assert_eq!(refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_source_holds_at_most_its_places_and_gets_them_back() {
        let p = PerSource::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = p.admit(a).unwrap();
        let _g2 = p.admit(a).unwrap();
        assert!(p.admit(a).is_none());
        assert!(p.admit(b).is_some());
        drop(g1);
        assert!(p.admit(a).is_some());
    }
}

/// Live execution streams (`GET …/execution/{id}/events`) one bastion holds
/// open at most, in all.
pub const EXEC_STREAMS_GLOBAL: usize = 128;
/// … and one org by default (`--exec-streams-per-org`): its share, so one
/// tenant cannot take every stream of a replica.
pub const EXEC_STREAMS_PER_ORG: usize = 32;
/// A live stream whose client takes no event for this long ends (it resumes
/// with Last-Event-ID), so a reader that stopped reading keeps no place.
pub const EXEC_STREAM_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// `start:rate:full`, as in sshd_config(5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxStartups {
    pub start: usize,
    pub rate: u8,
    pub full: usize,
}

impl MaxStartups {
    /// Larger than sshd's 10:30:100: a bastion is many people's way in, and the
    /// per-source cap does the work of keeping one client from filling it.
    pub const DEFAULT: MaxStartups = MaxStartups {
        start: 64,
        rate: 30,
        full: 256,
    };

    /// The chance, in percent, that a new connection is dropped when `n` are
    /// already authenticating.
    pub fn drop_percent(&self, n: usize) -> u32 {
        if n < self.start {
            0
        } else if n >= self.full {
            100
        } else {
            let span = (self.full - self.start) as u64;
            let over = (n - self.start) as u64;
            let rate = u64::from(self.rate);
            (rate + (100 - rate) * over / span) as u32
        }
    }
}

impl fmt::Display for MaxStartups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.start, self.rate, self.full)
    }
}

impl FromStr for MaxStartups {
    type Err = String;

    /// `full` alone (no early drop), or `start:rate:full` with start ≤ full,
    /// rate 1 to 100, full ≥ 1.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid max startups {s:?}: use FULL or START:RATE:FULL (e.g. 64:30:256), with 1 ≤ START ≤ FULL and RATE 1 to 100"
            )
        };
        let parts: Vec<&str> = s.split(':').collect();
        let num = |p: &str| p.trim().parse::<usize>().map_err(|_| bad());
        let m = match parts.as_slice() {
            [full] => {
                let full = num(full)?;
                MaxStartups {
                    start: full,
                    rate: 100,
                    full,
                }
            }
            [start, rate, full] => MaxStartups {
                start: num(start)?,
                rate: u8::try_from(num(rate)?).map_err(|_| bad())?,
                full: num(full)?,
            },
            _ => return Err(bad()),
        };
        if m.full == 0 || m.start == 0 || m.start > m.full || m.rate == 0 || m.rate > 100 {
            return Err(bad());
        }
        Ok(m)
    }
}

/// TLS handshakes in flight from one source address, by default. A handshake
/// takes milliseconds, so this admits a data centre's agents reconnecting at
/// once through one NAT address (the rest retry within their backoff), and it
/// is a small part of the port: one address cannot fill it.
pub const AGENT_HANDSHAKES_PER_SOURCE: usize = 64;
