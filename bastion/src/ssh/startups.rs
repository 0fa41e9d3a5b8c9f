//! Admission of unauthenticated SSH connections, as sshd's `MaxStartups` and
//! `PerSourceMaxStartups` do: past `start` connections still authenticating, new
//! ones are dropped at random with a probability rising from `rate`% to 100% at
//! `full`, and no source address may hold more than its own cap. Idle sockets
//! from one client then cannot lock everyone else out, and a flood from many
//! still leaves a legitimate client a fair chance.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub use crate::limits::MaxStartups;

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source already has its cap of unauthenticated connections.
    PerSource,
    /// Dropped early (at random) or at `full`.
    Full,
}

/// The live counts; cheap to clone.
#[derive(Debug, Clone)]
pub struct Startups {
    limits: MaxStartups,
    per_source: usize,
    counts: Arc<Mutex<Counts>>,
}

/// Held while a connection is unauthenticated; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    source: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
    }
}

impl Startups {
    pub fn new(limits: MaxStartups, per_source: usize) -> Startups {
        Startups {
            limits,
            per_source: per_source.max(1),
            counts: Arc::default(),
        }
    }

    /// Admits a new connection from `source`, or says why not. `roll` is a
    /// number in 0..100 (random in production) against the early-drop chance.
    pub fn admit(&self, source: IpAddr, roll: u32) -> Result<Admitted, Refused> {
        // An IPv6 client counts by its /64, as it may hold all of it.
        let source = crate::limits::source_key(source);
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.per_source.get(&source).copied().unwrap_or(0) >= self.per_source {
            return Err(Refused::PerSource);
        }
        if roll < self.limits.drop_percent(c.total) {
            return Err(Refused::Full);
        }
        c.total += 1;
        *c.per_source.entry(source).or_insert(0) += 1;
        Ok(Admitted {
            source,
            counts: self.counts.clone(),
        })
    }

    /// Connections still authenticating.
    pub fn unauthenticated(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn parses_like_sshd() {
        assert_eq!(
            "10:30:100".parse(),
            Ok(MaxStartups {
                start: 10,
                rate: 30,
                full: 100
            })
        );
        assert_eq!(
            "50".parse(),
            Ok(MaxStartups {
                start: 50,
                rate: 100,
                full: 50
            })
        );
        for bad in [
            "",
            "0",
            "10:0:100",
            "10:101:100",
            "100:30:10",
            "a:b:c",
            "1:2",
            "1:2:3:4",
            "-1",
        ] {
            assert!(bad.parse::<MaxStartups>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn drop_chance_rises_linearly_from_start_to_full() {
        let m = MaxStartups {
            start: 10,
            rate: 30,
            full: 20,
        };
        assert_eq!(m.drop_percent(9), 0);
        assert_eq!(m.drop_percent(10), 30);
        assert_eq!(m.drop_percent(15), 65);
        assert_eq!(m.drop_percent(19), 93);
        assert_eq!(m.drop_percent(20), 100);
        assert_eq!(m.drop_percent(usize::MAX), 100);
    }

    /// One source filling its cap leaves the others their places.
    #[test]
    fn one_source_cannot_lock_out_the_rest() {
        let s = Startups::new(
            MaxStartups {
                start: 8,
                rate: 100,
                full: 8,
            },
            3,
        );
        let mut held: Vec<_> = (0..3).map(|_| s.admit(ip(1), 0).unwrap()).collect();
        assert_eq!(s.admit(ip(1), 99).unwrap_err(), Refused::PerSource);
        for last in 2..7 {
            held.push(s.admit(ip(last), 0).unwrap());
        }
        assert_eq!(s.unauthenticated(), 8);
        assert_eq!(s.admit(ip(9), 99).unwrap_err(), Refused::Full);
        held.truncate(2);
        assert_eq!(s.unauthenticated(), 2);
        assert!(s.admit(ip(1), 99).is_ok(), "a freed place is reused");
    }

    #[test]
    fn early_drop_follows_the_roll() {
        let s = Startups::new(
            MaxStartups {
                start: 1,
                rate: 50,
                full: 3,
            },
            10,
        );
        let _a = s.admit(ip(1), 0).unwrap();
        // 1 authenticating: 50% chance to drop.
        assert_eq!(s.admit(ip(2), 49).unwrap_err(), Refused::Full);
        let _b = s.admit(ip(2), 50).unwrap();
    }
}
