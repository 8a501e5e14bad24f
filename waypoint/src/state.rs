//! What the waypoint knows: the services that use it, by cluster IP and
//! port; every meshed pod's identity; the endpoints behind each service
//! port; the authorization policies; the compiled routes. Built from the
//! local configuration file and replaced whole when the file changes.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use mesh_core::{
    identity::SpiffeId,
    local_config::LocalSnapshot,
    policy::{DEFAULT_ROOT_NAMESPACE, PolicySet},
    published::Published,
    route::{RouteError, RouteTable},
    service::{self, Service, ServiceKey, ServicePort},
    workload::Pod,
};

/// The current state, swapped whole on every configuration change.
pub type SharedState = Arc<Published<State>>;

/// A port of a service that uses this waypoint.
#[derive(Clone, Debug)]
pub struct ServedPort {
    /// The service.
    pub service: ServiceKey,
    /// The port clients dialled.
    pub port: ServicePort,
}

/// One version of the waypoint's configuration.
#[derive(Default)]
pub struct State {
    services: HashMap<ServiceKey, Arc<Service>>,
    served: HashMap<SocketAddr, ServedPort>,
    identities: HashMap<IpAddr, SpiffeId>,
    pods: Vec<Arc<Pod>>,
    /// The authorization policies.
    pub policies: PolicySet,
    /// The routes, with the last good version of any that became invalid.
    pub routes: RouteTable,
    /// Why routes were rejected in this version.
    pub route_errors: Vec<RouteError>,
    /// The waypoint's name, which policies attach to (`targetRefs` of kind
    /// `Gateway`).
    pub waypoint_name: String,
}

/// Who this waypoint is, as services name it.
#[derive(Clone, Debug)]
pub struct WaypointName {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The trust domain pods' identities are in.
    pub trust_domain: String,
}

impl State {
    /// Builds the state from `snapshot`; routes that fail to compile keep
    /// their version from `previous`.
    #[must_use]
    pub fn build(snapshot: LocalSnapshot, me: &WaypointName, previous: &RouteTable) -> Self {
        for rejected in &snapshot.rejected_services {
            tracing::warn!(service = %rejected.service, reason = %rejected.reason, "service rejected");
        }
        for policy in snapshot.policies.iter().filter(|p| p.rejected.is_some()) {
            tracing::warn!(policy = %policy.key, status = %policy.status(), "policy rejected; it fails closed");
        }
        let services: HashMap<ServiceKey, Arc<Service>> = snapshot
            .services
            .iter()
            .map(|svc| (svc.key(), svc.clone()))
            .collect();
        let mut served = HashMap::new();
        for svc in snapshot.services.iter().filter(|svc| {
            svc.namespace == me.namespace && svc.waypoint.as_deref() == Some(me.name.as_str())
        }) {
            for ip in &svc.cluster_ips {
                for port in &svc.ports {
                    served.insert(
                        SocketAddr::new(ip.to_canonical(), port.port),
                        ServedPort {
                            service: svc.key(),
                            port: port.clone(),
                        },
                    );
                }
            }
        }
        let mut identities = HashMap::new();
        for pod in &snapshot.pods {
            match SpiffeId::new(&me.trust_domain, &pod.namespace, &pod.service_account) {
                Ok(id) => {
                    for ip in &pod.ips {
                        identities.insert(ip.to_canonical(), id.clone());
                    }
                }
                Err(error) => {
                    tracing::warn!(pod = %pod.key(), %error, "pod has no valid identity; it is not reached over HBONE");
                }
            }
        }
        let mut routes = previous.clone();
        let exists = |namespace: &str, name: &str| {
            services.contains_key(&ServiceKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
        };
        let route_errors = routes.apply(&snapshot.routes, &exists);
        for error in &route_errors {
            tracing::warn!(route = %error.route, %error, "route rejected; its previous version, if any, stays");
        }
        Self {
            policies: PolicySet::new(snapshot.policies, DEFAULT_ROOT_NAMESPACE),
            services,
            served,
            identities,
            pods: snapshot.pods,
            routes,
            route_errors,
            waypoint_name: me.name.clone(),
        }
    }

    /// The service port behind a cluster IP and port, if it uses this
    /// waypoint.
    #[must_use]
    pub fn served(&self, addr: SocketAddr) -> Option<&ServedPort> {
        self.served
            .get(&SocketAddr::new(addr.ip().to_canonical(), addr.port()))
    }

    /// Every cluster IP and port this waypoint serves.
    pub fn served_ports(&self) -> impl Iterator<Item = (&SocketAddr, &ServedPort)> {
        self.served.iter()
    }

    /// The identity of the meshed pod with this address.
    #[must_use]
    pub fn identity_of(&self, ip: IpAddr) -> Option<SpiffeId> {
        self.identities.get(&ip.to_canonical()).cloned()
    }

    /// A service by key.
    #[must_use]
    pub fn service(&self, key: &ServiceKey) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    /// The ready endpoints of `service` at its port `port`, in the family
    /// `ipv4` says; `None` if the service or port does not exist.
    #[must_use]
    pub fn endpoints(
        &self,
        service: &ServiceKey,
        port: u16,
        ipv4: bool,
    ) -> Option<Vec<SocketAddr>> {
        let svc = self.services.get(service)?;
        let port = svc.ports.iter().find(|p| p.port == port)?;
        Some(service::backends(svc, port, ipv4, &self.pods))
    }
}

/// Builds a new state from each snapshot `snapshots` receives (the node
/// agents' configuration source: the file's poller or the watch of the API
/// server), publishing it; returns when the sender is gone or `cancel`
/// fires.
pub async fn follow(
    mut snapshots: tokio::sync::watch::Receiver<Arc<LocalSnapshot>>,
    me: WaypointName,
    state: SharedState,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
        }
        let snapshot = snapshots.borrow_and_update().as_ref().clone();
        let previous = state.current();
        let next = State::build(snapshot, &me, &previous.routes);
        tracing::info!(
            services = next.served.len(),
            routes = next.routes.routes().count(),
            rejected_routes = next.route_errors.len(),
            "cluster state changed"
        );
        state.publish(next);
    }
}
