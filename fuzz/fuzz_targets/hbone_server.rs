//! The HBONE server's request handling, past the TLS handshake: the input
//! is what a client sends after the HTTP/2 connection preface (SETTINGS,
//! HEADERS of CONNECT requests, DATA before the response as early data,
//! resets, pings...), served on an in-memory stream by mesh-proxy's server
//! with HBONE's HTTP/2 settings, each stream decided as the node agent
//! decides it (`hbone::connect_target`) and, once allowed, echoed through
//! `H2Io` as an application would answer. Any bytes are served without a
//! panic or a hang, and a stream that is not a CONNECT to an address of the
//! pod on a port that is not the mesh's never gets a 200.

#![no_main]

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use ambit_fuzz::{pki, runtime};
use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;
use mesh_proxy::{h2io::H2Io, hbone, server};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The HTTP/2 client connection preface, which the harness sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The pod's own addresses.
const POD_IPS: [&str; 2] = ["10.10.2.11", "fd00:10:10:2::11"];
/// The mesh's ports in the pod.
const RESERVED: [u16; 3] = [15001, 15006, 15008];
/// How long an allowed stream lingers after its echo, as the waypoint's do.
const LINGER: Duration = Duration::from_secs(5);

/// What the server answered to one stream.
#[derive(Debug)]
struct Answer {
    method: Method,
    uri: Uri,
    status: StatusCode,
}

fuzz_target!(|data: &[u8]| {
    let answers = runtime::block_on(serve(data));
    for answer in answers.lock().expect("answers").iter() {
        if ambit_fuzz::debug() {
            eprintln!("{answer:?}");
        }
        if answer.status == StatusCode::OK {
            assert!(
                is_connect_to_the_pod(&answer.method, &answer.uri),
                "200 for a stream that is not a CONNECT to the pod: {answer:?}"
            );
        }
    }
});

/// Serves `data` (after the preface) on one connection until the client's
/// side has ended and every stream is done; what each stream got.
async fn serve(data: &[u8]) -> Arc<Mutex<Vec<Answer>>> {
    let answers = Arc::new(Mutex::new(Vec::new()));
    let (client, server_io) = tokio::io::duplex(64 * 1024);
    let recorded = answers.clone();
    let server = tokio::spawn(async move {
        let Ok(connection) = hbone::server_builder()
            .handshake::<_, Bytes>(server_io)
            .await
        else {
            return;
        };
        let peer = pki::id("shop", "frontend");
        server::serve_accepted(
            peer,
            connection,
            std::future::pending(),
            |request, respond, _| stream(request, respond, recorded.clone()),
        )
        .await;
    });
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let send = async {
        // The server may stop reading (a connection error): then the
        // rest is not sent.
        let _ = to_server.write_all(PREFACE).await;
        let _ = to_server.write_all(data).await;
        // The client's end would end the connection at once, with streams
        // it opened not yet served (h2 drops them): the client waits
        // until the server has read everything and waits for more (in
        // paused time, until every task waits).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = to_server.shutdown().await;
    };
    let receive = async {
        let mut sink = Vec::new();
        let _ = from_server.read_to_end(&mut sink).await;
    };
    tokio::join!(send, receive);
    server.await.expect("the connection's task does not panic");
    // Streams still lingering finish in (paused) time.
    tokio::time::sleep(LINGER * 2).await;
    answers
}

/// One stream, as the node agent's inbound HBONE server decides it; an
/// allowed one is answered 200 and echoed back, its early data first.
async fn stream(
    request: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    answers: Arc<Mutex<Vec<Answer>>>,
) {
    let own: Vec<IpAddr> = POD_IPS
        .iter()
        .map(|ip| ip.parse().expect("an address"))
        .collect();
    let status = match hbone::connect_target(&request, &own, &RESERVED) {
        Ok(_) => StatusCode::OK,
        Err((status, _)) => status,
    };
    answers.lock().expect("answers").push(Answer {
        method: request.method().clone(),
        uri: request.uri().clone(),
        status,
    });
    let mut response = Response::new(());
    *response.status_mut() = status;
    if status != StatusCode::OK {
        let _ = respond.send_response(response, true);
        return;
    }
    let Ok(send) = respond.send_response(response, false) else {
        return;
    };
    let mut io = H2Io::new(send, request.into_body());
    // What the client sent with its CONNECT, before the response.
    let _ = io.peek(1).await;
    let mut buffer = vec![0; 16 * 1024];
    loop {
        match io.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if io.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = io.shutdown().await;
    io.finish(LINGER).await;
}

/// Whether a request is a CONNECT to an address of the pod on a port that
/// is not the mesh's, checked from the URI's parts rather than as
/// `hbone::connect_target` reads it.
fn is_connect_to_the_pod(method: &Method, uri: &Uri) -> bool {
    let Some(authority) = uri.authority() else {
        return false;
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let Ok(ip) = host.parse::<IpAddr>() else {
        return false;
    };
    let own = POD_IPS
        .iter()
        .any(|own| own.parse::<IpAddr>().ok() == Some(ip.to_canonical()));
    let port = authority.port_u16();
    method == Method::CONNECT
        && uri.scheme().is_none()
        && own
        && port.is_some_and(|port| !RESERVED.contains(&port))
}
