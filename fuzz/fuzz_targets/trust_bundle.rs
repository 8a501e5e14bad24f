//! The trust bundle and certificate loaders: PEM roots (the trust bundle
//! file and `ConfigMap`), a certificate chain the controller issued, and a
//! CA's certificate and key (`ambit ca init`'s files, the CA Secret). Any
//! bytes load or fail without a panic; what loads is written back as PEM
//! and reads back the same; a loaded chain carries the identity it was
//! loaded for; and a loaded CA signs certificates that carry the identity
//! asked for and chain to it.

#![no_main]

use std::{path::Path, time::Duration};

use ambit_fuzz::pki;
use libfuzzer_sys::fuzz_target;
use mesh_core::ca::{
    self, CertificateAuthority, TrustBundle, WorkloadCertificate, not_after_of, serial_of,
    sha256_fingerprint, spiffe_id_of,
};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};

fuzz_target!(|data: &[u8]| {
    let origin = Path::new("fuzz input");
    if let Ok(bundle) = TrustBundle::from_pem(data, origin) {
        assert!(!bundle.roots().is_empty(), "a loaded bundle has a root");
        let again = TrustBundle::from_pem(bundle.to_pem().as_bytes(), origin)
            .expect("a bundle written as PEM reads back");
        assert_eq!(again.roots(), bundle.roots());
        let _ = bundle.root_store();
        for root in bundle.roots() {
            let _ = spiffe_id_of(root);
            let _ = not_after_of(root);
            let _ = serial_of(root);
            assert_eq!(sha256_fingerprint(root).len(), 32 * 3 - 1);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        chain_loads_for_its_identity(text);
    }
    if let Ok(ca) = CertificateAuthority::from_pem(data, origin, data, origin) {
        loaded_ca_signs(&ca, data);
    }
    if let Ok(id) = ca::csr_spiffe_id(data) {
        assert!(id.uri().starts_with("spiffe://"));
    }
});

/// A chain issued for the identity its leaf carries loads, carries it, and
/// reads back from its own PEM; for another identity it does not load.
fn chain_loads_for_its_identity(text: &str) {
    let leaf_id = CertificateDer::pem_slice_iter(text.as_bytes())
        .next()
        .and_then(Result::ok)
        .and_then(|leaf| spiffe_id_of(&leaf).ok());
    let other = pki::id("fuzz", "other");
    for identity in leaf_id.iter().chain([&other]) {
        let Ok(certificate) = WorkloadCertificate::from_chain_pem(identity, text) else {
            continue;
        };
        assert_eq!(&certificate.identity, identity);
        assert_eq!(
            spiffe_id_of(certificate.leaf()).ok().as_ref(),
            Some(identity),
            "a chain loaded for {identity} carries it"
        );
        let again = WorkloadCertificate::from_chain_pem(identity, &certificate.chain_pem())
            .expect("a chain written as PEM reads back");
        assert_eq!(again.chain, certificate.chain);
        assert_eq!(
            (again.not_before, again.not_after, &again.serial),
            (
                certificate.not_before,
                certificate.not_after,
                &certificate.serial
            )
        );
    }
}

/// A CA that loads reads back from its own certificate's PEM with the same
/// key, and signs a workload's CSR into a chain that carries the identity
/// asked for and ends with the CA.
fn loaded_ca_signs(ca: &CertificateAuthority, key_text: &[u8]) {
    let origin = Path::new("fuzz input");
    let again =
        CertificateAuthority::from_pem(ca.certificate_pem().as_bytes(), origin, key_text, origin)
            .expect("a CA reads back from its own certificate's PEM");
    assert_eq!(again.certificate_der(), ca.certificate_der());
    let identity = pki::id("shop", "web");
    let signed = ca
        .sign_csr(&pki::csr_der(&identity), &identity, Duration::from_hours(1))
        .expect("a loaded CA signs a workload CSR");
    assert_eq!(spiffe_id_of(signed.leaf()).ok(), Some(identity.clone()));
    assert_eq!(signed.chain.last(), Some(ca.certificate_der()));
    assert!(signed.not_before < signed.not_after);
}
