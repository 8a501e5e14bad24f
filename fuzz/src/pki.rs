//! A throwaway PKI for the targets that need one: a CA made once per
//! process (never written anywhere but a temporary directory the waypoint
//! loads it from), and workload keys with their CSRs.

use std::{path::PathBuf, sync::OnceLock, time::Duration};

use mesh_core::{
    ca::{CertificateAuthority, WorkloadKey},
    identity::SpiffeId,
};

/// The trust domain of every identity here.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The process's CA.
///
/// # Panics
///
/// When no CA can be generated.
pub fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        CertificateAuthority::generate(TRUST_DOMAIN, Duration::from_hours(24))
            .expect("a throwaway CA")
    })
}

/// The process's CA written as `ca.pem` and `ca-key.pem` in a directory of
/// its own under the system's temporary directory (the waypoint loads its
/// CA from files); the paths of the certificate and the key.
///
/// # Panics
///
/// When the files cannot be written.
pub fn ca_files() -> &'static (PathBuf, PathBuf) {
    static FILES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ambit-fuzz-ca-{}", std::process::id()));
        ca().write_replacing(&dir)
            .expect("the throwaway CA's files")
    })
}

/// The SPIFFE id of `service_account` in `namespace`.
///
/// # Panics
///
/// When the names make no SPIFFE id.
#[must_use]
pub fn id(namespace: &str, service_account: &str) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, namespace, service_account).expect("a SPIFFE id")
}

/// A workload key made once per process, and its CSR (DER) for `identity`.
///
/// # Panics
///
/// When no key or CSR can be made.
#[must_use]
pub fn csr_der(identity: &SpiffeId) -> Vec<u8> {
    static KEY: OnceLock<WorkloadKey> = OnceLock::new();
    KEY.get_or_init(|| WorkloadKey::generate().expect("a workload key"))
        .csr_der(identity)
        .expect("a CSR")
}
