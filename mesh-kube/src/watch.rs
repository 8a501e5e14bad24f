//! Watching the API server: kube-runtime watchers (list, then watch; a
//! `410 Gone` relists; errors back off and retry) feeding reflector stores
//! that keep the last good state meanwhile, each event waking whoever
//! rebuilds from the stores; or, for the objects a cluster has most of,
//! [`compact`] stores that keep only what the mesh reads of each.

pub mod compact;

use std::{pin::pin, sync::Arc};

use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use kube::{
    Api, Client,
    api::DynamicObject,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::compact::CompactStore;
use crate::{resources::CustomResource, translate};

/// What a watcher can watch: a Kubernetes object it can decode and hand
/// between tasks.
pub trait Watched:
    kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Starts watchers that wake one builder and stop at one shutdown.
pub struct Watches {
    /// The API server's client.
    pub client: Client,
    /// Woken on each event of every watch.
    pub changed: Arc<Notify>,
    /// Stops every watch.
    pub shutdown: CancellationToken,
}

// === impl Watches ===

impl Watches {
    /// Watches that wake a new `changed` and run as long as the process
    /// does (the controller's status writers).
    #[must_use]
    pub fn for_process(client: Client) -> Self {
        Self {
            client,
            changed: Arc::new(Notify::new()),
            shutdown: CancellationToken::new(),
        }
    }

    /// Watches every `K` that `config` selects, passing each object through
    /// `trim` before it is stored, and returns the store.
    #[must_use]
    pub fn typed<K>(
        &self,
        what: &'static str,
        config: watcher::Config,
        trim: fn(&mut K),
    ) -> Store<K>
    where
        K: Watched,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let (store, writer) = reflector::store();
        let api = Api::<K>::all(self.client.clone());
        self.drive(
            what,
            reflector::reflector(writer, watcher(api, config).modify(trim)),
        );
        store
    }

    /// Watches every `K` that `config` selects and keeps only what
    /// `compact` makes of each (see [`compact`]); returns the store.
    #[must_use]
    pub fn compact<K, T>(
        &self,
        what: &'static str,
        config: watcher::Config,
        compact: impl FnMut(&K) -> Option<T> + Send + 'static,
    ) -> CompactStore<T>
    where
        K: Watched,
        K::DynamicType: Default,
        T: Send + Sync + 'static,
    {
        self.compact_with(what, Api::<K>::all(self.client.clone()), config, compact)
    }

    /// Watches every object of the custom resource and keeps only what
    /// `compact` makes of each (see [`compact`]); returns the store.
    #[must_use]
    pub fn compact_custom<T>(
        &self,
        resource: CustomResource,
        compact: fn(&DynamicObject) -> Option<T>,
    ) -> CompactStore<T>
    where
        T: Send + Sync + 'static,
    {
        let api = Api::<DynamicObject>::all_with(self.client.clone(), &resource.api_resource());
        self.compact_with(resource.plural, api, watcher::Config::default(), compact)
    }

    fn compact_with<K, T>(
        &self,
        what: &'static str,
        api: Api<K>,
        config: watcher::Config,
        compact: impl FnMut(&K) -> Option<T> + Send + 'static,
    ) -> CompactStore<T>
    where
        K: Watched,
        T: Send + Sync + 'static,
    {
        let (store, mut writer) = compact::store(compact);
        self.drive(
            what,
            watcher(api, config).inspect_ok(move |event| writer.apply(event)),
        );
        store
    }

    /// Watches every object of the custom resource, its metadata trimmed
    /// (see [`translate::trim_metadata`]), and returns the store.
    #[must_use]
    pub fn custom(&self, resource: CustomResource) -> Store<DynamicObject> {
        let api_resource = resource.api_resource();
        let writer = reflector::store::Writer::<DynamicObject>::new(api_resource.clone());
        let store = writer.as_reader();
        let api = Api::<DynamicObject>::all_with(self.client.clone(), &api_resource);
        let trim: fn(&mut DynamicObject) = translate::trim_metadata;
        self.drive(
            resource.plural,
            reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).modify(trim),
            ),
        );
        store
    }

    fn drive<K>(
        &self,
        what: &'static str,
        stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    ) where
        K: Send + 'static,
    {
        let changed = self.changed.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = wake_on(what, stream.default_backoff(), changed) => {}
            }
        });
    }
}

/// Runs one watch stream to its end, waking `changed` on each event and
/// logging errors (a watcher with back-off retries by itself; give it one,
/// e.g. with `default_backoff`).
pub async fn wake_on<T>(
    what: &'static str,
    stream: impl Stream<Item = Result<T, watcher::Error>>,
    changed: Arc<Notify>,
) {
    let mut stream = pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => changed.notify_one(),
            Err(error) => tracing::warn!(
                resource = what,
                %error,
                "watching the Kubernetes API failed; keeping the last state and retrying"
            ),
        }
    }
}
