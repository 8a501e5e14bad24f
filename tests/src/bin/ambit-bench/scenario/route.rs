//! Which way a meshed scenario's connections go, and the check after the
//! scenario that they went that way: a meshed scenario whose traffic took
//! another path measured that path under the wrong name.
//!
//! - Through the proxies: the client's outbound proxy (and, cross-node, the
//!   server's inbound proxy) must have accepted connections (`/pods`).
//! - Spliced in the kernel: the server's agent's eBPF counters
//!   (`/counters`) must show connections left to go direct
//!   (`connect_direct`) and messages handed socket to socket
//!   (`messages_spliced`), and none sent to the proxies: `connect_redirected`
//!   and `inbound_steered` stay put, and the server's inbound proxy accepts
//!   nothing. The counters are the node's, not the pods': nothing else runs
//!   on the node during the scenario.

use std::fmt::Write as _;

use ambit_tests::mesh::Agent;
use ambit_tests::{Pod, Testbed};
use serde_json::Value;

use super::MeshPath;
use crate::cluster::Cluster;

/// Which way a meshed scenario's connections go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// The client's outbound proxy, HBONE, the server's inbound proxy.
    BothProxies,
    /// The client's outbound proxy, whose same-node fast path connects
    /// straight to the server's application, past its inbound proxy.
    OutboundProxy,
    /// Past both proxies: `connect4` leaves the connection alone and
    /// `sk_msg` splices the two sockets (`--kernel-splice`).
    KernelSplice,
}

/// The eBPF counters the splice check reads, in the order its summary
/// shows them.
const SPLICE_COUNTERS: [&str; 7] = [
    "connect_direct",
    "inbound_direct",
    "sockets_spliced",
    "messages_spliced",
    "messages_via_tcp",
    "connect_redirected",
    "inbound_steered",
];

/// Counters that must grow over a spliced scenario.
const MUST_GROW: [&str; 2] = ["connect_direct", "messages_spliced"];

/// Counters that must not: connections sent to the proxies.
const MUST_STAY: [&str; 2] = ["connect_redirected", "inbound_steered"];

/// What the agents' admin APIs showed at one moment.
pub(super) struct Snapshot {
    route: Route,
    /// Connections the client's outbound proxy accepted.
    outbound: Option<u64>,
    /// Connections the server's inbound proxy accepted.
    inbound: Option<u64>,
    /// The server agent's [`SPLICE_COUNTERS`] (spliced route only); `None`
    /// when `/counters` did not answer.
    counters: Option<Vec<Option<u64>>>,
}

// === impl Route ===

impl Route {
    /// The failure's test name when the check fails.
    pub(super) fn check_name(self) -> &'static str {
        match self {
            Self::BothProxies | Self::OutboundProxy => "capture",
            Self::KernelSplice => "splice",
        }
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// Reads what the check needs for `mesh`'s route.
    pub(super) fn take(tb: &Testbed, mesh: &MeshPath<'_>, client: &Pod, server: &Pod) -> Self {
        let spliced = mesh.route == Route::KernelSplice;
        Self {
            route: mesh.route,
            outbound: Cluster::opened_connections(tb, mesh.client_agent, client, "outbound"),
            inbound: Cluster::opened_connections(tb, mesh.server_agent, server, "inbound"),
            counters: spliced
                .then(|| splice_counters(tb, mesh.server_agent))
                .flatten(),
        }
    }

    /// Checks that the connections between `self` and `after` took the
    /// route. `Ok` carries what to tell (a count that could not be read, or
    /// the splice counters); `Err` says why the figures are not the route's.
    pub(super) fn check(
        &self,
        after: &Self,
        mesh: &MeshPath<'_>,
        client: &Pod,
        server: &Pod,
    ) -> Result<Vec<String>, String> {
        match self.route {
            Route::BothProxies | Route::OutboundProxy => self.check_proxied(after, client, server),
            Route::KernelSplice => self.check_spliced(after, mesh.server_agent, server),
        }
    }

    fn check_proxied(
        &self,
        after: &Self,
        client: &Pod,
        server: &Pod,
    ) -> Result<Vec<String>, String> {
        let mut notes = Vec::new();
        let mut directions = vec![("outbound", client, self.outbound, after.outbound)];
        if self.route == Route::BothProxies {
            directions.push(("inbound", server, self.inbound, after.inbound));
        }
        for (direction, pod, before, after) in directions {
            match (before, after) {
                (Some(before), Some(after)) if after > before => {}
                (Some(before), Some(after)) => {
                    return Err(format!(
                        "the agent proxied no {direction} connection of {} ({before} before, {after} after): \
                         the figures are not the mesh's",
                        pod.name
                    ));
                }
                _ => notes.push(cannot_verify(direction, pod)),
            }
        }
        Ok(notes)
    }

    fn check_spliced(
        &self,
        after: &Self,
        agent: &Agent,
        server: &Pod,
    ) -> Result<Vec<String>, String> {
        let node = &agent.node.name;
        let (Some(before_counters), Some(after_counters)) = (&self.counters, &after.counters)
        else {
            return Err(format!(
                "the agent on {node} did not answer /counters: cannot tell whether the connections were spliced"
            ));
        };
        let mut deltas = Vec::new();
        for ((name, before), after) in SPLICE_COUNTERS
            .iter()
            .zip(before_counters)
            .zip(after_counters)
        {
            let (Some(before), Some(after)) = (before, after) else {
                return Err(format!(
                    "the agent on {node} has no {name} counter in /counters: cannot tell whether the connections were spliced"
                ));
            };
            deltas.push((*name, after.saturating_sub(*before)));
        }
        let delta = |name: &str| {
            deltas
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, d)| *d)
        };
        let mut summary = format!("{node}'s eBPF counters over the scenario:");
        for (name, grown) in &deltas {
            let _ = write!(summary, " {name} +{grown}");
        }
        if let Some(name) = MUST_GROW.iter().find(|name| delta(name) == 0) {
            return Err(format!(
                "{name} did not grow: the connections were not spliced, the figures are not the kernel splice's ({summary})"
            ));
        }
        if let Some(name) = MUST_STAY.iter().find(|name| delta(name) > 0) {
            return Err(format!(
                "{name} grew: connections went to the agent's proxies, the figures are not the kernel splice's alone ({summary})"
            ));
        }
        let mut notes = vec![summary];
        match (self.inbound, after.inbound) {
            (Some(before), Some(after)) if after > before => {
                return Err(format!(
                    "the agent's inbound proxy accepted {} connection(s) to {}: the figures are not the kernel splice's alone",
                    after - before,
                    server.name
                ));
            }
            (Some(_), Some(_)) => {}
            _ => notes.push(cannot_verify("inbound", server)),
        }
        Ok(notes)
    }
}

fn cannot_verify(direction: &str, pod: &Pod) -> String {
    format!(
        "cannot verify the {direction} capture of {} (the admin API's /pods has no connection count)",
        pod.name
    )
}

/// The agent's [`SPLICE_COUNTERS`], each `None` when `/counters` lacks it;
/// `None` when `/counters` does not answer with an object.
fn splice_counters(tb: &Testbed, agent: &Agent) -> Option<Vec<Option<u64>>> {
    let counters: Value = serde_json::from_str(&agent.get(tb, "/counters")?).ok()?;
    counters.is_object().then(|| {
        SPLICE_COUNTERS
            .iter()
            .map(|name| counters[*name].as_u64())
            .collect()
    })
}
