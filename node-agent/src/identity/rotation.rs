//! Rotation: every certificate is reissued half-way from its receipt to
//! its end (local mode at once, with the controller by a request whose
//! answer replaces it), and one no enrolled pod uses any more is dropped
//! instead.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use mesh_core::identity::SpiffeId;
use mesh_kube::controller_client::TRUST_BUNDLE_POLL;

use super::{CertManager, Signer};
use crate::sync::{read, write};

// === impl CertManager ===

impl CertManager {
    /// Reissues every certificate past half its lifetime, and drops those
    /// that no enrolled pod uses any more. Local mode: returns the
    /// identities that got a new one. With the controller it sends the
    /// requests and returns none: each certificate is replaced when its
    /// answer comes, the old one serving until then.
    pub fn rotate_due(self: &Arc<Self>, now: SystemTime) -> Vec<SpiffeId> {
        let mut due: Vec<(SpiffeId, u64)> = read(&self.issued)
            .iter()
            .filter(|(_, issued)| now >= issued.certificate.renew_at(issued.received))
            .map(|(id, issued)| (id.clone(), issued.rotations))
            .collect();
        {
            let mut pods = write(&self.pods);
            due.retain(|(identity, _)| {
                let used = pods.contains_key(identity);
                if !used {
                    self.forget_if_unused(&mut pods, identity);
                }
                used
            });
        }
        let mut rotated = Vec::new();
        for (identity, rotations) in due {
            let ca = match &self.signer {
                Signer::Local(ca) => ca,
                Signer::Controller { .. } => {
                    self.request(&identity);
                    continue;
                }
            };
            match self.issue_locally(ca, &identity, rotations + 1) {
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
}

/// Runs certificate rotation and follows the trust bundle file until
/// cancelled, checking often enough that no certificate lives past its
/// half-life by more than a tenth of its lifetime.
pub async fn rotate_until_cancelled(
    manager: Arc<CertManager>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let period = (manager.lifetime / 10).clamp(Duration::from_millis(100), Duration::from_mins(1));
    let mut ticks = tokio::time::interval(period);
    let mut bundle_checks = tokio::time::interval(TRUST_BUNDLE_POLL);
    bundle_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {
                manager.rotate_due(SystemTime::now());
            }
            _ = bundle_checks.tick() => manager.follow_trust_bundle(),
        }
    }
}
