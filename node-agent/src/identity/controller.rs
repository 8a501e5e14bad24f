//! The controller's CA, as the node agent asks it (Kubernetes mode): one
//! HTTPS request per certificate, `POST /v1/certificates` with the pod, the
//! identity expected, a CSR, and the agent's projected service-account
//! token (re-read every time: the kubelet rotates it). The controller is
//! verified against the mesh's trust bundle.
//!
//! Certificates are asked for on the enrollment path, which is synchronous
//! and runs on the control runtime, and at rotation. A request runs on a
//! thread of its own with a small runtime, and the caller waits for it
//! (at most [`REQUEST_TIMEOUT`]): it happens once per identity and
//! half-lifetime, and an enrollment cannot go on without the certificate
//! anyway.

use std::{path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use mesh_core::{ca::WorkloadCertificate, identity::SpiffeId, workload::PodKey};
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The longest a certificate request may take, connect to answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the controller did not give a certificate.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// `--ca-address` is not an `https://host:port` URL.
    #[error("--ca-address {0:?} is not an https://host[:port] URL")]
    Address(String),
    /// The token file could not be read.
    #[error(
        "cannot read the service-account token {path}: {source} (is the projected token with audience ambit-ca mounted? see manifests/node-agent/daemonset.yaml)"
    )]
    Token {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The request failed on the way.
    #[error(
        "cannot reach the controller at {address}: {reason} (is ambit-controller running, and does its certificate chain to --trust-bundle?)"
    )]
    Unreachable {
        /// `--ca-address`.
        address: String,
        /// What failed.
        reason: String,
    },
    /// The controller refused.
    #[error(
        "the controller at {address} refused the certificate for {identity} ({status}): {reason}"
    )]
    Refused {
        /// `--ca-address`.
        address: String,
        /// The identity asked for.
        identity: Box<SpiffeId>,
        /// The HTTP status.
        status: u16,
        /// Its `error` message.
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
#[derive(Clone)]
pub struct ControllerClient {
    address: String,
    host: String,
    port: u16,
    token_file: PathBuf,
    tls: Arc<ClientConfig>,
}

// === impl ControllerClient ===

impl ControllerClient {
    /// A client for `address` (`https://host[:port]`, port 15012 by
    /// default), trusting `roots`, authenticating with the token in
    /// `token_file`.
    pub fn new(
        address: &str,
        roots: Arc<RootCertStore>,
        token_file: PathBuf,
    ) -> Result<Self, ControllerError> {
        let bad = || ControllerError::Address(address.to_owned());
        let rest = address.strip_prefix("https://").ok_or_else(bad)?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                (host, port.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (authority, 15012),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| ControllerError::Address(format!("{address}: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Self {
            address: address.to_owned(),
            host: host.to_owned(),
            port,
            token_file,
            tls: Arc::new(tls),
        })
    }

    /// Asks for `identity`'s certificate for `pod`, certifying the key of
    /// `csr_der`. Blocks the calling thread (see the module docs).
    pub fn sign(
        &self,
        pod: &PodKey,
        identity: &SpiffeId,
        csr_der: &[u8],
    ) -> Result<WorkloadCertificate, ControllerError> {
        let token =
            std::fs::read_to_string(&self.token_file).map_err(|source| ControllerError::Token {
                path: self.token_file.clone(),
                source,
            })?;
        let body = serde_json::json!({
            "pod": {"namespace": pod.namespace, "name": pod.name},
            "identity": identity.to_string(),
            "csr": pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr_der.to_vec())),
        })
        .to_string();
        let client = self.clone();
        let token = token.trim().to_owned();
        let answer = std::thread::scope(|scope| {
            scope
                .spawn(move || client.post(&token, body))
                .join()
                .unwrap_or_else(|_| Err("the request thread panicked".to_owned()))
        });
        let (status, text) = answer.map_err(|reason| ControllerError::Unreachable {
            address: self.address.clone(),
            reason,
        })?;
        let json: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        if status != 200 {
            return Err(ControllerError::Refused {
                address: self.address.clone(),
                identity: Box::new(identity.clone()),
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

    /// One POST on a runtime of its own: (status, body).
    fn post(&self, token: &str, body: String) -> Result<(u16, Bytes), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        runtime.block_on(async {
            tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(token, body))
                .await
                .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
        })
    }

    async fn exchange(&self, token: &str, body: String) -> Result<(u16, Bytes), String> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name =
            ServerName::try_from(self.host.clone()).map_err(|e| format!("server name: {e}"))?;
        let tls = TlsConnector::from(self.tls.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client(address: &str) -> Result<ControllerClient, ControllerError> {
        ControllerClient::new(address, Arc::new(RootCertStore::empty()), "/t".into())
    }

    #[test]
    fn addresses_name_host_and_port() {
        let c = client("https://ambit-controller.ambit-system.svc:15012").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port),
            ("ambit-controller.ambit-system.svc", 15012)
        );
        let c = client("https://10.0.0.1").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("10.0.0.1", 15012));
        let c = client("https://[fd00::1]:9000").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("fd00::1", 9000));
        for bad in ["http://x:1", "https://:1", "https://x:port"] {
            assert!(client(bad).is_err(), "{bad}");
        }
    }
}
