//! The inbound plaintext proxy: accepts what `sk_lookup` steered to the
//! pod's inbound listener. The accepted socket's local address is where the
//! client meant to go; the proxy connects there from the client's own
//! address, so the application sees its real caller (see `crate::routing`).
//!
//! A pod in strict mTLS mode, at the port connected to (peer
//! authentication can set modes per port), accepts plaintext only from
//! meshed pods of the same node (the same-node fast path); anything else
//! is reset.

use std::{net::SocketAddr, sync::Arc};

use mesh_core::{policy::Request, workload::MtlsMode};
use mesh_ebpf_common::RESERVED_POD_PORTS;
use tokio::net::TcpStream;

use super::{Finished, PodContext, UpstreamSource, relay_to_end};
use crate::{
    authz::Check,
    flow::{Direction, EnforcementPoint, Flow, ProxyError, Security},
};

pub(super) async fn forward(
    context: Arc<PodContext>,
    stream: TcpStream,
    client: SocketAddr,
) -> Result<Finished, ProxyError> {
    // The socket's local address is the original destination: sk_lookup
    // hands over the connection without rewriting it.
    let dst = stream.local_addr().map_err(ProxyError::Socket)?;
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    let client = SocketAddr::new(client.ip().to_canonical(), client.port());
    tracing::Span::current().record("dst", tracing::field::display(dst));
    if RESERVED_POD_PORTS.contains(&dst.port()) {
        return Err(ProxyError::MeshPort(dst));
    }
    let same_node_peer = context
        .workloads
        .current()
        .by_ip(client.ip())
        .filter(|w| w.local)
        .cloned();
    let mut flow = Flow {
        direction: Direction::Inbound,
        pod: context.pod.to_string(),
        src: client,
        dst,
        src_identity: same_node_peer.as_ref().map(|p| p.identity.to_string()),
        dst_identity: Some(context.identity.to_string()),
        security: if same_node_peer.is_some() {
            Security::SameNode
        } else {
            Security::Plaintext
        },
        authorization: None,
    };
    if same_node_peer.is_none() && context.mtls.current().at_port(dst.port()) == MtlsMode::Strict {
        // A reset, not a quiet close: the client learns at once.
        super::reset(&stream);
        let error = ProxyError::StrictMtls {
            pod: context.pod.clone(),
            port: dst.port(),
            client,
        };
        context.count_failed(&flow, &error);
        return Err(error);
    }
    let stats = &context.stats.inbound;
    // A meshed pod of this node is vouched for by this agent; anyone else
    // has proved nothing and has no principal.
    let check = Check {
        pod: &context.pod,
        labels: &context.labels,
        request: Request::new(
            same_node_peer.as_ref().map(|p| &p.identity),
            client.ip(),
            dst.port(),
        ),
        src: client,
        dst,
        point: EnforcementPoint::PlaintextInbound,
    };
    let admitted = match context.authorizer.check(check) {
        Ok(admitted) => admitted,
        Err(denied) => return Ok(Finished::denied(flow, denied, stats, &[&stream])),
    };
    flow.authorization = Some(admitted.authorization.clone());
    let upstream = context
        .connect_upstream(dst, UpstreamSource::Client(client.ip()))
        .await
        .inspect_err(|error| context.count_failed(&flow, error))?;
    Ok(relay_to_end(flow, &stream, &upstream, Some(&admitted), &context).await)
}
