//! The trusted roots: the trust bundle file (`--trust-bundle`), re-read
//! when it changes (the kubelet updates the mounted `ConfigMap` during a
//! CA rotation), and the local CA, always trusted besides.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
};

use mesh_core::ca::{BundleFile, TrustBundle};
use rustls::{RootCertStore, pki_types::CertificateDer};

use super::{CertManager, IdentityError};
use crate::sync::{read, write};

/// The trusted roots and where they come from.
pub(super) struct Trust {
    /// `--trust-bundle`, followed for changes.
    pub(super) file: Option<BundleFile>,
    /// The local CA, always trusted besides the file's roots.
    pub(super) ca: Option<CertificateDer<'static>>,
    pub(super) roots: RwLock<Arc<RootCertStore>>,
}

// === impl Trust ===

impl Trust {
    /// Reads `file` (if any) and builds the roots: its certificates and `ca`.
    pub(super) fn load(
        file: Option<PathBuf>,
        ca: Option<CertificateDer<'static>>,
    ) -> Result<Self, IdentityError> {
        let (file, contents) = match file {
            Some(path) => {
                let (file, contents) = BundleFile::open(&path)?;
                (Some(file), Some(contents))
            }
            None => (None, None),
        };
        let trust = Self {
            file,
            ca,
            roots: RwLock::new(Arc::new(RootCertStore::empty())),
        };
        let (store, _) = trust.root_store(contents.as_deref())?;
        *write(&trust.roots) = Arc::new(store);
        Ok(trust)
    }

    /// The roots of `contents` (PEM of the trust bundle file, if there is
    /// one) and the CA, and how many there are.
    pub(super) fn root_store(
        &self,
        contents: Option<&[u8]>,
    ) -> Result<(RootCertStore, usize), IdentityError> {
        let mut bundle = match (contents, &self.file) {
            (Some(contents), Some(file)) => TrustBundle::from_pem(contents, file.path())?,
            _ => TrustBundle::new(),
        };
        if let Some(ca) = &self.ca {
            bundle.add(ca.clone());
        }
        Ok((bundle.root_store()?, bundle.roots().len()))
    }
}

// === impl CertManager ===

impl CertManager {
    /// The roots trusted now.
    pub(super) fn roots(&self) -> Arc<RootCertStore> {
        read(&self.trust.roots).clone()
    }

    /// Re-reads the trust bundle file if it changed: new roots apply to new
    /// handshakes (the cached configurations are dropped); a file that
    /// cannot be read or parsed is reported once and the roots stay.
    pub fn follow_trust_bundle(&self) {
        let Some(file) = &self.trust.file else {
            return;
        };
        let contents = match file.changed() {
            Ok(Some(contents)) => contents,
            Ok(None) => return,
            Err(_) => {
                tracing::warn!(path = %file.path().display(), "cannot read the trust bundle; keeping the roots in use");
                return;
            }
        };
        match self.trust.root_store(Some(&contents)) {
            Ok((store, count)) => {
                *write(&self.trust.roots) = Arc::new(store);
                write(&self.server_configs).clear();
                write(&self.client_configs).clear();
                tracing::info!(path = %file.path().display(), roots = count, "trust bundle changed; new connections trust its roots");
            }
            Err(error) => {
                tracing::warn!(%error, "the trust bundle changed but does not load; keeping the roots in use");
            }
        }
    }
}
