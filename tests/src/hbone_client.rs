//! A test-side HBONE client: TLS 1.3 with a certificate the test chooses
//! (from the test bed's CA, another CA, expired...) and HTTP/2 CONNECT, so
//! tests can probe an agent's HBONE port the way a peer agent would, or the
//! way an attacker might. The TCP connection starts inside a network
//! namespace of the test bed.

use std::{net::SocketAddr, path::Path, sync::Arc, time::SystemTime};

use bytes::Bytes;
use mesh_core::{
    ca::{CertificateAuthority, WorkloadCertificate, WorkloadKey},
    identity::SpiffeId,
};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
};

/// A client certificate and its key.
pub struct ClientIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 key.
    pub key: PrivateKeyDer<'static>,
}

/// What an HBONE handshake produced.
pub struct Session {
    /// HTTP/2 requests on the connection.
    pub send: h2::client::SendRequest<Bytes>,
    /// The server's certificate chain as presented.
    pub server_chain: Vec<CertificateDer<'static>>,
}

#[must_use]
/// Issues a certificate for `identity` from the CA in `ca_dir`, valid over
/// `[not_before, not_after]`.
pub fn issue(
    ca_dir: &Path,
    identity: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> ClientIdentity {
    let ca = CertificateAuthority::load(&ca_dir.join("ca.pem"), &ca_dir.join("ca-key.pem"))
        .expect("the test CA loads");
    let key = WorkloadKey::generate().expect("key");
    let csr = key.csr_der(identity).expect("csr");
    let WorkloadCertificate { chain, .. } = ca
        .sign_csr_with_validity(&csr, identity, not_before, not_after)
        .expect("signed");
    ClientIdentity {
        chain,
        key: key.private_key_der(),
    }
}

/// Issues a certificate for `identity` from the CA in `ca_dir`, valid from a
/// day ago to a day from now.
#[must_use]
pub fn issue_current(ca_dir: &Path, identity: &SpiffeId) -> ClientIdentity {
    let now = SystemTime::now();
    let day = std::time::Duration::from_hours(24);
    issue(ca_dir, identity, now - day, now + day)
}

/// Opens TCP (from inside `netns`) + TLS + HTTP/2 to `addr`, presenting
/// `client` if given. The server's certificate is accepted as is; tests
/// inspect it. Errors are returned as text for assertions.
pub async fn connect(
    netns: &Path,
    addr: SocketAddr,
    client: Option<ClientIdentity>,
) -> Result<Session, String> {
    let tcp = crate::netns::run_in_netns(netns, || {
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
    })
    .map_err(|e| format!("cannot enter the netns: {e}"))?
    .map_err(|e| format!("TCP connect failed: {e}"))?;
    tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::from_std(tcp).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)));
    let mut config = match client {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain, identity.key)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let server_chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let (send, connection) = h2::client::handshake(tls)
        .await
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    tokio::spawn(connection);
    Ok(Session { send, server_chain })
}

/// Sends `request` and returns the response status, or the error as text.
/// In TLS 1.3 the server judges the client certificate after the client's
/// handshake has finished, so a refused certificate shows up here.
pub async fn status_of(
    session: &mut Session,
    request: http::Request<()>,
) -> Result<http::StatusCode, String> {
    let mut ready = session
        .send
        .clone()
        .ready()
        .await
        .map_err(|e| e.to_string())?;
    let (response, _body) = ready
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), response)
        .await
        .map_err(|_| "no response within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(response.status())
}

/// A CONNECT request to `authority`.
#[must_use]
pub fn connect_request(authority: &str) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .body(())
        .expect("a valid request")
}

#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
