//! The outbound proxy: accepts what `connect4/6` redirected to the pod's
//! outbound listener, finds where the application meant to go, and connects
//! there from inside the pod.

use std::{net::SocketAddr, sync::Arc};

use mesh_ebpf_common::SocketTuple;
use tokio::net::TcpStream;

use super::{PodContext, ProxyError, relay};

pub(super) async fn forward(
    context: Arc<PodContext>,
    stream: TcpStream,
    client: SocketAddr,
) -> Result<(SocketAddr, u64, u64), ProxyError> {
    let listener_addr = stream.local_addr().map_err(ProxyError::Socket)?;
    let tuple = SocketTuple::new(context.netns_cookie, client, listener_addr);
    let dst = context
        .maps
        .take_original_dst(&tuple)
        .ok_or(ProxyError::NoOriginalDst { client })?;
    tracing::Span::current().record("dst", tracing::field::display(dst));
    let upstream = context.connect_upstream(dst, None).await?;
    let (sent, received) = relay(stream, upstream, &context.stats.outbound).await?;
    Ok((dst, sent, received))
}
