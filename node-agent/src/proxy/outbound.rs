//! The outbound proxy: accepts what `connect4/6` redirected to the pod's
//! outbound listener, finds where the application meant to go, and takes the
//! path the destination calls for (see the parent module).

use std::{net::SocketAddr, sync::Arc};

use mesh_core::{identity::SpiffeId, policy::Request};
use mesh_ebpf_common::{INBOUND_HBONE_PORT, SocketTuple};
use tokio::net::TcpStream;

use super::{Finished, PodContext, UpstreamSource, hbone, relay_to_end, until_revoked};
use crate::{
    authz::Check,
    balancer::Pick,
    flow::{Direction, EnforcementPoint, Flow, ProxyError, Security},
    workloads::{WaypointTarget, WorkloadIndex},
};

pub(super) async fn forward(
    context: Arc<PodContext>,
    stream: TcpStream,
    client: SocketAddr,
) -> Result<Finished, ProxyError> {
    let listener_addr = stream.local_addr().map_err(ProxyError::Socket)?;
    let kernel_path = context.check_kernel_path(client, listener_addr, Direction::Outbound);
    let tuple = SocketTuple::new(context.netns_cookie, client, listener_addr);
    let dialled = context
        .maps
        .take_original_dst(&tuple)
        .ok_or(ProxyError::NoOriginalDst { client })?;
    tracing::Span::current().record("dst", tracing::field::display(dialled));
    let workloads = context.workloads.current();
    let src = SocketAddr::new(client.ip().to_canonical(), client.port());
    let (dst, _pick) = match resolve_service(&context, &workloads, dialled, src)? {
        Resolved::Direct(dst, pick) => (dst, pick),
        Resolved::Waypoint(waypoint, pick) => {
            drop(workloads);
            return via_waypoint(
                &context,
                &stream,
                src,
                dialled,
                &waypoint,
                pick,
                kernel_path,
            )
            .await;
        }
    };
    let peer = workloads.by_ip(dst.ip()).cloned();
    drop(workloads);
    let mut flow = Flow {
        dst_identity: peer.as_ref().map(|p| p.identity.to_string()),
        ..outbound_flow(&context, src, dst)
    };
    let stats = &context.stats.outbound;
    match peer {
        Some(peer) if !(peer.local && context.same_node_fast_path) => {
            // The destination's agent authorizes the stream and reports its
            // verdict in the CONNECT response.
            flow.security = Security::mutual_tls(kernel_path);
            let hbone_addr = SocketAddr::new(dst.ip(), INBOUND_HBONE_PORT);
            let over = Hbone {
                peer: &peer.identity,
                addr: hbone_addr,
                authority: dst,
                takes_verdict: true,
            };
            relay_over_hbone(&context, &stream, flow, over).await
        }
        Some(peer) => {
            // A meshed pod of this node: this agent is the destination's
            // agent too, so it authorizes here, then connects straight to
            // the application, past its inbound proxy, from the client
            // pod's own address.
            flow.security = Security::SameNode;
            let check = Check {
                pod: &peer.key,
                labels: &peer.labels,
                request: Request::new(Some(&context.identity), src.ip(), dst.port()),
                src,
                dst,
                point: EnforcementPoint::SameNodeOutbound,
            };
            let admitted = match context.authorizer.check(check) {
                Ok(admitted) => admitted,
                Err(denied) => return Ok(Finished::denied(flow, denied, stats, &[&stream])),
            };
            flow.authorization = Some(admitted.authorization.clone());
            let from = context
                .pod_ips
                .iter()
                .find(|ip| ip.is_ipv4() == dst.is_ipv4())
                .map_or(UpstreamSource::Pod, |ip| {
                    UpstreamSource::PodBypassingInbound(*ip)
                });
            let upstream = context
                .connect_upstream(dst, from)
                .await
                .inspect_err(|error| context.count_failed(&flow, error))?;
            Ok(relay_to_end(flow, &stream, &upstream, Some(&admitted), &context).await)
        }
        None => {
            // Outside the mesh: plaintext, straight there.
            let upstream = context
                .connect_upstream(dst, UpstreamSource::Pod)
                .await
                .inspect_err(|error| context.count_failed(&flow, error))?;
            Ok(relay_to_end(flow, &stream, &upstream, None, &context).await)
        }
    }
}

/// Carries a connection to a service that uses a waypoint: an HBONE stream
/// to the picked waypoint pod, addressed to the cluster IP and port the
/// application dialled, so the waypoint knows the service and port. The
/// waypoint applies L7 policy and routing and opens its own HBONE stream to
/// the chosen endpoint; it reports nothing back, so the connection carries
/// no verdict here.
async fn via_waypoint(
    context: &Arc<PodContext>,
    stream: &TcpStream,
    src: SocketAddr,
    dialled: SocketAddr,
    waypoint: &WaypointTarget,
    pick: Pick,
    kernel_path: bool,
) -> Result<Finished, ProxyError> {
    let flow = Flow {
        dst_identity: Some(waypoint.identity.to_string()),
        security: Security::mutual_tls(kernel_path),
        ..outbound_flow(context, src, dialled)
    };
    tracing::debug!(waypoint = %waypoint.service, endpoint = %pick.endpoint, "through the waypoint");
    let over = Hbone {
        peer: &waypoint.identity,
        addr: pick.endpoint,
        authority: dialled,
        takes_verdict: false,
    };
    let finished = relay_over_hbone(context, stream, flow, over).await;
    drop(pick);
    finished
}

/// Where an HBONE stream goes: to `peer` at `addr`, for `authority`.
struct Hbone<'a> {
    peer: &'a SpiffeId,
    addr: SocketAddr,
    authority: SocketAddr,
    /// Whether the verdict the peer reports goes on the flow (a destination's
    /// agent reports one; a waypoint does not).
    takes_verdict: bool,
}

/// Opens the HBONE stream `over` says and relays `stream` through it until
/// either side ends or a policy change revokes it, counting the connection
/// as opened, failed or relayed.
async fn relay_over_hbone(
    context: &Arc<PodContext>,
    stream: &TcpStream,
    mut flow: Flow,
    over: Hbone<'_>,
) -> Result<Finished, ProxyError> {
    let hbone = hbone::client::open_stream(context, over.peer, over.addr, over.authority)
        .await
        .map_err(ProxyError::from)
        .inspect_err(|error| context.count_failed(&flow, error))?;
    let live = context.connections.open(&flow);
    let _series = context.count_opened(&flow);
    let end = until_revoked(
        hbone::client::relay(hbone, context, stream, live.counts(), live.reported()),
        None,
    )
    .await;
    if over.takes_verdict {
        flow.authorization = live.reported().get().cloned();
    }
    Ok(Finished::relayed(
        flow,
        live.counts(),
        end,
        &context.stats.outbound,
        &[stream],
    ))
}

/// A connection of this pod from `src` to `dst`, as yet plaintext, to no
/// known identity and without a verdict.
fn outbound_flow(context: &PodContext, src: SocketAddr, dst: SocketAddr) -> Flow {
    Flow {
        direction: Direction::Outbound,
        pod: context.pod.to_string(),
        src,
        dst,
        src_identity: Some(context.identity.to_string()),
        dst_identity: None,
        security: Security::Plaintext,
        authorization: None,
    }
}

/// Where a connection goes, once its cluster IP is resolved.
enum Resolved {
    /// To this address (the endpoint picked, or what was dialled).
    Direct(SocketAddr, Option<Pick>),
    /// Through this waypoint, to the pod picked (an HBONE address).
    Waypoint(Arc<WaypointTarget>, Pick),
}

/// Where a connection to `dialled` goes: a service's cluster IP stands for
/// one of its ready endpoints, picked by the balancer (the pick counts
/// against that endpoint until it is dropped, at the connection's end), or
/// for its waypoint when it names one; any other address is itself.
fn resolve_service(
    context: &PodContext,
    workloads: &WorkloadIndex,
    dialled: SocketAddr,
    src: SocketAddr,
) -> Result<Resolved, ProxyError> {
    let Some(vip) = workloads.virtual_address(dialled) else {
        return Ok(Resolved::Direct(dialled, None));
    };
    let error = if let Some(waypoint) = &vip.waypoint {
        if let Some(pick) = context.balancer.pick(&waypoint.endpoints) {
            return Ok(Resolved::Waypoint(waypoint.clone(), pick));
        }
        ProxyError::NoWaypoint {
            service: Box::new(vip.service.clone()),
            waypoint: Box::new(waypoint.service.clone()),
            addr: dialled,
        }
    } else if let Some(pick) = context.balancer.pick(&vip.endpoints) {
        tracing::debug!(service = %vip.service, endpoint = %pick.endpoint, "cluster IP resolved");
        return Ok(Resolved::Direct(pick.endpoint, Some(pick)));
    } else {
        ProxyError::NoEndpoints {
            service: vip.service.clone(),
            addr: dialled,
        }
    };
    context.count_failed(&outbound_flow(context, src, dialled), &error);
    Err(error)
}
