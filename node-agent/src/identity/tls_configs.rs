//! The HBONE TLS configurations of each identity, built over the current
//! certificates and roots and cached until the roots change.

use std::sync::Arc;

use mesh_core::identity::SpiffeId;
use rustls::{ClientConfig, ServerConfig, sign::CertifiedKey};

use super::{CertManager, IdentityError};
use crate::{
    sync::{read, write},
    tls::{self, CertificateSource},
};

/// The [`CertificateSource`] view of a [`CertManager`].
#[derive(Clone)]
pub(super) struct Certificates(Arc<CertManager>);

// === impl CertManager ===

impl CertManager {
    /// The HBONE server configuration of `identity` (cached).
    pub fn server_config(
        self: &Arc<Self>,
        identity: &SpiffeId,
    ) -> Result<Arc<ServerConfig>, IdentityError> {
        if let Some(config) = read(&self.server_configs).get(identity) {
            return Ok(config.clone());
        }
        let source: Arc<dyn CertificateSource> = Arc::new(Certificates(self.clone()));
        let config = Arc::new(tls::server_config(identity.clone(), source, self.roots())?);
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
            self.roots(),
        )?);
        write(&self.client_configs).insert(key, config.clone());
        Ok(config)
    }
}

// === impl Certificates ===

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
