//! The inbound side of HBONE: a listener on 15008 inside each enrolled pod.
//! It requires a client certificate from the mesh CA, reads the client's
//! SPIFFE id from it, and serves CONNECT streams addressed to the pod.
//!
//! Bad requests fail their own stream only: a method other than CONNECT gets
//! 405, a missing or unparseable authority or one that is not this pod gets
//! 400, an oversized header block gets 431 (from h2), an application that
//! cannot be reached gets 503. A stream that authorization policy denies
//! gets 403 (see `crate::authz`); the response reports the verdict.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Request, Response, StatusCode};
use mesh_core::{identity::SpiffeId, policy::Request as AuthzRequest};
use mesh_ebpf_common::RESERVED_POD_PORTS;
use mesh_proxy::accept::accept_until;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    authz::Check,
    flow::{Authorization, Direction, EnforcementPoint, Flow, Security},
    metrics::tcp::ResponseFlags,
    proxy::{Finished, PodContext, UpstreamSource, until_revoked},
};

/// Serves HBONE on `listeners` until `cancel` (the pod left the mesh, or
/// this agent stopped its proxies: a handoff, a shutdown); the connections
/// accepted by then are asked to go away (`GOAWAY`) at that moment too.
pub async fn serve(
    context: Arc<PodContext>,
    listeners: Vec<TcpListener>,
    cancel: CancellationToken,
) {
    let mut accepts = tokio::task::JoinSet::new();
    for listener in listeners {
        let (context, cancel) = (context.clone(), cancel.clone());
        let span = tracing::info_span!("hbone_listener", pod = %context.pod);
        accepts.spawn(
            async move {
                accept_until(&listener, cancel.cancelled(), |tcp, client| {
                    let span = tracing::info_span!("hbone", pod = %context.pod, %client, peer = tracing::field::Empty);
                    let connection = serve_connection(context.clone(), tcp, client, cancel.clone());
                    tokio::spawn(connection.instrument(span));
                })
                .await;
            }
            .instrument(span),
        );
    }
    while accepts.join_next().await.is_some() {}
}

/// Serves one HBONE connection with the pod's context, until its streams
/// are done once `stopped` asked its peer to go away.
///
/// A connection must not outlive the enrolment it was accepted under: a pod
/// enrolled again (a label changed) gets a new context, and its peers'
/// pooled connections would otherwise go on serving new streams with the
/// old one (its old labels for authorization, its return path gone).
async fn serve_connection(
    context: Arc<PodContext>,
    tcp: TcpStream,
    client: SocketAddr,
    stopped: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    // A pod captured before its certificate arrived: the peer's handshake
    // waits for it rather than fail at once.
    if let Err(error) = context
        .certs
        .wait_for_certificate(&context.identity, context.connect_timeout)
        .await
    {
        tracing::warn!(%error, "HBONE connection closed: the pod has no certificate");
        return;
    }
    let config = match context.certs.server_config(&context.identity) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "no TLS configuration for the pod's identity");
            return;
        }
    };
    let go_away = stopped.cancelled_owned();
    mesh_proxy::server::serve_until(tcp, config, go_away, |request, respond, peer| {
        serve_stream(context.clone(), request, respond, peer, client)
    })
    .await;
}

async fn serve_stream(
    context: Arc<PodContext>,
    request: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SpiffeId,
    client: SocketAddr,
) {
    let counters = &context.stats.inbound;
    let dst = match connect_target(&context, &request) {
        Ok(dst) => dst,
        Err((status, why)) => {
            tracing::warn!(%status, reason = why, "HBONE request refused");
            let _ = respond.send_response(response(status, None), true);
            return;
        }
    };
    counters.opened();
    let mut flow = Flow {
        direction: Direction::Inbound,
        pod: context.pod.to_string(),
        src: client,
        dst,
        src_identity: Some(peer.to_string()),
        dst_identity: Some(context.identity.to_string()),
        security: Security::MutualTls,
        authorization: None,
    };
    let check = Check {
        pod: &context.pod,
        labels: &context.labels,
        request: AuthzRequest::new(Some(&peer), client.ip(), dst.port()),
        src: client,
        dst,
        point: EnforcementPoint::HboneInbound,
    };
    let admitted = match context.authorizer.check(check) {
        Ok(admitted) => admitted,
        Err(denied) => {
            let _ = respond.send_response(response(StatusCode::FORBIDDEN, Some(&denied)), true);
            let finished = Finished::denied(flow, denied, counters, &[]);
            context.count_finished(&finished);
            context
                .connections
                .closed(finished.flow, 0, 0, finished.error);
            return;
        }
    };
    flow.authorization = Some(admitted.authorization.clone());
    let from = UpstreamSource::Client(client.ip().to_canonical());
    let upstream = match context.connect_upstream(dst, from).await {
        Ok(upstream) => upstream,
        Err(error) => {
            counters.closed(0, 0, true);
            context.count_failed(&flow, &error);
            tracing::warn!(%dst, %error, "HBONE destination unreachable");
            let _ = respond.send_response(response(StatusCode::SERVICE_UNAVAILABLE, None), true);
            return;
        }
    };
    if context.kernel_path
        && let (Ok(own), Ok(app)) = (upstream.local_addr(), upstream.peer_addr())
    {
        flow.security =
            Security::mutual_tls(context.check_kernel_path(own, app, Direction::Inbound));
    }
    let ok = response(StatusCode::OK, Some(&admitted.authorization));
    let send = match respond.send_response(ok, false) {
        Ok(send) => send,
        Err(error) => {
            counters.closed(0, 0, true);
            context.count_refused(&flow, ResponseFlags::Io);
            tracing::debug!(%error, "HBONE stream reset before it started");
            return;
        }
    };
    // The application is the destination: bytes to it were sent by the
    // source, bytes from it are the source's to receive.
    let live = context.connections.open(&flow);
    let series = context.count_opened(&flow);
    let counts = live.counts();
    let relay = mesh_proxy::relay::relay(
        &upstream,
        send,
        std::future::ready(Ok(request.into_body())),
        &counts.received,
        &counts.sent,
    );
    let end = until_revoked(relay, Some(&admitted)).await;
    let finished = Finished::relayed(flow, counts, end, counters, &[&upstream]);
    context.count_finished(&finished);
    drop((live, series));
    context.connections.closed(
        finished.flow,
        finished.sent,
        finished.received,
        finished.error,
    );
}

/// Where a CONNECT request may go: one of the pod's own addresses, on a port
/// that is not the mesh's.
fn connect_target(
    context: &PodContext,
    request: &Request<h2::RecvStream>,
) -> Result<SocketAddr, (StatusCode, &'static str)> {
    mesh_proxy::hbone::connect_target(request, &context.pod_ips, &RESERVED_POD_PORTS)
}

/// A CONNECT response; with the verdict reported when there is one.
fn response(status: StatusCode, authorization: Option<&Authorization>) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    if let Some(authorization) = authorization {
        super::report_authorization(response.headers_mut(), authorization);
    }
    response
}
