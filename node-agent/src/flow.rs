//! The agent's flow vocabulary, the bottom of its proxy: what a proxied
//! connection is ([`Flow`]: its ends, [`Direction`], [`Security`], its
//! [`Authorization`]), what it carried ([`ByteCounts`]), how its relay ended
//! ([`RelayEnd`]) and why it failed ([`ProxyError`]). The proxies, the
//! connection log, the statistics, the metrics and authorization all speak
//! it; it imports none of them.

use std::{net::SocketAddr, sync::atomic::AtomicU64};

use mesh_core::{policy::Decision, workload::PodKey};
use mesh_proxy::HboneError;
use serde::Serialize;

use crate::netns::NetnsError;

/// Which way a proxy carries traffic, for logs and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the pod to a destination.
    Outbound,
    /// From a client to the pod.
    Inbound,
}

/// How a connection was secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// HBONE: mutual TLS between the two agents.
    MutualTls,
    /// HBONE, and this pod's leg between its application and the agent
    /// took the kernel path: `sk_msg` handed its bytes socket to socket.
    MutualTlsKernelPath,
    /// Both ends are pods of this node that opted in to the kernel path,
    /// and policy allows the pair: the connection went straight to the
    /// destination, spliced socket to socket by `sk_msg`, past both
    /// proxies.
    SameNodeKernel,
    /// Both ends are pods of this node; the agent knows both identities and
    /// the bytes never leave the node, so TLS is skipped (a setting).
    SameNode,
    /// No TLS: one end is outside the mesh.
    Plaintext,
}

// === impl Security ===

impl Security {
    /// HBONE, on the kernel path when `kernel_path`.
    #[must_use]
    pub fn mutual_tls(kernel_path: bool) -> Self {
        if kernel_path {
            Self::MutualTlsKernelPath
        } else {
            Self::MutualTls
        }
    }
}

/// One proxied connection: its ends and how it was secured.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    /// Which proxy carried it.
    pub direction: Direction,
    /// The enrolled pod (namespace/name) whose proxy carried it.
    pub pod: String,
    /// The connecting side.
    pub src: SocketAddr,
    /// Where it went.
    pub dst: SocketAddr,
    /// The source's SPIFFE id, when known.
    pub src_identity: Option<String>,
    /// The destination's SPIFFE id, when known.
    pub dst_identity: Option<String>,
    /// How it was secured.
    pub security: Security,
    /// The authorization verdict, where this agent knows it: always on the
    /// destination's side; on the source's side when the destination's
    /// agent reported it.
    pub authorization: Option<Authorization>,
}

/// Where a verdict was enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnforcementPoint {
    /// The destination pod's HBONE server.
    HboneInbound,
    /// The destination pod's inbound plaintext proxy.
    PlaintextInbound,
    /// The source pod's outbound proxy, for a destination on the same node.
    SameNodeOutbound,
    /// The agent's direct-connection map: a same-node connection that
    /// policy allows goes straight to its destination, spliced in the
    /// kernel; one it denies goes through the agent (`same-node-outbound`).
    SameNodeSplice,
}

/// The verdict on one connection, as the access log and the admin API show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Authorization {
    /// Allowed or denied.
    pub decision: Decision,
    /// The deciding policy (namespace/name), `default allow` or `no ALLOW matched`.
    pub policy: String,
    /// Why, in a sentence.
    pub reason: String,
    /// The node whose agent enforced it.
    pub enforced_by: String,
    /// Where on that node.
    pub enforcement_point: EnforcementPoint,
    /// AUDIT policies that matched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audited: Vec<String>,
}

/// Bytes relayed so far each way. They are counted as they are written,
/// so they stay exact when a relay is abandoned half-way.
#[derive(Debug, Default)]
pub struct ByteCounts {
    /// From the source to the destination.
    pub sent: AtomicU64,
    /// From the destination to the source.
    pub received: AtomicU64,
}

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions finished.
    Done,
    /// An I/O error ended it.
    Failed(std::io::Error),
    /// A policy change denied the connection.
    Revoked(Authorization),
}

/// Why a proxied connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The eBPF map had no original destination for an accepted connection.
    #[error(
        "no original destination recorded for the connection from {client} (was it redirected by ambit's connect hook?)"
    )]
    NoOriginalDst {
        /// The application's address.
        client: SocketAddr,
    },
    /// The client dialled a service's cluster IP and the service has no
    /// ready endpoint at that port.
    #[error(
        "service {service} has no ready endpoint for {addr} (check its pods are ready and its EndpointSlices)"
    )]
    NoEndpoints {
        /// The service.
        service: mesh_core::service::ServiceKey,
        /// The cluster IP and port dialled.
        addr: SocketAddr,
    },
    /// The client dialled a service that uses a waypoint, and the waypoint
    /// has no ready pod: the traffic is refused, never sent around it.
    #[error(
        "service {service} uses waypoint {waypoint}, which has no ready endpoint (check `kubectl get pods -n {ns} -l ambit.dev/waypoint={name}`); refusing {addr} rather than bypass it",
        ns = waypoint.namespace, name = waypoint.name
    )]
    NoWaypoint {
        /// The service.
        service: Box<mesh_core::service::ServiceKey>,
        /// Its waypoint.
        waypoint: Box<mesh_core::service::ServiceKey>,
        /// The cluster IP and port dialled.
        addr: SocketAddr,
    },
    /// A connection addressed to a mesh port reached the inbound proxy.
    #[error("refusing to proxy a connection addressed to the mesh port {0} (it would loop)")]
    MeshPort(SocketAddr),
    /// The upstream socket could not be created in the pod's namespace.
    #[error("cannot create the upstream socket in the pod's network namespace: {0}")]
    Socket(#[source] std::io::Error),
    /// Entering the pod's namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The upstream did not answer in time.
    #[error("connecting to {0} timed out (is the destination up? does a NetworkPolicy drop it?)")]
    ConnectTimeout(SocketAddr),
    /// The pod left the mesh while its inbound proxy was connecting to its
    /// application: the replies could no longer reach the agent.
    #[error("pod {pod} left the mesh while the agent was connecting to {dst}")]
    LeftMesh {
        /// The pod.
        pod: PodKey,
        /// The application's address.
        dst: SocketAddr,
    },
    /// The upstream refused or was unreachable.
    #[error("cannot connect to {dst}: {source}")]
    Connect {
        /// The destination.
        dst: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The bypass entry for the transparent connection could not be added.
    #[error(transparent)]
    Bypass(#[from] crate::ebpf::maps::MapOpError),
    /// The HBONE leg failed.
    #[error(transparent)]
    Hbone(#[from] HboneError),
    /// Strict mTLS refused a plaintext client from outside the mesh.
    #[error(
        "pod {pod} is in strict mTLS mode on port {port}; plaintext from {client}, which is not a meshed pod of this node, is refused (check `ambit pods` and `ambit peer-authentications`)"
    )]
    StrictMtls {
        /// The pod.
        pod: PodKey,
        /// The port the client connected to.
        port: u16,
        /// The client.
        client: SocketAddr,
    },
}

// === impl EnforcementPoint ===

impl EnforcementPoint {
    /// The name used in logs and metric labels.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HboneInbound => "hbone-inbound",
            Self::PlaintextInbound => "plaintext-inbound",
            Self::SameNodeOutbound => "same-node-outbound",
            Self::SameNodeSplice => "same-node-splice",
        }
    }
}
