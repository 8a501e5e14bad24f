//! Workload certificates: each enrolled pod's identity gets a short-lived
//! certificate, reissued at half-life. In local mode the agent holds the
//! mesh CA (from `ambit ca init`) and signs them itself; in Kubernetes mode
//! with `--ca-address` the controller's CA signs them ([`controller`]).
//! New TLS handshakes pick the newest certificate; established connections
//! keep theirs.

pub mod controller;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use mesh_core::{
    ca::{CaError, CertificateAuthority, TrustBundle, WorkloadCertificate, WorkloadKey},
    identity::SpiffeId,
    workload::PodKey,
};
use rustls::{ClientConfig, RootCertStore, ServerConfig, sign::CertifiedKey};
use serde::Serialize;

use crate::sync::{read, write};
use crate::tls::{self, CertificateSource, TlsError};

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
    /// The controller did not give the certificate.
    #[error(transparent)]
    Controller(Box<controller::ControllerError>),
}

impl From<controller::ControllerError> for IdentityError {
    fn from(error: controller::ControllerError) -> Self {
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
}

/// Who signs the certificates.
enum Signer {
    /// This agent, with the CA's key (local mode).
    Local(Box<CertificateAuthority>),
    /// The controller's CA (Kubernetes mode).
    Controller(controller::ControllerClient),
}

/// Issues, rotates and serves workload certificates, and builds the TLS
/// configurations that use them.
pub struct CertManager {
    signer: Signer,
    /// A pod of each identity: the controller signs for a pod of the
    /// caller's node, so a request names one.
    pods: RwLock<HashMap<SpiffeId, PodKey>>,
    roots: Arc<RootCertStore>,
    lifetime: Duration,
    issued: RwLock<HashMap<SpiffeId, Issued>>,
    server_configs: RwLock<HashMap<SpiffeId, Arc<ServerConfig>>>,
    client_configs: RwLock<HashMap<(SpiffeId, SpiffeId), Arc<ClientConfig>>>,
}

/// The [`CertificateSource`] view of a [`CertManager`].
#[derive(Clone)]
struct Certificates(Arc<CertManager>);

// === impl CertManager ===

impl CertManager {
    /// Loads the CA and trust bundle; each bad file is an error naming it.
    pub fn load(files: &CaFiles, lifetime: Duration) -> Result<Arc<Self>, IdentityError> {
        let ca = CertificateAuthority::load(&files.cert, &files.key)?;
        let mut bundle = match &files.trust_bundle {
            Some(path) => TrustBundle::load(path)?,
            None => TrustBundle::new(),
        };
        bundle.add(ca.certificate_der().clone());
        Self::new(ca, &bundle, lifetime)
    }

    /// A manager whose certificates the controller at `address` signs;
    /// `trust_bundle` holds the mesh's roots (the controller's certificate
    /// chains to one of them), `token_file` the agent's token.
    pub fn with_controller(
        address: &str,
        trust_bundle: &std::path::Path,
        token_file: PathBuf,
        lifetime: Duration,
    ) -> Result<Arc<Self>, IdentityError> {
        let bundle = TrustBundle::load(trust_bundle)?;
        let roots = Arc::new(bundle.root_store()?);
        let client = controller::ControllerClient::new(address, roots.clone(), token_file)?;
        Ok(Arc::new(Self::with_signer(
            Signer::Controller(client),
            roots,
            lifetime,
        )))
    }

    fn with_signer(signer: Signer, roots: Arc<RootCertStore>, lifetime: Duration) -> Self {
        Self {
            signer,
            pods: RwLock::default(),
            roots,
            lifetime,
            issued: RwLock::default(),
            server_configs: RwLock::default(),
            client_configs: RwLock::default(),
        }
    }

    /// A manager over an already loaded CA.
    pub fn new(
        ca: CertificateAuthority,
        bundle: &TrustBundle,
        lifetime: Duration,
    ) -> Result<Arc<Self>, IdentityError> {
        Ok(Arc::new(Self::with_signer(
            Signer::Local(Box::new(ca)),
            Arc::new(bundle.root_store()?),
            lifetime,
        )))
    }

    /// Makes sure `identity`, which `pod` runs as, has a certificate.
    pub fn ensure(&self, identity: &SpiffeId, pod: &PodKey) -> Result<(), IdentityError> {
        write(&self.pods).insert(identity.clone(), pod.clone());
        if read(&self.issued).contains_key(identity) {
            return Ok(());
        }
        let issued = self.issue(identity, 0)?;
        write(&self.issued)
            .entry(identity.clone())
            .or_insert(issued);
        Ok(())
    }

    fn issue(&self, identity: &SpiffeId, rotations: u64) -> Result<Issued, IdentityError> {
        let key = WorkloadKey::generate()?;
        let csr = key.csr_der(identity)?;
        let certificate = match &self.signer {
            Signer::Local(ca) => ca.sign_csr(&csr, identity, self.lifetime)?,
            Signer::Controller(client) => {
                let pod = read(&self.pods).get(identity).cloned().ok_or_else(|| {
                    IdentityError::Ca(Box::new(CaError::Csr {
                        identity: identity.clone(),
                        reason: "has no pod to ask the controller about".into(),
                    }))
                })?;
                client.sign(&pod, identity, &csr)?
            }
        };
        let signing_key = tls::provider()
            .key_provider
            .load_private_key(key.private_key_der())
            .map_err(|source| IdentityError::Key {
                identity: Box::new(identity.clone()),
                source: Box::new(source),
            })?;
        let key = Arc::new(CertifiedKey::new(certificate.chain.clone(), signing_key));
        Ok(Issued {
            certificate,
            key,
            rotations,
        })
    }

    /// Reissues every certificate past half its lifetime; returns the
    /// identities that got a new one.
    pub fn rotate_due(&self, now: SystemTime) -> Vec<SpiffeId> {
        let due: Vec<(SpiffeId, u64)> = read(&self.issued)
            .iter()
            .filter(|(_, issued)| past_half_life(&issued.certificate, now))
            .map(|(id, issued)| (id.clone(), issued.rotations))
            .collect();
        let mut rotated = Vec::new();
        for (identity, rotations) in due {
            match self.issue(&identity, rotations + 1) {
                Ok(issued) => {
                    tracing::info!(%identity, serial = %issued.certificate.serial, "certificate rotated");
                    write(&self.issued).insert(identity.clone(), issued);
                    rotated.push(identity);
                }
                Err(error) => {
                    tracing::error!(%identity, %error, "cannot rotate certificate; will retry");
                }
            }
        }
        rotated
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

    /// The HBONE server configuration of `identity` (cached).
    pub fn server_config(
        self: &Arc<Self>,
        identity: &SpiffeId,
    ) -> Result<Arc<ServerConfig>, IdentityError> {
        if let Some(config) = read(&self.server_configs).get(identity) {
            return Ok(config.clone());
        }
        let source: Arc<dyn CertificateSource> = Arc::new(Certificates(self.clone()));
        let config = Arc::new(tls::server_config(
            identity.clone(),
            source,
            self.roots.clone(),
        )?);
        write(&self.server_configs).insert(identity.clone(), config.clone());
        Ok(config)
    }

    /// The HBONE client configuration of `identity` talking to `peer` (cached).
    pub fn client_config(
        self: &Arc<Self>,
        identity: &SpiffeId,
        peer: &SpiffeId,
    ) -> Result<Arc<ClientConfig>, IdentityError> {
        let key = (identity.clone(), peer.clone());
        if let Some(config) = read(&self.client_configs).get(&key) {
            return Ok(config.clone());
        }
        let source: Arc<dyn CertificateSource> = Arc::new(Certificates(self.clone()));
        let config = Arc::new(tls::client_config(
            identity.clone(),
            peer.clone(),
            source,
            self.roots.clone(),
        )?);
        write(&self.client_configs).insert(key, config.clone());
        Ok(config)
    }
}

/// Runs certificate rotation until cancelled, checking often enough that no
/// certificate lives past its half-life by more than a tenth of its lifetime.
pub async fn rotate_until_cancelled(
    manager: Arc<CertManager>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let period = (manager.lifetime / 10).clamp(Duration::from_millis(100), Duration::from_mins(1));
    let mut ticks = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        manager.rotate_due(SystemTime::now());
    }
}

fn past_half_life(certificate: &WorkloadCertificate, now: SystemTime) -> bool {
    let lifetime = certificate
        .not_after
        .duration_since(certificate.not_before)
        .unwrap_or_default();
    now >= certificate.not_before + lifetime / 2
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Certificates")
    }
}

impl CertificateSource for Certificates {
    fn current(&self, identity: &SpiffeId) -> Option<Arc<CertifiedKey>> {
        read(&self.0.issued)
            .get(identity)
            .map(|issued| issued.key.clone())
    }
}
