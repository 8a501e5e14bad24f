//! The agent's part of the HBONE client: each enrolled pod has its own
//! `mesh_proxy::client::HbonePool` (in its `PodContext`), whose connections start in the
//! pod's network namespace (so the source address on the wire is the pod's
//! own) and carry the pod's identity, so they are shared only by that pod's
//! connections to the same destination identity and address. The pool,
//! early data and retries are `mesh_proxy::client`'s.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use bytes::Bytes;
use h2::client::SendRequest;
use mesh_core::identity::SpiffeId;
use mesh_proxy::{
    HboneError,
    client::{Connect, HboneStream, PoolKey},
};

use crate::{
    flow::{Authorization, ByteCounts, ProxyError},
    proxy::{PodContext, UpstreamSource},
};

/// Opens a pod's HBONE connections: from its network namespace, with its
/// certificate.
struct PodConnector<'a>(&'a Arc<PodContext>);

// === impl PodConnector ===

impl Connect for PodConnector<'_> {
    fn connect(
        &self,
        key: &PoolKey,
    ) -> impl Future<Output = Result<SendRequest<Bytes>, HboneError>> + Send + 'static {
        connect(self.0.clone(), key.clone())
    }
}

/// Opens a CONNECT stream to `authority` through the HBONE port `addr`,
/// whose certificate must be `peer`'s, on the pod's pool.
pub async fn open_stream(
    context: &Arc<PodContext>,
    peer: &SpiffeId,
    addr: SocketAddr,
    authority: SocketAddr,
) -> Result<HboneStream, HboneError> {
    let key = PoolKey {
        peer: peer.clone(),
        addr,
    };
    context
        .hbone
        .open_stream(&PodConnector(context), &key, authority)
        .await
}

/// Relays between `tcp` and `stream` until both directions are done,
/// counting bytes from `tcp` as sent and bytes to it as received. The
/// verdict the destination's agent reports, if any, goes in `reported`.
pub async fn relay(
    stream: HboneStream,
    context: &Arc<PodContext>,
    tcp: &tokio::net::TcpStream,
    counts: &ByteCounts,
    reported: &OnceLock<Authorization>,
) -> std::io::Result<()> {
    let on_response = |headers: &http::HeaderMap| {
        if let Some(authorization) = super::reported_authorization(headers) {
            let _ = reported.set(authorization);
        }
    };
    stream
        .relay(
            &context.hbone,
            &PodConnector(context),
            tcp,
            &counts.sent,
            &counts.received,
            on_response,
        )
        .await
}

/// Opens a TCP + TLS + HTTP/2 connection to the peer's HBONE port, from
/// the pod's network namespace.
async fn connect(context: Arc<PodContext>, key: PoolKey) -> Result<SendRequest<Bytes>, HboneError> {
    let addr = key.addr;
    // A pod is captured before its certificate arrives: its connections
    // wait for it here (at once when it is there), never go without it.
    context
        .certs
        .wait_for_certificate(&context.identity, context.connect_timeout)
        .await
        .map_err(|error| HboneError::Identity(Box::new(error)))?;
    let tcp = context
        .connect_upstream(addr, UpstreamSource::Pod)
        .await
        .map_err(|e| match e {
            ProxyError::Connect { source, .. } => HboneError::Connect { addr, source },
            ProxyError::ConnectTimeout(_) => HboneError::Timeout(addr),
            other => HboneError::Socket(std::io::Error::other(other.to_string())),
        })?;
    let config = context
        .certs
        .client_config(&context.identity, &key.peer)
        .map_err(|error| HboneError::Identity(Box::new(error)))?;
    let (send, connection) = mesh_proxy::hbone::connect(tcp, config, addr).await?;
    let pod = context.pod.clone();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%pod, %addr, %error, "HBONE connection ended");
        }
    });
    tracing::debug!(pod = %context.pod, %addr, peer = %key.peer, "HBONE connection opened");
    Ok(send)
}
