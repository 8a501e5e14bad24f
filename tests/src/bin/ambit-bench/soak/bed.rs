//! The soak's test bed: the waypoint's topology on two nodes, 35 more
//! pods, and the node agents, replaced by a successor at each handoff.
//!
//! ```text
//!  n1: client-a, client-b          (the waypoint topology's clients)
//!      srv-1..5, cli-1..5, flip-1..6, streamer-1, typo-1
//!  n2: v1, v2, v3, wp              (backends of `backend`, the waypoint)
//!      srv-6..10, cli-6..10, flip-7..12, streamer-2
//! ```
//!
//! Every pod is in namespace `shop` and runs as a service account named
//! like it. The flip pods leave and rejoin the mesh; the others stay.

use std::time::Instant;

use ambit_tests::mesh::Agent;
use ambit_tests::{Node, Pod, Testbed};
use serde_json::Value;

use super::config::{NAMESPACE, TYPO_POD};
use crate::error::BenchError;
use crate::upgrade;

/// Servers, clients and flip pods per node.
const SERVERS_PER_NODE: usize = 5;
const FLIPS_PER_NODE: usize = 6;

/// The soak's own pods.
pub struct SoakPods {
    /// `srv-1..10`: `rr-server`s (and four echo servers); 1-5 on `n1`.
    pub servers: Vec<Pod>,
    /// `cli-1..10`: clients; 1-5 on `n1`.
    pub clients: Vec<Pod>,
    /// `flip-1..12`: enrolled and un-enrolled in turn; 1-6 on `n1`.
    pub flips: Vec<Pod>,
    /// `streamer-1` (`n1`) and `streamer-2` (`n2`): long streams.
    pub streamers: Vec<Pod>,
    /// `typo-1` (`n1`): its kernel-path label has a typo.
    pub typo: Pod,
}

/// A node's agent, and its predecessors still draining.
pub struct NodeAgents {
    /// The node.
    pub node: Node,
    /// The agent serving the node's pods.
    pub active: Agent,
    /// Its generation: 0 for the first, one more at each handoff.
    pub generation: u16,
    /// When it started.
    pub started: Instant,
    /// Agents that handed their pods over and drain.
    pub draining: Vec<Retired>,
}

/// An agent that handed its pods over.
pub struct Retired {
    /// The agent.
    pub agent: Agent,
    /// Which handoff retired it (index into the soak's handoffs).
    pub handoff: usize,
    /// When it let go.
    pub released: Instant,
}

// === impl Retired ===

impl Retired {
    /// The connections it still carries, one line each (`inbound shop/v1
    /// 10.10.2.14:48260 -> 10.10.2.11:8080, 137 s old`); `None` when its
    /// admin API does not answer.
    pub fn open_connections(&self, tb: &Testbed) -> Option<Vec<String>> {
        let body = self.agent.get(tb, "/connections")?;
        let connections: Value = serde_json::from_str(&body).ok()?;
        Some(
            connections
                .as_array()?
                .iter()
                .filter(|c| c["state"] == "open")
                .map(|c| {
                    let text = |field: &str| c[field].as_str().unwrap_or("?").to_owned();
                    format!(
                        "{} {} {} -> {}, {:.0} s old",
                        text("direction"),
                        text("pod"),
                        text("src"),
                        text("dst"),
                        c["age_secs"].as_f64().unwrap_or(f64::NAN)
                    )
                })
                .collect(),
        )
    }
}

// === impl SoakPods ===

impl SoakPods {
    /// Adds the pods to `n1` and `n2`.
    pub fn add(tb: &mut Testbed, n1: &Node, n2: &Node) -> Self {
        let mut on_both = |prefix: &str, per_node: usize| -> Vec<Pod> {
            (1..=2 * per_node)
                .map(|n| {
                    let node = if n <= per_node { n1 } else { n2 };
                    tb.add_pod(node, &format!("{prefix}-{n}"), NAMESPACE)
                })
                .collect()
        };
        let servers = on_both("srv", SERVERS_PER_NODE);
        let clients = on_both("cli", SERVERS_PER_NODE);
        let flips = on_both("flip", FLIPS_PER_NODE);
        let streamers = on_both("streamer", 1);
        let typo = tb.add_pod(n1, TYPO_POD, NAMESPACE);
        Self {
            servers,
            clients,
            flips,
            streamers,
            typo,
        }
    }

    /// Every pod.
    pub fn all(&self) -> impl Iterator<Item = &Pod> {
        self.always()
            .into_iter()
            .chain(&self.flips)
            .chain([&self.typo])
    }

    /// The pods that stay in the mesh and carry the usual labels (all but
    /// the flip pods and the typo pod).
    #[must_use]
    pub fn always(&self) -> Vec<&Pod> {
        self.servers
            .iter()
            .chain(&self.clients)
            .chain(&self.streamers)
            .collect()
    }

    /// Client `index`'s servers: on its own node, and on the other.
    #[must_use]
    pub fn servers_of(&self, index: usize) -> [&Pod; 2] {
        let count = self.servers.len();
        [
            &self.servers[index % count],
            &self.servers[(index + SERVERS_PER_NODE) % count],
        ]
    }

    /// A server on the other node than flip pod `index`.
    #[must_use]
    pub fn cross_node_server(&self, index: usize) -> &Pod {
        let offset = if index < FLIPS_PER_NODE {
            SERVERS_PER_NODE
        } else {
            0
        };
        &self.servers[offset + index % SERVERS_PER_NODE]
    }

    /// Each streamer and its two echo servers: its own node's, the other's.
    #[must_use]
    pub fn streams(&self) -> Vec<(&Pod, [&Pod; 2])> {
        let s = &self.servers;
        vec![
            (&self.streamers[0], [&s[1], &s[6]]),
            (&self.streamers[1], [&s[7], &s[2]]),
        ]
    }

    /// The servers that also run an echo server (for the streams).
    #[must_use]
    pub fn echo_servers(&self) -> Vec<&Pod> {
        self.streams()
            .into_iter()
            .flat_map(|(_, targets)| targets)
            .collect()
    }
}

// === impl NodeAgents ===

impl NodeAgents {
    /// Starts `node`'s first agent with `config` and `args`, and waits
    /// until it has enrolled those of `pods` that are on its node.
    pub fn start(tb: &Testbed, node: &Node, config: &str, pods: &[&Pod], args: &[&str]) -> Self {
        Self {
            node: node.clone(),
            active: Agent::start_with_config(tb, node, config, pods, args),
            generation: 0,
            started: Instant::now(),
            draining: Vec::new(),
        }
    }

    /// Hands the pods to a successor started with `config` and `args`;
    /// the old agent drains. Returns how long the takeover took, ms.
    pub fn hand_off(
        &mut self,
        tb: &Testbed,
        config: &str,
        args: &[&str],
        handoff: usize,
    ) -> Result<f64, BenchError> {
        let generation = self.generation + 1;
        let started = Instant::now();
        let handed = upgrade::hand_off(tb, &self.node, config, generation, args, &mut self.active)?;
        self.generation = generation;
        self.started = started;
        self.draining.push(Retired {
            agent: handed.old,
            handoff,
            released: handed.released,
        });
        Ok(handed.took.as_secs_f64() * 1e3)
    }
}
