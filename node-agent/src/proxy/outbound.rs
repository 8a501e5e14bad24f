//! The outbound proxy: accepts what `connect4/6` redirected to the pod's
//! outbound listener, finds where the application meant to go, and takes the
//! path the destination calls for (see the parent module).

use std::{net::SocketAddr, sync::Arc};

use mesh_ebpf_common::{INBOUND_HBONE_PORT, SocketTuple};
use tokio::net::TcpStream;

use super::{Finished, PodContext, ProxyError, UpstreamSource, relay};
use crate::{
    connections::{Flow, Security},
    proxy::Direction,
};

pub(super) async fn forward(
    context: Arc<PodContext>,
    stream: TcpStream,
    client: SocketAddr,
) -> Result<Finished, ProxyError> {
    let listener_addr = stream.local_addr().map_err(ProxyError::Socket)?;
    let tuple = SocketTuple::new(context.netns_cookie, client, listener_addr);
    let dst = context
        .maps
        .take_original_dst(&tuple)
        .ok_or(ProxyError::NoOriginalDst { client })?;
    tracing::Span::current().record("dst", tracing::field::display(dst));
    let peer = context.workloads.current().by_ip(dst.ip()).cloned();
    let mut flow = Flow {
        direction: Direction::Outbound,
        pod: context.pod.to_string(),
        src: SocketAddr::new(client.ip().to_canonical(), client.port()),
        dst,
        src_identity: Some(context.identity.to_string()),
        dst_identity: peer.as_ref().map(|p| p.identity.to_string()),
        security: Security::Plaintext,
    };
    let stats = &context.stats.outbound;
    match peer {
        Some(peer) if !(peer.local && context.same_node_fast_path) => {
            flow.security = Security::MutualTls;
            let hbone_addr = SocketAddr::new(dst.ip(), INBOUND_HBONE_PORT);
            let hbone = context
                .hbone
                .open_stream(&context, &peer.identity, hbone_addr, dst)
                .await?;
            match hbone.relay(stream).await {
                Ok((sent, received)) => {
                    stats.closed(sent, received, false);
                    Ok(Finished {
                        flow,
                        sent,
                        received,
                    })
                }
                Err(error) => {
                    stats.closed(0, 0, true);
                    Err(ProxyError::Relay(error))
                }
            }
        }
        peer => {
            // A meshed pod of this node: straight to its application,
            // past its inbound proxy, from the client pod's own address.
            let from = match (
                &peer,
                context
                    .pod_ips
                    .iter()
                    .find(|ip| ip.is_ipv4() == dst.is_ipv4()),
            ) {
                (Some(_), Some(pod_ip)) => UpstreamSource::PodBypassingInbound(*pod_ip),
                _ => UpstreamSource::Pod,
            };
            if peer.is_some() {
                flow.security = Security::SameNode;
            }
            let upstream = context.connect_upstream(dst, from).await?;
            let (sent, received) = relay(stream, upstream, stats).await?;
            Ok(Finished {
                flow,
                sent,
                received,
            })
        }
    }
}
