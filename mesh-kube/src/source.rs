//! Where the agent's and the waypoint's configuration comes from: the
//! local file (`--config`) or the Kubernetes API server. Either way it
//! arrives as [`LocalSnapshot`]s on one channel, so nothing downstream
//! knows which.

use std::{path::PathBuf, sync::Arc, time::Duration};

use mesh_core::local_config::{LocalConfigError, LocalSnapshot};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    client::{self, KubeClientError},
    local_source::{self, SnapshotChannel},
    snapshot::{self, KubeSettings},
};

/// Why the configuration source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The local file could not be loaded.
    #[error(transparent)]
    LocalConfig(#[from] LocalConfigError),
    /// Kubernetes mode could not start.
    #[error(transparent)]
    Kubernetes(#[from] KubeClientError),
}

/// The configuration source the settings name.
#[derive(Clone, Debug)]
pub enum Source {
    /// The local file, polled every `poll`.
    File {
        /// The file.
        path: PathBuf,
        /// How often it is checked for changes.
        poll: Duration,
        /// The mesh's root namespace: its peer authentications without a
        /// selector apply mesh-wide.
        root_namespace: String,
    },
    /// The Kubernetes API server.
    Kubernetes(KubeSettings),
}

// === impl Source ===

impl Source {
    /// The channel, with the first snapshot: the file as it is now, or an
    /// empty one until the API server's objects are listed.
    pub fn initial(&self) -> Result<SnapshotChannel, SourceError> {
        Ok(match self {
            Self::File {
                path,
                root_namespace,
                ..
            } => local_source::initial(path, root_namespace)?,
            Self::Kubernetes(_) => watch::channel(Arc::new(LocalSnapshot::default())),
        })
    }

    /// Returns once `snapshots` holds a real snapshot (or at `shutdown`):
    /// at once for the file; in Kubernetes mode once the API server's
    /// objects are listed, so enrollment, and readiness, wait for them.
    pub async fn wait_for_first(
        &self,
        snapshots: &watch::Receiver<Arc<LocalSnapshot>>,
        shutdown: &CancellationToken,
    ) {
        if let Self::Kubernetes(_) = self {
            let mut first = snapshots.clone();
            tokio::select! {
                _ = first.changed() => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Starts publishing changes on `publish` until `shutdown`.
    pub async fn start(
        self,
        publish: watch::Sender<Arc<LocalSnapshot>>,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        match self {
            Self::File {
                path,
                poll,
                root_namespace,
            } => {
                tokio::spawn(local_source::watch_file(
                    path,
                    poll,
                    root_namespace,
                    publish,
                    shutdown,
                ));
            }
            Self::Kubernetes(settings) => {
                let client = client::client(settings.api_url.as_deref()).await?;
                tokio::spawn(snapshot::run(client, settings, publish, shutdown));
            }
        }
        Ok(())
    }
}
