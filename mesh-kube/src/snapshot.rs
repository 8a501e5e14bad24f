//! Kubernetes mode: a node's pods, services, authorization policies, peer
//! authentications and routes, learnt from the API server instead of the
//! local file and published as the same snapshots, so the data path does
//! not know where its state came from.
//!
//! - Watched (see [`crate::watch`]): Namespaces, this node's Pods (field
//!   selector `spec.nodeName`), Services, `EndpointSlices`,
//!   `AuthorizationPolicy` and `PeerAuthentication`
//!   (`security.ambit.dev/v1alpha1`) and Gateway API `HTTPRoute`.
//! - The meshed pods of other nodes are destinations: HBONE to them checks
//!   their identity, which their service account gives. ambit has no
//!   central workload distributor (Istio's istiod), so each agent also
//!   watches the Pods of every other node (`spec.nodeName!=`), kept only
//!   in a compact form (see [`translate::RemotePod`] and
//!   [`crate::watch::compact`]; pods with equal labels share one copy);
//!   this node's pods come from the node's own watch, whose objects are
//!   whole.
//! - Services, `EndpointSlices` and authorization policies, which a
//!   cluster has thousands of, are kept compact too: a Service as its
//!   [`translate::ServiceSource`], a slice as its ready endpoints, a
//!   policy compiled (once, when it changes). A snapshot shares what it
//!   can with them: labels, selectors, a Service's only slice's
//!   endpoints, the compiled policies.
//! - A pod is enrolled when it or its namespace carries `ambit.dev/mesh=
//!   enabled`; `ambit.dev/mesh=disabled` on the pod wins (see
//!   [`translate::is_enrolled`]).
//! - Its network namespace is found by the settings' [`PodNetnsFinder`]
//!   (the node agent's looks through the pod's cgroup); a pod whose
//!   process is not running yet is listed as waiting, with the reason and
//!   for how long, and looked for again with a backoff.
//! - A rebuild shares every pod and service that did not change with the
//!   snapshot before ([`Built`]), so one label change costs one new pod,
//!   not a second copy of them all.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Namespace, Pod as KubePod};
use kube::{
    Client,
    api::DynamicObject,
    runtime::{reflector::Store, watcher},
};
use mesh_core::{
    local_config::{self, LocalSnapshot, RejectedPod},
    policy::Policy,
    service::Service,
    workload::Pod,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use self::built::Built;
use crate::{
    label_sets::LabelSets,
    resources, translate,
    watch::{Watches, compact::CompactStore},
};

mod built;

/// How long changes are gathered before one snapshot is built from them.
const SETTLE: Duration = Duration::from_millis(20);
/// The first and the longest wait before a waiting pod is looked for again.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// After this long without a process, a waiting pod is reported loudly.
const WAITING_TOO_LONG: Duration = Duration::from_mins(1);

/// Why a pod's network namespace was not found, in the finder's words.
pub type PodNetnsError = Box<dyn std::error::Error + Send + Sync>;

/// Finds the network namespace of a pod of this node by its UID.
pub trait PodNetnsFinder: std::fmt::Debug + Send + Sync {
    /// The path of the pod's network namespace (e.g. `/proc/<pid>/ns/net`),
    /// or why it cannot be found yet (e.g. its process has not started).
    fn find(&self, uid: &str) -> Result<PathBuf, PodNetnsError>;
}

/// The finder of a process that enrolls no pod (the waypoint): every pod
/// of its "node" is waiting.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPodNetns;

/// Where the API server is and which node the snapshots are for.
#[derive(Clone, Debug)]
pub struct KubeSettings {
    /// The node: only its pods are enrolled.
    pub node: String,
    /// How the node's pods' network namespaces are found.
    pub pod_netns: Arc<dyn PodNetnsFinder>,
    /// The API server's URL; `None` infers it (in-cluster, or `KUBECONFIG`).
    pub api_url: Option<String>,
    /// The mesh's root namespace: its peer authentications without a
    /// selector apply mesh-wide.
    pub root_namespace: String,
}

// === impl NoPodNetns ===

impl PodNetnsFinder for NoPodNetns {
    fn find(&self, uid: &str) -> Result<PathBuf, PodNetnsError> {
        Err(format!("pod {uid}: this process enrolls no pods").into())
    }
}

/// Watches the API server and publishes a snapshot whenever what it means
/// for this node changes, until `shutdown`.
pub async fn run(
    client: Client,
    settings: KubeSettings,
    publish: watch::Sender<Arc<LocalSnapshot>>,
    shutdown: CancellationToken,
) {
    let changed = Arc::new(Notify::new());
    let node_pods = watcher::Config::default().fields(&format!("spec.nodeName={}", settings.node));
    // The API server leaves this node's pods out: they come (whole) from
    // the watch above, and one change must not wake two watches.
    let other_pods =
        watcher::Config::default().fields(&format!("spec.nodeName!={}", settings.node));
    let all = watcher::Config::default;
    let watches = Watches {
        client,
        changed: changed.clone(),
        shutdown: shutdown.clone(),
    };
    let stores = Stores {
        namespaces: watches.typed("namespaces", all(), translate::trim_metadata),
        pods: watches.typed("pods", node_pods, |_| {}),
        other_pods: {
            let mut label_sets = LabelSets::default();
            watches.compact("pods (other nodes)", other_pods, move |pod| {
                translate::compact_pod(pod, &mut label_sets)
            })
        },
        services: watches.compact("services", all(), translate::compact_service),
        endpoint_slices: watches.compact("endpointslices", all(), translate::compact_slice),
        policies: watches.compact_custom(resources::AUTHORIZATION_POLICY, translate::policy),
        peer_authentications: watches.custom(resources::PEER_AUTHENTICATION),
        routes: watches.custom(resources::HTTP_ROUTE),
    };
    tokio::select! {
        () = shutdown.cancelled() => return,
        () = stores.wait_until_ready() => {}
    }
    tracing::info!(node = %settings.node, "Kubernetes objects listed; publishing this node's pods");
    let mut builder = SnapshotBuilder::new(settings);
    let mut retry = None;
    let mut first = true;
    loop {
        let started = Instant::now();
        let snapshot = builder.build(&stores);
        let build_ms = started.elapsed().as_secs_f64() * 1e3;
        retry = builder
            .waiting()
            .then(|| retry.map_or(RETRY_FIRST, |last: Duration| (last * 2).min(RETRY_MAX)));
        // The first one always goes out: the agent waits for it (readiness).
        if first || **publish.borrow() != snapshot {
            first = false;
            tracing::info!(
                pods = snapshot
                    .pods
                    .iter()
                    .filter(|p| !p.netns.as_os_str().is_empty())
                    .count(),
                waiting = snapshot.rejected.len(),
                destinations = snapshot
                    .pods
                    .iter()
                    .filter(|p| p.netns.as_os_str().is_empty())
                    .count(),
                services = snapshot.services.len(),
                policies = snapshot.policies.len(),
                peer_authentications = snapshot.peer_authentications.len(),
                routes = snapshot.routes.len(),
                build_ms = format_args!("{build_ms:.1}"),
                "Kubernetes state changed"
            );
            publish.send_replace(Arc::new(snapshot));
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = changed.notified() => retry = None,
            () = tokio::time::sleep(retry.unwrap_or(Duration::MAX)), if retry.is_some() => {}
        }
        tokio::time::sleep(SETTLE).await;
    }
}

/// The watched objects, as their watchers keep them.
struct Stores {
    namespaces: Store<Namespace>,
    /// This node's pods, whole.
    pods: Store<KubePod>,
    /// Other nodes' pods, compact: destinations.
    other_pods: CompactStore<translate::RemotePod>,
    /// Only what the service model reads.
    services: CompactStore<translate::ServiceSource>,
    /// Only their Service and ready endpoints.
    endpoint_slices: CompactStore<translate::SliceEndpoints>,
    /// Compiled when they change, not at every snapshot.
    policies: CompactStore<Arc<Policy>>,
    peer_authentications: Store<DynamicObject>,
    routes: Store<DynamicObject>,
}

// === impl Stores ===

impl Stores {
    /// Until every watcher has listed once; `HTTPRoute`s excepted: the agent
    /// only carries them for the waypoint, and a cluster without the Gateway
    /// API CRDs must not keep it from being ready (that watch then retries
    /// and logs). Peer authentications are waited for: without them the
    /// agent cannot know which pods must refuse plaintext.
    async fn wait_until_ready(&self) {
        let _ = tokio::join!(
            self.namespaces.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.other_pods.wait_until_ready(),
            self.services.wait_until_ready(),
            self.endpoint_slices.wait_until_ready(),
            self.policies.wait_until_ready(),
            self.peer_authentications.wait_until_ready(),
        );
    }
}

/// Builds snapshots, remembering each pod's network namespace and how long
/// the waiting ones have waited.
struct SnapshotBuilder {
    settings: KubeSettings,
    /// Pod UID → its network namespace path, while that process lives.
    netns: HashMap<String, PathBuf>,
    /// Pod UID → when it was first seen waiting, and whether that was logged.
    waiting_since: HashMap<String, (Instant, bool)>,
    /// The last snapshot's pods, shared into the next.
    built: Built<Pod>,
    /// The last snapshot's services, shared into the next.
    built_services: Built<Service>,
}

// === impl SnapshotBuilder ===

impl SnapshotBuilder {
    fn new(settings: KubeSettings) -> Self {
        Self {
            settings,
            netns: HashMap::new(),
            waiting_since: HashMap::new(),
            built: Built::default(),
            built_services: Built::default(),
        }
    }

    /// Whether some meshed pod of this node is still waiting for its process.
    fn waiting(&self) -> bool {
        !self.waiting_since.is_empty()
    }

    fn build(&mut self, stores: &Stores) -> LocalSnapshot {
        let namespace_state = stores.namespaces.state();
        let namespace_labels = translate::namespace_labels(namespace_state.iter().map(|ns| &**ns));
        let labels_of_namespace =
            |namespace: Option<&String>| namespace.and_then(|ns| namespace_labels.get(ns));
        let mut pods = Vec::new();
        let mut waiting = Vec::new();
        let mut seen_uids = Vec::new();
        for kube_pod in stores.pods.state() {
            let labels = labels_of_namespace(kube_pod.metadata.namespace.as_ref());
            let Some(meshed) = translate::node_pod(&kube_pod, labels, &self.settings.node) else {
                continue;
            };
            match meshed {
                Ok(node_pod) => {
                    seen_uids.push(node_pod.uid.clone());
                    match self.netns_of(&node_pod.uid) {
                        Ok(netns) => {
                            self.waiting_since.remove(&node_pod.uid);
                            let mut pod = node_pod.pod;
                            pod.netns = netns;
                            pods.push(self.built.share(pod));
                        }
                        Err(error) => {
                            let key = node_pod.pod.key();
                            let waited = self.waited(&node_pod.uid, &key.to_string(), &error);
                            waiting.push((
                                key,
                                format!("waiting {waited} s for the pod's process: {error}"),
                            ));
                        }
                    }
                }
                Err(translate::NotReady::NoAddress) => {
                    if let (Some(ns), Some(name)) =
                        (&kube_pod.metadata.namespace, &kube_pod.metadata.name)
                    {
                        let key = mesh_core::workload::PodKey {
                            namespace: ns.clone(),
                            name: name.clone(),
                        };
                        waiting.push((key, "waiting for the pod's address".to_owned()));
                    }
                }
                Err(translate::NotReady::Ended | translate::NotReady::NoUid) => {}
            }
        }
        self.netns.retain(|uid, _| seen_uids.contains(uid));
        self.waiting_since.retain(|uid, _| seen_uids.contains(uid));
        for remote in stores.other_pods.read().values() {
            let labels = labels_of_namespace(Some(&remote.namespace));
            if let Some(pod) = translate::remote_pod(remote, labels, &self.settings.node) {
                pods.push(self.built.share(pod));
            }
        }
        let services = services(stores, &namespace_labels, &self.built_services);
        let custom = |store: &Store<DynamicObject>| {
            store
                .state()
                .iter()
                .map(|object| translate::local_object(object))
                .collect()
        };
        let resources = translate::CustomResources {
            peer_authentications: custom(&stores.peer_authentications),
            routes: custom(&stores.routes),
        };
        let mut snapshot = local_config::validate(
            translate::config(pods, services, resources, &namespace_labels),
            &self.settings.root_namespace,
        );
        // Each policy was compiled when it changed; the snapshot shares it.
        snapshot.policies = stores.policies.read().values().cloned().collect();
        self.built.remember(&snapshot.pods);
        self.built_services.remember(&snapshot.services);
        snapshot
            .rejected
            .extend(waiting.into_iter().map(|(pod, reason)| RejectedPod {
                pod,
                entry: 0,
                reason,
            }));
        snapshot
    }

    /// The pod's network namespace: the one found before while its process
    /// lives, else a fresh look by the settings' finder.
    fn netns_of(&mut self, uid: &str) -> Result<PathBuf, PodNetnsError> {
        if let Some(path) = self.netns.get(uid).filter(|path| Path::new(path).exists()) {
            return Ok(path.clone());
        }
        let path = self.settings.pod_netns.find(uid)?;
        self.netns.insert(uid.to_owned(), path.clone());
        Ok(path)
    }

    /// Seconds the pod has waited; logs once when that grows too long.
    fn waited(&mut self, uid: &str, pod: &str, error: &PodNetnsError) -> u64 {
        let (since, reported) = self
            .waiting_since
            .entry(uid.to_owned())
            .or_insert((Instant::now(), false));
        let waited = since.elapsed();
        if waited >= WAITING_TOO_LONG && !*reported {
            *reported = true;
            tracing::warn!(%pod, %error, waited_secs = waited.as_secs(), "a meshed pod still has no running process; it is not enrolled");
        }
        waited.as_secs()
    }
}

/// The Services with the ready endpoints of their `EndpointSlices` and the
/// waypoint each uses (its own label, else its namespace's).
fn services(
    stores: &Stores,
    namespace_labels: &HashMap<String, std::collections::BTreeMap<String, String>>,
    built: &Built<Service>,
) -> Vec<Arc<Service>> {
    let slices = stores.endpoint_slices.read();
    let mut slices_of: HashMap<(&str, &str), Vec<&translate::SliceEndpoints>> = HashMap::new();
    for slice in slices.values() {
        slices_of
            .entry((&slice.namespace, &slice.service))
            .or_default()
            .push(slice);
    }
    stores
        .services
        .read()
        .values()
        .map(|source| {
            let owner = (
                source.service.namespace.as_str(),
                source.service.name.as_str(),
            );
            let slices = slices_of.get(&owner).into_iter().flatten().copied();
            built.share(translate::service(
                source,
                slices,
                namespace_labels.get(owner.0),
            ))
        })
        .collect()
}
