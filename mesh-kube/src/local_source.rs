//! Watches the local configuration file and publishes each valid version as
//! a snapshot. A version that cannot be read or parsed is logged and the last
//! good snapshot stays in force, so running pods are unaffected.

use std::{path::PathBuf, sync::Arc, time::Duration, time::SystemTime};

use mesh_core::local_config::{self, LocalConfigError, LocalSnapshot};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Both ends of the channel the snapshots travel on.
pub type SnapshotChannel = (
    watch::Sender<Arc<LocalSnapshot>>,
    watch::Receiver<Arc<LocalSnapshot>>,
);

/// Loads the file for the first time; an error here stops the agent.
/// Peer authentications without a selector in `root_namespace` apply
/// mesh-wide.
pub fn initial(
    path: &std::path::Path,
    root_namespace: &str,
) -> Result<SnapshotChannel, LocalConfigError> {
    let snapshot = local_config::load(path, root_namespace)?;
    Ok(watch::channel(Arc::new(snapshot)))
}

/// Re-reads `path` every `interval` when it changed, until `shutdown`.
pub async fn watch_file(
    path: PathBuf,
    interval: Duration,
    root_namespace: String,
    publish: watch::Sender<Arc<LocalSnapshot>>,
    shutdown: CancellationToken,
) {
    let mut last_seen = fingerprint(&path);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let seen = fingerprint(&path);
        if seen == last_seen {
            continue;
        }
        last_seen = seen;
        match local_config::load(&path, &root_namespace) {
            Ok(snapshot) => {
                tracing::info!(path = %path.display(), pods = snapshot.pods.len(), rejected = snapshot.rejected.len(), "local config reloaded");
                publish.send_replace(Arc::new(snapshot));
            }
            Err(error) => tracing::error!(%error, "keeping the last good configuration"),
        }
    }
}

/// Modification time and size: enough to notice an edit or a replacement.
fn fingerprint(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
