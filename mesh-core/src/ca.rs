//! The certificate authority: a self-signed root that signs short-lived
//! workload certificates carrying one SPIFFE id each, the workload side of
//! the exchange (key pair and CSR), and the trust bundle peers verify against.
//!
//! Every key is ECDSA P-256: its handshakes are the cheapest of the widely
//! supported choices, and ring signs and verifies it without C toolchains.
//!
//! In local mode the node agent loads the CA that `ambit ca init` wrote and
//! signs its own pods' certificates; in Kubernetes mode the controller does
//! the signing and agents only hold a [`WorkloadKey`] and a [`TrustBundle`].

use std::{
    fmt, io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData as _, SanType,
    string::Ia5String,
};
use rustls_pki_types::CertificateDer;

use crate::identity::{self, IdentityError, SpiffeId};

mod bundle;
mod files;
mod inspect;
mod workload;

#[cfg(test)]
mod tests;

pub use bundle::{BundleFile, TrustBundle};
pub use inspect::{not_after_of, serial_of, sha256_fingerprint, spiffe_id_of};
pub use workload::{WorkloadCertificate, WorkloadKey, csr_spiffe_id};

/// A certificate lifetime as a command line gives it (`--cert-lifetime`):
/// whole seconds, or a number followed by `s`, `m`, `h` or `d`; at least
/// 2 s.
pub fn parse_lifetime(value: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "{value:?} is not a lifetime: expected seconds (86400) or a number with s, m, h or d (24h)"
        )
    };
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = number.checked_mul(scale).ok_or_else(bad)?;
    if secs < 2 {
        return Err(format!(
            "{value:?} is too short: a certificate must live at least 2 s"
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// File name of the CA certificate that [`CertificateAuthority::write`] writes.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key that [`CertificateAuthority::write`] writes.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Certificates start this far in the past, so a peer whose clock is a
/// little behind ours does not reject a certificate issued a moment ago.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_mins(1);
/// Random serial length: 128 bits, well inside RFC 5280's 20-byte limit.
const SERIAL_LEN: usize = 16;

/// Why a CA, key, certificate or trust bundle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source} (check the path and its permissions)")]
    Read {
        /// What the file should hold, e.g. "the CA certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file that should hold a PEM certificate does not.
    #[error("{path} holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block): {reason}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// A certificate in a file is not valid X.509.
    #[error("{path} holds a certificate that cannot be parsed: {reason}")]
    BadCertificateFile {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// The certificate given as the CA may not sign certificates.
    #[error(
        "{path} is not a CA certificate: {reason} (pass the {CA_CERT_FILE} that `ambit ca init` wrote, not a workload certificate)"
    )]
    NotCa {
        /// The file.
        path: PathBuf,
        /// Which check failed.
        reason: &'static str,
    },
    /// The key file is not an unencrypted PKCS#8 PEM key that ring can use.
    #[error(
        "{path} is not a PEM PKCS#8 private key (a \"-----BEGIN PRIVATE KEY-----\" block): {reason} (convert a key with `openssl pkcs8 -topk8 -nocrypt`)"
    )]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key loads, and its public half may match the certificate, but
    /// it cannot sign: its private half is damaged.
    #[error(
        "the CA key {path} cannot sign ({reason}): its private part is damaged (restore it from a backup, or make a new CA with `ambit ca init`)"
    )]
    KeyCannotSign {
        /// The file.
        path: PathBuf,
        /// The signer's error.
        reason: String,
    },
    /// The key is not the one whose public half the certificate carries.
    #[error(
        "the key {key_path} does not match the certificate {cert_path} (were both written by the same `ambit ca init`?)"
    )]
    KeyMismatch {
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
    },
    /// Writing would replace files that already exist.
    #[error("refusing to overwrite {}: remove them or choose another directory", files::display_paths(.paths))]
    Exists {
        /// The files that exist.
        paths: Vec<PathBuf>,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source} (check that the directory is writable)")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A trust domain given for a new CA is not valid.
    #[error("cannot make a CA: {0}")]
    TrustDomain(#[source] IdentityError),
    /// Key, certificate or CSR generation failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: String,
        /// The generator's error.
        source: rcgen::Error,
    },
    /// A validity period cannot be encoded or is empty.
    #[error("invalid certificate validity: {reason}")]
    Validity {
        /// What is wrong.
        reason: String,
    },
    /// A CSR was rejected.
    #[error("cannot sign a certificate for {identity}: the CSR {reason}")]
    Csr {
        /// The identity the certificate was for.
        identity: SpiffeId,
        /// What is wrong with the CSR.
        reason: String,
    },
    /// A CSR does not say which SPIFFE id it asks for.
    #[error("the CSR carries no usable SPIFFE id: {reason}")]
    CsrIdentity {
        /// What is wrong.
        reason: String,
    },
    /// Signing a workload certificate failed.
    #[error("cannot sign a certificate for {identity}: {source}")]
    Sign {
        /// The identity the certificate was for.
        identity: SpiffeId,
        /// The signer's error.
        source: rcgen::Error,
    },
    /// Bytes given as a DER certificate are not valid X.509.
    #[error("cannot parse the certificate: {reason}")]
    Certificate {
        /// The parser's complaint.
        reason: String,
    },
    /// A certificate does not carry exactly one valid SPIFFE id.
    #[error("the certificate {subject} (serial {serial}) carries no usable SPIFFE id: {reason}")]
    NoSpiffeId {
        /// The certificate's subject, or `<empty subject>`.
        subject: String,
        /// The certificate's serial, hex.
        serial: String,
        /// What is wrong.
        reason: String,
    },
    /// A root in a trust bundle is not usable as a trust anchor.
    #[error("root #{index} ({subject}) of the trust bundle is not a usable trust anchor: {source}")]
    BadRoot {
        /// Position in the bundle, from 1.
        index: usize,
        /// The root's subject.
        subject: String,
        /// rustls's error.
        source: rustls::Error,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed (is /dev/urandom or getrandom available?)")]
    Random,
}

/// A certificate authority: its self-signed certificate and its signing key.
pub struct CertificateAuthority {
    certificate_der: CertificateDer<'static>,
    certificate_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

// === impl CertificateAuthority ===

impl CertificateAuthority {
    /// Makes a new self-signed root for `trust_domain`, valid from a minute
    /// ago for `validity`: CA:true, keyCertSign and cRLSign, common name
    /// `ambit CA <trust-domain>`, a random serial.
    pub fn generate(trust_domain: &str, validity: Duration) -> Result<Self, CaError> {
        identity::validate_trust_domain(trust_domain).map_err(CaError::TrustDomain)?;
        let (key, mut params) = fresh_key_and_params(validity, || "a CA key".into())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "ambit");
        name.push(DnType::CommonName, format!("ambit CA {trust_domain}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let certificate = params
            .self_signed(&key)
            .map_err(|source| CaError::Generate {
                what: format!("a CA certificate for {trust_domain}"),
                source,
            })?;
        let certificate_der = certificate.der().clone();
        Ok(Self {
            certificate_pem: files::certificate_pem(&certificate_der),
            certificate_der,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from a PEM certificate (the first `CERTIFICATE` block of
    /// `cert_path`) and a PEM PKCS#8 key. Checks that the certificate is a
    /// CA, that the key is its key, and that the key signs.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let cert_text = files::read_file(cert_path, "the CA certificate")?;
        let key_text = files::read_file(key_path, "the CA key")?;
        Self::from_pem(&cert_text, cert_path, &key_text, key_path)
    }

    /// Like [`load`](Self::load), from PEM text already read (e.g. from a
    /// Kubernetes Secret); `cert_origin` and `key_origin` name where each
    /// came from in error messages.
    pub fn from_pem(
        cert_text: &[u8],
        cert_origin: &Path,
        key_text: &[u8],
        key_origin: &Path,
    ) -> Result<Self, CaError> {
        let (cert_path, key_path) = (cert_origin, key_origin);
        let certificate_der = files::first_certificate(cert_path, cert_text)?;
        let bad_certificate = |reason: String| CaError::BadCertificateFile {
            path: cert_path.to_owned(),
            reason,
        };
        let (_, x509) = x509_parser::parse_x509_certificate(&certificate_der)
            .map_err(|error| bad_certificate(error.to_string()))?;
        let not_ca = |reason| CaError::NotCa {
            path: cert_path.to_owned(),
            reason,
        };
        match x509.basic_constraints() {
            Err(error) => return Err(bad_certificate(error.to_string())),
            Ok(None) => return Err(not_ca("it has no basicConstraints extension")),
            Ok(Some(constraints)) if !constraints.value.ca => {
                return Err(not_ca("its basicConstraints say CA:FALSE"));
            }
            Ok(Some(_)) => {}
        }
        if let Ok(Some(usage)) = x509.key_usage()
            && !usage.value.key_cert_sign()
        {
            return Err(not_ca("its keyUsage lacks keyCertSign"));
        }

        let key = files::load_key(key_path, key_text)?;
        if key.subject_public_key_info() != x509.public_key().raw {
            return Err(CaError::KeyMismatch {
                cert_path: cert_path.to_owned(),
                key_path: key_path.to_owned(),
            });
        }
        if let Some(reason) = inspect::unwritable_issuer_name(&x509) {
            return Err(bad_certificate(reason));
        }
        let issuer = Issuer::from_ca_cert_der(&certificate_der, key)
            .map_err(|error| bad_certificate(error.to_string()))?;
        // What the signer rewrites of the CA into each certificate must be
        // writable: one trial issuance finds out at load, while the last
        // good CA is still in use, not at the first request.
        CertificateParams::default()
            .signed_by(issuer.key(), &issuer)
            .map_err(|error| bad_certificate(format!("the CA cannot issue with it: {error}")))?;
        Ok(Self {
            certificate_pem: files::certificate_pem(&certificate_der),
            certificate_der,
            issuer,
        })
    }

    /// Writes `dir/ca.pem` (mode 0644) and `dir/ca-key.pem` (mode 0600),
    /// creating `dir` if needed. Refuses, before writing anything, if either
    /// file exists. Returns the certificate's and the key's paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), CaError> {
        self.write_files(dir, false)
    }

    /// Like [`write`](Self::write), but replaces existing files (`--force`).
    pub fn write_replacing(&self, dir: &Path) -> Result<(PathBuf, PathBuf), CaError> {
        self.write_files(dir, true)
    }

    /// The CA certificate, DER.
    #[must_use]
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.certificate_der
    }

    /// The CA certificate, PEM.
    #[must_use]
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// A trust bundle holding only this CA.
    #[must_use]
    pub fn trust_bundle(&self) -> TrustBundle {
        let mut bundle = TrustBundle::new();
        bundle.add(self.certificate_der.clone());
        bundle
    }

    /// Signs a workload CSR (DER) for `identity`, valid from a minute ago
    /// for `validity`. See [`sign_csr_with_validity`](Self::sign_csr_with_validity).
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        identity: &SpiffeId,
        validity: Duration,
    ) -> Result<WorkloadCertificate, CaError> {
        let now = SystemTime::now();
        self.sign_csr_with_validity(
            csr_der,
            identity,
            backdated(now),
            checked_add(now, validity)?,
        )
    }

    /// Signs a workload CSR (DER) for `identity`, valid from `not_before` to
    /// `not_after` (whole seconds). The CSR contributes only its public key,
    /// which must be ECDSA P-256, and must be signed by that key: the CA
    /// decides everything else. The certificate carries exactly one URI SAN,
    /// `identity`, is not a CA, allows digitalSignature and the serverAuth and
    /// clientAuth extended usages, and has a random serial.
    pub fn sign_csr_with_validity(
        &self,
        csr_der: &[u8],
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCertificate, CaError> {
        let public_key = workload::csr_public_key(csr_der, identity)?;
        if not_after <= not_before {
            return Err(CaError::Validity {
                reason: format!(
                    "the certificate for {identity} would end ({}) before it starts ({})",
                    offset_date_time(not_after)?,
                    offset_date_time(not_before)?
                ),
            });
        }
        let params = workload_params(identity, not_before, not_after)?;
        let certificate = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|source| CaError::Sign {
                identity: identity.clone(),
                source,
            })?;
        let leaf = certificate.der().clone();
        // Read the times and serial back from the certificate so they are
        // exactly what peers will see (X.509 keeps whole seconds).
        let facts = inspect::CertificateFacts::of(&leaf)?;
        Ok(WorkloadCertificate {
            identity: identity.clone(),
            chain: vec![leaf, self.certificate_der.clone()],
            not_before: facts.not_before,
            not_after: facts.not_after,
            serial: facts.serial,
        })
    }

    fn write_files(&self, dir: &Path, replace: bool) -> Result<(PathBuf, PathBuf), CaError> {
        let key_pem = self.issuer.key().serialize_pem();
        files::write_ca_files(dir, &self.certificate_pem, &key_pem, replace)
    }
}

impl fmt::Debug for CertificateAuthority {
    /// Shows the certificate's fingerprint, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("sha256", &sha256_fingerprint(&self.certificate_der))
            .finish_non_exhaustive()
    }
}

/// The parameters of every workload certificate.
/// A TLS server certificate and its key, as
/// [`CertificateAuthority::issue_server_certificate`] makes them.
pub struct ServerCertificate {
    /// The leaf, then the CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

impl CertificateAuthority {
    /// Issues a server certificate (serverAuth) for `dns_names` and `ips`
    /// with a fresh ECDSA P-256 key, valid from a minute ago for
    /// `validity`: what a control-plane service of the mesh presents.
    pub fn issue_server_certificate(
        &self,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        validity: Duration,
    ) -> Result<ServerCertificate, CaError> {
        let what = || format!("a server certificate for {dns_names:?} {ips:?}");
        let (key, mut params) = fresh_key_and_params(validity, what)?;
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            dns_names
                .first()
                .cloned()
                .unwrap_or_else(|| "ambit".to_owned()),
        );
        params.distinguished_name = name;
        for dns in dns_names {
            let dns = Ia5String::try_from(dns.as_str()).map_err(|source| CaError::Generate {
                what: what(),
                source,
            })?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let certificate =
            params
                .signed_by(&key, &self.issuer)
                .map_err(|source| CaError::Generate {
                    what: what(),
                    source,
                })?;
        Ok(ServerCertificate {
            chain: vec![certificate.der().clone(), self.certificate_der.clone()],
            key_der: key.serialize_der(),
        })
    }
}

/// A new ECDSA P-256 key, and certificate parameters valid from a minute
/// ago for `validity` with a random serial; `what` names the certificate
/// in errors.
fn fresh_key_and_params(
    validity: Duration,
    what: impl Fn() -> String,
) -> Result<(KeyPair, CertificateParams), CaError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Generate {
            what: what(),
            source,
        })?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.not_before = offset_date_time(backdated(now))?;
    params.not_after = offset_date_time(checked_add(now, validity)?)?;
    params.serial_number = Some(random_serial()?);
    Ok((key, params))
}

fn workload_params(
    identity: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, CaError> {
    let uri = Ia5String::try_from(identity.uri()).map_err(|source| CaError::Sign {
        identity: identity.clone(),
        source,
    })?;
    let mut params = CertificateParams::default();
    params.not_before = offset_date_time(not_before)?;
    params.not_after = offset_date_time(not_after)?;
    params.serial_number = Some(random_serial()?);
    // As in SPIFFE X.509-SVIDs: the identity lives in the SAN alone, and with
    // an empty subject rcgen marks the SAN critical, as RFC 5280 requires.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn random_serial() -> Result<rcgen::SerialNumber, CaError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0_u8; SERIAL_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    // Positive (top bit clear) and full length (next bit set), so the DER
    // integer is exactly SERIAL_LEN bytes and its hex is the same everywhere.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

/// The start of a certificate issued at `now`.
fn backdated(now: SystemTime) -> SystemTime {
    now.checked_sub(CLOCK_SKEW_ALLOWANCE)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn checked_add(time: SystemTime, duration: Duration) -> Result<SystemTime, CaError> {
    time.checked_add(duration).ok_or_else(|| CaError::Validity {
        reason: format!("{} days is too long", duration.as_secs() / 86_400),
    })
}

/// Converts for rcgen, failing (rather than panicking, as `From` does) on
/// times X.509 cannot hold.
fn offset_date_time(time: SystemTime) -> Result<time::OffsetDateTime, CaError> {
    let out_of_range = || CaError::Validity {
        reason: format!("{time:?} is outside the range a certificate can hold"),
    };
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| out_of_range())?
        .as_secs();
    let seconds = i64::try_from(seconds).map_err(|_| out_of_range())?;
    time::OffsetDateTime::from_unix_timestamp(seconds).map_err(|_| out_of_range())
}
