//! The outbound proxy: accepts what `connect4/6` redirected to the pod's
//! outbound listener, finds where the application meant to go, and takes the
//! path the destination calls for (see the parent module).

use std::{net::SocketAddr, sync::Arc};

use mesh_core::policy::Request;
use mesh_ebpf_common::{INBOUND_HBONE_PORT, SocketTuple};
use tokio::net::TcpStream;

use super::{Finished, PodContext, ProxyError, UpstreamSource, relay_to_end, until_revoked};
use crate::{
    authz::{Check, EnforcementPoint},
    balancer::Pick,
    connections::{Flow, Security},
    proxy::Direction,
    workloads::WorkloadIndex,
};

pub(super) async fn forward(
    context: Arc<PodContext>,
    stream: TcpStream,
    client: SocketAddr,
) -> Result<Finished, ProxyError> {
    let listener_addr = stream.local_addr().map_err(ProxyError::Socket)?;
    let tuple = SocketTuple::new(context.netns_cookie, client, listener_addr);
    let dialled = context
        .maps
        .take_original_dst(&tuple)
        .ok_or(ProxyError::NoOriginalDst { client })?;
    tracing::Span::current().record("dst", tracing::field::display(dialled));
    let workloads = context.workloads.current();
    let src = SocketAddr::new(client.ip().to_canonical(), client.port());
    let (dst, _pick) = resolve_service(&context, &workloads, dialled, src)?;
    let peer = workloads.by_ip(dst.ip()).cloned();
    drop(workloads);
    let mut flow = Flow {
        direction: Direction::Outbound,
        pod: context.pod.to_string(),
        src,
        dst,
        src_identity: Some(context.identity.to_string()),
        dst_identity: peer.as_ref().map(|p| p.identity.to_string()),
        security: Security::Plaintext,
        authorization: None,
    };
    let stats = &context.stats.outbound;
    match peer {
        Some(peer) if !(peer.local && context.same_node_fast_path) => {
            // The destination's agent authorizes the stream and reports its
            // verdict in the CONNECT response.
            flow.security = Security::MutualTls;
            let hbone_addr = SocketAddr::new(dst.ip(), INBOUND_HBONE_PORT);
            let hbone = context
                .hbone
                .open_stream(&context, &peer.identity, hbone_addr, dst)
                .await
                .map_err(ProxyError::from)
                .inspect_err(|error| context.count_failed(&flow, error))?;
            let live = context.connections.open(&flow);
            context.count_opened(&flow);
            let end =
                until_revoked(hbone.relay(&stream, live.counts(), live.reported()), None).await;
            flow.authorization = live.reported().get().cloned();
            Ok(Finished::relayed(
                flow,
                live.counts(),
                end,
                stats,
                &[&stream],
            ))
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

/// Where a connection to `dialled` goes: a service's cluster IP stands for
/// one of its ready endpoints, picked by the balancer (the pick counts
/// against that endpoint until it is dropped, at the connection's end);
/// any other address is itself.
fn resolve_service(
    context: &PodContext,
    workloads: &WorkloadIndex,
    dialled: SocketAddr,
    src: SocketAddr,
) -> Result<(SocketAddr, Option<Pick>), ProxyError> {
    let Some(vip) = workloads.virtual_address(dialled) else {
        return Ok((dialled, None));
    };
    if let Some(pick) = context.balancer.pick(&vip.endpoints) {
        tracing::debug!(service = %vip.service, endpoint = %pick.endpoint, "cluster IP resolved");
        return Ok((pick.endpoint, Some(pick)));
    }
    let error = ProxyError::NoEndpoints {
        service: vip.service.clone(),
        addr: dialled,
    };
    let flow = Flow {
        direction: Direction::Outbound,
        pod: context.pod.to_string(),
        src,
        dst: dialled,
        src_identity: Some(context.identity.to_string()),
        dst_identity: None,
        security: Security::Plaintext,
        authorization: None,
    };
    context.count_failed(&flow, &error);
    Err(error)
}
