//! What the agent knows about every meshed pod in the cluster, indexed by
//! address: its identity, its node, its mTLS modes, its names in metrics;
//! the services of the configuration, and what stands behind each of their
//! cluster IP and port pairs. The control side builds a new
//! index from each configuration snapshot; the proxies read the current one
//! to decide how to reach a destination.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use mesh_core::{
    identity::SpiffeId,
    local_config::LocalSnapshot,
    peer_authn::PeerAuthentication,
    service::{self, Service, ServiceKey},
    workload::{KernelPath, MtlsMode, PodKey},
};

use intern::Interner;
use names::WorkloadNames;

pub mod intern;
pub mod names;

/// A meshed pod, as the data path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// namespace/name.
    pub key: PodKey,
    /// Its SPIFFE id.
    pub identity: SpiffeId,
    /// The node it runs on, when the configuration says.
    pub node: Option<String>,
    /// Whether it runs on this agent's node.
    pub local: bool,
    /// Its effective mTLS mode.
    pub mtls: MtlsMode,
    /// The ports whose mode differs from `mtls`.
    pub port_mtls: BTreeMap<u16, MtlsMode>,
    /// Its labels, which policies select it by.
    pub labels: Arc<BTreeMap<String, String>>,
    /// Whether it asked for the kernel path (`ambit.dev/kernel-path`).
    pub kernel_path: bool,
    /// How its traffic is labelled in metrics.
    pub names: WorkloadNames,
}

/// A cluster IP and port of a service, and the endpoints behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualAddress {
    /// The service.
    pub service: ServiceKey,
    /// Its ready endpoints at the port behind this one, sorted; meshed or
    /// not.
    pub endpoints: Vec<SocketAddr>,
    /// The waypoint the service's traffic must pass through, when it names
    /// one: connections go there instead of to `endpoints`.
    pub waypoint: Option<Arc<WaypointTarget>>,
}

/// A waypoint that a service's traffic goes through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaypointTarget {
    /// The waypoint's Service (namespace/name).
    pub service: ServiceKey,
    /// The identity its certificate must carry: the service account named
    /// after the waypoint, in its namespace (as `ambit waypoint apply`
    /// creates it).
    pub identity: SpiffeId,
    /// The HBONE addresses of its ready pods; empty when it has none (or
    /// no such Service exists), and then the traffic is refused.
    pub endpoints: Vec<SocketAddr>,
}

/// Meshed pods by address, and services by cluster IP and port; the peer
/// authentications the pods' modes were resolved from.
#[derive(Debug, Default)]
pub struct WorkloadIndex {
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    services: Vec<Arc<Service>>,
    virtual_addresses: HashMap<SocketAddr, Arc<VirtualAddress>>,
    peer_authentications: Vec<PeerAuthentication>,
}

/// A SPIFFE id and its URI, as a service account's pods share them.
type Identity = (SpiffeId, Arc<str>);

/// The current index, swapped whole on every configuration change.
pub type SharedWorkloads = crate::published::Published<WorkloadIndex>;

// === impl WorkloadIndex ===

impl WorkloadIndex {
    /// Indexes the pods of `snapshot` as seen from `node`, with services
    /// named in `cluster_domain`. Pods whose identity cannot be formed are
    /// left out (and logged).
    ///
    /// Every pod and cluster IP whose entry comes out as it is in
    /// `previous` keeps `previous`'s entry: an index rebuilt after one
    /// change shares all the others with the one it replaces, and holds
    /// only the changed entries anew.
    #[must_use]
    pub fn build(
        snapshot: &LocalSnapshot,
        previous: &WorkloadIndex,
        node: &str,
        trust_domain: &str,
        cluster_domain: &str,
    ) -> Self {
        let mut by_ip = HashMap::with_capacity(snapshot.pods.len());
        // Services by namespace: a pod is only named after one of its own
        // namespace's, and scanning them all for every pod is quadratic.
        let mut services_in: HashMap<&str, Vec<&Service>> = HashMap::new();
        for service in &snapshot.services {
            services_in
                .entry(service.namespace.as_str())
                .or_default()
                .push(service);
        }
        // One identity per service account, one copy of each name.
        let mut identities: HashMap<(&str, &str), Result<Identity, String>> = HashMap::new();
        let mut strings = Interner::default();
        for pod in &snapshot.pods {
            let identity = identities
                .entry((pod.namespace.as_str(), pod.service_account.as_str()))
                .or_insert_with(|| {
                    SpiffeId::new(trust_domain, &pod.namespace, &pod.service_account)
                        .map(|id| {
                            let principal = strings.get(&id.to_string());
                            (id, principal)
                        })
                        .map_err(|error| error.to_string())
                });
            let (identity, principal) = match identity {
                Ok((identity, principal)) => (identity.clone(), principal.clone()),
                Err(error) => {
                    tracing::warn!(pod = %pod.key(), %error, "pod has no valid identity; it is not a mesh destination");
                    continue;
                }
            };
            let workload = Workload {
                key: pod.key(),
                node: pod.node.clone(),
                local: pod.is_on_node(node),
                mtls: pod.mtls,
                port_mtls: pod.port_mtls.clone(),
                labels: pod.labels.clone(),
                kernel_path: pod.kernel_path == KernelPath::Requested,
                names: WorkloadNames::new(
                    pod,
                    principal,
                    services_in
                        .get(pod.namespace.as_str())
                        .into_iter()
                        .flatten()
                        .copied(),
                    cluster_domain,
                    &mut strings,
                ),
                identity,
            };
            let workload = match pod.ips.first().and_then(|ip| previous.by_ip(*ip)) {
                Some(same) if **same == workload => same.clone(),
                _ => Arc::new(workload),
            };
            for ip in &pod.ips {
                by_ip.insert(ip.to_canonical(), workload.clone());
            }
        }
        Self {
            by_ip,
            services: snapshot.services.clone(),
            virtual_addresses: virtual_addresses(snapshot, previous, trust_domain),
            peer_authentications: snapshot.peer_authentications.clone(),
        }
    }

    /// The peer authentications of the configuration, in its order,
    /// rejected ones included.
    #[must_use]
    pub fn peer_authentications(&self) -> &[PeerAuthentication] {
        &self.peer_authentications
    }

    /// Every cluster IP and port with what stands behind it.
    pub fn virtual_addresses(&self) -> impl Iterator<Item = (SocketAddr, &Arc<VirtualAddress>)> {
        self.virtual_addresses
            .iter()
            .map(|(addr, vip)| (*addr, vip))
    }

    /// The service behind a cluster IP and port, if `addr` is one.
    #[must_use]
    pub fn virtual_address(&self, addr: SocketAddr) -> Option<&Arc<VirtualAddress>> {
        if self.virtual_addresses.is_empty() {
            return None;
        }
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        self.virtual_addresses.get(&addr)
    }

    /// The services of the configuration, in file order.
    #[must_use]
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// Every address with its pod.
    pub fn entries(&self) -> impl Iterator<Item = (IpAddr, &Arc<Workload>)> {
        self.by_ip.iter().map(|(ip, w)| (*ip, w))
    }

    /// The meshed pod with this address.
    #[must_use]
    pub fn by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip.to_canonical())
    }
}

/// Every cluster IP and port of the snapshot's services with their
/// endpoints and waypoint; those that come out as in `previous` keep its
/// entry.
fn virtual_addresses(
    snapshot: &LocalSnapshot,
    previous: &WorkloadIndex,
    trust_domain: &str,
) -> HashMap<SocketAddr, Arc<VirtualAddress>> {
    let mut table = HashMap::new();
    for svc in &snapshot.services {
        let waypoint = svc
            .waypoint
            .as_deref()
            .and_then(|name| waypoint_target(snapshot, &svc.namespace, name, trust_domain));
        for ip in &svc.cluster_ips {
            for port in &svc.ports {
                let endpoints = service::backends(svc, port, ip.is_ipv4(), &snapshot.pods);
                let addr = SocketAddr::new(ip.to_canonical(), port.port);
                let entry = VirtualAddress {
                    service: svc.key(),
                    endpoints,
                    waypoint: waypoint.clone(),
                };
                let entry = match previous.virtual_addresses.get(&addr) {
                    Some(same) if **same == entry => same.clone(),
                    _ => Arc::new(entry),
                };
                table.insert(addr, entry);
            }
        }
    }
    table
}

/// The waypoint `name` of `namespace`: its Service's ready pods at the HBONE
/// port (the port named `hbone`, or 15008). `None` only when its identity
/// cannot be formed; a missing Service gives a target without endpoints,
/// so that traffic fails closed rather than bypassing the waypoint.
fn waypoint_target(
    snapshot: &LocalSnapshot,
    namespace: &str,
    name: &str,
    trust_domain: &str,
) -> Option<Arc<WaypointTarget>> {
    let identity = match SpiffeId::new(trust_domain, namespace, name) {
        Ok(identity) => identity,
        Err(error) => {
            tracing::warn!(waypoint = name, namespace, %error, "waypoint has no valid identity; its services' traffic is refused");
            return None;
        }
    };
    let service = snapshot
        .services
        .iter()
        .find(|s| s.namespace == namespace && s.name == name);
    let endpoints = service
        .and_then(|svc| {
            let port = svc.ports.iter().find(|p| {
                p.name.as_deref() == Some("hbone") || p.port == mesh_proxy::hbone::PORT
            })?;
            let mut addrs = service::backends(svc, port, true, &snapshot.pods);
            addrs.extend(service::backends(svc, port, false, &snapshot.pods));
            Some(addrs)
        })
        .unwrap_or_default();
    Some(Arc::new(WaypointTarget {
        service: ServiceKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
        identity,
        endpoints,
    }))
}

#[cfg(test)]
mod tests;
