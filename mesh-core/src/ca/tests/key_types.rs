//! Which CA key types work: a CA made by OpenSSL (as an operator or Istio's
//! tooling would make one) with each supported key type loads, issues
//! workload certificates, and those certificates complete a real mutual TLS
//! 1.3 handshake with the mesh's own TLS configurations. Unsupported keys
//! (RSA under 2048 bits, P-521, PKCS#1, encrypted) fail to load with an
//! error that names the file, and for PKCS#1 and the unsupported types what
//! is accepted or how to convert.
//!
//! The fixtures under `testdata/` were made with `openssl genpkey` and
//! `openssl req -x509` and are valid for 100 years.

use std::path::Path;

use rustls::{ClientConnection, ServerConnection, pki_types::ServerName, sign::CertifiedKey};

use super::*;
use crate::tls::{self, CertificateSource};

/// Every key type the CA accepts, by fixture name.
const SUPPORTED: &[&str] = &["rsa2048", "rsa4096", "p384", "ed25519"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/ca/testdata")
        .join(name)
}

fn load_fixture_ca(name: &str) -> Result<CertificateAuthority, CaError> {
    CertificateAuthority::load(
        &fixture(&format!("{name}-ca.pem")),
        &fixture(&format!("{name}-key.pem")),
    )
}

/// One identity's certificate, served to rustls as the agents serve theirs.
#[derive(Debug)]
struct Issued(Arc<CertifiedKey>);

impl CertificateSource for Issued {
    fn current(&self, _identity: &SpiffeId) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn issued(ca: &CertificateAuthority, identity: &SpiffeId) -> Arc<dyn CertificateSource> {
    let key = WorkloadKey::generate().unwrap();
    let certificate = ca
        .sign_csr(&key.csr_der(identity).unwrap(), identity, DAY)
        .unwrap();
    let certified =
        CertifiedKey::from_der(certificate.chain, key.private_key_der(), &tls::provider()).unwrap();
    Arc::new(Issued(Arc::new(certified)))
}

/// The mesh's client and server configurations for a client and a server
/// identity, with certificates from `ca`.
fn mesh_configs(
    ca: &CertificateAuthority,
) -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let roots = Arc::new(ca.trust_bundle().root_store().unwrap());
    let server_config =
        tls::server_config(server_id.clone(), issued(ca, &server_id), roots.clone()).unwrap();
    let client_config =
        tls::client_config(client_id.clone(), server_id, issued(ca, &client_id), roots).unwrap();
    (Arc::new(client_config), Arc::new(server_config))
}

/// Runs a TLS handshake in memory between `client` and `server`, and one
/// more exchange after it (where TLS 1.3 session tickets would travel).
fn handshake(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> (ClientConnection, ServerConnection) {
    let mut server = ServerConnection::new(server).unwrap();
    let mut client =
        ClientConnection::new(client, ServerName::try_from("server.default").unwrap()).unwrap();
    for _ in 0..10 {
        let done = !client.is_handshaking() && !server.is_handshaking();
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        server.read_tls(&mut wire.as_slice()).unwrap();
        server.process_new_packets().unwrap();
        wire.clear();
        server.write_tls(&mut wire).unwrap();
        client.read_tls(&mut wire.as_slice()).unwrap();
        client.process_new_packets().unwrap();
        if done {
            break;
        }
    }
    assert!(
        !client.is_handshaking() && !server.is_handshaking(),
        "the handshake did not finish"
    );
    (client, server)
}

/// Runs a TLS handshake in memory between the mesh's client and server
/// configurations and returns the identities each side saw of the other.
fn mutual_tls_handshake(ca: &CertificateAuthority) -> (SpiffeId, SpiffeId) {
    let (client, server) = mesh_configs(ca);
    let (client, server) = handshake(client, server);
    (
        tls::peer_identity(client.peer_certificates()).unwrap(),
        tls::peer_identity(server.peer_certificates()).unwrap(),
    )
}

/// Session resumption would let a later connection skip presenting and
/// verifying certificates, carrying the first one's over: a peer whose
/// certificate has since expired or rotated would still be taken for what
/// it was. Each HBONE connection is pooled and long-lived, so a full
/// handshake costs little; the mesh offers, accepts and keeps no sessions.
#[test]
fn every_connection_is_a_full_handshake_with_fresh_certificates() {
    let ca = new_ca();
    let (client_config, server_config) = mesh_configs(&ca);
    for round in 0..3 {
        let (client, server) = handshake(client_config.clone(), server_config.clone());
        assert_eq!(
            client.handshake_kind(),
            Some(rustls::HandshakeKind::Full),
            "connection {round}, client side"
        );
        assert_eq!(
            server.handshake_kind(),
            Some(rustls::HandshakeKind::Full),
            "connection {round}, server side"
        );
        assert_eq!(
            tls::peer_identity(server.peer_certificates()),
            Some(id("default", "client"))
        );
    }
}

#[test]
fn a_ca_of_every_supported_key_type_issues_certificates_that_complete_mutual_tls() {
    // The mesh's own CA (ECDSA P-256, as `ambit ca init` makes it) and every
    // key type an existing CA may bring.
    let mut cases = vec![("generated p256".to_owned(), new_ca())];
    for name in SUPPORTED {
        let ca = load_fixture_ca(name).unwrap_or_else(|error| panic!("{name}: {error}"));
        cases.push(((*name).to_owned(), ca));
    }
    for (name, ca) in &cases {
        let cert = issue(ca, &id("default", "server"));
        verify_as_server(&cert.chain, &ca.trust_bundle())
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        let (server_seen_by_client, client_seen_by_server) = mutual_tls_handshake(ca);
        assert_eq!(server_seen_by_client, id("default", "server"), "{name}");
        assert_eq!(client_seen_by_server, id("default", "client"), "{name}");
    }
}

#[test]
fn a_workload_certificate_from_an_rsa_ca_does_not_verify_against_another_root() {
    let rsa = load_fixture_ca("rsa2048").unwrap();
    let cert = issue(&rsa, &id("default", "server"));
    let error = verify_as_server(&cert.chain, &new_ca().trust_bundle()).unwrap_err();
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{error:?}"
    );
}

#[test]
fn unsupported_ca_keys_fail_to_load_naming_the_file_and_the_fix() {
    let cert = fixture("rsa2048-ca.pem");
    let pkcs1 = fixture("rsa2048-key-pkcs1.pem");
    assert_load_fails("PKCS#1", &cert, &pkcs1, &pkcs1, "openssl pkcs8 -topk8");
    // Not supported by the signer: P-521, and a key under a passphrase.
    let p521 = fixture("p521-key.pem");
    assert_load_fails(
        "P-521",
        &fixture("p521-ca.pem"),
        &p521,
        &p521,
        "supported CA keys: RSA of 2048",
    );
    let encrypted = fixture("rsa2048-key-encrypted.pem");
    assert_load_fails(
        "encrypted",
        &cert,
        &encrypted,
        &encrypted,
        "no PRIVATE KEY block",
    );
    let short = fixture("rsa1024-key.pem");
    assert_load_fails(
        "RSA 1024",
        &fixture("rsa1024-ca.pem"),
        &short,
        &short,
        "supported CA keys: RSA of 2048",
    );
}

/// Found by the `trust_bundle` fuzz target: the rsa2048 fixture with one
/// character of its key's CRT parameters changed (and its certificate's
/// signature damaged, which the loader never checks). The key's public half
/// still matches the certificate, so it used to load, and then every
/// signature failed: a CA Secret like this replaced the last good CA and
/// the controller refused every certificate request. It is refused at load.
#[test]
fn a_ca_key_whose_private_part_is_damaged_fails_to_load() {
    let path = fixture("fuzz-trust-bundle-damaged-rsa-key.pem");
    let text = std::fs::read(&path).unwrap();
    let error = CertificateAuthority::from_pem(&text, &path, &text, &path).unwrap_err();
    assert!(
        matches!(&error, CaError::KeyCannotSign { path: named, .. } if *named == path),
        "{error:?}"
    );
    assert!(error.to_string().contains("cannot sign"), "{error}");
}

/// Found by the `trust_bundle` fuzz target: the ed25519 fixture with its
/// subject's attribute type changed to an identifier with no DER form
/// (first arc 4). It loaded, and the first certificate it signed panicked
/// in the signer (which writes the CA's subject into each certificate). It
/// is refused at load, naming the attribute.
#[test]
fn a_ca_whose_subject_cannot_be_written_again_fails_to_load_instead_of_panicking() {
    let path = fixture("fuzz-trust-bundle-invalid-oid-in-subject.pem");
    let text = std::fs::read(&path).unwrap();
    let error = CertificateAuthority::from_pem(&text, &path, &text, &path).unwrap_err();
    assert!(
        matches!(&error, CaError::BadCertificateFile { reason, .. } if reason.contains("not a valid object identifier")),
        "{error:?}"
    );
}
