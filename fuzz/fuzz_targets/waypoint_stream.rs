//! The waypoint's streams: protocol detection, then HTTP/1.1 or HTTP/2
//! request handling up to the route match (authorization, route choice,
//! redirects, header filters; the backends have no endpoints, so nothing
//! leaves the process). The input's first byte picks the cluster IP and
//! port the CONNECT dials (its low two bits: a port declared HTTP, one
//! without `appProtocol` where detection decides, one declared TCP, one the
//! waypoint does not serve) and when the client ends its side (bit 2 set:
//! with its last bytes, a half-close; clear: once the waypoint has answered
//! what it could); the rest is what the client sends in the stream, in
//! DATA frames cut at each `ff ff ff fe` (which is not sent). Each stream goes through
//! the waypoint's own HBONE stream handler on an in-memory HTTP/2
//! connection. Any input: no panic, no hang; a port the waypoint does not
//! serve gets 400 and a served one 200; an HTTP/1.1 `DELETE`, which a
//! policy denies, is answered 403 (or a parse error), never routed; and an
//! opaque stream with no endpoint gets no byte.

#![no_main]

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use ambit_fuzz::{pki, runtime};
use bytes::Bytes;
use clap::Parser as _;
use http::{Method, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use mesh_core::{
    local_config, policy::DEFAULT_ROOT_NAMESPACE, published::Published, route::RouteTable,
};
use mesh_proxy::{hbone, server};
use waypoint::{
    Waypoint, config::Config, identity::WaypointIdentity, inbound, metrics::Metrics,
    runtime::Runtime, state, upstream::Upstreams, worker_stats::WorkerStats,
};

/// Where the payload is cut into DATA frames (rare in HTTP and in HTTP/2
/// frames alike).
const SEPARATOR: &[u8] = b"\xff\xff\xff\xfe";

/// What the stream dials, by the input's first byte.
const DIALLED: [(&str, Port); 4] = [
    ("10.96.0.20:80", Port::Http),
    ("10.96.0.20:9000", Port::Undeclared),
    ("10.96.0.20:5432", Port::Tcp),
    ("10.96.0.99:80", Port::NotServed),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Http,
    Undeclared,
    Tcp,
    NotServed,
}

/// The waypoint's configuration: `shop/backend` uses waypoint `wp`, with a
/// route (a canary split, a redirect, header filters, timeouts, retries),
/// and policies that deny `DELETE` and allow the frontend.
const CONFIG: &str = r#"
pods:
  - {name: frontend, namespace: shop, serviceAccount: frontend, ips: [10.10.1.11], node: node-1, labels: {app: frontend}}
services:
  - name: backend
    namespace: shop
    waypoint: wp
    clusterIPs: [10.96.0.20]
    selector: {tier: backend}
    ports:
      - {name: http, port: 80, targetPort: 8080, appProtocol: http}
      - {name: detect, port: 9000, targetPort: 9000}
      - {name: db, port: 5432, targetPort: 5432, appProtocol: tcp}
  - {name: backend-v1, namespace: shop, selector: {tier: backend, version: v1}, ports: [{port: 80, targetPort: 8080}]}
  - {name: backend-v2, namespace: shop, selector: {tier: backend, version: v2}, ports: [{port: 80, targetPort: 8080}]}
policies:
  - metadata: {name: no-delete, namespace: shop}
    spec:
      targetRefs: [{kind: Service, group: "", name: backend}]
      action: DENY
      rules: [{to: [{operation: {methods: [DELETE]}}]}]
  - metadata: {name: frontend, namespace: shop}
    spec:
      targetRefs: [{kind: Service, group: "", name: backend}]
      rules:
        - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]
          to: [{operation: {notPaths: ["/admin/*"]}}]
routes:
  - metadata: {name: backend, namespace: shop}
    spec:
      parentRefs: [{kind: Service, group: "", name: backend}]
      rules:
        - matches: [{path: {type: PathPrefix, value: /api}}]
          backendRefs: [{name: backend-v1, port: 80, weight: 90}, {name: backend-v2, port: 80, weight: 10}]
          timeouts: {request: 2s, backendRequest: 500ms}
          retry: {codes: [503], attempts: 2, backoff: 25ms}
        - matches: [{path: {type: PathPrefix, value: /old}}]
          filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}}]
        - matches: [{headers: [{name: x-canary, value: "yes"}]}]
          filters:
            - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: canary}], remove: [x-debug]}}
            - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-served-by, value: wp}]}}
          backendRefs: [{name: backend-v2, port: 80}]
"#;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let (dialled, port) = DIALLED[usize::from(selector & 3)];
    let dialled: SocketAddr = dialled.parse().expect("an address");
    let end_at_once = selector & 4 != 0;
    let waypoint = waypoint();
    let (status, answer) = runtime::block_on(exchange(waypoint, dialled, payload, end_at_once));
    if ambit_fuzz::debug() {
        eprintln!("{dialled} {status:?} {}", String::from_utf8_lossy(&answer));
    }
    if port == Port::NotServed {
        assert_eq!(
            status,
            Some(StatusCode::BAD_REQUEST),
            "a port the waypoint does not serve"
        );
        return;
    }
    let Some(status) = status else {
        return;
    };
    assert_eq!(status, StatusCode::OK, "a served port's CONNECT");
    match port {
        Port::Tcp => assert!(
            answer.is_empty(),
            "an opaque stream without endpoints got {answer:?}"
        ),
        Port::Http | Port::Undeclared if payload.starts_with(b"DELETE ") => {
            let first = answer
                .strip_prefix(b"HTTP/1.1 ")
                .and_then(|rest| rest.get(..3))
                .map(|code| String::from_utf8_lossy(code).into_owned());
            assert!(
                matches!(
                    first.as_deref(),
                    None | Some("403" | "400" | "413" | "414" | "431" | "501" | "505")
                ),
                "a DELETE was answered {first:?}, not denied: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        _ => {}
    }
});

/// One CONNECT to `dialled` carrying `payload` over an in-memory HBONE
/// connection to the waypoint, the client's side ended with the payload's
/// last bytes or once the waypoint waits for more: the CONNECT's status
/// (`None` when the stream was reset before the client read it), and what
/// came back in the stream.
async fn exchange(
    waypoint: Arc<Waypoint>,
    dialled: SocketAddr,
    payload: &[u8],
    end_at_once: bool,
) -> (Option<StatusCode>, Vec<u8>) {
    let (client_io, server_io) = tokio::io::duplex(256 * 1024);
    let server = tokio::spawn(async move {
        let Ok(connection) = hbone::server_builder()
            .handshake::<_, Bytes>(server_io)
            .await
        else {
            return;
        };
        let client: SocketAddr = "10.10.1.11:40000".parse().expect("an address");
        server::serve_accepted(
            pki::id("shop", "frontend"),
            connection,
            std::future::pending(),
            |request, respond, peer| {
                inbound::serve_stream(waypoint.clone(), request, respond, peer, client)
            },
        )
        .await;
    });
    let result = async {
        let (client, connection) = h2::client::handshake(client_io).await.ok()?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.ok()?;
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(dialled.to_string())
            .body(())
            .ok()?;
        let (response, mut send) = client.send_request(request, false).ok()?;
        for chunk in chunks(payload) {
            if send
                .send_data(Bytes::copy_from_slice(chunk), false)
                .is_err()
            {
                break;
            }
        }
        if !end_at_once {
            // In paused time: until every task waits, the waypoint for
            // more of the stream.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let _ = send.send_data(Bytes::new(), true);
        let response = response.await.ok()?;
        let status = response.status();
        let mut body = response.into_body();
        let mut answer = Vec::new();
        while let Some(Ok(data)) = body.data().await {
            let _ = body.flow_control().release_capacity(data.len());
            answer.extend_from_slice(&data);
        }
        Some((status, answer))
    }
    .await;
    drop(server);
    match result {
        Some((status, answer)) => (Some(status), answer),
        None => (None, Vec::new()),
    }
}

/// The waypoint, built once: its identity (from the process's throwaway
/// CA), its state from [`CONFIG`], its metrics and runtime.
fn waypoint() -> Arc<Waypoint> {
    static WAYPOINT: OnceLock<Arc<Waypoint>> = OnceLock::new();
    WAYPOINT
        .get_or_init(|| {
            let (ca_cert, ca_key) = pki::ca_files();
            let config = Config::try_parse_from([
                "ambit-waypoint".as_ref(),
                "--name".as_ref(),
                "wp".as_ref(),
                "--namespace".as_ref(),
                "shop".as_ref(),
                "--config".as_ref(),
                "/dev/null".as_ref(),
                "--ca-cert".as_ref(),
                ca_cert.as_os_str(),
                "--ca-key".as_ref(),
                ca_key.as_os_str(),
                "--access-log".as_ref(),
                "false".as_ref(),
            ])
            .expect("the waypoint's flags");
            let identity = Arc::new(
                WaypointIdentity::new(pki::id("shop", "wp"), ca_cert, ca_key, config.cert_lifetime)
                    .expect("the waypoint's identity"),
            );
            let name = state::WaypointName {
                namespace: "shop".to_owned(),
                name: "wp".to_owned(),
                trust_domain: pki::TRUST_DOMAIN.to_owned(),
            };
            let snapshot = local_config::parse(CONFIG, DEFAULT_ROOT_NAMESPACE)
                .expect("the waypoint's configuration");
            let built = state::State::build(snapshot, &name, &RouteTable::default());
            assert!(built.route_errors.is_empty(), "{:?}", built.route_errors);
            let state = Arc::new(Published::new(built));
            let runtime = Arc::new(Runtime::default());
            let metrics = Arc::new(Metrics::new());
            Arc::new(Waypoint {
                name,
                upstreams: Upstreams::new(
                    identity.clone(),
                    state.clone(),
                    runtime.breakers(),
                    metrics.backend_connections.clone(),
                ),
                identity,
                state,
                runtime,
                metrics,
                config: Arc::new(config),
                worker: 0,
                workers: Arc::new(WorkerStats::new(1)),
            })
        })
        .clone()
}

/// The payload cut into the DATA frames a client sends: at each
/// [`SEPARATOR`], which is left out.
fn chunks(payload: &[u8]) -> Vec<&[u8]> {
    let mut chunks = Vec::new();
    let mut rest = payload;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        chunks.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    chunks.push(rest);
    chunks.retain(|chunk| !chunk.is_empty());
    chunks
}
