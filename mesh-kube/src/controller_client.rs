//! The controller's CA, as the node agents and the waypoints ask it
//! (Kubernetes mode): one HTTPS request per certificate,
//! `POST /v1/certificates` with the pod, a CSR for the pod's identity, and
//! the caller's projected service-account token (audience `ambit-ca`; the
//! file is read again for every request, because the kubelet rotates it).
//! The controller's certificate is verified against the mesh's trust
//! bundle of the moment.
//!
//! Requests never run on the caller's thread. They run on a runtime of
//! their own ([`CaRuntime`], one thread), so the agent's enrollment path,
//! which is synchronous and shares the control runtime with the watchers,
//! the admin API and the probes, never waits for the network: it asks for
//! a certificate and is told when it arrives (see the agent's
//! `CertManager::ensure`).

use std::{path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use mesh_core::{ca::WorkloadCertificate, identity::SpiffeId, workload::PodKey};
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The longest a certificate request may take, connect to answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The controller's port when `--ca-address` names none.
pub const DEFAULT_PORT: u16 = 15012;
/// How often the trust bundle file (the controller's `ConfigMap`, mounted)
/// is read again for changes.
pub const TRUST_BUNDLE_POLL: Duration = Duration::from_secs(5);
/// The wait after a first failed request for a certificate; it doubles
/// with each further failure in a row (see [`backoff`]).
pub const RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between two requests for one certificate.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Why the controller did not give a certificate.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// `--ca-address` is not an `https://host:port` URL.
    #[error(
        "--ca-address {0:?} is not an https://host[:port] URL (e.g. https://ambit-controller.ambit-system.svc:15012)"
    )]
    Address(String),
    /// The thread that talks to the controller could not start.
    #[error("cannot start the thread that asks the controller for certificates: {0}")]
    Runtime(#[source] std::io::Error),
    /// The token file could not be read.
    #[error(
        "cannot read the service-account token {path} for the controller at {address}: {source} (is the projected token with audience ambit-ca mounted? see manifests/node-agent/daemonset.yaml, or set --ca-token-file)"
    )]
    Token {
        /// `--ca-address`.
        address: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The request failed on the way.
    #[error(
        "cannot reach the controller at {address}: {reason} (is ambit-controller running and its Service reachable, and does its certificate chain to --trust-bundle?)"
    )]
    Unreachable {
        /// `--ca-address`.
        address: String,
        /// What failed.
        reason: String,
    },
    /// The controller refused.
    #[error(
        "the controller at {address} refused the certificate of {identity} for pod {pod} ({status}): {reason}"
    )]
    Refused {
        /// `--ca-address`.
        address: String,
        /// The identity asked for.
        identity: Box<SpiffeId>,
        /// The pod it was asked for.
        pod: PodKey,
        /// The HTTP status.
        status: u16,
        /// The controller's `error` message.
        reason: String,
    },
    /// The answer is not a usable certificate.
    #[error("the controller at {address} sent an unusable certificate: {reason}")]
    BadAnswer {
        /// `--ca-address`.
        address: String,
        /// Why.
        reason: String,
    },
}

/// Asks the controller's CA for certificates.
#[derive(Clone, Debug)]
pub struct ControllerClient {
    address: String,
    host: String,
    port: u16,
    token_file: PathBuf,
}

/// The runtime certificate requests run on: one thread, named
/// `ambit-ca-client`, that lives as long as the process.
#[derive(Clone, Debug)]
pub struct CaRuntime(tokio::runtime::Handle);

/// The wait before asking the controller again after `failures` failed
/// requests in a row: [`RETRY_FIRST`], doubling, at most [`RETRY_MAX`].
/// The node agent and the waypoint both wait this way.
#[must_use]
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (RETRY_FIRST * 2u32.pow(doublings)).min(RETRY_MAX)
}

// === impl ControllerError ===

impl ControllerError {
    /// Whether the refusal is about the pod named (it does not exist, or
    /// may not have this identity from this node), so that another pod of
    /// the same identity may still get it.
    #[must_use]
    pub fn is_about_the_pod(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                status: 403 | 404,
                ..
            }
        )
    }

    /// Whether the controller says the pod does not exist.
    #[must_use]
    pub fn pod_is_gone(&self) -> bool {
        matches!(self, Self::Refused { status: 404, .. })
    }
}

// === impl ControllerClient ===

impl ControllerClient {
    /// A client for `address` (`https://host[:port]`, port
    /// [`DEFAULT_PORT`] by default) authenticating with the token in
    /// `token_file`.
    pub fn new(address: &str, token_file: PathBuf) -> Result<Self, ControllerError> {
        let bad = || ControllerError::Address(address.to_owned());
        let rest = address.strip_prefix("https://").ok_or_else(bad)?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            // A bare IPv6 address has colons but no port.
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                (host, port.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (authority, DEFAULT_PORT),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || ServerName::try_from(host).is_err() {
            return Err(bad());
        }
        Ok(Self {
            address: address.to_owned(),
            host: host.to_owned(),
            port,
            token_file,
        })
    }

    /// `--ca-address`, for messages.
    #[must_use]
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Asks for a certificate of `identity` for `pod`, certifying the key
    /// of `csr_der`; the controller is verified against `roots`.
    pub async fn sign(
        &self,
        roots: Arc<RootCertStore>,
        pod: &PodKey,
        identity: &SpiffeId,
        csr_der: &[u8],
    ) -> Result<WorkloadCertificate, ControllerError> {
        let token =
            std::fs::read_to_string(&self.token_file).map_err(|source| ControllerError::Token {
                address: self.address.clone(),
                path: self.token_file.clone(),
                source,
            })?;
        let body = serde_json::json!({
            "pod": {"namespace": pod.namespace, "name": pod.name},
            "csr": pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr_der.to_vec())),
        })
        .to_string();
        let unreachable = |reason: String| ControllerError::Unreachable {
            address: self.address.clone(),
            reason,
        };
        let (status, text) =
            tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(roots, token.trim(), body))
                .await
                .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
                .map_err(unreachable)?;
        let json: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        if status != 200 {
            return Err(ControllerError::Refused {
                address: self.address.clone(),
                identity: Box::new(identity.clone()),
                pod: pod.clone(),
                status,
                reason: json["error"].as_str().map_or_else(
                    || String::from_utf8_lossy(&text).into_owned(),
                    str::to_owned,
                ),
            });
        }
        let chain = json["certificateChain"].as_str().unwrap_or_default();
        WorkloadCertificate::from_chain_pem(identity, chain).map_err(|e| {
            ControllerError::BadAnswer {
                address: self.address.clone(),
                reason: e.to_string(),
            }
        })
    }

    /// One POST over a fresh TLS 1.3 connection: (status, body).
    async fn exchange(
        &self,
        roots: Arc<RootCertStore>,
        token: &str,
        body: String,
    ) -> Result<(u16, Bytes), String> {
        let tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| format!("TLS configuration: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect to {}:{}: {e}", self.host, self.port))?;
        let name =
            ServerName::try_from(self.host.clone()).map_err(|e| format!("server name: {e}"))?;
        let tls = TlsConnector::from(Arc::new(tls))
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(connection);
        let request = hyper::Request::post("/v1/certificates")
            .header(hyper::header::HOST, self.host.as_str())
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

// === impl CaRuntime ===

impl CaRuntime {
    /// Starts the thread and its runtime.
    pub fn start() -> Result<Self, ControllerError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ControllerError::Runtime)?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("ambit-ca-client".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .map_err(ControllerError::Runtime)?;
        Ok(Self(handle))
    }

    /// Runs `request` on the thread.
    pub fn spawn(&self, request: impl Future<Output = ()> + Send + 'static) {
        drop(self.0.spawn(request));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(address: &str) -> Result<ControllerClient, ControllerError> {
        ControllerClient::new(address, "/t".into())
    }

    #[test]
    fn the_backoff_doubles_up_to_its_limit() {
        assert_eq!(backoff(1), RETRY_FIRST);
        assert_eq!(backoff(2), RETRY_FIRST * 2);
        assert_eq!(backoff(4), RETRY_FIRST * 8);
        assert_eq!(backoff(12), RETRY_MAX);
        assert_eq!(backoff(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn addresses_name_host_and_port() {
        for (address, host, port) in [
            (
                "https://ambit-controller.ambit-system.svc:15012",
                "ambit-controller.ambit-system.svc",
                15012,
            ),
            ("https://10.0.0.1", "10.0.0.1", DEFAULT_PORT),
            ("https://10.0.0.1:9000/", "10.0.0.1", 9000),
            ("https://[fd00::1]:9000", "fd00::1", 9000),
            ("https://[fd00::1]", "fd00::1", DEFAULT_PORT),
        ] {
            let c = client(address).unwrap();
            assert_eq!((c.host.as_str(), c.port), (host, port), "{address}");
        }
        for bad in [
            "http://x:1",
            "https://:1",
            "https://x:port",
            "x:1",
            "https://a b",
        ] {
            let error = client(bad).unwrap_err().to_string();
            assert!(error.contains("--ca-address"), "{bad}: {error}");
        }
    }

    #[test]
    fn only_refusals_about_the_pod_let_another_pod_try() {
        let refused = |status| ControllerError::Refused {
            address: "https://c".into(),
            identity: Box::new("spiffe://cluster.local/ns/a/sa/b".parse().unwrap()),
            pod: PodKey {
                namespace: "a".into(),
                name: "p".into(),
            },
            status,
            reason: String::new(),
        };
        assert!(refused(403).is_about_the_pod() && !refused(403).pod_is_gone());
        assert!(refused(404).is_about_the_pod() && refused(404).pod_is_gone());
        assert!(!refused(401).is_about_the_pod() && !refused(400).is_about_the_pod());
        let unreachable = ControllerError::Unreachable {
            address: "https://c".into(),
            reason: "connect".into(),
        };
        assert!(!unreachable.is_about_the_pod());
    }

    fn pod_and_identity() -> (PodKey, SpiffeId) {
        let pod = PodKey {
            namespace: "a".into(),
            name: "p".into(),
        };
        (pod, "spiffe://cluster.local/ns/a/sa/b".parse().unwrap())
    }

    #[tokio::test]
    async fn a_missing_token_file_is_named_with_a_hint() {
        let client =
            ControllerClient::new("https://127.0.0.1:1", "/nonexistent/ca-token".into()).unwrap();
        let (pod, identity) = pod_and_identity();
        let error = client
            .sign(Arc::new(RootCertStore::empty()), &pod, &identity, b"csr")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("/nonexistent/ca-token")
                && error.contains("https://127.0.0.1:1")
                && error.contains("audience ambit-ca"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_controller_is_named() {
        let token = std::env::temp_dir().join(format!("ambit-token-{}", std::process::id()));
        std::fs::write(&token, "t").unwrap();
        // Port 1 on loopback: nothing listens, the connect is refused.
        let client = ControllerClient::new("https://127.0.0.1:1", token.clone()).unwrap();
        let (pod, identity) = pod_and_identity();
        let error = client
            .sign(Arc::new(RootCertStore::empty()), &pod, &identity, b"csr")
            .await
            .unwrap_err();
        let _ = std::fs::remove_file(&token);
        assert!(
            matches!(error, ControllerError::Unreachable { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("https://127.0.0.1:1"), "{error}");
    }
}
