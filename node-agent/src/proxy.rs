//! The L4 proxy: one outbound and one inbound (plaintext) proxy per enrolled
//! pod, each listening inside the pod's network namespace, beside the pod's
//! HBONE server ([`hbone::server`]).
//!
//! Outbound, the destination decides the path:
//! - a meshed pod on another node: HBONE (mutual TLS) to its port 15008;
//! - a meshed pod on this node: plaintext through its inbound proxy when
//!   the same-node fast path is on (both identities are this agent's), else
//!   HBONE;
//! - anything else: plaintext, straight to the destination.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use mesh_core::{
    identity::SpiffeId,
    workload::{PodKey, PodMtls},
};
use mesh_proxy::{accept::accept_until, client::HbonePool, copy::pump};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use self::connection_probe::{ConnectionProbe, ProbeError};
use crate::{
    authz::{Admitted, Authorizer},
    connections::ConnectionLog,
    ebpf::MeshMaps,
    flow::{Authorization, ByteCounts, Direction, Flow, ProxyError, RelayEnd},
    identity::CertManager,
    metrics::tcp::ResponseFlags,
    netns::NetnsSwitch,
    stats::{PodStats, TrafficStats},
    workloads::SharedWorkloads,
};

mod connection_probe;
pub mod hbone;
mod inbound;
mod outbound;
mod record;
mod upstream;

pub use self::upstream::UpstreamSource;

/// One direction's proxy for one pod: its listeners (one per address
/// family), served until cancelled.
pub struct PodProxy {
    context: Arc<PodContext>,
    listeners: Vec<TcpListener>,
    cancel: CancellationToken,
    direction: Direction,
}

/// What each proxy of one pod shares.
pub struct PodContext {
    /// The pod's namespace/name.
    pub pod: PodKey,
    /// The pod's SPIFFE id.
    pub identity: SpiffeId,
    /// The pod's addresses.
    pub pod_ips: Vec<std::net::IpAddr>,
    /// The pod's effective mTLS modes, its own and its ports'; replaced
    /// in place when peer authentications or labels change them.
    pub mtls: Arc<crate::published::Published<PodMtls>>,
    /// The pod's labels, which policies select it by.
    pub labels: Arc<BTreeMap<String, String>>,
    /// Checks connections to the pods of this node against policy.
    pub authorizer: Arc<Authorizer>,
    /// The pod's network namespace cookie.
    pub netns_cookie: u64,
    /// Creates sockets inside the pod's network namespace.
    pub sockets: NetnsSwitch,
    /// Looks up connections inside the pod's network namespace.
    pub connection_probe: Arc<ConnectionProbe>,
    /// The eBPF maps.
    pub maps: Arc<MeshMaps>,
    /// The pod's counters.
    pub stats: Arc<PodStats>,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Cancelled when the pod leaves the mesh (never at a handoff, where the
    /// successor keeps the pod's routing as it is): a connect to the pod's
    /// application from a client's address, whose replies reach the agent
    /// only by the pod's return path, fails at once instead of timing out.
    pub left_mesh: CancellationToken,
    /// Certificates and TLS configurations.
    pub certs: Arc<CertManager>,
    /// Every meshed pod, by address.
    pub workloads: Arc<SharedWorkloads>,
    /// Skip TLS between pods of this node.
    pub same_node_fast_path: bool,
    /// Whether the pod's legs to and from the agent may take the kernel
    /// path (it asked, and the kernel took `sk_msg`); fixed for the
    /// enrollment, since a label change enrolls the pod again.
    pub kernel_path: bool,
    /// The pod's HBONE connections.
    pub hbone: HbonePool,
    /// Recently closed connections.
    pub connections: Arc<ConnectionLog>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Picks the endpoint of each connection to a service's cluster IP.
    pub balancer: Arc<crate::balancer::Balancer>,
}

/// A finished connection: what it was, the bytes each way, and how it ended.
pub struct Finished {
    /// The connection.
    pub flow: Flow,
    /// Bytes from source to destination.
    pub sent: u64,
    /// Bytes from destination to source.
    pub received: u64,
    /// Why it ended badly, if it did.
    pub error: Option<String>,
    /// How it ended, as the metrics' `response_flags` say.
    pub response_flags: ResponseFlags,
    /// Whether it was established; a connection refused during set-up was not.
    pub established: bool,
}

// === impl PodProxy ===

impl PodProxy {
    /// A proxy for `direction` over `listeners`.
    #[must_use]
    pub fn new(
        context: Arc<PodContext>,
        listeners: Vec<TcpListener>,
        cancel: CancellationToken,
        direction: Direction,
    ) -> Self {
        Self {
            context,
            listeners,
            cancel,
            direction,
        }
    }

    /// Serves until cancelled. Connections in flight finish on their own.
    pub async fn run(self) {
        let Self {
            context,
            listeners,
            cancel,
            direction,
        } = self;
        match direction {
            Direction::Outbound => {
                serve(context, listeners, cancel, direction, outbound::forward).await;
            }
            Direction::Inbound => {
                serve(context, listeners, cancel, direction, inbound::forward).await;
            }
        }
    }
}

// === impl PodContext ===

impl PodContext {
    /// Whether the `direction` leg between the application and this agent
    /// whose client side is `client` (the application's socket outbound,
    /// the agent's own inbound) took the kernel path: both sockets are in
    /// the splice sock hash and no message went through TCP. A leg that
    /// did is counted in `ambit_kernel_path_connections_total`. For a pod
    /// off the kernel path it is `false` without looking at the map.
    #[must_use]
    pub fn check_kernel_path(
        &self,
        client: SocketAddr,
        server: SocketAddr,
        direction: Direction,
    ) -> bool {
        if !self.kernel_path {
            return false;
        }
        let tuple = mesh_ebpf_common::SocketTuple::new(0, client, server);
        let on = self
            .maps
            .pod_leg(&tuple)
            .is_some_and(|stats| stats.flags & mesh_ebpf_common::SPLICE_FLAG_VIA_TCP == 0);
        if on {
            self.metrics.kernel_path_connection(match direction {
                Direction::Outbound => "outbound",
                Direction::Inbound => "inbound",
            });
        }
        on
    }
}

/// Buffer per direction of a plaintext relay: large enough that bulk
/// transfers move in few system calls (tokio's default is 8 KiB).
const RELAY_BUFFER: usize = 256 * 1024;

/// Accepts on every listener until cancelled, handing each connection to
/// `forward` on its own task with its own span. Connections in flight finish
/// on their own after cancellation.
pub async fn serve<F, Fut>(
    context: Arc<PodContext>,
    listeners: Vec<TcpListener>,
    cancel: CancellationToken,
    direction: Direction,
    forward: F,
) where
    F: Fn(Arc<PodContext>, TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Finished, ProxyError>> + Send + 'static,
{
    let mut accepts = tokio::task::JoinSet::new();
    for listener in listeners {
        let (context, cancel, forward) = (context.clone(), cancel.clone(), forward.clone());
        let listener_span = tracing::info_span!("listener", pod = %context.pod, ?direction);
        accepts.spawn(async move {
            accept_until(&listener, cancel.cancelled(), move |stream, client| {
                let stats = context.stats.direction(direction);
                stats.opened();
                let span = match direction {
                    Direction::Outbound => tracing::info_span!("outbound", pod = %context.pod, %client, dst = tracing::field::Empty),
                    Direction::Inbound => tracing::info_span!("inbound", pod = %context.pod, %client, dst = tracing::field::Empty),
                };
                let work = forward(context.clone(), stream, client);
                let context = context.clone();
                tokio::spawn(
                    async move {
                        match work.await {
                            Ok(finished) => {
                                context.count_finished(&finished);
                                let Finished { flow, sent, received, error, .. } = finished;
                                context.connections.closed(flow, sent, received, error);
                            }
                            Err(error) => {
                                context.stats.direction(direction).closed(0, 0, true);
                                tracing::warn!(%error, "connection failed");
                            }
                        }
                    }
                    .instrument(span),
                );
            })
            .await;
        }.instrument(listener_span));
    }
    while accepts.join_next().await.is_some() {}
}

/// Copies both ways until both sides are done, passing each half-close on,
/// counting the bytes into `counts`.
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    counts: &ByteCounts,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    tokio::try_join!(
        pump(client, upstream, RELAY_BUFFER, &counts.sent),
        pump(upstream, client, RELAY_BUFFER, &counts.received)
    )
    .map(|_| ())
}

/// Relays a plaintext connection until it ends (or `admitted` is revoked)
/// and says how it ended; listed as open meanwhile, and counted in the
/// pod's statistics for the flow's direction.
pub async fn relay_to_end(
    flow: Flow,
    client: &TcpStream,
    upstream: &TcpStream,
    admitted: Option<&Admitted>,
    context: &PodContext,
) -> Finished {
    let live = context.connections.open(&flow);
    let _series = context.count_opened(&flow);
    let end = until_revoked(relay(client, upstream, live.counts()), admitted).await;
    let stats = context.stats.direction(flow.direction);
    Finished::relayed(flow, live.counts(), end, stats, &[client, upstream])
}

/// Runs `relay` until it ends, or until `admitted` is revoked by a policy
/// change (the relay is then abandoned; its sockets are the caller's).
pub async fn until_revoked(
    relay: impl Future<Output = std::io::Result<()>>,
    admitted: Option<&Admitted>,
) -> RelayEnd {
    let ended =
        |result: std::io::Result<()>| result.map_or_else(RelayEnd::Failed, |()| RelayEnd::Done);
    match admitted {
        None => ended(relay.await),
        Some(admitted) => tokio::select! {
            result = relay => ended(result),
            authorization = admitted.revoked() => RelayEnd::Revoked(authorization),
        },
    }
}

/// Ends a connection with a reset rather than a quiet close: the peer learns
/// at once that the connection did not end normally.
pub fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

// === impl Finished ===

impl Finished {
    /// A connection that relayed `counts` and ended as `end`, counted in
    /// `stats`. Unless it ended normally, `sockets` are reset.
    #[must_use]
    pub fn relayed(
        mut flow: Flow,
        counts: &ByteCounts,
        end: RelayEnd,
        stats: &TrafficStats,
        sockets: &[&TcpStream],
    ) -> Self {
        let sent = counts.sent.load(Ordering::Relaxed);
        let received = counts.received.load(Ordering::Relaxed);
        let response_flags = ResponseFlags::of_end(&end);
        let error = match end {
            RelayEnd::Done => None,
            RelayEnd::Failed(error) => Some(format!("relaying bytes failed: {error}")),
            RelayEnd::Revoked(authorization) => {
                stats.revoked();
                let error = format!(
                    "reset: a policy change denies it ({})",
                    authorization.reason
                );
                flow.authorization = Some(authorization);
                Some(error)
            }
        };
        if error.is_some() {
            for socket in sockets {
                reset(socket);
            }
        }
        stats.closed(sent, received, error.is_some());
        Self {
            flow,
            sent,
            received,
            error,
            response_flags,
            established: true,
        }
    }

    /// A connection that policy refused: `sockets` are reset, nothing relayed.
    #[must_use]
    pub fn denied(
        mut flow: Flow,
        authorization: Authorization,
        stats: &TrafficStats,
        sockets: &[&TcpStream],
    ) -> Self {
        for socket in sockets {
            reset(socket);
        }
        stats.denied();
        stats.closed(0, 0, false);
        let error = format!("denied: {}", authorization.reason);
        flow.authorization = Some(authorization);
        Self {
            flow,
            sent: 0,
            received: 0,
            error: Some(error),
            response_flags: ResponseFlags::Deny,
            established: false,
        }
    }
}
