//! The trust bundle: the roots a peer's certificate must chain to, and
//! the file it is followed in ([`BundleFile`]).

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, pem::PemObject as _};

use super::{CaError, inspect};

/// A set of trusted roots. More than one, so a CA can be rotated: during the
/// rotation the bundle holds the old root and the new one, and certificates
/// from either verify.
#[derive(Clone, Debug, Default)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

// === impl TrustBundle ===

impl TrustBundle {
    /// An empty bundle.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a root; adding one already present does nothing.
    pub fn add(&mut self, root: CertificateDer<'static>) {
        if !self.roots.contains(&root) {
            self.roots.push(root);
        }
    }

    /// Reads every `CERTIFICATE` block of a PEM file. Fails, naming the file,
    /// if there is none or one is not a valid certificate.
    pub fn load(path: &Path) -> Result<Self, CaError> {
        let text = super::files::read_file(path, "the trust bundle")?;
        Self::from_pem(&text, path)
    }

    /// Like [`load`](Self::load), from PEM text already read; `path` names
    /// where it came from in error messages.
    pub fn from_pem(text: &[u8], path: &Path) -> Result<Self, CaError> {
        let mut bundle = Self::new();
        for (index, item) in CertificateDer::pem_slice_iter(text).enumerate() {
            let root = item.map_err(|error| CaError::NoCertificate {
                path: path.to_owned(),
                reason: format!("block #{}: {error}", index + 1),
            })?;
            inspect::parse(&root).map_err(|error| CaError::BadCertificateFile {
                path: path.to_owned(),
                reason: format!("certificate #{}: {error}", index + 1),
            })?;
            bundle.add(root);
        }
        if bundle.roots.is_empty() {
            return Err(CaError::NoCertificate {
                path: path.to_owned(),
                reason: "no CERTIFICATE block found".into(),
            });
        }
        Ok(bundle)
    }

    /// The roots, in the order they were added.
    #[must_use]
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as a rustls store, for client and server verifiers.
    pub fn root_store(&self) -> Result<RootCertStore, CaError> {
        let mut store = RootCertStore::empty();
        for (index, root) in self.roots.iter().enumerate() {
            store.add(root.clone()).map_err(|source| CaError::BadRoot {
                index: index + 1,
                subject: inspect::parse(root)
                    .map_or_else(|_| "unparsable".into(), |x509| inspect::subject_of(&x509)),
                source,
            })?;
        }
        Ok(store)
    }

    /// The roots as concatenated PEM blocks, the format [`load`](Self::load) reads.
    #[must_use]
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(super::files::certificate_pem)
            .collect()
    }
}

/// A trust bundle file followed for changes (the `ambit-trust-bundle`
/// `ConfigMap`, mounted; or `--trust-bundle`): node agents and waypoints
/// check it periodically and load new roots when its contents change.
#[derive(Debug)]
pub struct BundleFile {
    path: PathBuf,
    /// The contents when last read (`None`: unreadable), so an unchanged
    /// or still broken file is not parsed or reported again.
    seen: Mutex<Option<Vec<u8>>>,
}

// === impl BundleFile ===

impl BundleFile {
    /// Reads the file a first time; fails, naming it, if it cannot be read.
    /// Returns the follower and the contents read.
    pub fn open(path: &Path) -> Result<(Self, Vec<u8>), CaError> {
        let contents = super::files::read_file(path, "the trust bundle")?;
        let file = Self {
            path: path.to_owned(),
            seen: Mutex::new(Some(contents.clone())),
        };
        Ok((file, contents))
    }

    /// The file's path, for messages and [`TrustBundle::from_pem`].
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The contents, if they changed since the last read (`Ok(None)`:
    /// unchanged). A file that cannot be read is an error once, until it
    /// can be read again.
    pub fn changed(&self) -> Result<Option<Vec<u8>>, CaError> {
        let contents = super::files::read_file(&self.path, "the trust bundle");
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let now = contents.as_ref().ok();
        if seen.as_ref() == now {
            return Ok(None);
        }
        *seen = now.cloned();
        contents.map(Some)
    }
}
