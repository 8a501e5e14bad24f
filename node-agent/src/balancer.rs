//! Load balancing for connections to a service's cluster IP: power of two
//! choices on least outstanding connections. Two endpoints are drawn at
//! random and the one with fewer connections open through this agent wins
//! (a tie goes to the first drawn). It needs no coordination between
//! agents and avoids the herding of "always the least loaded", while
//! steering away from slow endpoints, whose connections stay open longer.
//!
//! The counts live in the balancer, keyed by endpoint address, so they
//! outlive configuration changes: an endpoint that stays keeps its count.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use crate::sync::lock;

/// Counts kept for endpoints nobody holds are dropped once the table grows
/// past this many entries.
const PRUNE_ABOVE: usize = 4096;

/// Picks endpoints and counts the connections open to each.
#[derive(Debug, Default)]
pub struct Balancer {
    outstanding: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
    draws: AtomicU64,
}

/// A connection counted against its endpoint until dropped.
#[derive(Debug)]
pub struct Pick {
    /// The endpoint chosen.
    pub endpoint: SocketAddr,
    outstanding: Arc<AtomicUsize>,
}

// === impl Balancer ===

impl Balancer {
    /// Picks one of `endpoints` by power of two choices and counts a
    /// connection against it; `None` when there are none.
    pub fn pick(&self, endpoints: &[SocketAddr]) -> Option<Pick> {
        let (first, second) = match endpoints.len() {
            0 => return None,
            1 => (0, 0),
            len => {
                let first = self.draw(len);
                // A second index different from the first, uniformly.
                let second = (first + 1 + self.draw(len - 1)) % len;
                (first, second)
            }
        };
        let mut table = lock(&self.outstanding);
        if table.len() > PRUNE_ABOVE {
            table.retain(|_, count| Arc::strong_count(count) > 1);
        }
        let mut counter = |endpoint: SocketAddr| table.entry(endpoint).or_default().clone();
        let a = counter(endpoints[first]);
        let chosen = if first == second {
            (endpoints[first], a)
        } else {
            let b = counter(endpoints[second]);
            if b.load(Ordering::Relaxed) < a.load(Ordering::Relaxed) {
                (endpoints[second], b)
            } else {
                (endpoints[first], a)
            }
        };
        drop(table);
        chosen.1.fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            endpoint: chosen.0,
            outstanding: chosen.1,
        })
    }

    /// Connections open through this balancer to `endpoint`.
    #[must_use]
    pub fn outstanding(&self, endpoint: SocketAddr) -> usize {
        lock(&self.outstanding)
            .get(&endpoint)
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }

    /// A pseudo-random index below `len` (`len` > 0): a counter scrambled
    /// by a multiplicative hash, seeded with the process id. Statistical
    /// spread is all that matters here.
    fn draw(&self, len: usize) -> usize {
        let n = self.draws.fetch_add(1, Ordering::Relaxed) ^ u64::from(std::process::id()) << 20;
        let mixed = splitmix64(n);
        // `len` fits in u64 and the result is below it.
        usize::try_from(mixed % len as u64).unwrap_or(0)
    }
}

/// The splitmix64 finaliser: consecutive inputs give unrelated outputs.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// === impl Pick ===

impl Drop for Pick {
    fn drop(&mut self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i)))
            .collect()
    }

    #[test]
    fn no_endpoints_no_pick_and_one_endpoint_always() {
        let balancer = Balancer::default();
        assert!(balancer.pick(&[]).is_none());
        let only = endpoints(1);
        let held: Vec<Pick> = (0..3).map(|_| balancer.pick(&only).unwrap()).collect();
        assert!(held.iter().all(|pick| pick.endpoint == only[0]));
        assert_eq!(balancer.outstanding(only[0]), 3);
        drop(held);
        assert_eq!(balancer.outstanding(only[0]), 0);
    }

    #[test]
    fn held_connections_spread_evenly_over_two_endpoints() {
        // With two endpoints both are always compared, so the less loaded
        // one always wins: held connections alternate.
        let balancer = Balancer::default();
        let both = endpoints(2);
        let held: Vec<Pick> = (0..101).map(|_| balancer.pick(&both).unwrap()).collect();
        let (a, b) = (balancer.outstanding(both[0]), balancer.outstanding(both[1]));
        assert_eq!(a + b, 101);
        assert!(a.abs_diff(b) <= 1, "{a} vs {b}");
        drop(held);
    }

    #[test]
    fn short_connections_spread_over_every_endpoint() {
        let balancer = Balancer::default();
        let five = endpoints(5);
        let mut counts = HashMap::new();
        for _ in 0..5000 {
            let pick = balancer.pick(&five).unwrap();
            *counts.entry(pick.endpoint).or_insert(0_u32) += 1;
        }
        for endpoint in &five {
            let n = counts[endpoint];
            // 1000 expected; the binomial's 99.9 % band is about ±90.
            assert!((850..=1150).contains(&n), "{endpoint}: {n} of 5000");
        }
    }

    #[test]
    fn a_loaded_endpoint_is_avoided() {
        let balancer = Balancer::default();
        let three = endpoints(3);
        // Ten connections stay open on the first endpoint.
        let stuck: Vec<Pick> = (0..10)
            .map(|_| balancer.pick(&three[..1]).unwrap())
            .collect();
        let mut first = 0;
        for _ in 0..300 {
            if balancer.pick(&three).unwrap().endpoint == three[0] {
                first += 1;
            }
        }
        // It is chosen only when drawn twice, which P2C never does.
        assert_eq!(first, 0);
        drop(stuck);
    }
}
