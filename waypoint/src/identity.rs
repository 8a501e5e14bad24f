//! The waypoint's own identity: `spiffe://<trust domain>/ns/<namespace>/sa/<name>`,
//! with a certificate renewed at half its life. It is signed either locally
//! with the mesh CA's files (`--ca-cert/--ca-key`, local mode) or by the
//! controller (`--ca-address`): the waypoint sends a CSR with its
//! service-account token, bound to its pod, and the controller grants it
//! only its own identity (see `controller/src/signing.rs`). Connections
//! pick the current certificate at handshake time. With the controller, the
//! trust bundle file (the `ambit-trust-bundle` `ConfigMap`, mounted) is
//! followed: after a CA rotation new connections trust the new roots.
//!
//! The first certificate is asked for until it is issued ([`until_issued`]):
//! a waypoint that starts before the controller can sign for it (the
//! controller or the trust bundle not there yet, its pod not labelled yet)
//! waits, not ready, instead of exiting.

use std::{
    future::Future,
    path::Path,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use mesh_core::{
    ca::{
        BundleFile, CaError, CertificateAuthority, TrustBundle, WorkloadCertificate, WorkloadKey,
    },
    identity::{IdentityError, SpiffeId},
    tls::{self, CertificateSource},
    workload::PodKey,
};
use mesh_kube::controller_client::{ControllerClient, ControllerError, backoff};
use rustls::{RootCertStore, sign::CertifiedKey};

/// Why the waypoint has no certificate.
#[derive(Debug, thiserror::Error)]
pub enum WaypointIdentityError {
    /// The identity cannot be formed from the name and namespace.
    #[error("the waypoint has no valid identity: {0}")]
    Identity(#[from] IdentityError),
    /// The CA or the trust bundle could not be read, or the CA could not
    /// sign.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The controller refused or could not be reached.
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// The signed certificate and the key do not go together.
    #[error("the waypoint's certificate cannot be used: {0}")]
    Key(#[from] rustls::Error),
}

/// Who signs the waypoint's certificates.
#[derive(Debug)]
pub enum Signer {
    /// The mesh CA, from files.
    Local {
        /// The CA.
        ca: Box<CertificateAuthority>,
        /// Lifetime of each certificate.
        lifetime: Duration,
    },
    /// The controller, for the waypoint's pod.
    Controller {
        /// The controller's client.
        client: ControllerClient,
        /// The waypoint's pod, which its token is bound to.
        pod: PodKey,
    },
}

/// The waypoint's identity and its current certificate.
#[derive(Debug)]
pub struct WaypointIdentity {
    /// Its SPIFFE id.
    pub id: SpiffeId,
    signer: Signer,
    current: RwLock<Issued>,
    roots: RwLock<Arc<RootCertStore>>,
    /// The trust bundle file followed.
    bundle: Option<BundleFile>,
}

#[derive(Debug)]
struct Issued {
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
    expires_at: SystemTime,
}

/// Runs `attempt` until it gives the waypoint its first certificate,
/// waiting longer after each failure (see [`backoff`]: from half a second,
/// doubling up to thirty); each failure is logged and handed to `failed`.
pub async fn until_issued<A, F>(
    mut attempt: A,
    failed: impl Fn(&WaypointIdentityError),
) -> WaypointIdentity
where
    A: FnMut() -> F,
    F: Future<Output = Result<WaypointIdentity, WaypointIdentityError>>,
{
    let mut failures = 0;
    loop {
        match attempt().await {
            Ok(identity) => return identity,
            Err(error) => {
                failures += 1;
                let retry_in = backoff(failures);
                tracing::warn!(%error, ?retry_in, "no certificate yet; asking again");
                failed(&error);
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

impl WaypointIdentity {
    /// Loads the CA and issues the first certificate locally.
    pub fn new(
        id: SpiffeId,
        ca_cert: &Path,
        ca_key: &Path,
        lifetime: Duration,
    ) -> Result<Self, WaypointIdentityError> {
        let ca = CertificateAuthority::load(ca_cert, ca_key)?;
        let roots = Arc::new(ca.trust_bundle().root_store()?);
        let key = WorkloadKey::generate()?;
        let certificate = ca.sign_csr(&key.csr_der(&id)?, &id, lifetime)?;
        let current = RwLock::new(certify(&certificate, &key)?);
        Ok(Self {
            id,
            signer: Signer::Local {
                ca: Box::new(ca),
                lifetime,
            },
            current,
            roots: RwLock::new(roots),
            bundle: None,
        })
    }

    /// Asks the controller for the first certificate; peers and the
    /// controller are verified against the roots in `trust_bundle`.
    pub async fn from_controller(
        id: SpiffeId,
        client: ControllerClient,
        pod: PodKey,
        trust_bundle: &Path,
    ) -> Result<Self, WaypointIdentityError> {
        let (bundle, contents) = BundleFile::open(trust_bundle)?;
        let roots = Arc::new(TrustBundle::from_pem(&contents, trust_bundle)?.root_store()?);
        let signer = Signer::Controller { client, pod };
        let current = RwLock::new(sign(&signer, &id, &roots).await?);
        Ok(Self {
            id,
            signer,
            current,
            roots: RwLock::new(roots),
            bundle: Some(bundle),
        })
    }

    /// Re-reads the trust bundle file if it changed; new roots apply to new
    /// connections (TLS configurations are built per connection). Returns
    /// the number of roots when they changed; a file that cannot be read
    /// or parsed leaves the roots in use and is reported once.
    pub fn follow_trust_bundle(&self) -> Result<Option<usize>, WaypointIdentityError> {
        let Some(bundle) = &self.bundle else {
            return Ok(None);
        };
        let Some(contents) = bundle.changed()? else {
            return Ok(None);
        };
        let store = TrustBundle::from_pem(&contents, bundle.path())?.root_store()?;
        let count = store.len();
        *self
            .roots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(store);
        Ok(Some(count))
    }

    /// The trust anchors peers are verified against.
    #[must_use]
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// When the certificate in use expires.
    #[must_use]
    pub fn expires_at(&self) -> SystemTime {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .expires_at
    }

    /// Renews the certificate if it is past half its life.
    pub async fn renew_if_due(&self, now: SystemTime) -> Result<bool, WaypointIdentityError> {
        let due = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .renew_at
            <= now;
        if due {
            let issued = sign(&self.signer, &self.id, &self.roots()).await?;
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

/// A new key and its certificate from `signer`.
async fn sign(
    signer: &Signer,
    id: &SpiffeId,
    roots: &Arc<RootCertStore>,
) -> Result<Issued, WaypointIdentityError> {
    let key = WorkloadKey::generate()?;
    let csr = key.csr_der(id)?;
    let certificate = match signer {
        Signer::Local { ca, lifetime } => ca.sign_csr(&csr, id, *lifetime)?,
        Signer::Controller { client, pod } => client.sign(roots.clone(), pod, id, &csr).await?,
    };
    certify(&certificate, &key)
}

fn certify(
    certificate: &WorkloadCertificate,
    key: &WorkloadKey,
) -> Result<Issued, WaypointIdentityError> {
    let signing_key = tls::provider()
        .key_provider
        .load_private_key(key.private_key_der())?;
    let certified = CertifiedKey::new(certificate.chain.clone(), signing_key);
    certified.keys_match()?;
    Ok(Issued {
        key: Arc::new(certified),
        renew_at: certificate.renew_at(SystemTime::now()),
        expires_at: certificate.not_after,
    })
}

#[cfg(test)]
mod tests {
    use mesh_core::ca::CertificateAuthority;

    use super::*;

    #[tokio::test]
    async fn a_one_minute_certificate_is_renewed_half_way_not_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("cluster.local", Duration::from_hours(1)).unwrap();
        let (cert, key) = ca.write(dir.path()).unwrap();
        let id = SpiffeId::new("cluster.local", "shop", "wp").unwrap();
        let identity = WaypointIdentity::new(id, &cert, &key, Duration::from_mins(1)).unwrap();
        let now = SystemTime::now();
        let expires = identity.expires_at();
        assert!(
            !identity
                .renew_if_due(now + Duration::from_secs(10))
                .await
                .unwrap()
        );
        assert!(
            !identity
                .renew_if_due(now + Duration::from_secs(25))
                .await
                .unwrap()
        );
        assert!(
            identity
                .renew_if_due(now + Duration::from_secs(31))
                .await
                .unwrap()
        );
        assert!(identity.expires_at() >= expires, "a new certificate");
    }
}
