//! Which way a meshed scenario's connections go, and the check after the
//! scenario that they went that way: a meshed scenario whose traffic took
//! another path measured that path under the wrong name.
//!
//! - Through the proxies: the client's outbound proxy (and, cross-node, the
//!   server's inbound proxy) must have accepted connections (`/pods`).
//! - Through the proxies on the kernel path (`mesh-cross-node-kernel`): the
//!   same, and on each agent the eBPF counters (`/counters`) must show pod
//!   leg sockets added to the splice sock hash (`pod_leg_sockets`) and
//!   messages handed socket to socket (`messages_spliced`), no connection
//!   left to go direct (`connect_direct`), and `/metrics` must count
//!   connections whose leg took the kernel path
//!   (`ambit_kernel_path_connections_total`, `leg="outbound"` on the
//!   client's agent, `leg="inbound"` on the server's).
//! - Spliced in the kernel on one node (`mesh-same-node-kernel`): the
//!   server's agent's eBPF counters must show connections left to go direct
//!   (`connect_direct`) and messages handed socket to socket
//!   (`messages_spliced`), and none sent to the proxies:
//!   `connect_redirected` and `inbound_steered` stay put, and the server's
//!   inbound proxy accepts nothing.
//!
//! The counters are the node's, not the pods': nothing else runs on the
//! nodes during the scenario.

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
    /// As [`Route::BothProxies`], with both pods on the kernel path: the
    /// legs between each application and its agent (the client's socket
    /// and the outbound listener's, the inbound proxy's and the server's)
    /// spliced by `sk_msg`.
    KernelPathProxies,
    /// Past both proxies, both pods on the kernel path on one node:
    /// `connect4` leaves the connection alone and `sk_msg` splices the two
    /// sockets.
    SameNodeKernel,
}

/// The eBPF counters the kernel-path checks read, in the order their
/// summaries show them.
const KERNEL_COUNTERS: [&str; 8] = [
    "connect_direct",
    "inbound_direct",
    "sockets_spliced",
    "pod_leg_sockets",
    "messages_spliced",
    "messages_via_tcp",
    "connect_redirected",
    "inbound_steered",
];

/// Counters that must grow over a same-node kernel scenario.
const SPLICE_MUST_GROW: [&str; 2] = ["connect_direct", "messages_spliced"];

/// Counters that must not: connections sent to the proxies.
const SPLICE_MUST_STAY: [&str; 2] = ["connect_redirected", "inbound_steered"];

/// Counters that must grow on each agent over a cross-node kernel-path
/// scenario: its pod's leg sockets joined the sock hash, and messages were
/// handed socket to socket.
const LEGS_MUST_GROW: [&str; 2] = ["pod_leg_sockets", "messages_spliced"];

/// Counters that must not: no same-node direct connection.
const LEGS_MUST_STAY: [&str; 1] = ["connect_direct"];

/// The metric that counts the connections whose leg took the kernel path.
const KERNEL_PATH_METRIC: &str = "ambit_kernel_path_connections_total";

/// What the agents' admin APIs showed at one moment.
pub(super) struct Snapshot {
    route: Route,
    /// Connections the client's outbound proxy accepted.
    outbound: Option<u64>,
    /// Connections the server's inbound proxy accepted.
    inbound: Option<u64>,
    /// The client agent's [`KERNEL_COUNTERS`] (cross-node kernel path only);
    /// `None` when `/counters` did not answer.
    client_counters: Option<Vec<Option<u64>>>,
    /// The server agent's [`KERNEL_COUNTERS`] (kernel routes only).
    server_counters: Option<Vec<Option<u64>>>,
    /// [`KERNEL_PATH_METRIC`] with `leg="outbound"` on the client's agent
    /// (cross-node kernel path only).
    outbound_legs: Option<u64>,
    /// [`KERNEL_PATH_METRIC`] with `leg="inbound"` on the server's agent.
    inbound_legs: Option<u64>,
}

// === impl Route ===

impl Route {
    /// The failure's test name when the check fails.
    pub(super) fn check_name(self) -> &'static str {
        match self {
            Self::BothProxies | Self::OutboundProxy => "capture",
            Self::KernelPathProxies => "kernel_path",
            Self::SameNodeKernel => "splice",
        }
    }

    /// Whether the server's inbound proxy carries the connections.
    fn through_inbound_proxy(self) -> bool {
        matches!(self, Self::BothProxies | Self::KernelPathProxies)
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// Reads what the check needs for `mesh`'s route.
    pub(super) fn take(tb: &Testbed, mesh: &MeshPath<'_>, client: &Pod, server: &Pod) -> Self {
        let legs = mesh.route == Route::KernelPathProxies;
        let kernel = legs || mesh.route == Route::SameNodeKernel;
        Self {
            route: mesh.route,
            outbound: Cluster::opened_connections(tb, mesh.client_agent, client, "outbound"),
            inbound: Cluster::opened_connections(tb, mesh.server_agent, server, "inbound"),
            client_counters: legs
                .then(|| kernel_counters(tb, mesh.client_agent))
                .flatten(),
            server_counters: kernel
                .then(|| kernel_counters(tb, mesh.server_agent))
                .flatten(),
            outbound_legs: legs
                .then(|| kernel_path_legs(tb, mesh.client_agent, "outbound"))
                .flatten(),
            inbound_legs: legs
                .then(|| kernel_path_legs(tb, mesh.server_agent, "inbound"))
                .flatten(),
        }
    }

    /// Checks that the connections between `self` and `after` took the
    /// route. `Ok` carries what to tell (a count that could not be read, or
    /// the kernel counters); `Err` says why the figures are not the route's.
    pub(super) fn check(
        &self,
        after: &Self,
        mesh: &MeshPath<'_>,
        client: &Pod,
        server: &Pod,
    ) -> Result<Vec<String>, String> {
        match self.route {
            Route::BothProxies | Route::OutboundProxy => self.check_proxied(after, client, server),
            Route::KernelPathProxies => self.check_kernel_path(after, mesh, client, server),
            Route::SameNodeKernel => self.check_spliced(after, mesh.server_agent, server),
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
        if self.route.through_inbound_proxy() {
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

    /// Through both proxies, and each pod's leg to its agent on the kernel
    /// path.
    fn check_kernel_path(
        &self,
        after: &Self,
        mesh: &MeshPath<'_>,
        client: &Pod,
        server: &Pod,
    ) -> Result<Vec<String>, String> {
        let mut notes = self.check_proxied(after, client, server)?;
        let sides = [
            (
                mesh.client_agent,
                "outbound",
                client,
                (&self.client_counters, &after.client_counters),
                (self.outbound_legs, after.outbound_legs),
                (self.outbound, after.outbound),
            ),
            (
                mesh.server_agent,
                "inbound",
                server,
                (&self.server_counters, &after.server_counters),
                (self.inbound_legs, after.inbound_legs),
                (self.inbound, after.inbound),
            ),
        ];
        for (agent, leg, pod, counters, legs, opened) in sides {
            let node = &agent.node.name;
            let deltas = counter_deltas(agent, counters.0.as_ref(), counters.1.as_ref())?;
            let mut summary = summary(node, &deltas);
            if let Some(name) = LEGS_MUST_GROW.iter().find(|name| delta(&deltas, name) == 0) {
                return Err(format!(
                    "{name} did not grow: {}'s {leg} leg did not take the kernel path, the figures are not the kernel path's ({summary})",
                    pod.name
                ));
            }
            if let Some(name) = LEGS_MUST_STAY.iter().find(|name| delta(&deltas, name) > 0) {
                return Err(format!(
                    "{name} grew: connections went direct past the agents, the figures are not the kernel path's through them ({summary})"
                ));
            }
            let (Some(legs_before), Some(legs_after)) = legs else {
                return Err(format!(
                    "the agent on {node} did not answer /metrics: cannot tell whether {}'s {leg} legs took the kernel path",
                    pod.name
                ));
            };
            let on_kernel_path = legs_after.saturating_sub(legs_before);
            if on_kernel_path == 0 {
                return Err(format!(
                    "{KERNEL_PATH_METRIC}{{leg=\"{leg}\"}} did not grow: no {leg} leg of {} took the kernel path, the figures are not the kernel path's ({summary})",
                    pod.name
                ));
            }
            let opened = match opened {
                (Some(before), Some(after)) => after.saturating_sub(before).to_string(),
                _ => "?".to_owned(),
            };
            let _ = write!(
                summary,
                "; {on_kernel_path} of {opened} {leg} connections of {} on the kernel path",
                pod.name
            );
            notes.push(summary);
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
        let deltas = counter_deltas(
            agent,
            self.server_counters.as_ref(),
            after.server_counters.as_ref(),
        )?;
        let summary = summary(node, &deltas);
        if let Some(name) = SPLICE_MUST_GROW
            .iter()
            .find(|name| delta(&deltas, name) == 0)
        {
            return Err(format!(
                "{name} did not grow: the connections were not spliced, the figures are not the kernel splice's ({summary})"
            ));
        }
        if let Some(name) = SPLICE_MUST_STAY
            .iter()
            .find(|name| delta(&deltas, name) > 0)
        {
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

/// How much each of [`KERNEL_COUNTERS`] grew between two readings of
/// `agent`'s `/counters`; `Err` when a reading or a counter is missing.
fn counter_deltas(
    agent: &Agent,
    before: Option<&Vec<Option<u64>>>,
    after: Option<&Vec<Option<u64>>>,
) -> Result<Vec<(&'static str, u64)>, String> {
    let node = &agent.node.name;
    let (Some(before), Some(after)) = (before, after) else {
        return Err(format!(
            "the agent on {node} did not answer /counters: cannot tell whether the connections took the kernel path"
        ));
    };
    let mut deltas = Vec::new();
    for ((name, before), after) in KERNEL_COUNTERS.iter().zip(before).zip(after) {
        let (Some(before), Some(after)) = (before, after) else {
            return Err(format!(
                "the agent on {node} has no {name} counter in /counters: cannot tell whether the connections took the kernel path"
            ));
        };
        deltas.push((*name, after.saturating_sub(*before)));
    }
    Ok(deltas)
}

/// The growth of counter `name` in `deltas`.
fn delta(deltas: &[(&str, u64)], name: &str) -> u64 {
    deltas
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, d)| *d)
}

/// `<node>'s eBPF counters over the scenario: connect_direct +0 …`.
fn summary(node: &str, deltas: &[(&str, u64)]) -> String {
    let mut summary = format!("{node}'s eBPF counters over the scenario:");
    for (name, grown) in deltas {
        let _ = write!(summary, " {name} +{grown}");
    }
    summary
}

fn cannot_verify(direction: &str, pod: &Pod) -> String {
    format!(
        "cannot verify the {direction} capture of {} (the admin API's /pods has no connection count)",
        pod.name
    )
}

/// The agent's [`KERNEL_COUNTERS`], each `None` when `/counters` lacks it;
/// `None` when `/counters` does not answer with an object.
fn kernel_counters(tb: &Testbed, agent: &Agent) -> Option<Vec<Option<u64>>> {
    let counters: Value = serde_json::from_str(&agent.get(tb, "/counters")?).ok()?;
    counters.is_object().then(|| {
        KERNEL_COUNTERS
            .iter()
            .map(|name| counters[*name].as_u64())
            .collect()
    })
}

/// The agent's [`KERNEL_PATH_METRIC`] for `leg`: 0 before the first such
/// connection (no sample yet); `None` when `/metrics` does not answer.
fn kernel_path_legs(tb: &Testbed, agent: &Agent, leg: &str) -> Option<u64> {
    let text = agent.get(tb, "/metrics")?;
    Some(metric_value(&text, &format!("{KERNEL_PATH_METRIC}{{leg=\"{leg}\"}}")).unwrap_or(0))
}

/// The value of the sample `series` (name and labels, as exposed) in the
/// Prometheus text `text`.
fn metric_value(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        // A float in the exposition format: `3` or `3.0`.
        let value: f64 = line.strip_prefix(series)?.trim().parse().ok()?;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a counter: a whole, non-negative number"
        )]
        let count = value as u64;
        Some(count)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_counter_sample_by_its_labels() {
        let text = "# HELP ambit_kernel_path_connections Connections…\n\
                    # TYPE ambit_kernel_path_connections counter\n\
                    ambit_kernel_path_connections_total{leg=\"outbound\"} 12\n\
                    ambit_kernel_path_connections_total{leg=\"inbound\"} 3\n";
        let series = |leg: &str| format!("{KERNEL_PATH_METRIC}{{leg=\"{leg}\"}}");
        assert_eq!(metric_value(text, &series("outbound")), Some(12));
        assert_eq!(metric_value(text, &series("inbound")), Some(3));
        assert_eq!(metric_value(text, &series("same_node")), None);
    }
}
