//! Limits per source address, for every door that must not let one client take
//! all of a shared pool (enrollments, large REST answers): a count per address
//! and a guard that gives the place back when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts per source address, with a guard that gives the place back.
#[derive(Debug, Clone)]
pub struct PerSource {
    max: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

#[derive(Debug)]
pub struct SourceGuard {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl PerSource {
    pub fn new(max: usize) -> PerSource {
        PerSource {
            max,
            counts: Arc::default(),
        }
    }

    /// A place for `ip`, or `None` when it holds its maximum already.
    pub fn admit(&self, ip: IpAddr) -> Option<SourceGuard> {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceGuard {
            ip,
            counts: self.counts.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
