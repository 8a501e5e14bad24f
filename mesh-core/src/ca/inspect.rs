//! Reading facts out of certificates: the SPIFFE id, the validity, the
//! fingerprint.

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime},
};

use rustls_pki_types::CertificateDer;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, time::ASN1Time};

use super::CaError;
use crate::identity::{IdentityError, SpiffeId};

/// The SPIFFE id in a certificate: it must carry exactly one URI SAN, and
/// that URI must parse as a [`SpiffeId`].
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, CaError> {
    let x509 = parse(cert)?;
    let no_id = |reason: String| CaError::NoSpiffeId {
        subject: subject_of(&x509),
        serial: hex(x509.raw_serial()),
        reason,
    };
    let names = x509
        .subject_alternative_name()
        .map_err(|error| CaError::Certificate {
            reason: format!("bad subjectAltName extension: {error}"),
        })?
        .ok_or_else(|| no_id("it has no subjectAltName extension".into()))?;
    let uris: Vec<&str> = names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] => uri
            .parse()
            .map_err(|error: IdentityError| no_id(error.to_string())),
        [] => Err(no_id("it has no URI SAN".into())),
        many => Err(no_id(format!(
            "it has {} URI SANs ({}), expected exactly one",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// When a certificate expires (its notAfter).
pub fn not_after_of(cert: &CertificateDer<'_>) -> Result<SystemTime, CaError> {
    Ok(system_time(parse(cert)?.validity().not_after))
}

/// A certificate's serial number, lowercase hex without separators: the
/// format of [`WorkloadCertificate::serial`](super::WorkloadCertificate::serial).
pub fn serial_of(cert: &CertificateDer<'_>) -> Result<String, CaError> {
    Ok(hex(parse(cert)?.raw_serial()))
}

/// The SHA-256 fingerprint of a certificate's DER, as `openssl x509
/// -fingerprint -sha256` prints it: uppercase hex pairs joined by colons.
#[must_use]
pub fn sha256_fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut text = String::with_capacity(digest.as_ref().len() * 3);
    for (i, byte) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            text.push(':');
        }
        let _ = write!(text, "{byte:02X}");
    }
    text
}

/// Why a CA certificate's subject cannot be the issuer name of the
/// certificates it signs, if it cannot. The signer (rcgen) writes the name
/// again from its parts: it takes one attribute per name part, and it
/// panics on an attribute type whose identifier has no DER form (a first
/// arc above 2, or a second arc of 40 or more under 0 or 1), which
/// x509-parser reads from some encodings.
pub(super) fn unwritable_issuer_name(x509: &X509Certificate<'_>) -> Option<String> {
    for part in x509.subject().iter() {
        let attributes: Vec<_> = part.iter().collect();
        let [attribute] = attributes.as_slice() else {
            return Some(format!(
                "a part of its subject has {} attributes; a CA's subject needs one per part",
                attributes.len()
            ));
        };
        let oid = attribute.attr_type();
        let arcs: Option<Vec<u64>> = oid.iter().map(Iterator::collect);
        let writable = matches!(
            arcs.as_deref(),
            Some([first, second, ..])
                if *first < 3 && (*first == 2 || *second < 40) && *second < u64::MAX - 80
        );
        if !writable {
            return Some(format!(
                "its subject has an attribute type {oid} that is not a valid object identifier"
            ));
        }
    }
    None
}

/// What the CA reads back from a certificate it has just signed.
pub(super) struct CertificateFacts {
    pub(super) not_before: SystemTime,
    pub(super) not_after: SystemTime,
    pub(super) serial: String,
}

// === impl CertificateFacts ===

impl CertificateFacts {
    pub(super) fn of(cert: &CertificateDer<'_>) -> Result<Self, CaError> {
        let x509 = parse(cert)?;
        Ok(Self {
            not_before: system_time(x509.validity().not_before),
            not_after: system_time(x509.validity().not_after),
            serial: hex(x509.raw_serial()),
        })
    }
}

pub(super) fn parse<'a>(cert: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, CaError> {
    let (rest, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|error| CaError::Certificate {
            reason: error.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(CaError::Certificate {
            reason: format!("{} bytes follow the certificate", rest.len()),
        });
    }
    Ok(x509)
}

pub(super) fn subject_of(x509: &X509Certificate<'_>) -> String {
    let subject = x509.subject().to_string();
    if subject.is_empty() {
        "<empty subject>".into()
    } else {
        subject
    }
}

/// Lowercase hex without separators.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

fn system_time(time: ASN1Time) -> SystemTime {
    let seconds = time.timestamp();
    let magnitude = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    }
}
