//! The workload side: a key pair, its CSR, and the certificate it gets back.

use std::{fmt, time::SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
    SignatureAlgorithm, string::Ia5String,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject as _};
use x509_parser::{
    certification_request::X509CertificationRequest,
    extensions::{GeneralName, ParsedExtension},
    oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY},
    prelude::FromDer as _,
};

use super::CaError;
use crate::identity::SpiffeId;

/// A workload's ECDSA P-256 key pair. Its private half never leaves the
/// process that generated it: the CA sees only the CSR.
pub struct WorkloadKey {
    key: KeyPair,
}

/// A signed workload certificate and what a certificate manager needs to
/// know about it without parsing it again.
#[derive(Clone, Debug)]
pub struct WorkloadCertificate {
    /// The identity the certificate carries.
    pub identity: SpiffeId,
    /// The certificate chain to present: the leaf first, then the issuing CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// Start of validity, as written in the certificate.
    pub not_before: SystemTime,
    /// End of validity, as written in the certificate.
    pub not_after: SystemTime,
    /// The leaf's serial number, lowercase hex.
    pub serial: String,
}

/// The public key a CSR carries, checked and ready for rcgen to certify.
pub(super) struct CsrPublicKey {
    raw: Vec<u8>,
}

// === impl WorkloadKey ===

impl WorkloadKey {
    /// Generates a fresh key pair.
    pub fn generate() -> Result<Self, CaError> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Generate {
                what: "a workload key".into(),
                source,
            })?;
        Ok(Self { key })
    }

    /// A PKCS#10 CSR (DER) asking for `identity`, signed by this key.
    pub fn csr_der(&self, identity: &SpiffeId) -> Result<Vec<u8>, CaError> {
        let generate_error = |source| CaError::Generate {
            what: format!("a CSR for {identity}"),
            source,
        };
        let uri = Ia5String::try_from(identity.uri()).map_err(generate_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params
            .serialize_request(&self.key)
            .map_err(generate_error)?;
        Ok(csr.der().to_vec())
    }

    /// The private key, PKCS#8 DER, for a rustls certified key.
    #[must_use]
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

impl fmt::Debug for WorkloadKey {
    /// Never shows the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadKey")
            .field("algorithm", &"ECDSA P-256")
            .finish_non_exhaustive()
    }
}

// === impl WorkloadCertificate ===

impl WorkloadCertificate {
    /// A certificate another CA issued (the controller's): its chain as
    /// PEM, leaf first, whose leaf must carry exactly `identity`.
    pub fn from_chain_pem(identity: &SpiffeId, chain_pem: &str) -> Result<Self, CaError> {
        let origin =
            || std::path::PathBuf::from(format!("the certificate chain issued for {identity}"));
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| CaError::NoCertificate {
                path: origin(),
                reason: error.to_string(),
            })?;
        let leaf = chain.first().ok_or_else(|| CaError::NoCertificate {
            path: origin(),
            reason: "it is empty".into(),
        })?;
        let carried = super::inspect::spiffe_id_of(leaf)?;
        if &carried != identity {
            return Err(CaError::BadCertificateFile {
                path: origin(),
                reason: format!("its leaf is for {carried}"),
            });
        }
        let facts = super::inspect::CertificateFacts::of(leaf)?;
        Ok(Self {
            identity: identity.clone(),
            chain,
            not_before: facts.not_before,
            not_after: facts.not_after,
            serial: facts.serial,
        })
    }

    /// When a holder that got this certificate at `received` renews it:
    /// half-way from then to its end. Not half-way through its validity,
    /// which starts a minute before it was issued (for clocks that lag):
    /// a certificate of a minute's lifetime would be due the moment it was
    /// issued, and renewed on every check.
    #[must_use]
    pub fn renew_at(&self, received: SystemTime) -> SystemTime {
        let left = self.not_after.duration_since(received).unwrap_or_default();
        received + left / 2
    }

    /// The leaf certificate.
    ///
    /// # Panics
    ///
    /// If `chain` is empty, which a certificate from a CA never is.
    #[must_use]
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The chain as PEM, leaf first.
    #[must_use]
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(super::files::certificate_pem)
            .collect()
    }
}

// === impl CsrPublicKey ===

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// The SPIFFE id a CSR asks for: its extension request must carry a
/// subjectAltName with exactly one URI SAN, a valid SPIFFE id. A signer that
/// decides identities itself (the controller) compares it with the one it
/// grants, so a requester learns of a mismatch instead of getting a
/// certificate it did not expect.
pub fn csr_spiffe_id(csr_der: &[u8]) -> Result<SpiffeId, CaError> {
    let bad = |reason: String| CaError::CsrIdentity { reason };
    let (_, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|error| bad(format!("it is not a DER PKCS#10 request: {error}")))?;
    let mut uris = Vec::new();
    for extension in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(names) = extension {
            uris.extend(names.general_names.iter().filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            }));
        }
    }
    match uris.as_slice() {
        [uri] => uri
            .parse()
            .map_err(|error: crate::identity::IdentityError| bad(error.to_string())),
        [] => Err(bad("it asks for no URI SAN".into())),
        many => Err(bad(format!(
            "it asks for {} URI SANs ({}), expected exactly one",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// Parses a CSR, checks that its own key signed it (proof that the requester
/// holds the private key) and that the key is ECDSA P-256, and returns the
/// key. Nothing else in the CSR is used.
pub(super) fn csr_public_key(csr_der: &[u8], identity: &SpiffeId) -> Result<CsrPublicKey, CaError> {
    let csr_error = |reason: String| CaError::Csr {
        identity: identity.clone(),
        reason,
    };
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|error| csr_error(format!("is not a DER PKCS#10 request: {error}")))?;
    if !rest.is_empty() {
        return Err(csr_error(format!(
            "has {} bytes after the request",
            rest.len()
        )));
    }
    csr.verify_signature()
        .map_err(|error| csr_error(format!("has a bad signature: {error}")))?;
    let key = &csr.certification_request_info.subject_pki;
    let curve = key
        .algorithm
        .parameters
        .as_ref()
        .and_then(|parameters| parameters.as_oid().ok());
    if key.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(csr_error(format!(
            "has a {} key (parameters {curve:?}); ambit certifies ECDSA P-256 keys only",
            key.algorithm.algorithm
        )));
    }
    Ok(CsrPublicKey {
        raw: key.subject_public_key.data.to_vec(),
    })
}
