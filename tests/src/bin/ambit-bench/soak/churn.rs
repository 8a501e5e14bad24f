//! The churn: what the soak changes in the configuration, when, and the
//! excuses the changes leave behind for the failures they may cause.
//!
//! - Every [`ENROL_EVERY`] the next flip pod, in turn, leaves the mesh or
//!   comes back (each pod is in for a round and out for a round).
//! - Every [`POLICY_STEP_EVERY`] one step of a four-step cycle: a DENY
//!   policy on a client and target (which cuts their open connections), an
//!   ALLOW-everything policy on that target (the DENY still wins), the DENY
//!   removed, the ALLOW removed. The pairs are dealt to lanes of
//!   [`PAIRS_PER_LANE`], each lane going through its pairs in turn, the
//!   lanes' cycles staggered by a step, so that every pair has had its DENY
//!   within a minute, whatever the number of pairs.
//! - Every [`ROUTE_EVERY`] the canary route under the waypoint changes to
//!   its next variant.

use std::time::{Duration, Instant};

use ambit_tests::Pod;
use serde::Serialize;

use ambit_tests::waypoint::WaypointMesh;

use super::bed::SoakPods;
use super::config::{self, Deny, Desired};
use super::judge::{Excuse, ExcusedPods};

/// How often a flip pod leaves or rejoins the mesh: with 12 flip pods
/// the whole cycle (each out, then each back) takes a minute, like the
/// policy cycle (20 s) thrice and the route cycle (4 × 15 s), so every
/// sample sees the churn in the same phase.
pub const ENROL_EVERY: Duration = Duration::from_millis(2500);
/// How often the policies change.
pub const POLICY_STEP_EVERY: Duration = Duration::from_secs(5);
/// Steps of one pair's policy cycle: DENY added, ALLOW added, DENY
/// removed, ALLOW removed.
const POLICY_STEPS: u32 = 4;
/// Pairs one policy lane takes in turn: a lane's round lasts a minute
/// (3 × 4 × 5 s), so each pair's DENY comes back every minute. With one
/// lane for all 24 pairs a round took 8 minutes, and an agent (which lives
/// 10 minutes in the soak) was still meeting DENYs on pairs new to it, and
/// adding their series, through the whole judged part of its life.
pub const PAIRS_PER_LANE: usize = 3;
/// How often the canary route changes.
pub const ROUTE_EVERY: Duration = Duration::from_secs(15);

/// Something the soak did, for the log and for reading a failure's
/// surroundings.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// What.
    pub what: String,
}

/// How many changes of each kind the soak made.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChurnCounts {
    /// Flip pods taken out of the mesh.
    pub unenrolled: u64,
    /// Flip pods put back.
    pub enrolled: u64,
    /// DENY policies added (each removed again).
    pub denies: u64,
    /// ALLOW-everything policies added.
    pub allows: u64,
    /// Canary route changes.
    pub route_changes: u64,
    /// Configuration files written (each change, to both agents and the waypoint).
    pub config_writes: u64,
}

/// Pairs whose DENY cycles follow one another.
struct PolicyLane {
    pairs: Vec<Deny>,
    /// Steps taken, which say whose turn it is and which step comes; it
    /// starts below zero for a lane that waits for its turn to begin.
    step: i64,
}

/// The churn's state and schedule.
pub struct Churn {
    flips: Vec<Pod>,
    enrolled: Vec<bool>,
    next_flip: usize,
    lanes: Vec<PolicyLane>,
    next_enrol: Instant,
    next_policy: Instant,
    next_route: Instant,
    /// What changes, as it is now.
    pub desired: Desired,
    /// Every excuse so far.
    pub excuses: Vec<Excuse>,
    /// Every change so far.
    pub changes: Vec<Change>,
    /// Changes by kind.
    pub counts: ChurnCounts,
}

// === impl Churn ===

impl Churn {
    /// Every flip pod enrolled; DENY policies will take `pairs` in turn.
    /// The first changes come one period after `now`.
    #[must_use]
    pub fn new(flips: Vec<Pod>, pairs: Vec<Deny>, now: Instant) -> Self {
        let mut churn = Self {
            enrolled: vec![true; flips.len()],
            flips,
            next_flip: 0,
            lanes: policy_lanes(pairs),
            next_enrol: now,
            next_policy: now,
            next_route: now,
            desired: Desired::default(),
            excuses: Vec::new(),
            changes: Vec::new(),
            counts: ChurnCounts::default(),
        };
        churn.begin(now);
        churn
    }

    /// Starts the schedule afresh: the first changes come one period
    /// after `now`.
    pub fn begin(&mut self, now: Instant) {
        self.next_enrol = now + ENROL_EVERY;
        self.next_policy = now + POLICY_STEP_EVERY;
        self.next_route = now + ROUTE_EVERY;
    }

    /// The flip pods in the mesh now.
    #[must_use]
    pub fn enrolled_flips(&self) -> Vec<&Pod> {
        self.flips
            .iter()
            .zip(&self.enrolled)
            .filter_map(|(pod, enrolled)| enrolled.then_some(pod))
            .collect()
    }

    /// Makes every change due at `now` (`now_ms` since the epoch, written
    /// into the excuses); true when the configuration must be rewritten.
    pub fn tick(&mut self, now: Instant, now_ms: u64) -> bool {
        let mut changed = false;
        if now >= self.next_enrol && !self.flips.is_empty() {
            self.next_enrol += ENROL_EVERY;
            self.flip(now_ms);
            changed = true;
        }
        if now >= self.next_policy && !self.lanes.is_empty() {
            self.next_policy += POLICY_STEP_EVERY;
            for lane in 0..self.lanes.len() {
                self.policy(lane, now_ms);
            }
            changed = true;
        }
        if now >= self.next_route {
            self.next_route += ROUTE_EVERY;
            self.desired.route = self.desired.route.next();
            self.counts.route_changes += 1;
            self.record(now_ms, format!("route {:?}", self.desired.route));
            changed = true;
        }
        if changed {
            self.counts.config_writes += 1;
        }
        changed
    }

    /// The configuration for the churn's state now.
    #[must_use]
    pub fn config_text(&self, mesh: &WaypointMesh, pods: &SoakPods) -> String {
        let mut enrolled = pods.always();
        enrolled.extend(self.enrolled_flips());
        config::render(
            &config::Parts {
                waypoint_pods: &mesh.pods_yaml(),
                services: &mesh.services_yaml(),
                enrolled: &enrolled,
                typo: &pods.typo,
            },
            &self.desired,
        )
    }

    /// Records a change the churn did not make (a handoff).
    pub fn record(&mut self, at_ms: u64, what: String) {
        self.changes.push(Change { at_ms, what });
    }

    /// The next flip pod leaves the mesh or comes back.
    fn flip(&mut self, now_ms: u64) {
        let index = self.next_flip;
        self.next_flip = (index + 1) % self.flips.len();
        let enrolled = !self.enrolled[index];
        self.enrolled[index] = enrolled;
        let pod = self.flips[index].name.clone();
        let what = if enrolled {
            self.counts.enrolled += 1;
            format!("enrolled {pod}")
        } else {
            self.counts.unenrolled += 1;
            format!("un-enrolled {pod}")
        };
        self.excuses.push(Excuse {
            what: what.clone(),
            pods: ExcusedPods::Pod { pod },
            from_ms: now_ms,
            to_ms: now_ms,
        });
        self.record(now_ms, what);
    }

    /// One step of a lane's policy cycle.
    fn policy(&mut self, lane_index: usize, now_ms: u64) {
        let lane = &mut self.lanes[lane_index];
        let step = lane.step;
        lane.step += 1;
        let Ok(step) = u32::try_from(step) else {
            return; // not its turn yet
        };
        let turn = usize::try_from(step / POLICY_STEPS).unwrap_or(0);
        let pair = lane.pairs[turn % lane.pairs.len()].clone();
        let what = match step % POLICY_STEPS {
            0 => {
                self.counts.denies += 1;
                self.excuses.push(Excuse {
                    what: format!("DENY {} -> {}", pair.client, pair.target),
                    pods: ExcusedPods::Pair {
                        client: pair.client.clone(),
                        target: pair.target.clone(),
                    },
                    from_ms: now_ms,
                    to_ms: u64::MAX,
                });
                let what = format!("added {}", pair.name());
                self.desired.denies.push(pair);
                what
            }
            1 => {
                self.counts.allows += 1;
                self.desired.allow_all.push(pair.target.clone());
                format!("added allow-all-{}", pair.target)
            }
            2 => {
                self.desired.denies.retain(|deny| *deny != pair);
                let excused = ExcusedPods::Pair {
                    client: pair.client.clone(),
                    target: pair.target.clone(),
                };
                if let Some(open) = self
                    .excuses
                    .iter_mut()
                    .rev()
                    .find(|excuse| excuse.to_ms == u64::MAX && excuse.pods == excused)
                {
                    open.to_ms = now_ms;
                }
                format!("removed {}", pair.name())
            }
            _ => {
                // Another lane may allow the same target: take one of them.
                if let Some(at) = self
                    .desired
                    .allow_all
                    .iter()
                    .position(|t| *t == pair.target)
                {
                    self.desired.allow_all.remove(at);
                }
                format!("removed allow-all-{}", pair.target)
            }
        };
        self.record(now_ms, what);
    }
}

/// Deals `pairs` to lanes of [`PAIRS_PER_LANE`] (lane `k` takes pairs `k`,
/// `k + lanes`, ...), lane `k` beginning `k mod 4` steps late so that the
/// lanes' DENYs are spread over the cycle.
fn policy_lanes(pairs: Vec<Deny>) -> Vec<PolicyLane> {
    let count = pairs.len().div_ceil(PAIRS_PER_LANE);
    let mut lanes: Vec<PolicyLane> = (0..count)
        .map(|lane| PolicyLane {
            pairs: Vec::new(),
            step: -i64::try_from(lane % POLICY_STEPS as usize).unwrap_or(0),
        })
        .collect();
    for (index, pair) in pairs.into_iter().enumerate() {
        lanes[index % count].pairs.push(pair);
    }
    lanes
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    use super::*;
    use crate::soak::config::RouteVariant;

    fn flip(name: &str) -> Pod {
        Pod {
            name: name.to_owned(),
            namespace: "shop".to_owned(),
            node: "n1".to_owned(),
            netns: name.to_owned(),
            netns_path: PathBuf::from("/run/netns/x"),
            cgroup: PathBuf::from("/sys/fs/cgroup/x"),
            ipv4: Ipv4Addr::new(10, 10, 1, 40),
            ipv6: None,
            host_ifname: "p1".to_owned(),
        }
    }

    #[test]
    fn a_minute_of_churn() {
        let start = Instant::now();
        let pairs = vec![
            Deny {
                client: "cli-1".to_owned(),
                target: "srv-6".to_owned(),
            },
            Deny {
                client: "cli-2".to_owned(),
                target: "srv-7".to_owned(),
            },
        ];
        let mut churn = Churn::new(vec![flip("flip-1"), flip("flip-2")], pairs, start);
        assert!(!churn.tick(start, 0), "nothing is due at once");
        for tenth in 1..=600 {
            churn.tick(start + Duration::from_millis(tenth * 100), tenth * 100);
        }
        assert_eq!((churn.counts.unenrolled, churn.counts.enrolled), (12, 12));
        assert_eq!(churn.enrolled_flips().len(), 2, "after 24 flips of 2 pods");
        // 12 policy steps: 3 whole cycles, a DENY on each pair in turn.
        assert_eq!((churn.counts.denies, churn.counts.allows), (3, 3));
        assert!(churn.desired.denies.is_empty() && churn.desired.allow_all.is_empty());
        assert_eq!(churn.counts.route_changes, 4);
        assert_eq!(churn.desired.route, RouteVariant::Absent);
        let denies: Vec<(&str, u64, u64)> = churn
            .excuses
            .iter()
            .filter(|e| e.what.starts_with("DENY"))
            .map(|e| (e.what.as_str(), e.from_ms, e.to_ms))
            .collect();
        assert_eq!(
            denies,
            [
                ("DENY cli-1 -> srv-6", 5000, 15_000),
                ("DENY cli-2 -> srv-7", 25_000, 35_000),
                ("DENY cli-1 -> srv-6", 45_000, 55_000),
            ]
        );
        // Every tick with a change wrote the file once.
        assert!(churn.counts.config_writes <= 60 && churn.counts.config_writes >= 24);
    }

    #[test]
    fn every_pair_has_its_deny_within_a_minute() {
        let start = Instant::now();
        let pairs: Vec<Deny> = (0..24)
            .map(|n| Deny {
                client: format!("cli-{}", n % 10),
                target: format!("srv-{n}"),
            })
            .collect();
        let mut churn = Churn::new(Vec::new(), pairs.clone(), start);
        let mut most_in_force = 0;
        // A minute, and the 15 s the last DENYs added in it take to go.
        for tenth in 1..=750 {
            churn.tick(start + Duration::from_millis(tenth * 100), tenth * 100);
            most_in_force = most_in_force.max(churn.desired.denies.len());
        }
        for pair in &pairs {
            let what = format!("DENY {} -> {}", pair.client, pair.target);
            let spans: Vec<(u64, u64)> = churn
                .excuses
                .iter()
                .filter(|e| e.what == what && e.from_ms <= 60_000)
                .map(|e| (e.from_ms, e.to_ms))
                .collect();
            assert_eq!(spans.len(), 1, "{what}: {spans:?}");
            let (from, to) = spans[0];
            assert_eq!(to - from, 10_000, "{what} is in force for two steps");
        }
        // Eight lanes, staggered: two of them in each of the four steps,
        // so four DENYs in force at most.
        assert_eq!(most_in_force, 4);
    }
}
