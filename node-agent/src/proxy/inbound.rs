//! The inbound proxy: accepts what `sk_lookup` steered to the pod's inbound
//! listener. The accepted socket's local address is where the client meant
//! to go; the proxy connects there from the client's own address, so the
//! application sees its real caller (see `crate::routing`).

use std::{net::SocketAddr, sync::Arc};

use mesh_ebpf_common::RESERVED_POD_PORTS;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{Direction, PodContext, ProxyError, relay, serve};

/// The inbound (plaintext) proxy of one pod.
pub struct Inbound {
    context: Arc<PodContext>,
    listeners: Vec<TcpListener>,
    cancel: CancellationToken,
}

// === impl Inbound ===

impl Inbound {
    /// A proxy over the pod's inbound listeners (one per address family).
    #[must_use]
    pub fn new(
        context: Arc<PodContext>,
        listeners: Vec<TcpListener>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            context,
            listeners,
            cancel,
        }
    }

    /// Serves until cancelled.
    pub async fn run(self) {
        serve(
            self.context,
            self.listeners,
            self.cancel,
            Direction::Inbound,
            forward,
        )
        .await;
    }
}

async fn forward(
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
