//! What Kubernetes answers may hold of the HTTP/2 connection they arrive on
//! (a node's agent channel, or the connection to the peer replica holding it),
//! so that no user's stalled client slows anyone else's, and the Kubernetes
//! door's clients never stop the SSH sessions and commands that share the
//! channel.
//!
//! Why this is needed: the bastion reads an answer from the gateway only as
//! fast as the client takes it (that is how a slow client slows the API server
//! instead of filling the bastion's memory). While the client takes nothing, the
//! gateway's bytes wait unread in the bastion's HTTP/2 receive buffer, up to the
//! stream window ([`STREAM_WINDOW`], 4 MiB), and all of them count against the
//! connection's window ([`CONNECTION_WINDOW`], 256 MiB), which every stream of
//! the connection shares. One user's ~70 stalled answers of `/openapi/v2`
//! (3.6 MiB each) used all of it: no stream of the node moved until the stall
//! deadline cut them.
//!
//! So while an answer waits on its client it is charged what it may pin: the
//! stream window, or what is left of the answer when its length is known
//! (hyper counts it down as the body is read). What it already read is
//! released to the connection and is bounded by the relay's own queue. Then:
//!
//! - one user's waiting answers may pin at most [`USER_BUDGET`] of a connection;
//! - all the door's waiting answers together at most [`DOOR_BUDGET`], half the
//!   connection window, so SSH and commands always keep the other half;
//! - past either, the answer that has waited longest is cut (of that user, or
//!   of the user holding the most), never stalled: dropping its stream resets
//!   it, and h2 returns what it held to the connection at once.
//!
//! An answer whose client takes nothing for a short while is cut as well
//! (`stream::NO_PROGRESS`), which bounds how long anything is held at all.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use postern_api::agent::{CONNECTION_WINDOW, STREAM_WINDOW};
use tokio_util::sync::CancellationToken;

use crate::agents::NodeLink;

/// Most one user's waiting answers may pin of one connection: eight stream
/// windows (an eighth of the connection's), so a few slow downloads and a
/// dashboard's watches still fit, and four users at this limit fill only the
/// door's half.
pub const USER_BUDGET: u64 = 8 * STREAM_WINDOW as u64;
/// Most all the door's waiting answers may pin of one connection: half of it.
pub const DOOR_BUDGET: u64 = CONNECTION_WINDOW as u64 / 2;
const _: () = assert!(USER_BUDGET < DOOR_BUDGET && DOOR_BUDGET < CONNECTION_WINDOW as u64);

/// What an answer waiting on its client may pin: the stream window, or what is
/// left of the answer if less (`remaining`: the body's exact size hint).
pub fn charge(remaining: Option<u64>) -> u64 {
    let window = u64::from(STREAM_WINDOW);
    remaining.map_or(window, |r| r.min(window))
}

/// The connection a link's answers arrive on: a channel this replica holds,
/// or the one connection to the peer replica that holds it (shared by every
/// node that peer holds).
pub fn connection_of(link: &NodeLink) -> String {
    match link.channel_key() {
        ("", conn_id) => format!("channel:{conn_id}"),
        (replica, _) => format!("peer:{replica}"),
    }
}

/// Every open answer, and what the waiting ones are charged, per connection
/// and per user.
#[derive(Debug, Default)]
pub struct Ledger {
    next: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    holds: HashMap<u64, Hold>,
    connections: HashMap<String, Tally>,
    /// Orders waits: the smallest is the answer that has waited longest.
    waits: u64,
}

#[derive(Debug)]
struct Hold {
    connection: String,
    user_id: String,
    /// Bytes charged while the answer waits on its client; 0 while it flows.
    charged: u64,
    /// When it started waiting, in [`Inner::waits`] order.
    since: u64,
    cut: CancellationToken,
}

/// One connection's waiting answers.
#[derive(Debug, Default)]
struct Tally {
    total: u64,
    users: HashMap<String, UserTally>,
}

#[derive(Debug, Default)]
struct UserTally {
    total: u64,
    waiting: HashSet<u64>,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the account of one answer of `user_id` arriving on `connection`.
    pub fn open(self: &Arc<Self>, connection: &str, user_id: &str) -> Tab {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cut = CancellationToken::new();
        self.lock().holds.insert(
            id,
            Hold {
                connection: connection.to_string(),
                user_id: user_id.to_string(),
                charged: 0,
                since: 0,
                cut: cut.clone(),
            },
        );
        Tab {
            ledger: self.clone(),
            id,
            cut,
        }
    }

    /// What `user_id`'s waiting answers are charged on `connection`, and all
    /// the door's there.
    #[cfg(test)]
    pub fn held(&self, connection: &str, user_id: &str) -> (u64, u64) {
        let inner = self.lock();
        inner.connections.get(connection).map_or((0, 0), |t| {
            (t.users.get(user_id).map_or(0, |u| u.total), t.total)
        })
    }
}

impl Inner {
    /// Takes `id`'s charge off the tallies.
    fn uncharge(&mut self, id: u64) {
        let Some(hold) = self.holds.get_mut(&id) else {
            return;
        };
        let charged = std::mem::take(&mut hold.charged);
        if charged == 0 {
            return;
        }
        let Some(tally) = self.connections.get_mut(&hold.connection) else {
            return;
        };
        tally.total = tally.total.saturating_sub(charged);
        if let Some(user) = tally.users.get_mut(&hold.user_id) {
            user.total = user.total.saturating_sub(charged);
            user.waiting.remove(&id);
            if user.waiting.is_empty() {
                tally.users.remove(&hold.user_id);
            }
        }
        if tally.users.is_empty() {
            self.connections.remove(&hold.connection);
        }
    }

    /// Charges `id` with `bytes` as of now.
    fn charge(&mut self, id: u64, bytes: u64) {
        self.uncharge(id);
        self.waits += 1;
        let since = self.waits;
        let Some(hold) = self.holds.get_mut(&id) else {
            return;
        };
        if bytes == 0 || hold.cut.is_cancelled() {
            return;
        }
        hold.charged = bytes;
        hold.since = since;
        let tally = self.connections.entry(hold.connection.clone()).or_default();
        tally.total += bytes;
        let user = tally.users.entry(hold.user_id.clone()).or_default();
        user.total += bytes;
        user.waiting.insert(id);
    }

    /// Ends the answer of `user_id` on `connection` that has waited longest.
    fn cut_stalest(&mut self, connection: &str, user_id: &str) -> bool {
        let stalest = self
            .connections
            .get(connection)
            .and_then(|t| t.users.get(user_id))
            .and_then(|u| {
                u.waiting
                    .iter()
                    .filter_map(|id| self.holds.get(id).map(|h| (h.since, *id)))
                    .min()
            });
        let Some((_, id)) = stalest else {
            return false;
        };
        self.uncharge(id);
        if let Some(h) = self.holds.get(&id) {
            h.cut.cancel();
        }
        true
    }

    /// Cuts answers until `user_id` and the door are within their budgets on
    /// `connection`.
    fn enforce(&mut self, connection: &str, user_id: &str) {
        loop {
            let Some(tally) = self.connections.get(connection) else {
                return;
            };
            let user = tally.users.get(user_id).map_or(0, |u| u.total);
            let victim = if user > USER_BUDGET {
                user_id.to_string()
            } else if tally.total > DOOR_BUDGET {
                // Whoever holds the most gives first: a user who stalls many
                // answers loses theirs before anyone else's slow one.
                match tally.users.iter().max_by_key(|(_, u)| u.total) {
                    Some((who, _)) => who.clone(),
                    None => return,
                }
            } else {
                return;
            };
            if !self.cut_stalest(connection, &victim) {
                return;
            }
        }
    }
}

/// One answer's account; dropping it closes the account.
#[derive(Debug)]
pub struct Tab {
    ledger: Arc<Ledger>,
    id: u64,
    cut: CancellationToken,
}

impl Tab {
    /// The client takes nothing for now, and `charge` bytes may pile up on the
    /// connection until it does. Answers `false` when this answer must end to
    /// keep its user or the door within budget (others may be cut instead).
    pub fn waiting(&self, charge: u64) -> bool {
        let mut inner = self.ledger.lock();
        inner.charge(self.id, charge);
        let whose = inner
            .holds
            .get(&self.id)
            .map(|h| (h.connection.clone(), h.user_id.clone()));
        if let Some((connection, user)) = whose {
            inner.enforce(&connection, &user);
        }
        !self.cut.is_cancelled()
    }

    /// The client took bytes again: the answer pins only what is in flight.
    pub fn flowing(&self) {
        self.ledger.lock().uncharge(self.id);
    }

    /// Resolves when another answer's wait cut this one.
    pub async fn cut_off(&self) {
        self.cut.cancelled().await;
    }

    #[cfg(test)]
    pub fn is_cut(&self) -> bool {
        self.cut.is_cancelled()
    }
}

impl Drop for Tab {
    fn drop(&mut self) {
        let mut inner = self.ledger.lock();
        inner.uncharge(self.id);
        inner.holds.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const W: u64 = STREAM_WINDOW as u64;

    #[test]
    fn one_user_cannot_pin_more_than_their_budget_and_loses_the_stalest() {
        let ledger = Arc::new(Ledger::default());
        let tabs: Vec<Tab> = (0..20)
            .map(|_| ledger.open("channel:1", "mallory"))
            .collect();
        for t in &tabs {
            assert!(t.waiting(W), "the newest wait is never the one cut");
        }
        let (user, door) = ledger.held("channel:1", "mallory");
        assert!(user <= USER_BUDGET, "{user}");
        assert_eq!(user, door);
        let per_user = (USER_BUDGET / W) as usize;
        // The oldest waits were cut, the newest kept.
        let cut: Vec<bool> = tabs.iter().map(Tab::is_cut).collect();
        assert!(cut[..20 - per_user].iter().all(|c| *c), "{cut:?}");
        assert!(cut[20 - per_user..].iter().all(|c| !*c), "{cut:?}");
        // Another user, or the same user on another connection, is unaffected.
        let alice = ledger.open("channel:1", "alice");
        assert!(alice.waiting(W));
        let elsewhere = ledger.open("channel:2", "mallory");
        assert!(elsewhere.waiting(W));
        assert!(!alice.is_cut() && !elsewhere.is_cut());
        assert!(tabs[20 - per_user..].iter().all(|t| !t.is_cut()));
    }

    #[test]
    fn a_flowing_answer_holds_nothing_and_a_closed_one_is_forgotten() {
        let ledger = Arc::new(Ledger::default());
        let a = ledger.open("c", "u");
        let b = ledger.open("c", "u");
        assert!(a.waiting(W));
        assert!(b.waiting(charge(Some(1000))));
        assert_eq!(ledger.held("c", "u"), (W + 1000, W + 1000));
        a.flowing();
        assert_eq!(ledger.held("c", "u"), (1000, 1000));
        // Waiting again is charged once, not twice.
        assert!(b.waiting(charge(Some(500))));
        assert_eq!(ledger.held("c", "u"), (500, 500));
        drop(b);
        assert_eq!(ledger.held("c", "u"), (0, 0));
        drop(a);
        let inner = ledger.lock();
        assert!(inner.holds.is_empty() && inner.connections.is_empty());
    }

    #[test]
    fn the_door_keeps_half_the_connection_and_the_biggest_holder_gives_first() {
        let ledger = Arc::new(Ledger::default());
        let per_user = USER_BUDGET / W;
        let users = DOOR_BUDGET / USER_BUDGET;
        // Enough users at their own budget to fill the door's half.
        let mut held = Vec::new();
        for u in 0..users {
            for _ in 0..per_user {
                let t = ledger.open("c", &format!("m{u}"));
                assert!(t.waiting(W));
                held.push(t);
            }
        }
        assert_eq!(ledger.held("c", "m0").1, DOOR_BUDGET);
        // Someone else's slow answer still waits; a stalled one of the
        // biggest holders is cut to make room.
        let alice = ledger.open("c", "alice");
        assert!(alice.waiting(W));
        assert!(!alice.is_cut());
        assert_eq!(held.iter().filter(|t| t.is_cut()).count(), 1);
        let (_, door) = ledger.held("c", "alice");
        assert!(door <= DOOR_BUDGET, "{door}");
        // However many wait, the door never holds more than its half.
        let more: Vec<Tab> = (0..100)
            .map(|i| ledger.open("c", &format!("x{i}")))
            .collect();
        for t in &more {
            t.waiting(W);
            assert!(ledger.held("c", "alice").1 <= DOOR_BUDGET);
        }
    }

    #[test]
    fn charges_are_bounded_by_the_window_and_what_is_left() {
        assert_eq!(charge(None), W);
        assert_eq!(charge(Some(10)), 10);
        assert_eq!(charge(Some(u64::MAX)), W);
        // An answer already cut is charged nothing, and says so.
        let ledger = Arc::new(Ledger::default());
        let t = ledger.open("c", "u");
        t.cut.cancel();
        assert!(!t.waiting(W));
        assert_eq!(ledger.held("c", "u"), (0, 0));
    }
}
