//! Guessing limits kept in memory, checked before the expensive step (a
//! password hash): per source (see `crate::limits::source_key`), so one
//! client cannot try many names, and per name, so a name that does not exist
//! is held exactly as one that does (and a lock-out tells no one whether a
//! user exists). Attempts are counted when they start and refunded when they
//! succeed, so parallel requests cannot slip past the count. Per user, the
//! limit also lives in the store, for every replica (`local`).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::limits::source_key;

/// Attempts a source may make in a window (refunded when they succeed).
pub const PER_SOURCE: u32 = 20;
/// Attempts one name may get in a window, from anywhere.
pub const PER_NAME: u32 = 5;
/// The window, ms.
pub const WINDOW_MS: i64 = 60_000;
/// Keys remembered at most per map; past it the oldest windows are forgotten.
const MAX_KEYS: usize = 65_536;

#[derive(Debug)]
struct Windows<K> {
    max: u32,
    map: HashMap<K, (i64, u32)>,
}

impl<K: Eq + Hash> Windows<K> {
    fn new(max: u32) -> Self {
        Windows {
            max,
            map: HashMap::new(),
        }
    }

    fn take(&mut self, key: K, now: i64) -> bool {
        if self.map.len() >= MAX_KEYS {
            self.map.retain(|_, (start, _)| now - *start < WINDOW_MS);
            if self.map.len() >= MAX_KEYS {
                // Full of live windows: refuse rather than forget one.
                return false;
            }
        }
        let e = self.map.entry(key).or_insert((now, 0));
        if now - e.0 >= WINDOW_MS {
            *e = (now, 0);
        }
        if e.1 >= self.max {
            return false;
        }
        e.1 += 1;
        true
    }

    fn give_back(&mut self, key: &K) {
        if let Some(e) = self.map.get_mut(key) {
            e.1 = e.1.saturating_sub(1);
        }
    }
}

#[derive(Debug)]
pub struct Attempts {
    inner: Mutex<(Windows<IpAddr>, Windows<String>)>,
}

impl Default for Attempts {
    fn default() -> Self {
        Attempts {
            inner: Mutex::new((Windows::new(PER_SOURCE), Windows::new(PER_NAME))),
        }
    }
}

/// An attempt under way: [`Attempt::succeeded`] gives its places back.
#[derive(Debug)]
pub struct Attempt<'a> {
    attempts: &'a Attempts,
    source: IpAddr,
    name: Option<String>,
}

impl Attempt<'_> {
    pub fn succeeded(self) {
        let mut g = self.attempts.lock();
        g.0.give_back(&self.source);
        if let Some(n) = &self.name {
            g.1.give_back(n);
        }
    }
}

impl Attempts {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Windows<IpAddr>, Windows<String>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts an attempt from `ip` (for `name`, when one is given) now;
    /// `None` when the source or the name has had its share of the window.
    pub fn begin(&self, ip: IpAddr, name: Option<&str>, now: i64) -> Option<Attempt<'_>> {
        let mut g = self.lock();
        let ip = source_key(ip);
        if !g.0.take(ip, now) {
            return None;
        }
        if let Some(n) = name
            && !g.1.take(n.to_string(), now)
        {
            g.0.give_back(&ip);
            return None;
        }
        Some(Attempt {
            attempts: self,
            source: ip,
            name: name.map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_names_are_held_for_the_window_and_successes_given_back() {
        let a = Attempts::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for i in 0..PER_SOURCE {
            assert!(a.begin(ip, Some(&format!("n{i}")), 0).is_some());
        }
        assert!(a.begin(ip, None, 1).is_none());
        assert!(a.begin(other, None, 1).is_some());
        assert!(a.begin(ip, None, WINDOW_MS).is_some());
        // A name is held whoever tries it, existing or not.
        for _ in 0..PER_NAME {
            assert!(a.begin(other, Some("ghost"), 0).is_some());
        }
        let third: IpAddr = "198.51.100.9".parse().unwrap();
        assert!(a.begin(third, Some("ghost"), 1).is_none());
        // Successes are given back.
        let b = Attempts::default();
        for _ in 0..100 {
            b.begin(ip, Some("ann"), 0).unwrap().succeeded();
        }
    }
}
