//! The inbound proxy: accepts what `sk_lookup` steered to the pod's inbound
//! listener. The accepted socket's local address is where the client meant
//! to go; the proxy connects there from the client's own address, so the
//! application sees its real caller (see `crate::routing`).

use std::{net::SocketAddr, sync::Arc};

use mesh_ebpf_common::RESERVED_POD_PORTS;
use tokio::net::TcpStream;

use super::{PodContext, ProxyError, relay};

pub(super) async fn forward(
    context: Arc<PodContext>,
    stream: TcpStream,
    client: SocketAddr,
) -> Result<(SocketAddr, u64, u64), ProxyError> {
    // The socket's local address is the original destination: sk_lookup
    // hands over the connection without rewriting it.
    let dst = stream.local_addr().map_err(ProxyError::Socket)?;
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    tracing::Span::current().record("dst", tracing::field::display(dst));
    if RESERVED_POD_PORTS.contains(&dst.port()) {
        return Err(ProxyError::MeshPort(dst));
    }
    let source = SocketAddr::new(client.ip().to_canonical(), 0);
    let upstream = context.connect_upstream(dst, Some(source)).await?;
    let (sent, received) = relay(stream, upstream, &context.stats.inbound).await?;
    Ok((dst, sent, received))
}
