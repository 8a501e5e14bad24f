//! The service model: a stable name and virtual address in front of a set
//! of pods, as a Kubernetes Service is. It names traffic (the
//! `destination_service` metric label), and a meshed client's connection to
//! one of its cluster IPs goes to one of its endpoints, picked by the agent.
//!
//! ```yaml
//! services:
//!   - name: server
//!     namespace: shop            # optional; default `default`
//!     selector: {app: server}    # the pods behind it: every label must match
//!     clusterIPs: [10.96.0.10]   # optional: the virtual addresses clients dial
//!     ports:                     # optional
//!       - {name: http, port: 80, targetPort: 8080}
//!       - {name: db, port: 3306, appProtocol: tcp}  # declared: not HTTP
//!     waypoint: shop-waypoint    # optional: L7 traffic goes through it
//! ```
//!
//! A port's `appProtocol` (as in Kubernetes) tells a waypoint what the port
//! carries instead of letting it guess from the first bytes; see
//! [`ServicePort::declared_protocol`].
//!
//! A service selects the pods of its own namespace whose labels include all
//! of its selector. A pod behind several services is named after the first
//! of them by name. In Kubernetes mode the endpoints come from the
//! Service's `EndpointSlices` instead ([`Service::endpoints`]): only the ready
//! ones, with the target port numbers the slices name.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::workload::Pod;

#[cfg(test)]
mod tests;

/// The cluster's DNS domain when none is configured: services are named
/// `<name>.<namespace>.svc.cluster.local`.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Why a service entry cannot be used. Each message names the service.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The name or namespace is not a DNS label, so it cannot be part of
    /// the service's host name.
    #[error(
        "service {service} has {part} {value:?}, which is not a DNS label (lowercase letters, digits and '-', at most 63 characters; a name starts with a letter)"
    )]
    NotDnsLabel {
        /// The service (namespace/name).
        service: ServiceKey,
        /// `name` or `namespace`.
        part: &'static str,
        /// The value as given.
        value: String,
    },
    /// The selector is empty and no endpoints are given: the service would
    /// have no pods.
    #[error("service {0} has no selector; it needs labels to select its pods")]
    NoSelector(ServiceKey),
    /// A cluster IP that cannot be a virtual address.
    #[error(
        "service {service} has cluster IP {ip}, which cannot be a service address (loopback, unspecified or multicast)"
    )]
    BadClusterIp {
        /// The service (namespace/name).
        service: ServiceKey,
        /// The address as given.
        ip: IpAddr,
    },
    /// A port or target port is 0.
    #[error("service {service} has port 0 in ports entry {entry}")]
    PortZero {
        /// The service (namespace/name).
        service: ServiceKey,
        /// Position of the port in `ports`, from 1.
        entry: usize,
    },
    /// Two ports entries share a port number or a name.
    #[error("service {service} lists {what} twice in its ports")]
    DuplicatePort {
        /// The service (namespace/name).
        service: ServiceKey,
        /// `port 80` or `port name "http"`.
        what: String,
    },
}

/// A service's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
}

/// A service, as the local configuration file lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Service name, a DNS label.
    pub name: String,
    /// Kubernetes namespace, a DNS label.
    #[serde(default = "crate::workload::default_namespace")]
    pub namespace: String,
    /// The labels a pod of the namespace must all carry to be behind the
    /// service.
    #[serde(default)]
    pub selector: Arc<BTreeMap<String, String>>,
    /// The ports the service exposes.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// The virtual addresses clients connect to (at most one per family);
    /// none for a headless service, whose clients dial pods directly.
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<IpAddr>,
    /// The ready endpoints, when something other than the selector names
    /// them (Kubernetes' `EndpointSlices`). `None`: every pod the selector
    /// picks, at each port's target port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Arc<[Endpoint]>>,
    /// The waypoint of the service's namespace that its traffic must pass
    /// through (Kubernetes: the label `ambit.dev/use-waypoint` on the
    /// Service or, failing that, its namespace; `none` opts out). Meshed
    /// clients' connections to its cluster IPs go to that waypoint, never
    /// straight to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<String>,
}

/// One ready endpoint of a service, as an `EndpointSlice` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// The endpoint's address (a pod's address).
    pub ip: IpAddr,
    /// Service port name → the port number on this endpoint; the unnamed
    /// port of a single-port service is `""`. Shared by the endpoints of one
    /// `EndpointSlice`, whose ports they all have.
    #[serde(default)]
    pub ports: Arc<BTreeMap<String, u16>>,
    /// The node the endpoint runs on, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One port of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Optional name, unique within the service.
    #[serde(default)]
    pub name: Option<String>,
    /// The port clients connect to.
    pub port: u16,
    /// The port on the pods; the same as `port` when not given.
    #[serde(default)]
    pub target_port: Option<u16>,
    /// The application protocol, as Kubernetes' `appProtocol` names it
    /// (`http`, `tcp`, `kubernetes.io/h2c`, ...); see
    /// [`ServicePort::declared_protocol`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

/// What a service port says it carries, from its `appProtocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclaredProtocol {
    /// HTTP/1.1 or HTTP/2 (`http`, `http2`, `grpc`, `grpc-web`, `h2c`,
    /// `kubernetes.io/h2c`): a waypoint serves it as HTTP without waiting
    /// for the client's first bytes to tell, and answers bytes that are not
    /// HTTP with 400.
    Http,
    /// Not HTTP (`tcp`, `tls`, `https`, `mysql`, `mongo`, `redis`): a
    /// waypoint passes it through at once under L4 policy. Server-first
    /// protocols need this: they send nothing for the waypoint to detect.
    Tcp,
}

// === impl ServiceKey ===

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl Service ===

impl Service {
    /// The service's namespace/name key.
    #[must_use]
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// The service's host name in the cluster domain `domain`, as Istio
    /// labels traffic with it: `<name>.<namespace>.svc.<domain>`.
    #[must_use]
    pub fn hostname(&self, domain: &str) -> String {
        format!("{}.{}.svc.{domain}", self.name, self.namespace)
    }

    /// Whether the pod of `namespace` with `labels` is behind this service.
    #[must_use]
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        namespace == self.namespace
            && !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
    }

    /// Checks the entry on its own: names that fit in a host name, a
    /// selector, valid and distinct ports.
    pub fn validate(&self) -> Result<(), ServiceError> {
        // Kubernetes: service names are RFC 1035 labels, namespaces RFC 1123.
        for (part, value, letter_first) in [
            ("name", &self.name, true),
            ("namespace", &self.namespace, false),
        ] {
            if !is_dns_label(value, letter_first) {
                return Err(ServiceError::NotDnsLabel {
                    service: self.key(),
                    part,
                    value: value.clone(),
                });
            }
        }
        if let Some(waypoint) = &self.waypoint
            && !is_dns_label(waypoint, true)
        {
            return Err(ServiceError::NotDnsLabel {
                service: self.key(),
                part: "waypoint",
                value: waypoint.clone(),
            });
        }
        if self.selector.is_empty() && self.endpoints.is_none() {
            return Err(ServiceError::NoSelector(self.key()));
        }
        if let Some(&ip) = self
            .cluster_ips
            .iter()
            .find(|ip| ip.is_loopback() || ip.is_unspecified() || ip.is_multicast())
        {
            return Err(ServiceError::BadClusterIp {
                service: self.key(),
                ip,
            });
        }
        let mut ports = std::collections::BTreeSet::new();
        let mut names = std::collections::BTreeSet::new();
        for (index, port) in self.ports.iter().enumerate() {
            if port.port == 0 || port.target_port == Some(0) {
                return Err(ServiceError::PortZero {
                    service: self.key(),
                    entry: index + 1,
                });
            }
            let duplicate = if ports.insert(port.port) {
                port.name
                    .as_ref()
                    .filter(|name| !names.insert(name.as_str()))
                    .map(|name| format!("port name {name:?}"))
            } else {
                Some(format!("port {}", port.port))
            };
            if let Some(what) = duplicate {
                return Err(ServiceError::DuplicatePort {
                    service: self.key(),
                    what,
                });
            }
        }
        Ok(())
    }
}

// === impl ServicePort ===

impl ServicePort {
    /// The port on the pods.
    #[must_use]
    pub fn target(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }

    /// What the port's `appProtocol` declares (case-insensitive); `None`
    /// when it has none or one the mesh does not know, and a waypoint then
    /// detects the protocol from the first bytes.
    #[must_use]
    pub fn declared_protocol(&self) -> Option<DeclaredProtocol> {
        let protocol = self.app_protocol.as_deref()?.to_ascii_lowercase();
        match protocol.as_str() {
            "http" | "http2" | "grpc" | "grpc-web" | "h2c" | "kubernetes.io/h2c" => {
                Some(DeclaredProtocol::Http)
            }
            "tcp" | "tls" | "https" | "mysql" | "mongo" | "redis" => Some(DeclaredProtocol::Tcp),
            _ => None,
        }
    }

    /// The name `EndpointSlices` list this port under: its name, or `""`.
    #[must_use]
    pub fn slice_name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

/// The addresses behind `port` of `service` for clients that dialled a
/// cluster IP of the family `ipv4` says: its endpoints' (at the port they
/// list under the port's name), or else the addresses of the `pods` its
/// selector picks, at the target port. Sorted, without duplicates.
#[must_use]
pub fn backends<'a, P: std::borrow::Borrow<Pod> + 'a>(
    service: &Service,
    port: &ServicePort,
    ipv4: bool,
    pods: impl IntoIterator<Item = &'a P>,
) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = match &service.endpoints {
        Some(endpoints) => endpoints
            .iter()
            .filter(|endpoint| endpoint.ip.is_ipv4() == ipv4)
            .filter_map(|endpoint| {
                let target = endpoint.ports.get(port.slice_name())?;
                Some(SocketAddr::new(endpoint.ip, *target))
            })
            .collect(),
        None => pods
            .into_iter()
            .map(std::borrow::Borrow::borrow)
            .filter(|pod: &&Pod| service.selects(&pod.namespace, &pod.labels))
            .flat_map(|pod| pod.ips.iter().copied())
            .filter(|ip| ip.is_ipv4() == ipv4)
            .map(|ip| SocketAddr::new(ip, port.target()))
            .collect(),
    };
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

/// The ports `pod` has, as the Services of `services` that select it say
/// (by selector, or by listing one of its addresses among their
/// endpoints): each port's target port. A Service with endpoints gives
/// the number they list for the port (for the pod's own address, else for
/// any endpoint: how Kubernetes resolves a named target port); one whose
/// port cannot be resolved that way gives its numeric target port. `None`
/// when no Service selects the pod: its ports cannot be known.
#[must_use]
pub fn target_ports<'a>(
    pod: &Pod,
    services: impl IntoIterator<Item = &'a Service>,
) -> Option<BTreeSet<u16>> {
    let mut ports: Option<BTreeSet<u16>> = None;
    for service in services {
        let listed = service.endpoints.as_ref().map(|endpoints| {
            let own: Vec<&Endpoint> = endpoints
                .iter()
                .filter(|e| {
                    pod.ips
                        .iter()
                        .any(|ip| ip.to_canonical() == e.ip.to_canonical())
                })
                .collect();
            (own, endpoints)
        });
        let selected = service.selects(&pod.namespace, &pod.labels)
            || listed.as_ref().is_some_and(|(own, _)| !own.is_empty());
        if !selected {
            continue;
        }
        let found = ports.get_or_insert_default();
        for port in &service.ports {
            let number = match &listed {
                None => Some(port.target()),
                Some((own, all)) => own
                    .iter()
                    .copied()
                    .chain(all.iter())
                    .find_map(|e| e.ports.get(port.slice_name()).copied())
                    .or(port.target_port),
            };
            found.extend(number);
        }
    }
    ports
}

/// The first service by name (then namespace) in `services` that selects
/// the pod of `namespace` with `labels`.
#[must_use]
pub fn first_selecting<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<&'a Service> {
    services
        .into_iter()
        .filter(|service| service.selects(namespace, labels))
        .min_by(|a, b| (&a.name, &a.namespace).cmp(&(&b.name, &b.namespace)))
}

/// A DNS label: lowercase letters, digits and '-', neither first nor last,
/// and with `letter_first` a letter first (RFC 1035, else RFC 1123).
fn is_dns_label(value: &str, letter_first: bool) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || (!letter_first && bytes[0].is_ascii_digit()))
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}
