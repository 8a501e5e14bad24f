//! The controller's certificate API, as a node agent or a waypoint calls
//! it: the input's first line is the `Authorization` header, the rest the
//! body (JSON with a PEM CSR), sent as `POST /v1/certificates` over HTTP/1.1
//! to the controller's own handler, which asks an in-memory API server
//! (`TokenReview`, the pod). Any request is answered without a panic, with a
//! documented status and a JSON body; a certificate is granted only to an
//! accepted token for a pod it may ask for, and carries that pod's identity
//! and the CSR's key, and chains to the CA. The token is read as HTTP reads
//! a field value: without the spaces and tabs around it (RFC 9110, 5.5),
//! which the server never sees.

#![no_main]

use std::{
    convert::Infallible,
    sync::{Arc, OnceLock},
};

use ambit_fuzz::{pki, runtime};
use bytes::Bytes;
use clap::Parser as _;
use controller::{
    ca_store::CaStore,
    config::Config,
    server,
    signing::{CertificateResponse, Signer},
};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::{TokenReview, TokenReviewStatus, UserInfo},
        core::v1::{Pod, PodSpec, Secret},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use libfuzzer_sys::fuzz_target;
use mesh_core::ca::{TrustBundle, WorkloadCertificate, spiffe_id_of};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};
use x509_parser::{certification_request::X509CertificationRequest, prelude::FromDer as _};

/// Tokens the in-memory API server knows, and whom they stand for.
const AGENT_TOKEN: &str = "agent-node-1";
const WAYPOINT_TOKEN: &str = "waypoint-wp-0";
const WORKLOAD_TOKEN: &str = "workload-web-1";
const OTHER_AUDIENCE_TOKEN: &str = "other-audience";
const NO_NODE_TOKEN: &str = "agent-without-node";
const UNAVAILABLE_TOKEN: &str = "api-server-down";

fuzz_target!(|data: &[u8]| {
    let (authorization, body) = match data.iter().position(|b| *b == b'\n') {
        Some(end) => (&data[..end], &data[end + 1..]),
        None => (data, &[][..]),
    };
    let store = store();
    let (status, answer) = runtime::block_on(post(store, authorization, body));
    if ambit_fuzz::debug() {
        eprintln!("{status} {}", String::from_utf8_lossy(&answer));
    }
    check(authorization, body, status, &answer);
});

/// Sends the request through the controller's handler on an in-memory
/// HTTP/1.1 connection; the status and body of its answer.
async fn post(store: Arc<CaStore>, authorization: &[u8], body: &[u8]) -> (StatusCode, Bytes) {
    let signer = Arc::new(Signer::new(api_server(), store, config()));
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let service = service_fn(move |request| server::handle(signer.clone(), request));
    tokio::spawn(async move {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .await;
    });
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .expect("an HTTP/1.1 connection");
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/v1/certificates")
        .header(header::HOST, "ambit-controller.ambit-system.svc")
        .header(header::CONTENT_TYPE, "application/json");
    if let Ok(value) = http::HeaderValue::from_bytes(authorization) {
        request = request.header(header::AUTHORIZATION, value);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("a request");
    let response = sender
        .send_request(request)
        .await
        .expect("the controller answers every request");
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .expect("the answer's body")
        .to_bytes();
    (status, answer)
}

/// What must hold of the answer to `authorization` and `body`.
fn check(authorization: &[u8], body: &[u8], status: StatusCode, answer: &[u8]) {
    let json: serde_json::Value = serde_json::from_slice(answer)
        .unwrap_or_else(|error| panic!("the answer ({status}) is not JSON: {error}"));
    if status != StatusCode::OK {
        assert!(
            [400, 401, 403, 404, 500, 503].contains(&status.as_u16()),
            "an undocumented status {status}: {json}"
        );
        assert!(
            json["error"].is_string(),
            "an error without a reason: {json}"
        );
        return;
    }
    let granted: CertificateResponse =
        serde_json::from_value(json).expect("a grant is a certificate response");
    // Found by this target: a header of tabs and `Bearer <token>` was
    // granted, rightly; HTTP drops the whitespace around a field value.
    let token = std::str::from_utf8(authorization)
        .ok()
        .map(|value| value.trim_matches([' ', '\t']))
        .and_then(|value| value.strip_prefix("Bearer "))
        .expect("a grant needs a bearer token");
    let request: serde_json::Value =
        serde_json::from_slice(body).expect("a granted request is JSON");
    let pod = (
        request["pod"]["namespace"].as_str().unwrap_or_default(),
        request["pod"]["name"].as_str().unwrap_or_default(),
    );
    let expected = match (token, pod) {
        (AGENT_TOKEN, ("shop", "web-1")) => pki::id("shop", "web"),
        (WAYPOINT_TOKEN, ("shop", "wp-0")) => pki::id("shop", "wp"),
        _ => panic!("a certificate was granted to token {token:?} for pod {pod:?}"),
    };
    let certificate = WorkloadCertificate::from_chain_pem(&expected, &granted.certificate_chain)
        .expect("the chain loads for the pod's identity");
    assert_eq!(spiffe_id_of(certificate.leaf()).ok(), Some(expected));
    assert_eq!(
        certificate.chain.last(),
        Some(pki::ca().certificate_der()),
        "the chain ends with the CA"
    );
    let bundle = TrustBundle::from_pem(granted.trust_bundle.as_bytes(), "answer".as_ref())
        .expect("the answer's trust bundle loads");
    assert!(bundle.roots().contains(pki::ca().certificate_der()));
    // The certificate is for the CSR's key.
    let csr_pem = request["csr"]
        .as_str()
        .expect("a granted request has a CSR");
    let csr = pem::parse(csr_pem).expect("a granted CSR is PEM");
    let (_, csr) =
        X509CertificationRequest::from_der(csr.contents()).expect("a granted CSR parses");
    let (_, leaf) =
        x509_parser::parse_x509_certificate(certificate.leaf()).expect("the leaf parses");
    assert_eq!(
        leaf.public_key().raw,
        csr.certification_request_info.subject_pki.raw,
        "the certificate is for the CSR's key"
    );
    let _: Vec<CertificateDer<'_>> =
        CertificateDer::pem_slice_iter(granted.certificate_chain.as_bytes())
            .collect::<Result<_, _>>()
            .expect("the chain is PEM");
}

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config::try_parse_from(["ambit-controller"]).expect("the defaults"))
}

/// The controller's CA, loaded once from the in-memory API server's Secret
/// as the controller loads it.
fn store() -> Arc<CaStore> {
    static STORE: OnceLock<Arc<CaStore>> = OnceLock::new();
    STORE
        .get_or_init(|| {
            // The client's buffer task lives on the runtime it is made on.
            let store = runtime::block_on(async { CaStore::load(api_server(), config()).await })
                .expect("the CA Secret loads");
            Arc::new(store)
        })
        .clone()
}

/// A Kubernetes client whose API server is the in-memory [`answer`].
fn api_server() -> kube::Client {
    let service = tower::service_fn(|request: Request<kube::client::Body>| async move {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        Ok::<_, Infallible>(answer(&parts.method, parts.uri.path(), &body))
    });
    kube::Client::new(service, "default")
}

/// The in-memory API server: `TokenReview`s of the known tokens, the pods
/// `shop/web-1` (node-1), `shop/db-1` (node-2) and the waypoint
/// `shop/wp-0`, and the CA Secret; 404 for the rest.
fn answer(method: &Method, path: &str, body: &[u8]) -> Response<kube::client::Body> {
    let json = |status: StatusCode, value: serde_json::Value| {
        let mut response = Response::new(kube::client::Body::from(value.to_string().into_bytes()));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    };
    let not_found = || {
        json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::POST, ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            let Ok(review) = serde_json::from_slice::<TokenReview>(body) else {
                return not_found();
            };
            let token = review.spec.token.clone().unwrap_or_default();
            if token == UNAVAILABLE_TOKEN {
                return json(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({}));
            }
            let reviewed = TokenReview {
                status: Some(review_of(&token)),
                ..review
            };
            json(
                StatusCode::CREATED,
                serde_json::to_value(reviewed).expect("a review serialises"),
            )
        }
        (&Method::GET, ["api", "v1", "namespaces", namespace, "pods", name]) => {
            match pod(namespace, name) {
                Some(pod) => json(StatusCode::OK, serde_json::to_value(pod).expect("a pod")),
                None => not_found(),
            }
        }
        (
            &Method::GET,
            [
                "api",
                "v1",
                "namespaces",
                "ambit-system",
                "secrets",
                "ambit-ca",
            ],
        ) => json(
            StatusCode::OK,
            serde_json::to_value(ca_secret()).expect("a secret"),
        ),
        _ => not_found(),
    }
}

/// What the API server says of `token`.
fn review_of(token: &str) -> TokenReviewStatus {
    let user = |username: &str, extra: &[(&str, &str)]| UserInfo {
        username: Some(username.to_owned()),
        extra: Some(
            extra
                .iter()
                .map(|(key, value)| ((*key).to_owned(), vec![(*value).to_owned()]))
                .collect(),
        ),
        ..UserInfo::default()
    };
    let node = controller::signing::NODE_NAME_EXTRA;
    let pod = controller::signing::POD_NAME_EXTRA;
    let agent = config().agent_user();
    let (user, audiences) = match token {
        AGENT_TOKEN => (user(&agent, &[(node, "node-1")]), "ambit-ca"),
        NO_NODE_TOKEN => (user(&agent, &[]), "ambit-ca"),
        OTHER_AUDIENCE_TOKEN => (user(&agent, &[(node, "node-1")]), "kubernetes"),
        WAYPOINT_TOKEN => (
            user("system:serviceaccount:shop:wp", &[(pod, "wp-0")]),
            "ambit-ca",
        ),
        WORKLOAD_TOKEN => (
            user("system:serviceaccount:shop:web", &[(pod, "web-1")]),
            "ambit-ca",
        ),
        _ => {
            return TokenReviewStatus {
                authenticated: Some(false),
                error: Some("invalid bearer token".to_owned()),
                ..TokenReviewStatus::default()
            };
        }
    };
    TokenReviewStatus {
        authenticated: Some(true),
        audiences: Some(vec![audiences.to_owned()]),
        user: Some(user),
        ..TokenReviewStatus::default()
    }
}

/// The pods the API server has.
fn pod(namespace: &str, name: &str) -> Option<Pod> {
    let (node, account, labels) = match (namespace, name) {
        ("shop", "web-1") => ("node-1", "web", vec![("app", "web")]),
        ("shop", "db-1") => ("node-2", "db", vec![("app", "db")]),
        ("shop", "wp-0") => ("node-2", "wp", vec![("ambit.dev/waypoint", "wp")]),
        _ => return None,
    };
    Some(Pod {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            labels: Some(
                labels
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            service_account_name: Some(account.to_owned()),
            ..PodSpec::default()
        }),
        ..Pod::default()
    })
}

/// The CA Secret: the process's throwaway CA.
fn ca_secret() -> Secret {
    let (cert, key) = pki::ca_files();
    let read = |path| ByteString(std::fs::read(path).expect("the throwaway CA's files"));
    Secret {
        metadata: ObjectMeta {
            namespace: Some("ambit-system".to_owned()),
            name: Some("ambit-ca".to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(
            [
                ("ca.crt".to_owned(), read(cert)),
                ("ca.key".to_owned(), read(key)),
            ]
            .into(),
        ),
        ..Secret::default()
    }
}
