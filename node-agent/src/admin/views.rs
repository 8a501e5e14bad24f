//! The shapes the admin API lists: workloads, connections with both ends
//! resolved to workloads, and the eBPF state. Field names are `snake_case`
//! and stable; docs/operations.md documents them.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
};

use mesh_core::{peer_authn::PeerAuthentication, service::ServiceKey};
use mesh_ebpf_common::{map_names, program_names};
use serde::Serialize;

use super::AdminState;
use crate::{
    connections::{ConnectionRecord, ConnectionState, ConnectionView, Ends},
    workloads::WorkloadIndex,
};

/// A meshed pod as `/workloads` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadView {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The node it runs on, when the configuration says.
    pub node: Option<String>,
    /// Whether it runs on this agent's node.
    pub local: bool,
    /// Its SPIFFE id.
    pub identity: String,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// `strict` or `permissive`: its effective mode.
    pub mtls: String,
    /// The ports whose mode differs from `mtls`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub port_mtls: BTreeMap<u16, mesh_core::workload::MtlsMode>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// A service as `/services` lists it, with the pods behind it.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `<name>.<namespace>.svc.<cluster domain>`, the `destination_service` label.
    pub hostname: String,
    /// The labels its pods carry.
    pub selector: BTreeMap<String, String>,
    /// Its ports: `port` and `target_port` (and `name`).
    pub ports: Vec<mesh_core::service::ServicePort>,
    /// The meshed pods it selects (namespace/name), sorted.
    pub endpoints: Vec<String>,
    /// Its cluster IPs; empty for a headless service.
    pub cluster_ips: Vec<std::net::IpAddr>,
    /// Each cluster IP and port with the ready endpoints a connection to
    /// it is balanced over, sorted by address.
    pub virtual_addresses: Vec<VirtualAddressView>,
}

/// A cluster IP and port, and where connections to it go.
#[derive(Clone, Debug, Serialize)]
pub struct VirtualAddressView {
    /// The cluster IP and port.
    pub address: std::net::SocketAddr,
    /// The ready endpoints behind it (address and target port).
    pub endpoints: Vec<std::net::SocketAddr>,
}

/// A connection as `/connections` lists it: the record, this agent's node,
/// and each end resolved to a meshed workload where it is one.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionEntry {
    /// The connection.
    #[serde(flatten)]
    pub view: ConnectionView,
    /// The node of the agent that carried it.
    pub node: String,
    /// Both ends as workloads and nodes.
    #[serde(flatten)]
    pub ends: Ends,
}

/// What the agent has loaded and attached, as `/ebpf` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct EbpfView {
    /// Where maps and links are pinned.
    pub pin_dir: PathBuf,
    /// The cgroup the cgroup programs are attached to.
    pub cgroup_root: PathBuf,
    /// `on`, or why the kernel splice is off.
    pub kernel_splice: String,
    /// Each program and where it is attached.
    pub programs: Vec<ProgramView>,
    /// Each map and its pin.
    pub maps: Vec<MapView>,
    /// The enrolled pod network namespaces.
    pub enrolled_netns: Vec<EnrolledNetns>,
    /// The programs' counters, summed over CPUs.
    pub counters: BTreeMap<String, u64>,
}

/// One program of [`EbpfView`].
#[derive(Clone, Debug, Serialize)]
pub struct ProgramView {
    /// The program's name.
    pub name: &'static str,
    /// Where it is attached.
    pub attached_to: String,
}

/// One map of [`EbpfView`].
#[derive(Clone, Debug, Serialize)]
pub struct MapView {
    /// The map's name.
    pub name: &'static str,
    /// Its pin.
    pub pin: PathBuf,
}

/// One enrolled network namespace of [`EbpfView`].
#[derive(Clone, Debug, Serialize)]
pub struct EnrolledNetns {
    /// The pod (namespace/name).
    pub pod: String,
    /// The namespace's cookie, the key of `AMBIT_ENROLLED`.
    pub netns_cookie: u64,
    /// Its `sk_lookup` link's pin.
    pub sk_lookup_link: PathBuf,
}

/// A peer authentication as `/peer-authentications` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerAuthnView {
    /// The policy, as compiled.
    #[serde(flatten)]
    pub policy: PeerAuthentication,
    /// `accepted`, or why it is rejected and what it does instead.
    pub status: String,
    /// `accepted` or `rejected`.
    pub state: &'static str,
}

/// Every peer authentication of `index` with its status; those without a
/// selector in `root_namespace` apply mesh-wide.
#[must_use]
pub fn peer_authentications(index: &WorkloadIndex, root_namespace: &str) -> Vec<PeerAuthnView> {
    index
        .peer_authentications()
        .iter()
        .map(|policy| PeerAuthnView {
            status: policy.status(root_namespace),
            state: if policy.rejected.is_some() {
                "rejected"
            } else {
                "accepted"
            },
            policy: policy.clone(),
        })
        .collect()
}

/// Every meshed pod of `index`, sorted by namespace and name.
#[must_use]
pub fn workloads(index: &WorkloadIndex) -> Vec<WorkloadView> {
    let mut by_key: BTreeMap<String, WorkloadView> = BTreeMap::new();
    for (ip, workload) in index.entries() {
        let view = by_key
            .entry(workload.key.to_string())
            .or_insert_with(|| WorkloadView {
                namespace: workload.key.namespace.clone(),
                name: workload.key.name.clone(),
                node: workload.node.clone(),
                local: workload.local,
                identity: workload.identity.to_string(),
                ips: Vec::new(),
                mtls: workload.mtls.to_string(),
                port_mtls: workload.port_mtls.clone(),
                labels: (*workload.labels).clone(),
            });
        view.ips.push(ip);
    }
    by_key
        .into_values()
        .map(|mut view| {
            view.ips.sort_unstable();
            view
        })
        .collect()
}

/// Every configured service with the meshed pods it selects.
#[must_use]
pub fn services(index: &WorkloadIndex, cluster_domain: &str) -> Vec<ServiceView> {
    // Each service's cluster IPs and ports, gathered in one pass.
    let mut virtual_addresses_of: HashMap<&ServiceKey, Vec<VirtualAddressView>> = HashMap::new();
    for (address, vip) in index.virtual_addresses() {
        virtual_addresses_of
            .entry(&vip.service)
            .or_default()
            .push(VirtualAddressView {
                address,
                endpoints: vip.endpoints.clone(),
            });
    }
    index
        .services()
        .iter()
        .map(|service| {
            let mut endpoints: Vec<String> = index
                .entries()
                .filter(|(_, w)| service.selects(&w.key.namespace, &w.labels))
                .map(|(_, w)| w.key.to_string())
                .collect();
            endpoints.sort_unstable();
            endpoints.dedup();
            let mut virtual_addresses = virtual_addresses_of
                .remove(&service.key())
                .unwrap_or_default();
            virtual_addresses.sort_unstable_by_key(|view| view.address);
            ServiceView {
                namespace: service.namespace.clone(),
                name: service.name.clone(),
                hostname: service.hostname(cluster_domain),
                selector: (*service.selector).clone(),
                ports: service.ports.clone(),
                endpoints,
                cluster_ips: service.cluster_ips.clone(),
                virtual_addresses,
            }
        })
        .collect()
}

/// Open connections (proxied and spliced) then the recently closed ones.
#[must_use]
pub fn connections(state: &AdminState) -> Vec<ConnectionEntry> {
    let index = state.workloads.current();
    let node = &state.config.node_name;
    let mut views = state.connections.open_connections();
    views.extend(state.splicer.open_connections());
    views.extend(state.connections.recent().into_iter().map(closed_view));
    views
        .into_iter()
        .map(|view| entry(view, &index, node))
        .collect()
}

/// A connection that just closed, as the follow stream sends it.
#[must_use]
pub fn closed_entry(
    record: ConnectionRecord,
    index: &WorkloadIndex,
    node: &str,
) -> ConnectionEntry {
    entry(closed_view(record), index, node)
}

/// The eBPF state.
#[must_use]
pub fn ebpf(state: &AdminState) -> EbpfView {
    let pin_dir = state.config.bpffs_dir.clone();
    let root = state.config.cgroup_root.display().to_string();
    let cgroup = |attach: &str| format!("cgroup {root} ({attach})");
    let mut programs = vec![
        (program_names::CONNECT4, cgroup("connect4")),
        (program_names::CONNECT6, cgroup("connect6")),
        (program_names::SOCK_OPS, cgroup("sock_ops")),
        (program_names::GETPEERNAME4, cgroup("getpeername4")),
        (program_names::GETPEERNAME6, cgroup("getpeername6")),
        (program_names::BIND4, cgroup("bind4")),
        (program_names::BIND6, cgroup("bind6")),
        (program_names::GETSOCKOPT, cgroup("getsockopt")),
        (
            program_names::SK_LOOKUP,
            "each enrolled pod network namespace".to_owned(),
        ),
    ];
    if state.kernel_splice == "on" {
        programs.push((
            program_names::SK_MSG,
            format!("sock hash {}", map_names::SPLICE_SOCKETS),
        ));
    }
    let enrolled_netns = state
        .board
        .pods()
        .into_iter()
        .filter_map(|pod| {
            let cookie = pod.netns_cookie?;
            Some(EnrolledNetns {
                pod: format!("{}/{}", pod.namespace, pod.name),
                netns_cookie: cookie,
                sk_lookup_link: pin_dir.join("links").join(format!("sk_lookup_{cookie}")),
            })
        })
        .collect();
    EbpfView {
        cgroup_root: state.config.cgroup_root.clone(),
        kernel_splice: state.kernel_splice.clone(),
        programs: programs
            .into_iter()
            .map(|(name, attached_to)| ProgramView { name, attached_to })
            .collect(),
        maps: map_names::ALL
            .iter()
            .map(|name| MapView {
                name,
                pin: pin_dir.join("maps").join(name),
            })
            .collect(),
        enrolled_netns,
        counters: state
            .maps
            .counters()
            .map(|counters| {
                counters
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value))
                    .collect()
            })
            .unwrap_or_default(),
        pin_dir,
    }
}

fn closed_view(record: ConnectionRecord) -> ConnectionView {
    ConnectionView {
        state: ConnectionState::Closed,
        record,
        opened_at: None,
        age_secs: None,
    }
}

fn entry(view: ConnectionView, index: &WorkloadIndex, node: &str) -> ConnectionEntry {
    ConnectionEntry {
        ends: Ends::resolve(index, &view.record.flow),
        view,
        node: node.to_owned(),
    }
}
