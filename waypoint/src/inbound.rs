//! The waypoint's HBONE connections, each served on a worker's thread (the
//! listener is `Workers::serve`). Node agents send them the streams of
//! clients that dialled a service using this waypoint, each a CONNECT to
//! the cluster IP and port the client dialled. What the stream carries is what
//! the service port's `appProtocol` declares (`tcp`: passed through at once;
//! `http`: HTTP/1.1 or HTTP/2); otherwise its first bytes tell: the HTTP/2
//! connection preface, an HTTP/1.1 request line, or anything else (opaque
//! TCP, passed through under L4 policy).
//!
//! Bad requests fail their own stream only: a method other than CONNECT
//! gets 405, an authority that is not a cluster IP and port of a service
//! using this waypoint gets 400.
//!
//! A stream whose exchange is over ends gracefully: the waypoint's side
//! ends, then what the client still sends is read and dropped until its
//! side ends too (at most [`LINGER`]); see [`H2Io::finish`].

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::{body::Incoming, service::HttpService};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::{identity::SpiffeId, service::DeclaredProtocol, tls};
use mesh_proxy::{h2io::H2Io, hbone};
use tokio::net::TcpStream;
use tracing::Instrument as _;

use crate::{
    Waypoint,
    flow::{Protocol, StreamInfo},
    http_proxy, opaque,
};

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest HTTP/1.1 method read while detecting.
const MAX_METHOD_LEN: usize = 16;
/// How long a stream whose response is complete keeps reading what the
/// client still sends, waiting for its end, before it is reset.
pub const LINGER: Duration = Duration::from_secs(5);

/// Serves one accepted HBONE connection on the current (worker's) thread.
pub fn spawn_connection(waypoint: Arc<Waypoint>, tcp: TcpStream, client: SocketAddr) {
    let span = tracing::info_span!("hbone", %client, peer = tracing::field::Empty);
    tokio::spawn(serve_connection(waypoint, tcp, client).instrument(span));
}

async fn serve_connection(waypoint: Arc<Waypoint>, tcp: TcpStream, client: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let config = match tls::server_config(
        waypoint.identity.id.clone(),
        waypoint.identity.clone(),
        waypoint.identity.roots(),
    ) {
        Ok(config) => Arc::new(config),
        Err(error) => {
            tracing::error!(%error, "no TLS configuration for the waypoint's identity");
            return;
        }
    };
    mesh_proxy::server::serve(tcp, config, |request, respond, peer| {
        serve_stream(waypoint.clone(), request, respond, peer, client)
    })
    .await;
}

/// Serves one CONNECT stream of an HBONE connection whose client proved
/// `peer` from `client`: the authority checked against the services using
/// this waypoint (400 otherwise), 200, then protocol detection and HTTP or
/// opaque TCP. Public so that the fuzz targets (`fuzz/`) serve streams of
/// an in-memory connection exactly as those of a TLS one are served.
pub async fn serve_stream(
    waypoint: Arc<Waypoint>,
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    peer: SpiffeId,
    client: SocketAddr,
) {
    let state = waypoint.state.current();
    let target = hbone::connect_authority(&request).and_then(|dialled| {
        state
            .served(dialled)
            .cloned()
            .map(|served| (dialled, served))
            .ok_or((
                StatusCode::BAD_REQUEST,
                "the authority is not a cluster IP and port of a service using this waypoint",
            ))
    });
    drop(state);
    let (dialled, served) = match target {
        Ok(target) => target,
        Err((status, why)) => {
            tracing::warn!(%status, reason = why, "HBONE request refused");
            let _ = respond.send_response(empty_response(status), true);
            return;
        }
    };
    let send = match respond.send_response(empty_response(StatusCode::OK), false) {
        Ok(send) => send,
        Err(error) => {
            tracing::debug!(%error, "HBONE stream reset before it started");
            return;
        }
    };
    let info = Arc::new(StreamInfo::new(peer, client, dialled, served));
    let mut io = H2Io::new(send, request.into_body());
    let started = Instant::now();
    let declared = info.served.port.declared_protocol();
    let protocol = match declared {
        Some(DeclaredProtocol::Tcp) => Protocol::Opaque,
        Some(DeclaredProtocol::Http) => detect_http(&mut io).await,
        None => detect(&mut io, waypoint.config.detect_timeout).await,
    };
    tracing::debug!(
        protocol = protocol.as_str(),
        declared = declared.is_some(),
        dialled = %info.dialled,
        "stream detected"
    );
    match protocol {
        Protocol::Http1 => {
            let service = http_proxy::service(waypoint.clone(), info.clone(), protocol);
            serve_http1(&mut io, service).await;
        }
        Protocol::Http2 => {
            let service = http_proxy::service(waypoint.clone(), info.clone(), protocol);
            let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(hbone::STREAM_WINDOW)
                .initial_connection_window_size(hbone::CONNECTION_WINDOW)
                .serve_connection(TokioIo::new(&mut io), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "HTTP/2 connection ended with an error");
            }
        }
        Protocol::Opaque => opaque::forward(&waypoint, &info, &mut io, started).await,
    }
    io.finish(LINGER).await;
}

/// Serves HTTP/1.1 on a stream until the client is done with it or the
/// connection fails. A request that does not parse gets 400 from hyper,
/// after which hyper ends the stream's sending side. A client that ends
/// its side after its request (a TCP half-close its agent passes on) is
/// still answered.
pub async fn serve_http1<S>(io: &mut H2Io, service: S)
where
    S: HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // Without it, hyper closes at the end of input while a request is
        // in flight: the request is dropped and the stream reset.
        .half_close(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "HTTP/1.1 connection ended with an error");
    }
}

/// Reads the stream's first bytes (waiting at most `timeout` for the
/// first) and decides what it carries. Nothing is consumed.
pub async fn detect(io: &mut H2Io, timeout: Duration) -> Protocol {
    match tokio::time::timeout(timeout, io.peek(1)).await {
        Ok(Ok(bytes)) if !bytes.is_empty() => {}
        _ => return Protocol::Opaque,
    }
    read_protocol(io).await
}

/// For a port declared HTTP: HTTP/2 when the stream starts with the
/// HTTP/2 preface, else HTTP/1.1, whose parser answers bytes that are not
/// HTTP with 400. Waits for the first bytes as long as the client takes:
/// there is no falling back to opaque TCP. Nothing is consumed.
pub async fn detect_http(io: &mut H2Io) -> Protocol {
    match read_protocol(io).await {
        Protocol::Http2 => Protocol::Http2,
        Protocol::Http1 | Protocol::Opaque => Protocol::Http1,
    }
}

/// Peeks at more of the stream until [`classify`] can tell what it is;
/// a stream that ends first is opaque.
async fn read_protocol(io: &mut H2Io) -> Protocol {
    let mut want = 1;
    loop {
        let Ok(bytes) = io.peek(want).await else {
            return Protocol::Opaque;
        };
        match classify(bytes) {
            Some(protocol) => return protocol,
            None if bytes.len() < want => return Protocol::Opaque,
            None => want = bytes.len() + 1,
        }
    }
}

/// What `prefix` is, or `None` when more bytes are needed to tell.
fn classify(prefix: &[u8]) -> Option<Protocol> {
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // An HTTP/1 request line starts with a method token and a space.
    for (i, &byte) in prefix.iter().enumerate().take(MAX_METHOD_LEN + 1) {
        if byte == b' ' {
            return Some(if i > 0 {
                Protocol::Http1
            } else {
                Protocol::Opaque
            });
        }
        if !byte.is_ascii_uppercase() {
            return Some(Protocol::Opaque);
        }
    }
    (prefix.len() > MAX_METHOD_LEN).then_some(Protocol::Opaque)
}

fn empty_response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests;
