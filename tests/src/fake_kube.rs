//! A fake Kubernetes API server that speaks the real list/watch protocol over
//! plain HTTP/1.1, so the real `kube` client (typed `Api<Pod>` and
//! `Api<DynamicObject>` alike, and kube-runtime's watchers) can talk to it.
//!
//! The server listens inside one of the test bed's network namespaces (a
//! node of its own such as `cp` is a good home), where agents on every node
//! reach it over the fabric; nothing listens in the machine's namespace. Its
//! store outlives [`FakeKube::stop`], so a test can take the API server away,
//! change things, and bring it back with [`FakeKube::restart`].
//!
//! ```no_run
//! # fn demo(tb: &mut ambit_tests::Testbed) {
//! use ambit_tests::fake_kube::FakeKube;
//! use serde_json::json;
//!
//! let cp = tb.add_node("cp");
//! let kube = FakeKube::start(&cp).expect("fake API server");
//! kube.apply(json!({
//!     "apiVersion": "v1", "kind": "Pod",
//!     "metadata": { "name": "a", "namespace": "default", "labels": { "app": "a" } },
//!     "spec": { "nodeName": "n1" },
//! })).expect("pod a");
//! // Agents get `--kube-url` = kube.url(); the test's own clients run on a
//! // `NetnsRuntime` (see `client_runtime`).
//! # }
//! ```
//!
//! Served: list (one page, no `continue`), get, watch (replay from a bounded
//! history, `410 Expired` beyond it, bookmarks, `timeoutSeconds`,
//! `sendInitialEvents`), label and field selectors, create, update, merge /
//! JSON / apply patches, delete, the `status` subresource, metadata-only
//! (`PartialObjectMetadata`) answers, `TokenReview`, and discovery.

mod client;
mod discovery;
mod handlers;
mod objects;
mod params;
mod resources;
mod selector;
mod server;
mod status;
mod store;
mod tokens;
mod watch;

use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde_json::Value;

pub use client::NetnsRuntime;
pub use discovery::KUBERNETES_VERSION;
pub use resources::{RESOURCES, ResourceType};
pub use selector::{FieldSelector, LabelSelector, SelectorError, supported_fields};
pub use store::StoreError;
pub use tokens::{API_SERVER_AUDIENCE, NODE_NAME_EXTRA};
pub use watch::BOOKMARK_INTERVAL;

use crate::netns::run_in_netns;
use crate::testbed::{CgroupDriver, Node, Pod, Testbed};
use server::ServerContext;
use store::{DEFAULT_HISTORY_LIMIT, SharedStore};
use tokens::TokenRegistry;

/// The port [`FakeKube::start`] listens on, the API server's usual one.
pub const DEFAULT_PORT: u16 = 6443;

/// Why the fake API server or one of its operations failed.
#[derive(Debug, thiserror::Error)]
pub enum FakeKubeError {
    /// The network namespace cannot be opened or entered.
    #[error("cannot enter network namespace {}: {source}", path.display())]
    Netns {
        /// The namespace file, e.g. `/run/netns/...`.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The listening socket cannot be made.
    #[error(
        "cannot listen on {address} in {}: {source} (is the address on an interface there, and the port free?)",
        netns.display()
    )]
    Listen {
        /// The address asked for.
        address: SocketAddr,
        /// The namespace it was asked in.
        netns: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A tokio runtime cannot be built.
    #[error("cannot start a tokio runtime: {0}")]
    Runtime(io::Error),
    /// A resource name (plural) the server does not serve.
    #[error("unknown resource {0:?}; the served ones are in fake_kube::RESOURCES")]
    UnknownResource(String),
    /// An object whose `apiVersion` and `kind` the server does not serve.
    #[error("no served resource has apiVersion {api_version:?} and kind {kind:?}")]
    UnknownKind {
        /// The object's `apiVersion`.
        api_version: String,
        /// The object's `kind`.
        kind: String,
    },
    /// The store refused the operation.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A `kube::Client` cannot be built.
    #[error("cannot build a kube client for {url}: {source}")]
    Client {
        /// The server's URL.
        url: String,
        /// What kube reported.
        source: kube::Error,
    },
}

/// A running (or stopped) fake API server. Dropping it stops the server.
pub struct FakeKube {
    store: Arc<SharedStore>,
    tokens: Arc<TokenRegistry>,
    netns_path: PathBuf,
    address: SocketAddr,
    running: Option<Running>,
}

/// The serving thread and the switch that stops it.
struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    thread: JoinHandle<()>,
}

// === impl FakeKube ===

impl FakeKube {
    /// Starts a server on `node`'s underlay address, port [`DEFAULT_PORT`],
    /// reachable from every node and pod of the test bed.
    pub fn start(node: &Node) -> Result<Self, FakeKubeError> {
        Self::start_in(
            &node.netns_path,
            SocketAddr::from((node.underlay_v4, DEFAULT_PORT)),
        )
    }

    /// Starts a server listening on `address` inside the network namespace
    /// at `netns_path` (port 0 picks a free port; [`addr`](Self::addr) tells).
    pub fn start_in(netns_path: &Path, address: SocketAddr) -> Result<Self, FakeKubeError> {
        let mut kube = Self {
            store: Arc::new(SharedStore::new(DEFAULT_HISTORY_LIMIT)),
            tokens: Arc::new(TokenRegistry::default()),
            netns_path: netns_path.to_owned(),
            address,
            running: None,
        };
        kube.restart()?;
        Ok(kube)
    }

    /// The address the server listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.address
    }

    /// `http://<addr>`, the URL clients and agents are given.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The network namespace the server listens in.
    #[must_use]
    pub fn netns_path(&self) -> &Path {
        &self.netns_path
    }

    /// Whether the server is serving (not [`stop`](Self::stop)ped).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// A `kube::Config` for this server (no credentials, plain HTTP).
    #[must_use]
    pub fn kube_config(&self) -> kube::Config {
        let url = http::Uri::try_from(self.url())
            .unwrap_or_else(|error| unreachable!("a socket address makes a valid URL: {error}"));
        kube::Config::new(url)
    }

    /// A [`NetnsRuntime`] in the server's own namespace, to run `kube`
    /// clients from the test process.
    pub fn client_runtime(&self) -> Result<NetnsRuntime, FakeKubeError> {
        NetnsRuntime::new(&self.netns_path)
    }

    /// Stops serving: open watches end, connections close, and the port
    /// refuses new ones. The store and its resourceVersion are kept.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.send_replace(true);
            if running.thread.join().is_err() {
                eprintln!("fake-kube: the server thread panicked");
            }
        }
    }

    /// Serves again on the same address, with the same store (a no-op when
    /// running).
    pub fn restart(&mut self) -> Result<(), FakeKubeError> {
        if self.running.is_some() {
            return Ok(());
        }
        let (address, netns) = (self.address, self.netns_path.clone());
        let listen_error = |source| FakeKubeError::Listen {
            address,
            netns: netns.clone(),
            source,
        };
        let listener = run_in_netns(&self.netns_path, || StdTcpListener::bind(address))
            .map_err(|source| FakeKubeError::Netns {
                path: self.netns_path.clone(),
                source,
            })?
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .map_err(listen_error)?;
        self.address = listener.local_addr().map_err(listen_error)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(FakeKubeError::Runtime)?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(listen_error)?
        };
        let context = Arc::new(ServerContext {
            store: Arc::clone(&self.store),
            tokens: Arc::clone(&self.tokens),
            address: self.address,
        });
        let (stop, stop_receiver) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("fake-kube".to_owned())
            .spawn(move || runtime.block_on(server::serve(listener, context, stop_receiver)))
            .map_err(FakeKubeError::Runtime)?;
        self.running = Some(Running { stop, thread });
        Ok(())
    }

    /// The store's current resourceVersion (the last write's).
    #[must_use]
    pub fn resource_version(&self) -> u64 {
        self.store.lock().resource_version()
    }

    /// Forgets the change history, as etcd compaction does: a watch from any
    /// earlier resourceVersion gets `410 Expired` and its client relists.
    pub fn compact(&self) {
        self.store.write(store::Store::compact);
    }

    /// Creates `object`, or replaces the object of that name, whatever its
    /// resourceVersion. The resource comes from `apiVersion` and `kind`; a
    /// namespaced object without `metadata.namespace` goes to `default`.
    /// Returns the object as stored.
    pub fn apply(&self, mut object: Value) -> Result<Value, FakeKubeError> {
        let text = |field: &str| {
            object
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (api_version, kind) = (text("apiVersion"), text("kind"));
        let resource = ResourceType::by_kind(&api_version, &kind)
            .ok_or(FakeKubeError::UnknownKind { api_version, kind })?;
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("resourceVersion");
        }
        let key = objects::key_for(resource, None, &object)?;
        let namespace = resource.namespaced.then_some(key.namespace.as_str());
        Ok(self.store.write(|store| {
            if store.get(&key).is_ok() {
                store.update(&key, object)
            } else {
                store.create(resource, namespace, object)
            }
        })?)
    }

    /// What the scheduler and the kubelet would do for one pod: the Pod
    /// object bound to `node` (with `labels`, and a service account named
    /// after the pod), its cgroup named after the UID this server gave it
    /// (`driver` names it), its address in the status. Returns the test
    /// bed's pod.
    pub fn run_pod(
        &self,
        tb: &mut Testbed,
        node: &Node,
        namespace: &str,
        name: &str,
        labels: &Value,
        driver: CgroupDriver,
    ) -> Result<Pod, FakeKubeError> {
        let created = self.apply(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": node.name, "serviceAccountName": name,
                     "containers": [{"name": "app", "image": "pod-tool"}]},
        }))?;
        let uid = created["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let pod = tb.add_kube_pod(node, name, namespace, &uid, driver);
        self.merge_patch(
            "pods",
            namespace,
            name,
            &serde_json::json!({"status": {"phase": "Running", "podIP": pod.ipv4.to_string(),
                                           "podIPs": [{"ip": pod.ipv4.to_string()}]}}),
        )?;
        Ok(pod)
    }

    /// Applies an RFC 7386 merge patch to an object (`namespace` is ignored
    /// for cluster-scoped resources).
    pub fn merge_patch(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, FakeKubeError> {
        let key = object_key(resource, namespace, name)?;
        Ok(self.store.write(|store| {
            let mut object = store.get(&key)?;
            json_patch::merge(&mut object, patch);
            store.update(&key, object)
        })?)
    }

    /// Deletes an object (a `DELETED` event), returning its last state.
    pub fn delete(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, FakeKubeError> {
        let key = object_key(resource, namespace, name)?;
        Ok(self.store.write(|store| store.delete(&key))?)
    }

    /// An object as stored, if it exists.
    pub fn get(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, FakeKubeError> {
        let key = object_key(resource, namespace, name)?;
        Ok(self.store.lock().get(&key).ok())
    }

    /// The objects of a resource, in one namespace or all.
    pub fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<Value>, FakeKubeError> {
        let resource = ResourceType::by_plural(resource)
            .ok_or_else(|| FakeKubeError::UnknownResource(resource.to_owned()))?;
        Ok(self.store.lock().list(resource, namespace))
    }

    /// Makes `token` authenticate in `TokenReview`s as `username` (e.g.
    /// `system:serviceaccount:ambit-system:ambit-node`) for any of
    /// `audiences`; `node_name` goes to `extra[NODE_NAME_EXTRA]`, as in a
    /// projected token bound to a pod on that node.
    pub fn register_token(
        &self,
        token: &str,
        username: &str,
        audiences: &[&str],
        node_name: Option<&str>,
    ) {
        self.tokens
            .register(token, username, audiences, node_name, None);
    }

    /// [`register_token`](Self::register_token) for a token bound to the
    /// pod `pod_name` on `node_name`, as a projected service-account token
    /// is: the review's `extra` names both.
    pub fn register_pod_token(
        &self,
        token: &str,
        username: &str,
        audiences: &[&str],
        node_name: &str,
        pod_name: &str,
    ) {
        self.tokens
            .register(token, username, audiences, Some(node_name), Some(pod_name));
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the in-process API finds an object; `namespace` is ignored for
/// cluster-scoped resources.
fn object_key(
    resource: &str,
    namespace: &str,
    name: &str,
) -> Result<store::ObjectKey, FakeKubeError> {
    let resource = ResourceType::by_plural(resource)
        .ok_or_else(|| FakeKubeError::UnknownResource(resource.to_owned()))?;
    Ok(store::ObjectKey {
        resource: resource.plural,
        namespace: if resource.namespaced {
            namespace.to_owned()
        } else {
            String::new()
        },
        name: name.to_owned(),
    })
}
