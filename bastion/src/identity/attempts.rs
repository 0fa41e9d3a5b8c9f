//! Guessing limits per source: at most so many failed sign-ins from one
//! source (see `crate::limits::source_key`) in a window, checked before the
//! expensive step (a password hash). Per user the limit lives in the store,
//! so every replica sees it (`local`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::limits::source_key;

/// Failed sign-ins a source may make in a window.
pub const PER_SOURCE: u32 = 20;
/// The window, ms.
pub const WINDOW_MS: i64 = 60_000;
/// Sources remembered at most; past it the oldest windows are forgotten.
const MAX_SOURCES: usize = 65_536;

#[derive(Debug, Default)]
pub struct Attempts {
    by_source: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl Attempts {
    /// Whether `ip` may try now.
    pub fn allowed(&self, ip: IpAddr, now: i64) -> bool {
        let m = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(&source_key(ip)) {
            Some((start, n)) if now - start < WINDOW_MS => *n < PER_SOURCE,
            _ => true,
        }
    }

    /// Counts a failure from `ip`.
    pub fn failed(&self, ip: IpAddr, now: i64) {
        let mut m = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_SOURCES {
            m.retain(|_, (start, _)| now - *start < WINDOW_MS);
        }
        if m.len() >= MAX_SOURCES {
            return;
        }
        let e = m.entry(source_key(ip)).or_insert((now, 0));
        if now - e.0 >= WINDOW_MS {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_held_for_the_window_and_others_are_not() {
        let a = Attempts::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..PER_SOURCE {
            assert!(a.allowed(ip, 0));
            a.failed(ip, 0);
        }
        assert!(!a.allowed(ip, 1));
        assert!(a.allowed(other, 1));
        assert!(a.allowed(ip, WINDOW_MS));
    }
}
