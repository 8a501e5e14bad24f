//! The waypoint's own identity: `spiffe://<trust domain>/ns/<namespace>/sa/<name>`,
//! with a certificate signed by the mesh CA and renewed at half its life.
//! Connections pick the current certificate at handshake time.

use std::{
    path::Path,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use mesh_core::{
    ca::{CaError, CertificateAuthority, WorkloadKey},
    identity::{IdentityError, SpiffeId},
    tls::{self, CertificateSource},
};
use rustls::{RootCertStore, sign::CertifiedKey};

/// Why the waypoint has no certificate.
#[derive(Debug, thiserror::Error)]
pub enum WaypointIdentityError {
    /// The identity cannot be formed from the name and namespace.
    #[error("the waypoint has no valid identity: {0}")]
    Identity(#[from] IdentityError),
    /// The CA could not be read or could not sign.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The signed certificate and the key do not go together.
    #[error("the waypoint's certificate cannot be used: {0}")]
    Key(#[from] rustls::Error),
}

/// The waypoint's identity and its current certificate.
#[derive(Debug)]
pub struct WaypointIdentity {
    /// Its SPIFFE id.
    pub id: SpiffeId,
    ca: CertificateAuthority,
    lifetime: Duration,
    current: RwLock<Issued>,
    roots: Arc<RootCertStore>,
}

#[derive(Debug)]
struct Issued {
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
}

impl WaypointIdentity {
    /// Loads the CA and issues the first certificate.
    pub fn new(
        id: SpiffeId,
        ca_cert: &Path,
        ca_key: &Path,
        lifetime: Duration,
    ) -> Result<Self, WaypointIdentityError> {
        let ca = CertificateAuthority::load(ca_cert, ca_key)?;
        let roots = Arc::new(ca.trust_bundle().root_store()?);
        let current = RwLock::new(issue(&ca, &id, lifetime)?);
        Ok(Self {
            id,
            ca,
            lifetime,
            current,
            roots,
        })
    }

    /// The trust anchors peers are verified against.
    #[must_use]
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// Renews the certificate if it is past half its life.
    pub fn renew_if_due(&self, now: SystemTime) -> Result<bool, WaypointIdentityError> {
        let due = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .renew_at
            <= now;
        if due {
            let issued = issue(&self.ca, &self.id, self.lifetime)?;
            *self
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = issued;
        }
        Ok(due)
    }
}

impl CertificateSource for WaypointIdentity {
    fn current(&self, identity: &SpiffeId) -> Option<Arc<CertifiedKey>> {
        (identity == &self.id).then(|| {
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .key
                .clone()
        })
    }
}

fn issue(
    ca: &CertificateAuthority,
    id: &SpiffeId,
    lifetime: Duration,
) -> Result<Issued, WaypointIdentityError> {
    let key = WorkloadKey::generate()?;
    let certificate = ca.sign_csr(&key.csr_der(id)?, id, lifetime)?;
    let signing_key = tls::provider()
        .key_provider
        .load_private_key(key.private_key_der())?;
    let certified = CertifiedKey::new(certificate.chain.clone(), signing_key);
    certified.keys_match()?;
    let half = certificate
        .not_after
        .duration_since(certificate.not_before)
        .unwrap_or_default()
        / 2;
    Ok(Issued {
        key: Arc::new(certified),
        renew_at: certificate.not_before + half,
    })
}
