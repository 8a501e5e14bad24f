use std::{
    fs::{self, Permissions},
    os::unix::fs::PermissionsExt as _,
    sync::Arc,
};

use rustls::{
    client::verify_server_cert_signed_by_trust_anchor, server::ParsedCertificate,
    server::WebPkiClientVerifier,
};
use rustls_pki_types::{PrivateKeyDer, SignatureVerificationAlgorithm, UnixTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::*;

mod key_types;

const DAY: Duration = Duration::from_hours(24);
/// How long a test may take between issuing and checking a certificate.
const SLACK: Duration = Duration::from_secs(5);

fn id(namespace: &str, service_account: &str) -> SpiffeId {
    SpiffeId::new(identity::DEFAULT_TRUST_DOMAIN, namespace, service_account).unwrap()
}

fn new_ca() -> CertificateAuthority {
    CertificateAuthority::generate(identity::DEFAULT_TRUST_DOMAIN, 365 * DAY).unwrap()
}

fn issue(ca: &CertificateAuthority, identity: &SpiffeId) -> WorkloadCertificate {
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(identity).unwrap();
    ca.sign_csr(&csr, identity, DAY).unwrap()
}

fn ring_algorithms() -> &'static [&'static dyn SignatureVerificationAlgorithm] {
    rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all
}

/// Verifies a chain as a TLS client verifies a server, with the chain's tail
/// passed as intermediates the way a peer presents it.
fn verify_as_server(
    chain: &[CertificateDer<'static>],
    bundle: &TrustBundle,
) -> Result<(), rustls::Error> {
    verify_at(chain, bundle, UnixTime::now())
}

fn verify_at(
    chain: &[CertificateDer<'static>],
    bundle: &TrustBundle,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let leaf = ParsedCertificate::try_from(&chain[0])?;
    verify_server_cert_signed_by_trust_anchor(
        &leaf,
        &bundle.root_store().unwrap(),
        &chain[1..],
        now,
        ring_algorithms(),
    )
}

fn pkcs8_pem(key: &WorkloadKey) -> String {
    let PrivateKeyDer::Pkcs8(der) = key.private_key_der() else {
        panic!("workload keys are PKCS#8");
    };
    pem::encode(&pem::Pem::new("PRIVATE KEY", der.secret_pkcs8_der()))
}

fn ca_files(ca: &CertificateAuthority) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.write(dir.path()).unwrap();
    (dir, cert, key)
}

#[test]
fn types_are_shareable_across_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CertificateAuthority>();
    assert_send_sync::<WorkloadKey>();
    assert_send_sync::<WorkloadCertificate>();
    assert_send_sync::<TrustBundle>();
}

#[test]
fn generated_ca_is_a_p256_root_for_its_trust_domain() {
    let ca = CertificateAuthority::generate("example.org", 10 * DAY).unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(ca.certificate_der()).unwrap();
    assert_eq!(x509.subject(), x509.issuer(), "self-signed");
    let common_name = x509.subject().iter_common_name().next().unwrap();
    assert_eq!(common_name.as_str().unwrap(), "ambit CA example.org");
    assert!(x509.basic_constraints().unwrap().unwrap().value.ca);
    let usage = x509.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.crl_sign());
    assert!(!usage.digital_signature());
    let curve = x509.public_key().algorithm.parameters.as_ref().unwrap();
    assert_eq!(
        curve.as_oid().unwrap(),
        x509_parser::oid_registry::OID_EC_P256
    );
    let not_after = not_after_of(ca.certificate_der()).unwrap();
    let left = not_after.duration_since(SystemTime::now()).unwrap();
    assert!(left + SLACK > 10 * DAY && left <= 10 * DAY, "{left:?}");
    assert!(
        ca.certificate_pem()
            .starts_with("-----BEGIN CERTIFICATE-----\n")
    );
    assert!(!ca.certificate_pem().contains('\r'));
    assert!(format!("{ca:?}").contains("sha256"));
}

#[test]
fn generated_cas_have_distinct_random_serials() {
    let serial = |ca: &CertificateAuthority| {
        let (_, x509) = x509_parser::parse_x509_certificate(ca.certificate_der()).unwrap();
        x509.raw_serial().to_vec()
    };
    let (a, b) = (new_ca(), new_ca());
    assert_eq!(serial(&a).len(), SERIAL_LEN);
    assert_ne!(serial(&a), serial(&b));
}

#[test]
fn generate_rejects_a_bad_trust_domain() {
    let error = CertificateAuthority::generate("Bad Domain", DAY).unwrap_err();
    assert!(matches!(error, CaError::TrustDomain(_)), "{error}");
    assert!(error.to_string().contains("\"Bad Domain\""), "{error}");
}

#[test]
fn signed_certificate_carries_the_identity() {
    let ca = new_ca();
    let identity = id("default", "client");
    let before = SystemTime::now();
    let cert = issue(&ca, &identity);
    assert_eq!(cert.identity, identity);
    assert_eq!(spiffe_id_of(cert.leaf()).unwrap(), identity);
    assert_eq!(cert.chain.len(), 2);
    assert_eq!(&cert.chain[1], ca.certificate_der());
    assert_eq!(not_after_of(cert.leaf()).unwrap(), cert.not_after);
    assert_eq!(serial_of(cert.leaf()).unwrap(), cert.serial);
    assert!(cert.not_before <= before - Duration::from_secs(59));
    let lifetime = cert.not_after.duration_since(before).unwrap();
    assert!(lifetime + SLACK > DAY && lifetime <= DAY, "{lifetime:?}");
    assert_eq!(cert.serial.len(), 2 * SERIAL_LEN, "{}", cert.serial);
    assert_ne!(cert.serial, issue(&ca, &identity).serial);
    assert_eq!(cert.chain_pem().matches("BEGIN CERTIFICATE").count(), 2);
}

#[test]
fn renewal_is_half_way_from_receipt_to_the_end_not_from_the_backdated_start() {
    let ca = new_ca();
    let identity = id("default", "client");
    let key = WorkloadKey::generate().unwrap();
    let received = SystemTime::now();
    let lifetime = Duration::from_mins(1);
    let cert = ca
        .sign_csr(&key.csr_der(&identity).unwrap(), &identity, lifetime)
        .unwrap();
    // Valid from a minute ago: half-way through the validity is now.
    assert!(cert.not_before <= received - Duration::from_secs(59));
    let due = cert.renew_at(received).duration_since(received).unwrap();
    assert!(
        due > Duration::from_secs(28) && due <= Duration::from_secs(30),
        "{due:?}"
    );
    // Received past its end: due at once.
    let late = cert.not_after + Duration::from_secs(1);
    assert_eq!(cert.renew_at(late), late);
}

#[test]
fn workload_certificate_has_the_leaf_profile() {
    let ca = new_ca();
    let cert = issue(&ca, &id("default", "server"));
    let (_, x509) = x509_parser::parse_x509_certificate(cert.leaf()).unwrap();
    assert!(!x509.basic_constraints().unwrap().unwrap().value.ca);
    let usage = x509.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature());
    assert!(!usage.key_cert_sign() && !usage.key_encipherment());
    let extended = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(extended.server_auth && extended.client_auth);
    let san = x509.subject_alternative_name().unwrap().unwrap();
    assert!(
        san.critical,
        "with an empty subject the SAN must be critical"
    );
    assert_eq!(san.value.general_names.len(), 1);
    assert!(x509.subject().iter().next().is_none(), "empty subject");
    assert_eq!(
        x509.issuer().to_string(),
        inspect::parse(ca.certificate_der())
            .unwrap()
            .subject()
            .to_string()
    );
    let has_authority_key_id = x509.extensions().iter().any(|ext| {
        matches!(
            ext.parsed_extension(),
            ParsedExtension::AuthorityKeyIdentifier(_)
        )
    });
    assert!(has_authority_key_id);
}

#[test]
fn the_ca_decides_the_identity_not_the_csr() {
    let ca = new_ca();
    // A CSR asking for another identity, extra URIs and a DNS name.
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec!["evil.example.com".to_owned()]).unwrap();
    for uri in [
        "spiffe://cluster.local/ns/kube-system/sa/admin",
        "https://x",
    ] {
        params
            .subject_alt_names
            .push(SanType::URI(Ia5String::try_from(uri).unwrap()));
    }
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).unwrap();
    let granted = id("default", "client");
    let cert = ca.sign_csr(csr.der(), &granted, DAY).unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(cert.leaf()).unwrap();
    let names = &x509
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(
        names,
        &[GeneralName::URI(
            "spiffe://cluster.local/ns/default/sa/client"
        )]
    );
    assert!(!x509.basic_constraints().unwrap().unwrap().value.ca);
    assert_eq!(spiffe_id_of(cert.leaf()).unwrap(), granted);
}

#[test]
fn a_csr_says_which_spiffe_id_it_asks_for() {
    let identity = id("shop", "web");
    let csr = WorkloadKey::generate().unwrap().csr_der(&identity).unwrap();
    assert_eq!(csr_spiffe_id(&csr).unwrap(), identity);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let request = |uris: &[&str]| {
        let mut params = CertificateParams::new(vec!["web.example".to_owned()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI(Ia5String::try_from(*uri).unwrap()));
        }
        params.serialize_request(&key).unwrap().der().to_vec()
    };
    for (csr, expected) in [
        (request(&[]), "asks for no URI SAN"),
        (
            request(&["spiffe://cluster.local/ns/a/sa/b", "https://x"]),
            "2 URI SANs",
        ),
        (request(&["https://x"]), "spiffe"),
        (b"not a csr".to_vec(), "not a DER PKCS#10"),
    ] {
        let error = csr_spiffe_id(&csr).unwrap_err().to_string();
        assert!(error.contains(expected), "{expected:?} in {error}");
    }
}

#[test]
fn chain_verifies_against_the_trust_bundle_as_server_and_client() {
    let ca = new_ca();
    let cert = issue(&ca, &id("default", "server"));
    let bundle = ca.trust_bundle();
    verify_as_server(&cert.chain, &bundle).unwrap();
    // Only the leaf, as a peer that sends no chain would.
    verify_as_server(&cert.chain[..1], &bundle).unwrap();

    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(bundle.root_store().unwrap()),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(&cert.chain[0], &cert.chain[1..], UnixTime::now())
        .unwrap();
}

#[test]
fn certificate_from_another_ca_does_not_verify() {
    let (ours, theirs) = (new_ca(), new_ca());
    let cert = issue(&theirs, &id("default", "client"));
    let error = verify_as_server(&cert.chain, &ours.trust_bundle()).unwrap_err();
    // Both roots are named "ambit CA cluster.local", so webpki finds a root by
    // name and then rejects the signature; a root of another trust domain is
    // not even a candidate.
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
        ),
        "{error:?}"
    );
    let elsewhere = CertificateAuthority::generate("example.org", DAY).unwrap();
    let error = verify_as_server(&cert.chain, &elsewhere.trust_bundle()).unwrap_err();
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{error:?}"
    );
}

#[test]
fn bundle_with_two_roots_verifies_certificates_of_both() {
    let (old, new) = (new_ca(), new_ca());
    let mut bundle = TrustBundle::new();
    bundle.add(old.certificate_der().clone());
    bundle.add(new.certificate_der().clone());
    bundle.add(old.certificate_der().clone());
    assert_eq!(bundle.roots().len(), 2, "adding a root twice keeps one");
    for ca in [&old, &new] {
        verify_as_server(&issue(ca, &id("default", "client")).chain, &bundle).unwrap();
    }
    let third = new_ca();
    assert!(verify_as_server(&issue(&third, &id("a", "b")).chain, &bundle).is_err());

    // The PEM form round-trips through a file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.pem");
    fs::write(&path, bundle.to_pem()).unwrap();
    let loaded = TrustBundle::load(&path).unwrap();
    assert_eq!(loaded.roots(), bundle.roots());
}

#[test]
fn expired_certificate_has_not_after_in_the_past_and_fails_verification() {
    let ca = new_ca();
    let identity = id("default", "client");
    let key = WorkloadKey::generate().unwrap();
    let now = SystemTime::now();
    let cert = ca
        .sign_csr_with_validity(
            &key.csr_der(&identity).unwrap(),
            &identity,
            now - 2 * DAY,
            now - DAY,
        )
        .unwrap();
    assert!(cert.not_after < SystemTime::now());
    assert_eq!(not_after_of(cert.leaf()).unwrap(), cert.not_after);
    let error = verify_as_server(&cert.chain, &ca.trust_bundle()).unwrap_err();
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::ExpiredContext { .. } | rustls::CertificateError::Expired
            )
        ),
        "{error:?}"
    );
    // It was valid inside its window.
    let inside = UnixTime::since_unix_epoch(
        (now - DAY - DAY / 2)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap(),
    );
    verify_at(&cert.chain, &ca.trust_bundle(), inside).unwrap();
}

#[test]
fn empty_validity_is_rejected() {
    let ca = new_ca();
    let identity = id("default", "client");
    let csr = WorkloadKey::generate().unwrap().csr_der(&identity).unwrap();
    let now = SystemTime::now();
    let error = ca
        .sign_csr_with_validity(&csr, &identity, now, now)
        .unwrap_err();
    assert!(matches!(error, CaError::Validity { .. }), "{error}");
    assert!(error.to_string().contains("default/sa/client"), "{error}");
}

#[test]
fn bad_csrs_are_rejected_naming_the_identity() {
    let ca = new_ca();
    let identity = id("default", "client");
    let good = WorkloadKey::generate().unwrap().csr_der(&identity).unwrap();

    let mut tampered = good.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;

    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let p384_csr = CertificateParams::default()
        .serialize_request(&p384)
        .unwrap();

    let mut trailing = good.clone();
    trailing.push(0);

    for (name, csr, expected) in [
        ("garbage", b"not a csr".to_vec(), "not a DER PKCS#10"),
        ("tampered", tampered, "bad signature"),
        ("p384", p384_csr.der().to_vec(), "P-256"),
        ("trailing", trailing, "after the request"),
    ] {
        let error = ca.sign_csr(&csr, &identity, DAY).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, CaError::Csr { .. }), "{name}: {message}");
        assert!(message.contains(expected), "{name}: {message}");
        assert!(message.contains(&identity.uri()), "{name}: {message}");
    }
}

#[test]
fn write_then_load_round_trips_and_the_loaded_ca_signs() {
    let ca = new_ca();
    let (dir, cert_path, key_path) = ca_files(&ca);
    assert_eq!(cert_path, dir.path().join("ca.pem"));
    assert_eq!(key_path, dir.path().join("ca-key.pem"));
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cert_path), 0o644);
    assert_eq!(mode(&key_path), 0o600);

    let loaded = CertificateAuthority::load(&cert_path, &key_path).unwrap();
    assert_eq!(loaded.certificate_der(), ca.certificate_der());
    assert_eq!(loaded.certificate_pem(), ca.certificate_pem());
    // Certificates from the loaded CA verify against the original's bundle.
    let cert = issue(&loaded, &id("default", "client"));
    verify_as_server(&cert.chain, &ca.trust_bundle()).unwrap();
}

#[test]
fn write_creates_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    let (cert_path, _) = new_ca().write(&nested).unwrap();
    assert!(cert_path.starts_with(&nested));
}

#[test]
fn write_refuses_to_overwrite_naming_the_files() {
    let first = new_ca();
    let (dir, cert_path, key_path) = ca_files(&first);
    let second = new_ca();
    let error = second.write(dir.path()).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, CaError::Exists { .. }), "{message}");
    assert!(
        message.contains(&cert_path.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&key_path.display().to_string()),
        "{message}"
    );
    // Nothing was touched.
    let kept = CertificateAuthority::load(&cert_path, &key_path).unwrap();
    assert_eq!(kept.certificate_der(), first.certificate_der());

    // One file alone is enough to refuse, and that one is named.
    fs::remove_file(&cert_path).unwrap();
    let message = second.write(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains("ca-key.pem") && !message.contains("ca.pem"),
        "{message}"
    );
    assert!(!cert_path.exists(), "refusal writes nothing");

    // Replacing is explicit, and the key file ends up private even if it was not.
    fs::set_permissions(&key_path, Permissions::from_mode(0o666)).unwrap();
    second.write_replacing(dir.path()).unwrap();
    let replaced = CertificateAuthority::load(&cert_path, &key_path).unwrap();
    assert_eq!(replaced.certificate_der(), second.certificate_der());
    assert_eq!(
        fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

fn write_in(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, contents).unwrap();
    path
}

/// Loading fails with a message that holds `expected` and names `named`.
fn assert_load_fails(case: &str, cert: &Path, key: &Path, named: &Path, expected: &str) {
    let error = CertificateAuthority::load(cert, key).unwrap_err();
    let message = error.to_string();
    assert!(message.contains(expected), "{case}: {message}");
    assert!(
        message.contains(&named.display().to_string()),
        "{case}: the error should name {}: {message}",
        named.display()
    );
}

#[test]
fn load_errors_for_bad_certificates_name_the_file() {
    let ca = new_ca();
    let (dir, _, key_path) = ca_files(&ca);

    // A workload certificate and its own key, used as a CA.
    let workload_key = WorkloadKey::generate().unwrap();
    let identity = id("default", "client");
    let leaf = ca
        .sign_csr(&workload_key.csr_der(&identity).unwrap(), &identity, DAY)
        .unwrap();
    let leaf_path = write_in(&dir, "leaf.pem", &files::certificate_pem(leaf.leaf()));
    let leaf_key_path = write_in(&dir, "leaf-key.pem", &pkcs8_pem(&workload_key));

    // A self-signed certificate without basicConstraints, with its key.
    let plain_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let plain = CertificateParams::new(vec!["plain".to_owned()])
        .unwrap()
        .self_signed(&plain_key)
        .unwrap();
    let plain_path = write_in(&dir, "plain.pem", &plain.pem());
    let plain_key_path = write_in(&dir, "plain-key.pem", &plain_key.serialize_pem());

    let garbage = write_in(&dir, "garbage.pem", "hello, world\n");
    let bad_der = write_in(
        &dir,
        "bad-der.pem",
        &pem::encode(&pem::Pem::new("CERTIFICATE", vec![0x30, 0x03, 1, 2, 3])),
    );
    let missing = dir.path().join("missing.pem");

    let not_a_ca = "not a CA certificate";
    assert_load_fails(
        "missing",
        &missing,
        &key_path,
        &missing,
        "cannot read the CA certificate",
    );
    assert_load_fails(
        "garbage",
        &garbage,
        &key_path,
        &garbage,
        "no PEM certificate",
    );
    assert_load_fails(
        "key as cert",
        &key_path,
        &key_path,
        &key_path,
        "no PEM certificate",
    );
    assert_load_fails("bad DER", &bad_der, &key_path, &bad_der, "cannot be parsed");
    assert_load_fails("leaf", &leaf_path, &leaf_key_path, &leaf_path, not_a_ca);
    assert_load_fails("leaf", &leaf_path, &leaf_key_path, &leaf_path, "CA:FALSE");
    assert_load_fails("plain", &plain_path, &plain_key_path, &plain_path, not_a_ca);
    assert_load_fails(
        "plain",
        &plain_path,
        &plain_key_path,
        &plain_path,
        "no basicConstraints",
    );
}

#[test]
fn load_errors_for_bad_keys_name_the_file() {
    let (dir, cert_path, key_path) = ca_files(&new_ca());
    let other_key = write_in(
        &dir,
        "other-key.pem",
        &pkcs8_pem(&WorkloadKey::generate().unwrap()),
    );
    let garbage = write_in(&dir, "garbage.pem", "hello, world\n");
    let sec1 = write_in(
        &dir,
        "sec1.pem",
        &pem::encode(&pem::Pem::new("EC PRIVATE KEY", vec![1, 2, 3])),
    );
    let bad_pkcs8 = write_in(
        &dir,
        "bad-pkcs8.pem",
        &pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1, 2, 3])),
    );
    let missing = dir.path().join("missing.pem");

    assert_load_fails(
        "missing",
        &cert_path,
        &missing,
        &missing,
        "cannot read the CA key",
    );
    assert_load_fails(
        "garbage",
        &cert_path,
        &garbage,
        &garbage,
        "not a PEM PKCS#8",
    );
    assert_load_fails(
        "cert as key",
        &cert_path,
        &cert_path,
        &cert_path,
        "no PRIVATE KEY block",
    );
    assert_load_fails("SEC1", &cert_path, &sec1, &sec1, "SEC1");
    assert_load_fails(
        "bad PKCS#8",
        &cert_path,
        &bad_pkcs8,
        &bad_pkcs8,
        "not a PEM PKCS#8",
    );
    // A mismatch names both files.
    assert_load_fails(
        "mismatch",
        &cert_path,
        &other_key,
        &other_key,
        "does not match",
    );
    assert_load_fails(
        "mismatch",
        &cert_path,
        &other_key,
        &cert_path,
        "does not match",
    );
    // The right pair still loads.
    CertificateAuthority::load(&cert_path, &key_path).unwrap();
}

#[test]
fn trust_bundle_load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    fs::write(&empty, "").unwrap();
    let key_only = dir.path().join("key.pem");
    fs::write(&key_only, pkcs8_pem(&WorkloadKey::generate().unwrap())).unwrap();
    let missing = dir.path().join("missing.pem");
    for path in [&empty, &key_only, &missing] {
        let message = TrustBundle::load(path).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
    let message = TrustBundle::load(&empty).unwrap_err().to_string();
    assert!(message.contains("no CERTIFICATE block"), "{message}");
}

#[test]
fn spiffe_id_of_requires_exactly_one_valid_uri() {
    let ca = new_ca();
    let error = spiffe_id_of(ca.certificate_der()).unwrap_err();
    assert!(error.to_string().contains("no subjectAltName"), "{error}");

    let with_uris = |uris: &[&str]| {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["dns.example".to_owned()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI(Ia5String::try_from(*uri).unwrap()));
        }
        params.self_signed(&key).unwrap().der().clone()
    };
    for (uris, expected) in [
        (&[][..], "no URI SAN"),
        (
            &["spiffe://td/ns/a/sa/b", "spiffe://td/ns/c/sa/d"][..],
            "2 URI SANs",
        ),
        (&["spiffe://td/ns/a/sa/b/c"][..], "invalid SPIFFE id"),
    ] {
        let error = spiffe_id_of(&with_uris(uris)).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, CaError::NoSpiffeId { .. }), "{message}");
        assert!(message.contains(expected), "{uris:?}: {message}");
        assert!(
            message.contains("rcgen self signed cert"),
            "names the subject: {message}"
        );
    }
    let ok = with_uris(&["spiffe://td/ns/a/sa/b"]);
    assert_eq!(spiffe_id_of(&ok).unwrap().uri(), "spiffe://td/ns/a/sa/b");

    let garbage = CertificateDer::from(vec![1, 2, 3]);
    assert!(matches!(
        spiffe_id_of(&garbage),
        Err(CaError::Certificate { .. })
    ));
    assert!(matches!(
        serial_of(&garbage),
        Err(CaError::Certificate { .. })
    ));
    assert!(matches!(
        not_after_of(&garbage),
        Err(CaError::Certificate { .. })
    ));
}

#[test]
fn fingerprint_is_colon_separated_sha256() {
    let ca = new_ca();
    let fingerprint = sha256_fingerprint(ca.certificate_der());
    assert_eq!(fingerprint.len(), 32 * 3 - 1);
    assert!(fingerprint.split(':').all(|pair| {
        pair.len() == 2
            && pair
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
    }));
    assert_eq!(fingerprint, sha256_fingerprint(ca.certificate_der()));
    assert_ne!(fingerprint, sha256_fingerprint(new_ca().certificate_der()));
}

#[test]
fn workload_key_is_pkcs8_p256_and_debug_hides_it() {
    let key = WorkloadKey::generate().unwrap();
    let PrivateKeyDer::Pkcs8(der) = key.private_key_der() else {
        panic!("PKCS#8 expected");
    };
    let pair = KeyPair::try_from(&der).unwrap();
    assert!(pair.is_compatible(&PKCS_ECDSA_P256_SHA256));
    let debug = format!("{key:?}");
    assert!(
        debug.contains("P-256") && !debug.contains("secret"),
        "{debug}"
    );
}

/// What a follower loads at a check: the new roots' count, `None` when
/// unchanged, `Err` for a file that cannot be used.
fn check(file: &BundleFile) -> Result<Option<usize>, CaError> {
    let Some(contents) = file.changed()? else {
        return Ok(None);
    };
    Ok(Some(
        TrustBundle::from_pem(&contents, file.path())?.roots().len(),
    ))
}

#[test]
fn a_changed_bundle_is_loaded_once_and_a_bad_one_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.pem");
    let ca = |_| CertificateAuthority::generate("cluster.local", Duration::from_hours(1)).unwrap();
    let (old, new) = (ca(1), ca(2));
    std::fs::write(&path, old.certificate_pem()).unwrap();
    let (file, contents) = BundleFile::open(&path).unwrap();
    assert_eq!(contents, old.certificate_pem().as_bytes());
    assert!(check(&file).unwrap().is_none(), "unchanged");
    // Rotation: both roots, then the new one alone.
    let both = format!("{}{}", old.certificate_pem(), new.certificate_pem());
    std::fs::write(&path, &both).unwrap();
    assert_eq!(check(&file).unwrap(), Some(2));
    assert!(check(&file).unwrap().is_none(), "loaded once");
    std::fs::write(&path, "not a certificate").unwrap();
    assert!(check(&file).is_err());
    assert!(check(&file).unwrap().is_none(), "reported once");
    std::fs::remove_file(&path).unwrap();
    assert!(check(&file).is_err(), "a missing file is reported");
    assert!(check(&file).unwrap().is_none());
    std::fs::write(&path, new.certificate_pem()).unwrap();
    assert_eq!(check(&file).unwrap(), Some(1));
    assert!(BundleFile::open(&dir.path().join("missing.pem")).is_err());
}
