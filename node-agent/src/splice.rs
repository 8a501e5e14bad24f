//! The same-node fast path in the kernel, the agent's side (the eBPF side
//! is `mesh-ebpf/programs/src/splice.rs`).
//!
//! - From the policies in force, the agent writes `AMBIT_DIRECT`: every
//!   (source pod, destination pod, port) of this node that policy allows,
//!   where both pods opted in to the kernel path
//!   (`ambit.dev/kernel-path=enabled`).
//!   Those connections skip both proxies and are spliced socket to socket by
//!   `sk_msg`; any other connection goes through the agent, which enforces
//!   policy as usual. A connection that policy denies is never spliced.
//! - `sk_msg` counts every byte of a spliced connection; the agent reads the
//!   counts from the open and close events and keeps its per-pod counters,
//!   connection log and metrics as if it had carried the bytes itself.
//! - When the policies change, pairs no longer allowed leave the map first;
//!   open spliced connections the new policies deny are aborted
//!   (`SOCK_DESTROY` on the client's socket, which resets the server's),
//!   counted and logged.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, RingBuf};
use mesh_core::policy::{Decision, PolicySet, Request, Workload as PolicyWorkload};
use mesh_ebpf_common::{
    DirectKey, DirectVerdict, SPLICE_CLOSED, SPLICE_FLAG_POD_LEG, SPLICE_OPENED, SocketTuple,
    SpliceEvent,
};

use crate::sync::lock;
use crate::{
    authz::Authorizer,
    connections::{ConnectionLog, ConnectionRecord, ConnectionState, ConnectionView},
    ebpf::MeshMaps,
    flow::{Authorization, Direction, EnforcementPoint, Flow, Security},
    metrics::{
        Metrics,
        tcp::{OpenSeries, ResponseFlags},
    },
    proxy::PodContext,
    workloads::{SharedWorkloads, Workload},
};

mod destroy;

/// The enrolled pods of this node, by address: where a spliced connection's
/// counts and records go, and whose namespace its sockets live in.
#[derive(Default)]
pub struct LocalPods(Mutex<HashMap<IpAddr, Arc<PodContext>>>);

/// Keeps the direct-connection map in line with policy and accounts for the
/// spliced connections.
pub struct Splicer {
    enabled: bool,
    maps: Arc<MeshMaps>,
    authorizer: Arc<Authorizer>,
    workloads: Arc<SharedWorkloads>,
    pods: Arc<LocalPods>,
    connections: Arc<ConnectionLog>,
    metrics: Arc<Metrics>,
    /// Spliced connections reset by a policy change, by client tuple, with
    /// the verdict that reset them; taken when their close is reported.
    revoked: Mutex<HashMap<SocketTuple, Authorization>>,
    /// The metric series of the open spliced connections, by client tuple,
    /// held until their close is reported.
    open_series: Mutex<HashMap<SocketTuple, OpenSeries>>,
}

// === impl LocalPods ===

impl LocalPods {
    /// Registers an enrolled pod's proxies' context under its addresses.
    pub fn insert(&self, context: &Arc<PodContext>) {
        let mut pods = lock(&self.0);
        for ip in &context.pod_ips {
            pods.insert(*ip, context.clone());
        }
    }

    /// Forgets the pod with these addresses.
    pub fn remove(&self, ips: &[IpAddr]) {
        let mut pods = lock(&self.0);
        for ip in ips {
            pods.remove(&ip.to_canonical());
        }
    }

    fn get(&self, ip: IpAddr) -> Option<Arc<PodContext>> {
        lock(&self.0).get(&ip.to_canonical()).cloned()
    }
}

// === impl Splicer ===

impl Splicer {
    /// A splicer; with `enabled` false the direct map stays empty and every
    /// connection goes through the agent.
    #[must_use]
    pub fn new(
        enabled: bool,
        maps: Arc<MeshMaps>,
        authorizer: Arc<Authorizer>,
        workloads: Arc<SharedWorkloads>,
        pods: Arc<LocalPods>,
        connections: Arc<ConnectionLog>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            enabled,
            maps,
            authorizer,
            workloads,
            pods,
            connections,
            metrics,
            revoked: Mutex::default(),
            open_series: Mutex::default(),
        }
    }

    /// Rewrites the direct-connection map from the policies and pods in
    /// force, then resets the open spliced connections the policies deny.
    pub fn update(&self) {
        if !self.enabled {
            return;
        }
        let policies = self.authorizer.policy_set();
        let local: Vec<(IpAddr, Arc<Workload>)> = self
            .workloads
            .current()
            .entries()
            .filter(|(_, w)| w.local && w.kernel_path)
            .map(|(ip, w)| (ip, w.clone()))
            .collect();
        let entries = direct_entries(&policies, &local);
        if let Err(error) = self.maps.set_direct(&entries) {
            tracing::error!(%error, "cannot update the direct-connection map; same-node splicing may lag behind policy");
        }
        self.revoke_denied();
    }

    /// Reads the spliced-connection events until the task is dropped.
    pub async fn run_events(self: Arc<Self>, ring: RingBuf<MapData>) {
        let Ok(mut ready) = crate::sys::async_readable(ring) else {
            tracing::warn!(
                "cannot poll the splice event ring; spliced connections are not counted"
            );
            return;
        };
        loop {
            let Ok(mut guard) = ready.readable_mut().await else {
                return;
            };
            while let Some(item) = guard.get_inner_mut().next() {
                if let Some(event) = SpliceEvent::from_ne_bytes(&item) {
                    self.account(&event);
                }
            }
            guard.clear_ready();
        }
    }

    fn account(&self, event: &SpliceEvent) {
        let (Some(src), Some(dst)) = (event.tuple.src(), event.tuple.dst()) else {
            return;
        };
        let Some(client) = self.pods.get(src.ip()) else {
            return;
        };
        let stats = &client.stats.outbound;
        match event.kind {
            SPLICE_OPENED => {
                stats.opened();
                self.metrics.kernel_path_connection("same_node");
                let flow = self.flow(&client, src, dst, None);
                let series = self.metrics.tcp.opened(&flow, &self.workloads.current());
                lock(&self.open_series).insert(event.tuple, series);
                if let Some(authorization) = self.verdict(src, dst) {
                    self.authorizer
                        .count_decision(&authorization, &dst_namespace(&self.workloads, dst));
                }
            }
            SPLICE_CLOSED => {
                let revoked = lock(&self.revoked).remove(&event.tuple);
                let revoked_flag = revoked.is_some();
                let (sent, received) = (event.stats.sent, event.stats.received);
                stats.closed(sent, received, revoked.is_some());
                let error = revoked.as_ref().map(|a| {
                    stats.revoked();
                    format!("reset: a policy change denies it ({})", a.reason)
                });
                let authorization = revoked.or_else(|| self.verdict(src, dst));
                let flow = self.flow(&client, src, dst, authorization);
                let flags = if revoked_flag {
                    ResponseFlags::Deny
                } else {
                    ResponseFlags::None
                };
                let workloads = self.workloads.current();
                self.metrics
                    .tcp
                    .closed(&flow, &workloads, flags, sent, received);
                lock(&self.open_series).remove(&event.tuple);
                self.connections.closed(flow, sent, received, error);
            }
            _ => {}
        }
    }

    /// The spliced connections open now, with their bytes so far.
    #[must_use]
    pub fn open_connections(&self) -> Vec<ConnectionView> {
        self.maps
            .open_splices()
            .into_iter()
            .filter_map(|(tuple, stats)| {
                let (src, dst) = (tuple.src()?, tuple.dst()?);
                let client = self.pods.get(src.ip())?;
                let flow = self.flow(&client, src, dst, self.verdict(src, dst));
                Some(ConnectionView {
                    state: ConnectionState::Open,
                    record: ConnectionRecord {
                        flow,
                        bytes_sent: stats.sent,
                        bytes_received: stats.received,
                        error: None,
                        closed_at: 0,
                    },
                    opened_at: None,
                    age_secs: None,
                })
            })
            .collect()
    }

    /// A spliced connection from `client`'s pod: always same-node, outbound.
    fn flow(
        &self,
        client: &PodContext,
        src: SocketAddr,
        dst: SocketAddr,
        authorization: Option<Authorization>,
    ) -> Flow {
        let peer = self.workloads.current().by_ip(dst.ip()).cloned();
        Flow {
            direction: Direction::Outbound,
            pod: client.pod.to_string(),
            src,
            dst,
            src_identity: Some(client.identity.to_string()),
            dst_identity: peer.map(|p| p.identity.to_string()),
            security: Security::SameNodeKernel,
            authorization,
        }
    }

    /// The verdict for `src` connecting to `dst` under the policies in force.
    fn verdict(&self, src: SocketAddr, dst: SocketAddr) -> Option<Authorization> {
        let workloads = self.workloads.current();
        let client = workloads.by_ip(src.ip())?;
        let server = workloads.by_ip(dst.ip())?;
        Some(self.authorizer.evaluate(
            &server.key.namespace,
            &server.labels,
            &Request::new(Some(&client.identity), src.ip(), dst.port()),
            EnforcementPoint::SameNodeSplice,
        ))
    }

    /// Resets every spliced connection of the pod with addresses `ips`,
    /// which is leaving the mesh: its direct connections, and its legs to
    /// and from the agent on the kernel path. Each is aborted with
    /// `SOCK_DESTROY` on its client socket, which resets the other end, so
    /// no socket of the pod stays in the sock hash. Call it while the pod is
    /// still in [`LocalPods`].
    pub fn reset_pod(&self, ips: &[IpAddr]) {
        let ips: Vec<IpAddr> = ips.iter().map(IpAddr::to_canonical).collect();
        for (tuple, stats) in self.maps.every_splice() {
            let (Some(src), Some(dst)) = (tuple.src(), tuple.dst()) else {
                continue;
            };
            // Whose namespace the client socket is in: a pod leg's is the
            // pod's (inbound: the destination; outbound: the source, to
            // the agent on loopback), a direct connection's the client's.
            let client_ip = if stats.flags & SPLICE_FLAG_POD_LEG == 0 {
                (ips.contains(&src.ip()) || ips.contains(&dst.ip())).then_some(src.ip())
            } else if ips.contains(&dst.ip()) {
                Some(dst.ip())
            } else {
                (ips.contains(&src.ip()) && dst.ip().is_loopback()).then_some(src.ip())
            };
            let Some(client) = client_ip.and_then(|ip| self.pods.get(ip)) else {
                continue;
            };
            tracing::info!(%src, %dst, pod = %client.pod, "spliced connection reset: its pod leaves the mesh");
            if let Err(error) = destroy::destroy(&client.sockets, src, dst, stats.cookie) {
                tracing::warn!(%src, %dst, %error, "cannot reset a spliced connection");
            }
        }
    }

    fn revoke_denied(&self) {
        for (tuple, stats) in self.maps.open_splices() {
            let (Some(src), Some(dst)) = (tuple.src(), tuple.dst()) else {
                continue;
            };
            let Some(authorization) = self.verdict(src, dst) else {
                continue;
            };
            if authorization.decision == Decision::Allow {
                continue;
            }
            tracing::warn!(%src, %dst, policy = %authorization.policy, reason = %authorization.reason, "open connection reset: the new policies deny it");
            self.authorizer
                .count_revocation(&authorization, &dst_namespace(&self.workloads, dst));
            lock(&self.revoked).insert(tuple, authorization);
            // The client's socket is aborted; the abort resets the server's.
            let Some(client) = self.pods.get(src.ip()) else {
                continue;
            };
            if let Err(error) = destroy::destroy(&client.sockets, src, dst, stats.cookie) {
                tracing::warn!(%src, %dst, %error, "cannot reset a spliced connection");
            }
        }
    }
}

/// The direct-connection entries for the local pods `local` under
/// `policies`: for each ordered pair of different pods of one family, the
/// ports the destination's policies name get entries of their own, and
/// port 0 stands for every other port.
#[must_use]
pub fn direct_entries(
    policies: &PolicySet,
    local: &[(IpAddr, Arc<Workload>)],
) -> HashMap<DirectKey, DirectVerdict> {
    let mut entries = HashMap::new();
    for (dst_ip, dst) in local {
        let workload = PolicyWorkload {
            namespace: &dst.key.namespace,
            labels: &dst.labels,
        };
        let named_ports = named_ports(policies, workload);
        // Rules only tell the ports they name apart; any other port stands
        // for all the rest.
        let other_port = (1..=u16::MAX)
            .find(|p| !named_ports.contains(p))
            .unwrap_or(1);
        for (src_ip, src) in local {
            if src.key == dst.key || src_ip.is_ipv4() != dst_ip.is_ipv4() {
                continue;
            }
            let allowed = |port| {
                let request = Request::new(Some(&src.identity), *src_ip, port);
                u32::from(policies.evaluate(workload, &request).decision == Decision::Allow)
            };
            let verdict = |allowed| DirectVerdict { allowed, pad: 0 };
            let others = allowed(other_port);
            entries.insert(DirectKey::new(*src_ip, *dst_ip, 0), verdict(others));
            for port in &named_ports {
                let this = allowed(*port);
                if this != others {
                    entries.insert(DirectKey::new(*src_ip, *dst_ip, *port), verdict(this));
                }
            }
        }
    }
    entries
}

/// Every port named (in `ports` or `notPorts`) by a policy that applies to
/// `workload`.
fn named_ports(policies: &PolicySet, workload: PolicyWorkload<'_>) -> BTreeSet<u16> {
    policies
        .applicable(workload)
        .flat_map(|policy| policy.rules.iter())
        .flat_map(|rule| rule.to.iter())
        .flat_map(|operation| operation.ports.iter().chain(&operation.not_ports))
        .copied()
        .collect()
}

fn dst_namespace(workloads: &SharedWorkloads, dst: SocketAddr) -> String {
    workloads
        .current()
        .by_ip(dst.ip())
        .map(|w| w.key.namespace.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mesh_core::{
        identity::SpiffeId,
        policy::{PolicySet, compile_all},
        workload::{MtlsMode, PodKey},
    };

    use super::*;

    fn pod(name: &str, ip: &str) -> (IpAddr, Arc<Workload>) {
        let workload = Workload {
            key: PodKey {
                namespace: "shop".to_owned(),
                name: name.to_owned(),
            },
            identity: SpiffeId::new("cluster.local", "shop", name).unwrap(),
            node: Some("n1".to_owned()),
            local: true,
            mtls: MtlsMode::Permissive,
            port_mtls: BTreeMap::new(),
            labels: Arc::new(BTreeMap::from([("app".to_owned(), name.to_owned())])),
            kernel_path: true,
            names: crate::workloads::names::WorkloadNames {
                workload: name.into(),
                namespace: "shop".into(),
                principal: format!("spiffe://cluster.local/ns/shop/sa/{name}").into(),
                service: crate::workloads::names::UNKNOWN.into(),
            },
        };
        (ip.parse().unwrap(), Arc::new(workload))
    }

    fn allowed(
        entries: &HashMap<DirectKey, DirectVerdict>,
        src: &str,
        dst: &str,
        port: u16,
    ) -> Option<u32> {
        entries
            .get(&DirectKey::new(
                src.parse().unwrap(),
                dst.parse().unwrap(),
                port,
            ))
            .map(|v| v.allowed)
    }

    #[test]
    fn only_pairs_and_ports_policy_allows_go_direct() {
        let values: Vec<serde_yaml::Value> = serde_yaml::from_str(
            "- metadata: {name: no-client-on-80, namespace: shop}
  spec:
    selector: {matchLabels: {app: server}}
    action: DENY
    rules: [{from: [{source: {principals: ['*/sa/client']}}], to: [{operation: {ports: ['80']}}]}]",
        )
        .unwrap();
        let policies = PolicySet::new(compile_all(&values), "ambit-system");
        let local = [
            pod("client", "10.0.0.1"),
            pod("server", "10.0.0.2"),
            pod("v6", "fd00::3"),
        ];
        let entries = direct_entries(&policies, &local);
        // Other ports: allowed; port 80 has an entry of its own that denies.
        assert_eq!(allowed(&entries, "10.0.0.1", "10.0.0.2", 0), Some(1));
        assert_eq!(allowed(&entries, "10.0.0.1", "10.0.0.2", 80), Some(0));
        // The policy selects the server only.
        assert_eq!(allowed(&entries, "10.0.0.2", "10.0.0.1", 0), Some(1));
        assert_eq!(allowed(&entries, "10.0.0.2", "10.0.0.1", 80), None);
        // No pair across families, none with itself.
        assert_eq!(allowed(&entries, "10.0.0.1", "fd00::3", 0), None);
        assert_eq!(allowed(&entries, "10.0.0.1", "10.0.0.1", 0), None);
        assert_eq!(entries.len(), 3);
    }
}
