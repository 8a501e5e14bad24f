//! Workload certificates: each enrolled pod's identity gets a short-lived
//! certificate, reissued at half-life. New TLS handshakes pick the newest
//! certificate; established connections keep theirs.
//!
//! Who signs:
//! - local mode: the agent holds the mesh CA (from `ambit ca init`) and
//!   signs at once, on the caller's thread;
//! - Kubernetes mode with `--ca-address`: the controller's CA
//!   ([`controller_client`]), which signs only for pods of this node, so each
//!   request names a pod of the identity (module `requests`). Requests run on
//!   their own thread: [`CertManager::ensure`] starts one and answers at
//!   once that the pod waits; when the answer comes the certificate is
//!   stored and [`CertManager::changed`] wakes the enrollment, which tries
//!   again. A refusal is kept, with the controller's reason, until a retry
//!   (with a backoff) succeeds.
//!
//! The trust bundle file (`--trust-bundle`) is re-read when it changes:
//! the kubelet updates the mounted `ConfigMap` during a CA rotation, and
//! new handshakes then trust the new roots.
//!
//! Submodules, each an `impl CertManager` block of one concern: `trust`
//! (the roots), `tls_configs` (the cached HBONE TLS configurations),
//! `rotation` (reissuing at half-life) and `requests` (the controller's
//! answers).

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use mesh_core::{
    ca::{CaError, CertificateAuthority, TrustBundle, WorkloadCertificate, WorkloadKey},
    identity::SpiffeId,
    workload::PodKey,
};
use mesh_kube::controller_client;
use rustls::{ClientConfig, ServerConfig, sign::CertifiedKey};
use serde::Serialize;

use self::trust::Trust;
use crate::sync::{lock, read, write};
use crate::tls::{self, TlsError};

mod requests;
mod rotation;
mod tls_configs;
mod trust;

pub use rotation::rotate_until_cancelled;

/// Errors issuing certificates or loading the CA.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The CA or trust bundle could not be loaded, or signing failed.
    #[error(transparent)]
    Ca(Box<CaError>),
    /// A key could not be used for TLS.
    #[error("cannot use the key issued for {identity}: {source}")]
    Key {
        /// The identity.
        identity: Box<SpiffeId>,
        /// rustls's complaint.
        source: Box<rustls::Error>,
    },
    /// A TLS configuration could not be built.
    #[error(transparent)]
    Tls(Box<TlsError>),
    /// The controller client could not be set up.
    #[error(transparent)]
    Controller(Box<controller_client::ControllerError>),
    /// The certificate was asked of the controller; the pod waits for it.
    #[error("waiting for the controller at {address} to sign the certificate of {identity}")]
    Requested {
        /// The identity.
        identity: Box<SpiffeId>,
        /// `--ca-address`.
        address: String,
    },
    /// The controller did not sign the last request; the next one follows
    /// after a backoff.
    #[error("{reason} (asking again with a backoff)")]
    NotSigned {
        /// The identity.
        identity: Box<SpiffeId>,
        /// Why, with the controller's own words when it refused.
        reason: String,
    },
    /// A connection waited for the pod's certificate and gave up.
    #[error("no certificate for {identity} after waiting {waited_ms} ms: {reason}")]
    NoCertificate {
        /// The identity.
        identity: Box<SpiffeId>,
        /// How long the connection waited.
        waited_ms: u128,
        /// Why there is none: the last refusal, or the request under way.
        reason: String,
    },
}

impl IdentityError {
    /// Whether the certificate is on its way (asked of the controller, or
    /// refused and asked again with a backoff) rather than impossible.
    #[must_use]
    pub fn is_pending(&self) -> bool {
        matches!(self, Self::Requested { .. } | Self::NotSigned { .. })
    }
}

impl From<controller_client::ControllerError> for IdentityError {
    fn from(error: controller_client::ControllerError) -> Self {
        Self::Controller(Box::new(error))
    }
}

// Boxed: these errors are rare, and a small error keeps every `Result` on
// the enrollment path small.
impl From<CaError> for IdentityError {
    fn from(error: CaError) -> Self {
        Self::Ca(Box::new(error))
    }
}

impl From<TlsError> for IdentityError {
    fn from(error: TlsError) -> Self {
        Self::Tls(Box::new(error))
    }
}

/// Where the CA and trust bundle come from.
#[derive(Clone, Debug)]
pub struct CaFiles {
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    /// The CA private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// Extra trusted roots (PEM), for CA rotation; the CA itself is always trusted.
    pub trust_bundle: Option<PathBuf>,
}

/// A certificate as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateInfo {
    /// The SPIFFE id.
    pub identity: String,
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity, seconds since the epoch.
    pub not_before: u64,
    /// End of validity, seconds since the epoch.
    pub not_after: u64,
    /// How many times this identity's certificate was rotated.
    pub rotations: u64,
    /// `valid`, `expired` or `not_yet_valid`, now.
    pub state: &'static str,
}

struct Issued {
    certificate: WorkloadCertificate,
    key: Arc<CertifiedKey>,
    rotations: u64,
    /// When this agent got it: rotation is due half-way from then to its
    /// end ([`WorkloadCertificate::renew_at`]).
    received: SystemTime,
}

/// Who signs the certificates.
enum Signer {
    /// This agent, with the CA's key (local mode).
    Local(Box<CertificateAuthority>),
    /// The controller's CA (Kubernetes mode), asked on its own thread.
    Controller {
        client: controller_client::ControllerClient,
        runtime: controller_client::CaRuntime,
    },
}

/// Issues, rotates and serves workload certificates, and builds the TLS
/// configurations that use them.
pub struct CertManager {
    signer: Signer,
    trust: Trust,
    lifetime: Duration,
    /// The enrolled pods of each identity: the controller signs for a pod
    /// of the caller's node, so a request names one, and an identity no
    /// pod uses any more is dropped.
    pods: RwLock<HashMap<SpiffeId, BTreeSet<PodKey>>>,
    issued: RwLock<HashMap<SpiffeId, Issued>>,
    /// Controller requests under way or failed, by identity.
    requests: Mutex<HashMap<SpiffeId, requests::Request>>,
    /// Woken when a controller request ends.
    changed: tokio::sync::Notify,
    /// Counts ended controller requests; connections waiting for a
    /// certificate watch it (every waiter is woken, unlike `changed`).
    requests_ended: tokio::sync::watch::Sender<u64>,
    server_configs: RwLock<HashMap<SpiffeId, Arc<ServerConfig>>>,
    client_configs: RwLock<HashMap<(SpiffeId, SpiffeId), Arc<ClientConfig>>>,
}

// === impl CertManager ===

impl CertManager {
    /// Loads the CA and trust bundle; each bad file is an error naming it.
    pub fn load(files: &CaFiles, lifetime: Duration) -> Result<Arc<Self>, IdentityError> {
        let ca = CertificateAuthority::load(&files.cert, &files.key)?;
        let trust = Trust::load(
            files.trust_bundle.clone(),
            Some(ca.certificate_der().clone()),
        )?;
        Ok(Arc::new(Self::with_signer(
            Signer::Local(Box::new(ca)),
            trust,
            lifetime,
        )))
    }

    /// A manager whose certificates the controller at `address` signs;
    /// `trust_bundle` holds the mesh's roots (the controller's certificate
    /// chains to one of them), `token_file` the agent's token.
    pub fn with_controller(
        address: &str,
        trust_bundle: &Path,
        token_file: PathBuf,
        lifetime: Duration,
    ) -> Result<Arc<Self>, IdentityError> {
        let trust = Trust::load(Some(trust_bundle.to_owned()), None)?;
        let client = controller_client::ControllerClient::new(address, token_file)?;
        let runtime = controller_client::CaRuntime::start()?;
        Ok(Arc::new(Self::with_signer(
            Signer::Controller { client, runtime },
            trust,
            lifetime,
        )))
    }

    /// A manager over an already loaded CA, trusting `bundle`.
    pub fn new(
        ca: CertificateAuthority,
        bundle: &TrustBundle,
        lifetime: Duration,
    ) -> Result<Arc<Self>, IdentityError> {
        let trust = Trust {
            file: None,
            ca: None,
            roots: RwLock::new(Arc::new(bundle.root_store()?)),
        };
        Ok(Arc::new(Self::with_signer(
            Signer::Local(Box::new(ca)),
            trust,
            lifetime,
        )))
    }

    fn with_signer(signer: Signer, trust: Trust, lifetime: Duration) -> Self {
        Self {
            signer,
            trust,
            lifetime,
            pods: RwLock::default(),
            issued: RwLock::default(),
            requests: Mutex::default(),
            changed: tokio::sync::Notify::new(),
            requests_ended: tokio::sync::watch::Sender::new(0),
            server_configs: RwLock::default(),
            client_configs: RwLock::default(),
        }
    }

    /// Makes sure `identity`, which `pod` runs as, has a certificate. In
    /// local mode it is issued now. With the controller this never waits:
    /// without a certificate yet it starts a request (unless one is under
    /// way or backing off) and answers [`IdentityError::Requested`], or
    /// [`IdentityError::NotSigned`] with the last refusal; call again when
    /// [`changed`](Self::changed) fires.
    pub fn ensure(
        self: &Arc<Self>,
        identity: &SpiffeId,
        pod: &PodKey,
    ) -> Result<(), IdentityError> {
        write(&self.pods)
            .entry(identity.clone())
            .or_default()
            .insert(pod.clone());
        if read(&self.issued).contains_key(identity) {
            return Ok(());
        }
        match &self.signer {
            Signer::Local(ca) => {
                let issued = self.issue_locally(ca, identity, 0)?;
                write(&self.issued)
                    .entry(identity.clone())
                    .or_insert(issued);
                Ok(())
            }
            Signer::Controller { .. } => Err(self.request(identity)),
        }
    }

    /// `pod`, un-enrolled, no longer runs as `identity` on this node. The
    /// certificate stays until its half-life, so a pod that is re-enrolled
    /// (its spec changed) or comes back has it at once, even while the
    /// controller is away; then, if no pod runs as the identity, it is
    /// dropped instead of renewed.
    pub fn release(&self, identity: &SpiffeId, pod: &PodKey) {
        let mut pods = write(&self.pods);
        if let Some(set) = pods.get_mut(identity) {
            set.remove(pod);
            if set.is_empty() {
                pods.remove(identity);
            }
        }
    }

    /// Drops `identity` when `pods` (the locked map) holds no pod of it.
    fn forget_if_unused(
        &self,
        pods: &mut HashMap<SpiffeId, BTreeSet<PodKey>>,
        identity: &SpiffeId,
    ) {
        if pods.get(identity).is_some_and(|set| !set.is_empty()) {
            return;
        }
        pods.remove(identity);
        let dropped = write(&self.issued).remove(identity).is_some();
        lock(&self.requests).remove(identity);
        write(&self.server_configs).remove(identity);
        write(&self.client_configs).retain(|(own, _), _| own != identity);
        if dropped {
            tracing::info!(%identity, "certificate dropped: no enrolled pod runs as it");
        }
    }

    /// Resolves when a controller request has ended (a certificate stored
    /// or a refusal recorded); a notice given while nobody waits is kept
    /// for the next wait.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Whether `identity` holds a certificate now.
    #[must_use]
    pub fn has_certificate(&self, identity: &SpiffeId) -> bool {
        read(&self.issued).contains_key(identity)
    }

    /// Waits until `identity` holds a certificate, at most `timeout`: a
    /// pod is captured before its certificate arrives, and its mesh
    /// connections wait for it rather than flow without one. The error
    /// says why there is none (the controller's last refusal, or the
    /// request under way).
    pub async fn wait_for_certificate(
        &self,
        identity: &SpiffeId,
        timeout: Duration,
    ) -> Result<(), IdentityError> {
        if self.has_certificate(identity) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut ended = self.requests_ended.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.has_certificate(identity) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, ended.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        if self.has_certificate(identity) {
            return Ok(());
        }
        Err(IdentityError::NoCertificate {
            identity: Box::new(identity.clone()),
            waited_ms: started.elapsed().as_millis(),
            reason: self.pending_reason(identity),
        })
    }

    /// Why `identity` has no certificate yet, for operators.
    #[must_use]
    pub fn pending_reason(&self, identity: &SpiffeId) -> String {
        let last_failure = lock(&self.requests)
            .get(identity)
            .and_then(|request| request.last_failure.clone());
        match (last_failure, &self.signer) {
            (Some(reason), _) => reason,
            (None, Signer::Controller { client, .. }) => format!(
                "waiting for the controller at {} to sign it",
                client.address()
            ),
            (None, Signer::Local(_)) => "not issued (the pod is not enrolled)".to_owned(),
        }
    }

    fn issue_locally(
        &self,
        ca: &CertificateAuthority,
        identity: &SpiffeId,
        rotations: u64,
    ) -> Result<Issued, IdentityError> {
        let key = WorkloadKey::generate()?;
        let csr = key.csr_der(identity)?;
        let certificate = ca.sign_csr(&csr, identity, self.lifetime)?;
        Self::certify(certificate, &key, rotations)
    }

    /// Pairs a certificate with the key it certifies, checking that it does.
    fn certify(
        certificate: WorkloadCertificate,
        key: &WorkloadKey,
        rotations: u64,
    ) -> Result<Issued, IdentityError> {
        let key_error = |source| IdentityError::Key {
            identity: Box::new(certificate.identity.clone()),
            source: Box::new(source),
        };
        let signing_key = tls::provider()
            .key_provider
            .load_private_key(key.private_key_der())
            .map_err(key_error)?;
        let key = Arc::new(CertifiedKey::new(certificate.chain.clone(), signing_key));
        key.keys_match().map_err(key_error)?;
        Ok(Issued {
            certificate,
            key,
            rotations,
            received: SystemTime::now(),
        })
    }

    /// Every issued certificate.
    #[must_use]
    pub fn certificates(&self) -> Vec<CertificateInfo> {
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let now = SystemTime::now();
        let mut infos: Vec<CertificateInfo> = read(&self.issued)
            .iter()
            .map(|(id, issued)| CertificateInfo {
                identity: id.to_string(),
                serial: issued.certificate.serial.clone(),
                not_before: secs(issued.certificate.not_before),
                not_after: secs(issued.certificate.not_after),
                rotations: issued.rotations,
                state: if now >= issued.certificate.not_after {
                    "expired"
                } else if now < issued.certificate.not_before {
                    "not_yet_valid"
                } else {
                    "valid"
                },
            })
            .collect();
        infos.sort_by(|a, b| a.identity.cmp(&b.identity));
        infos
    }
}

#[cfg(test)]
mod tests;
