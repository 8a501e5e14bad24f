//! The HTTPS API: TLS 1.3 with the CA-issued serving certificate of the
//! moment, HTTP/1.1, `POST /v1/certificates` and `GET /healthz`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use mesh_proxy::accept::accept_until;
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{ca_store::CaStore, config::Config, signing::Signer};

/// The largest request body read: a CSR and a pod name fit many times over.
const MAX_BODY: usize = 64 * 1024;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another process using it?)")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error("cannot configure TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Picks the current CA's serving certificate for every handshake.
#[derive(Debug)]
struct CurrentCertificate(Arc<CaStore>);

impl std::fmt::Debug for CaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaStore")
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().serving.clone())
    }
}

/// Serves until the process ends.
pub async fn serve(
    config: &Config,
    store: Arc<CaStore>,
    signer: Arc<Signer>,
) -> Result<(), ServerError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let tls =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(CurrentCertificate(store)));
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    accept_until(&listener, std::future::pending(), |stream, peer| {
        let acceptor = acceptor.clone();
        let signer = signer.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
            };
            let service = service_fn(move |request| handle(signer.clone(), request));
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    })
    .await;
    Ok(())
}

/// Answers one request of the API: `POST /v1/certificates` decided by
/// `signer`, `GET /healthz`, 404 for anything else. Public so that the fuzz
/// targets (`fuzz/`) send requests through it as a connection does.
pub async fn handle(
    signer: Arc<Signer>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let route = (request.method().clone(), request.uri().path().to_owned());
    Ok(match (route.0, route.1.as_str()) {
        (Method::GET, "/healthz") => respond(StatusCode::OK, "{\"status\": \"ok\"}\n".into()),
        (Method::POST, "/v1/certificates") => {
            let bearer = request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::to_owned);
            match Limited::new(request.into_body(), MAX_BODY).collect().await {
                Err(error) => error_response(400, &format!("cannot read the body: {error}")),
                Ok(body) => match signer.sign(bearer.as_deref(), &body.to_bytes()).await {
                    Ok(granted) => respond(
                        StatusCode::OK,
                        serde_json::to_string(&granted).unwrap_or_default(),
                    ),
                    Err(error) => error_response(error.status(), &error.to_string()),
                },
            }
        }
        (_, path) => error_response(
            404,
            &format!("no such endpoint {path}: try POST /v1/certificates"),
        ),
    })
}

fn error_response(status: u16, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string();
    respond(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
}

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
