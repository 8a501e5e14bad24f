//! TLS for HBONE: TLS 1.3 only, ALPN `h2`, both sides present workload
//! certificates from the mesh CA.
//!
//! - The server requires a client certificate that chains to the trust
//!   bundle; the caller reads the client's SPIFFE id from it.
//! - The client verifies the server's chain against the trust bundle and then
//!   that its SPIFFE id is exactly the one expected for the destination: a
//!   valid certificate of another identity fails the handshake.
//! - Both sides pick their own certificate at handshake time through
//!   [`CurrentCertificate`], so a rotated certificate is used by new
//!   connections while established ones carry on.
//! - No session resumption: the server issues no tickets and keeps no
//!   sessions, the client offers none. A resumed session skips presenting
//!   and verifying certificates and carries the first connection's over,
//!   so a peer whose certificate has since expired or been replaced would
//!   still be taken for what it was; and each server identity's session
//!   cache (rustls keeps up to 256 sessions, each with the client's chain)
//!   filled slowly for the agent's whole life. HBONE connections are pooled
//!   and long-lived, so the full handshake costs little.

use std::sync::Arc;

use crate::{ca::spiffe_id_of, identity::SpiffeId};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{ParsedCertificate, WebPkiClientVerifier},
    sign::CertifiedKey,
};

/// The ALPN protocol of HBONE.
pub const ALPN_H2: &[u8] = b"h2";

/// Errors building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration.
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client verifier could not be built from the trust bundle.
    #[error("cannot build the client-certificate verifier from the trust bundle: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The server's SPIFFE id was valid but not the expected one.
#[derive(Debug, thiserror::Error)]
#[error("the server presented identity {actual}, expected {expected}")]
pub struct WrongIdentity {
    /// Who we meant to talk to.
    pub expected: SpiffeId,
    /// Who answered.
    pub actual: SpiffeId,
}

/// Where the current certificate of one identity comes from.
pub trait CertificateSource: std::fmt::Debug + Send + Sync {
    /// The certificate and key to present now, if one is issued.
    fn current(&self, identity: &SpiffeId) -> Option<Arc<CertifiedKey>>;
}

/// A rustls certificate resolver that always serves the identity's current
/// certificate.
#[derive(Debug)]
pub struct CurrentCertificate {
    source: Arc<dyn CertificateSource>,
    identity: SpiffeId,
}

/// Verifies an HBONE server: chain to the trust bundle, then exact identity.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

/// The crypto provider every TLS configuration of the mesh uses.
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The HBONE server configuration for `identity`.
pub fn server_config(
    identity: SpiffeId,
    source: Arc<dyn CertificateSource>,
    roots: Arc<RootCertStore>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(CurrentCertificate { source, identity }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The HBONE client configuration for `identity` talking to `expected`.
pub fn client_config(
    identity: SpiffeId,
    expected: SpiffeId,
    source: Arc<dyn CertificateSource>,
    roots: Arc<RootCertStore>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = SpiffeServerVerifier {
        roots,
        expected,
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentCertificate { source, identity }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The SPIFFE id of the peer of an established TLS connection.
#[must_use]
pub fn peer_identity(certificates: Option<&[CertificateDer<'static>]>) -> Option<SpiffeId> {
    certificates
        .and_then(|chain| chain.first())
        .and_then(|leaf| spiffe_id_of(leaf).ok())
}

/// A readable reason for a failed TLS handshake: the certificate problem in
/// words (wrong identity, unknown issuer, expired...) rather than rustls's
/// nested debug form.
#[must_use]
pub fn handshake_failure(error: &std::io::Error) -> String {
    let Some(rustls_error) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return error.to_string();
    };
    match rustls_error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            format!("invalid peer certificate: {inner}")
        }
        other => other.to_string(),
    }
}

// === impl CurrentCertificate ===

impl rustls::server::ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.source.current(&self.identity)
    }
}

impl rustls::client::ResolvesClientCert for CurrentCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.source.current(&self.identity)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

// === impl SpiffeServerVerifier ===

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let other = |e: Box<dyn std::error::Error + Send + Sync>| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::from(e))))
        };
        let actual = spiffe_id_of(end_entity).map_err(|e| other(Box::new(e)))?;
        if actual != self.expected {
            return Err(other(Box::new(WrongIdentity {
                expected: self.expected.clone(),
                actual,
            })));
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
