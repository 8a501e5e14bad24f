//! Keeps the enrolled pods equal to the latest configuration snapshot, and
//! publishes every pod's state for the admin API.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use mesh_core::{
    local_config::LocalSnapshot,
    workload::{KernelPath, MtlsMode, Pod, PodKey},
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{Enroller, MeshSettings, PodEnrollment};
use crate::{
    ebpf::KernelSplice,
    handoff,
    stats::{PodStats, PodStatsSnapshot},
    workloads::WorkloadIndex,
};

/// How often pods that failed to enroll are tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Where a pod stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PodState {
    /// Captured and proxied.
    Enrolled,
    /// Captured (fail closed) while its certificate is on its way: its
    /// mesh connections wait for it, up to the connect timeout, and never
    /// flow without it. The error says what the certificate waits for.
    Waiting,
    /// Enrollment failed; retried every [`RETRY_INTERVAL`].
    Failed,
    /// The configuration entry itself is invalid; fix the file.
    Rejected,
}

/// One pod's state, as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PodStatus {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Service account.
    pub service_account: Option<String>,
    /// Addresses.
    pub ips: Vec<std::net::IpAddr>,
    /// Network namespace path.
    pub netns: Option<PathBuf>,
    /// Its effective mTLS mode (peer authentications and labels).
    pub mtls: Option<MtlsMode>,
    /// The ports whose mode differs from `mtls`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub port_mtls: BTreeMap<u16, MtlsMode>,
    /// What to know about how its modes were decided: an unreadable
    /// `ambit.dev/mtls` label, a rejected peer authentication.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mtls_warnings: Vec<String>,
    /// Whether its legs take the kernel path: `on`, `off`, or why not
    /// (`rejected: …` for an unreadable label, `unavailable: …` when the
    /// kernel refused `sk_msg`).
    pub kernel_path: String,
    /// State.
    pub state: PodState,
    /// Why the pod is not enrolled.
    pub error: Option<String>,
    /// Network namespace cookie, when enrolled.
    pub netns_cookie: Option<u64>,
    /// Traffic counters, when enrolled.
    pub traffic: Option<PodStatsSnapshot>,
    #[serde(skip)]
    stats: Option<Arc<PodStats>>,
}

/// Every pod's state, shared with the admin API.
#[derive(Debug, Default)]
pub struct PodStatusBoard {
    pods: RwLock<Vec<PodStatus>>,
    /// Whether a configuration snapshot has been applied (readiness).
    reconciled: std::sync::atomic::AtomicBool,
}

enum Entry {
    Enrolled(Box<PodEnrollment>),
    Failed { pod: Box<Pod>, error: String },
}

/// How the reconciler's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Shutdown: the pods' proxies stopped, capture left in place.
    Stopped,
    /// `ambit uninstall`: every pod un-enrolled.
    Uninstalled,
    /// A successor took the pods over; this agent only drains.
    HandedOff,
}

/// How the reconciler takes part in a handoff.
pub struct HandoffHooks {
    /// From the handoff thread: listeners for a successor, and the release.
    pub requests: mpsc::Receiver<handoff::Request>,
    /// Told once the first snapshot is applied (every pod enrolled, or
    /// failed): a successor then tells its predecessor it has taken over.
    pub first_reconcile: Option<oneshot::Sender<()>>,
}

/// Drives enrollment from configuration snapshots.
pub struct Reconciler {
    enroller: Enroller,
    entries: BTreeMap<PodKey, Entry>,
    board: Arc<PodStatusBoard>,
    cleaned_stale: bool,
    /// When this reconciler started: the stale-capture clean-up waits for
    /// the configured pods to enroll, at most [`STALE_GRACE`] after it.
    started: std::time::Instant,
}

/// How long capture left by a previous agent is kept for pods that are
/// configured but not enrolled yet (e.g. their network namespace not found
/// yet; a pod waiting for its certificate is enrolled, captured, at once):
/// removing it at once would let their connections bypass the mesh.
const STALE_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

// === impl PodStatusBoard ===

impl PodStatusBoard {
    /// Every pod with live counters.
    #[must_use]
    pub fn pods(&self) -> Vec<PodStatus> {
        let pods = crate::sync::read(&self.pods);
        pods.iter()
            .map(|p| PodStatus {
                traffic: p.stats.as_ref().map(|s| s.snapshot()),
                ..p.clone()
            })
            .collect()
    }

    /// Whether the first configuration snapshot has been applied.
    #[must_use]
    pub fn reconciled(&self) -> bool {
        self.reconciled.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn publish(&self, pods: Vec<PodStatus>) {
        *crate::sync::write(&self.pods) = pods;
        self.reconciled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

// === impl Reconciler ===

impl Reconciler {
    /// A reconciler over `enroller` publishing to `board`.
    #[must_use]
    pub fn new(enroller: Enroller, board: Arc<PodStatusBoard>) -> Self {
        Self {
            enroller,
            entries: BTreeMap::new(),
            board,
            cleaned_stale: false,
            started: std::time::Instant::now(),
        }
    }

    /// Follows `snapshots` until `shutdown`, then stops the pods' proxies
    /// and hands the enroller back. Capture stays in place (the agent going
    /// away never takes a pod out of the mesh: its traffic fails closed
    /// until the next agent takes over), unless `uninstall` was cancelled
    /// too: then every pod is un-enrolled.
    pub async fn run(
        mut self,
        snapshots: &mut watch::Receiver<Arc<LocalSnapshot>>,
        shutdown: CancellationToken,
        uninstall: CancellationToken,
        mut handoff: HandoffHooks,
    ) -> (Enroller, Ending) {
        let mut retry = tokio::time::interval(RETRY_INTERVAL);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A pod waiting for its certificate from the controller is tried
        // again as soon as the answer comes, not at the next retry tick.
        let certs = self.enroller.mesh().certs.clone();
        let mut applied: Option<Arc<LocalSnapshot>> = None;
        let mut released: Option<oneshot::Sender<()>> = None;
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            if applied
                .as_ref()
                .is_some_and(|last| Arc::ptr_eq(last, &snapshot))
            {
                // Nothing new: only retry the pods that failed. Rebuilding
                // the indexes of a large cluster every tick would cost CPU
                // for nothing, and the rejected entries would be logged
                // again and again.
                self.converge(&snapshot);
            } else {
                self.reconcile(&snapshot);
                applied = Some(snapshot);
            }
            if let Some(first) = handoff.first_reconcile.take() {
                // Listeners handed over for pods not configured here close.
                self.enroller.drop_unclaimed_listeners();
                let _ = first.send(());
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = snapshots.changed() => if changed.is_err() { break },
                _ = retry.tick() => {}
                () = certs.changed() => {}
                Some(request) = handoff.requests.recv() => match request {
                    handoff::Request::Listeners(reply) => {
                        let listeners = self
                            .entries
                            .values()
                            .filter_map(|entry| match entry {
                                Entry::Enrolled(enrollment) => enrollment.listeners_for_successor(),
                                Entry::Failed { .. } => None,
                            })
                            .collect();
                        let _ = reply.send(listeners);
                    }
                    handoff::Request::Release(reply) => {
                        released = Some(reply);
                        break;
                    }
                },
            }
        }
        let uninstalling = uninstall.is_cancelled() && released.is_none();
        for (key, entry) in std::mem::take(&mut self.entries) {
            if let Entry::Enrolled(enrollment) = entry {
                if uninstalling {
                    self.enroller.unenroll(*enrollment);
                } else {
                    Enroller::stop_proxies(&enrollment);
                }
                tracing::debug!(pod = %key, uninstalling, "pod's proxies stopped at shutdown");
            }
        }
        let ending = if let Some(reply) = released {
            let _ = reply.send(());
            Ending::HandedOff
        } else if uninstalling {
            Ending::Uninstalled
        } else {
            Ending::Stopped
        };
        (self.enroller, ending)
    }

    /// Applies a new `snapshot`: the workload index, the policies, and the
    /// enrolled pods brought in line with it.
    pub fn reconcile(&mut self, snapshot: &LocalSnapshot) {
        let mesh = self.enroller.mesh();
        publish_policies(mesh, snapshot);
        mesh.splicer.update();
        for rejected in &snapshot.rejected {
            tracing::warn!(pod = %rejected.pod, entry = rejected.entry, reason = %rejected.reason, "config entry rejected");
        }
        for rejected in &snapshot.rejected_services {
            tracing::warn!(service = %rejected.service, entry = rejected.entry, reason = %rejected.reason, "service entry rejected");
        }
        for peer_authn in &snapshot.peer_authentications {
            if let Some(error) = &peer_authn.rejected {
                tracing::error!(peer_authentication = %peer_authn.key, field = %error.field, %error, "peer authentication rejected; it acts as STRICT in its scope");
            }
        }
        for pod in snapshot
            .pods
            .iter()
            .filter(|p| p.is_on_node(&mesh.node_name))
        {
            for warning in &pod.mtls_warnings {
                tracing::warn!(pod = %pod.key(), mtls = %pod.mtls, %warning, "pod's mTLS mode");
            }
        }
        self.converge(snapshot);
    }

    /// Enrolls the pods of this node that `snapshot` lists and are not
    /// enrolled yet (including those that failed before), and un-enrolls
    /// the others.
    fn converge(&mut self, snapshot: &LocalSnapshot) {
        let mesh = self.enroller.mesh();
        let node = mesh.node_name.clone();
        let desired: BTreeMap<PodKey, &Pod> = snapshot
            .pods
            .iter()
            .filter(|p| p.is_on_node(&node))
            .map(|p| (p.key(), &**p))
            .collect();
        let mut stale = Vec::new();
        let mut retuned = Vec::new();
        for (key, entry) in &self.entries {
            match desired.get(key) {
                Some(pod) if *pod == entry.pod() => {}
                // A change of mTLS modes alone is put in force in place:
                // re-enrolling would let capture lapse for a moment.
                Some(pod)
                    if matches!(entry, Entry::Enrolled(_))
                        && only_mtls_differs(entry.pod(), pod) =>
                {
                    retuned.push(key.clone());
                }
                _ => stale.push(key.clone()),
            }
        }
        for key in retuned {
            if let (Some(Entry::Enrolled(enrollment)), Some(pod)) =
                (self.entries.get_mut(&key), desired.get(&key))
                && let Err(error) = self.enroller.update_mtls(enrollment, pod)
            {
                tracing::error!(pod = %key, %error, "cannot record the pod's new mTLS mode; enrolling it again");
                stale.push(key);
            }
        }
        for key in stale {
            if let Some(Entry::Enrolled(enrollment)) = self.entries.remove(&key) {
                self.enroller.unenroll(*enrollment);
            }
        }
        let certs = self.enroller.mesh().certs.clone();
        for (key, pod) in &desired {
            if let Some(Entry::Enrolled(enrollment)) = self.entries.get(key) {
                if !certs.has_certificate(&enrollment.identity) {
                    // Keeps the request going (it backs off on its own).
                    let _ = certs.ensure(&enrollment.identity, key);
                }
                continue;
            }
            let previous_error = match self.entries.get(key) {
                Some(Entry::Failed { error, .. }) => Some(error.clone()),
                _ => None,
            };
            let entry = match self.enroller.enroll(pod) {
                Ok(enrollment) => Entry::Enrolled(Box::new(enrollment)),
                Err(error) => {
                    let error = error.to_string();
                    if previous_error.as_ref() != Some(&error) {
                        tracing::error!(pod = %key, netns = %pod.netns.display(), %error, "cannot enroll pod; will retry");
                    }
                    Entry::Failed {
                        pod: Box::new((*pod).clone()),
                        error,
                    }
                }
            };
            self.entries.insert(key.clone(), entry);
        }
        // Capture a previous agent left stays until every configured pod is
        // enrolled again (or the grace is over): a pod still waiting keeps
        // failing closed instead of leaving the mesh for a moment.
        let all_enrolled = || {
            self.entries
                .values()
                .all(|entry| matches!(entry, Entry::Enrolled(_)))
        };
        if !self.cleaned_stale && (self.started.elapsed() >= STALE_GRACE || all_enrolled()) {
            let enrolled: Vec<u64> = self.enrolled_cookies();
            self.enroller.remove_stale(&enrolled);
            self.cleaned_stale = true;
        }
        self.publish(snapshot);
    }

    fn enrolled_cookies(&self) -> Vec<u64> {
        self.entries
            .values()
            .filter_map(|e| match e {
                Entry::Enrolled(enrollment) => Some(enrollment.netns_cookie),
                Entry::Failed { .. } => None,
            })
            .collect()
    }

    fn publish(&self, snapshot: &LocalSnapshot) {
        let certs = &self.enroller.mesh().certs;
        let kernel = self.enroller.ebpf().kernel_splice();
        let mut pods: Vec<PodStatus> = self
            .entries
            .values()
            .map(|e| e.status(certs, kernel))
            .collect();
        pods.extend(snapshot.rejected.iter().map(|r| PodStatus {
            namespace: r.pod.namespace.clone(),
            name: r.pod.name.clone(),
            service_account: None,
            ips: Vec::new(),
            netns: None,
            mtls: None,
            port_mtls: BTreeMap::new(),
            mtls_warnings: Vec::new(),
            kernel_path: "off".to_owned(),
            state: PodState::Rejected,
            error: Some(r.reason.clone()),
            netns_cookie: None,
            traffic: None,
            stats: None,
        }));
        self.board.publish(pods);
    }
}

/// Publishes `snapshot`'s workloads and policies to the data path: the
/// policies apply to new connections and cut the open ones they now deny.
fn publish_policies(mesh: &MeshSettings, snapshot: &LocalSnapshot) {
    mesh.workloads.publish(WorkloadIndex::build(
        snapshot,
        &mesh.workloads.current(),
        &mesh.node_name,
        &mesh.trust_domain,
        &mesh.cluster_domain,
    ));
    mesh.authorizer.publish(snapshot.policies.clone());
}

/// After a handoff, while the connections this agent still carries
/// drain: each new snapshot's policies apply to them as to the
/// successor's, so a new DENY cuts them here too. Pods are the
/// successor's business. Never returns (also once the snapshots end).
pub async fn follow_policies(
    mesh: &MeshSettings,
    snapshots: &mut watch::Receiver<Arc<LocalSnapshot>>,
) {
    while snapshots.changed().await.is_ok() {
        let snapshot = snapshots.borrow_and_update().clone();
        publish_policies(mesh, &snapshot);
    }
    std::future::pending::<()>().await;
}

/// Whether `desired` is `current` with other mTLS modes (or warnings about
/// them), and nothing else changed.
fn only_mtls_differs(current: &Pod, desired: &Pod) -> bool {
    let retuned = Pod {
        mtls: desired.mtls,
        mtls_requested: desired.mtls_requested,
        port_mtls: desired.port_mtls.clone(),
        mtls_warnings: desired.mtls_warnings.clone(),
        ..current.clone()
    };
    retuned == *desired
}

/// What `ambit pods` says of a pod's kernel path.
fn kernel_path_status(asked: &KernelPath, kernel: &KernelSplice) -> String {
    match (asked, kernel) {
        (KernelPath::Off, _) => "off".to_owned(),
        (KernelPath::Rejected(reason), _) => format!("rejected: {reason}"),
        (KernelPath::Requested, KernelSplice::On) => "on".to_owned(),
        (KernelPath::Requested, KernelSplice::Off(reason)) => format!("unavailable: {reason}"),
    }
}

// === impl Entry ===

impl Entry {
    fn pod(&self) -> &Pod {
        match self {
            Entry::Enrolled(enrollment) => &enrollment.pod,
            Entry::Failed { pod, .. } => pod,
        }
    }

    fn status(&self, certs: &crate::identity::CertManager, kernel: &KernelSplice) -> PodStatus {
        let pod = self.pod();
        let (state, reason, netns_cookie, counters) = match self {
            Entry::Enrolled(enrollment) if !certs.has_certificate(&enrollment.identity) => (
                PodState::Waiting,
                Some(format!(
                    "captured; its mesh connections wait for its certificate: {}",
                    certs.pending_reason(&enrollment.identity)
                )),
                Some(enrollment.netns_cookie),
                Some(enrollment.stats.clone()),
            ),
            Entry::Enrolled(enrollment) => (
                PodState::Enrolled,
                None,
                Some(enrollment.netns_cookie),
                Some(enrollment.stats.clone()),
            ),
            Entry::Failed { error, .. } => (PodState::Failed, Some(error.clone()), None, None),
        };
        PodStatus {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            service_account: Some(pod.service_account.clone()),
            ips: pod.ips.clone(),
            netns: Some(pod.netns.clone()),
            mtls: Some(pod.mtls),
            port_mtls: pod.port_mtls.clone(),
            mtls_warnings: pod.mtls_warnings.clone(),
            kernel_path: kernel_path_status(&pod.kernel_path, kernel),
            state,
            error: reason,
            netns_cookie,
            traffic: None,
            stats: counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_path_status_says_why_a_pod_that_asked_is_not_on_it() {
        let refused = KernelSplice::Off("the kernel refused the sk_msg program".to_owned());
        assert_eq!(
            kernel_path_status(&KernelPath::Requested, &KernelSplice::On),
            "on"
        );
        assert_eq!(
            kernel_path_status(&KernelPath::Requested, &refused),
            "unavailable: the kernel refused the sk_msg program"
        );
        // Not asked for: off, whatever the kernel can do.
        assert_eq!(kernel_path_status(&KernelPath::Off, &refused), "off");
        assert_eq!(
            kernel_path_status(&KernelPath::Off, &KernelSplice::On),
            "off"
        );
        let rejected = KernelPath::Rejected("bad value".to_owned());
        assert_eq!(
            kernel_path_status(&rejected, &KernelSplice::On),
            "rejected: bad value"
        );
    }
}
