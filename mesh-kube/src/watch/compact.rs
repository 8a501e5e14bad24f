//! A store that keeps a compact form of each watched object instead of the
//! object: for the cluster-wide watch of other nodes' pods, where the
//! k8s-openapi `Pod` struct is ~2.2 KB even with every field the mesh does
//! not read emptied, and a cluster has tens of thousands of them.
//!
//! The objects are kept in key order (namespace, name), so what is built
//! from them comes out the same whatever order the events came in.
//!
//! It follows a watcher's events as kube-runtime's reflector does: the
//! objects of a relist (`Init`, `InitApply`…, `InitDone`) are gathered
//! aside and replace the previous state only once complete, so a relist
//! never shows a half-listed cluster.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock, RwLockReadGuard},
};

use kube::runtime::watcher;
use tokio::sync::watch;

/// An object's namespace and name: its key in the store.
pub type ObjectKey = (String, String);

/// The compact form of every object a watcher has listed, by namespace and
/// name; cheap to clone (the clones share the state).
#[derive(Clone, Debug)]
pub struct CompactStore<T> {
    state: Arc<RwLock<BTreeMap<ObjectKey, T>>>,
    ready: watch::Receiver<bool>,
}

/// Applies a watcher's events to its [`CompactStore`].
pub struct CompactWriter<K, T> {
    state: Arc<RwLock<BTreeMap<ObjectKey, T>>>,
    ready: watch::Sender<bool>,
    /// The objects of the relist under way, if one is, in the order they
    /// came: the tree is built from them at once when the list is
    /// complete, with full nodes (inserted one by one in key order, as an
    /// API server lists them, its nodes would be half empty).
    relisting: Option<Vec<(ObjectKey, T)>>,
    compact: Compactor<K, T>,
}

/// What makes an object's compact form (see [`store`]).
type Compactor<K, T> = Box<dyn FnMut(&K) -> Option<T> + Send>;

/// A new store and its writer; `compact` turns an object into what is
/// kept of it, or `None` for an object not worth keeping (it is then
/// dropped from the store). It may keep state across objects (e.g. one
/// copy of each distinct label set).
#[must_use]
pub fn store<K, T>(
    compact: impl FnMut(&K) -> Option<T> + Send + 'static,
) -> (CompactStore<T>, CompactWriter<K, T>) {
    let state = Arc::new(RwLock::new(BTreeMap::new()));
    let (ready_tx, ready_rx) = watch::channel(false);
    (
        CompactStore {
            state: state.clone(),
            ready: ready_rx,
        },
        CompactWriter {
            state,
            ready: ready_tx,
            relisting: None,
            compact: Box::new(compact),
        },
    )
}

// === impl CompactStore ===

impl<T> CompactStore<T> {
    /// Waits until the first list is complete.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        // An error means the writer is gone: nothing will come any more.
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// The objects now. Hold the guard only while reading: the watch
    /// waits for it to apply its next event.
    ///
    /// # Panics
    ///
    /// If a writer panicked while it held the lock.
    pub fn read(&self) -> RwLockReadGuard<'_, BTreeMap<ObjectKey, T>> {
        self.state
            .read()
            .expect("the store's writer does not panic")
    }
}

// === impl CompactWriter ===

impl<K, T> std::fmt::Debug for CompactWriter<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactWriter")
            .field("relisting", &self.relisting.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl<K: kube::Resource, T> CompactWriter<K, T> {
    /// Applies one event of the watch.
    ///
    /// # Panics
    ///
    /// If a reader panicked while it held the lock.
    pub fn apply(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => self.relisting = Some(Vec::new()),
            watcher::Event::InitApply(object) => {
                if let (Some(key), Some(relisting)) = (key_of(object), self.relisting.as_mut())
                    && let Some(compact) = (self.compact)(object)
                {
                    relisting.push((key, compact));
                }
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.relisting.take() {
                    // Sorted and built in one go; of a key listed twice,
                    // the later object stays.
                    let listed: BTreeMap<ObjectKey, T> = listed.into_iter().collect();
                    *self.state.write().expect("readers do not panic") = listed;
                }
                self.ready.send_replace(true);
            }
            watcher::Event::Apply(object) => {
                let Some(key) = key_of(object) else { return };
                let mut state = self.state.write().expect("readers do not panic");
                match (self.compact)(object) {
                    Some(compact) => state.insert(key, compact),
                    None => state.remove(&key),
                };
            }
            watcher::Event::Delete(object) => {
                if let Some(key) = key_of(object) {
                    self.state
                        .write()
                        .expect("readers do not panic")
                        .remove(&key);
                }
            }
        }
    }
}

/// The object's namespace (empty for a cluster-scoped one) and name.
fn key_of<K: kube::Resource>(object: &K) -> Option<ObjectKey> {
    let meta = object.meta();
    Some((
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone()?,
    ))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;

    /// A pod `ns/name` whose compact form is its `phase`.
    fn pod(namespace: &str, name: &str, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": namespace, "name": name},
            "status": {"phase": phase},
        }))
        .expect("a pod")
    }

    /// Keeps the phase, and nothing of a pod that has ended.
    fn phase(pod: &Pod) -> Option<String> {
        let phase = pod.status.as_ref()?.phase.clone()?;
        (phase != "Succeeded").then_some(phase)
    }

    fn contents(store: &CompactStore<String>) -> Vec<(String, String, String)> {
        let mut all: Vec<_> = store
            .read()
            .iter()
            .map(|((ns, name), phase)| (ns.clone(), name.clone(), phase.clone()))
            .collect();
        all.sort();
        all
    }

    fn row(ns: &str, name: &str, phase: &str) -> (String, String, String) {
        (ns.to_owned(), name.to_owned(), phase.to_owned())
    }

    #[tokio::test]
    async fn a_list_is_kept_whole_once_complete_then_follows_changes() {
        let (store, mut writer) = store(phase);
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(pod("a", "web", "Running")));
        writer.apply(&watcher::Event::InitApply(pod("a", "done", "Succeeded")));
        assert!(contents(&store).is_empty(), "half a list is not shown");
        assert!(!*store.ready.borrow());
        writer.apply(&watcher::Event::InitDone);
        store.wait_until_ready().await;
        assert_eq!(contents(&store), [row("a", "web", "Running")]);

        writer.apply(&watcher::Event::Apply(pod("b", "db", "Pending")));
        writer.apply(&watcher::Event::Apply(pod("b", "db", "Running")));
        assert_eq!(
            contents(&store),
            [row("a", "web", "Running"), row("b", "db", "Running")]
        );
        // An object whose compact form is nothing leaves the store.
        writer.apply(&watcher::Event::Apply(pod("a", "web", "Succeeded")));
        writer.apply(&watcher::Event::Delete(pod("b", "db", "Running")));
        assert!(contents(&store).is_empty());
    }

    #[test]
    fn a_relist_replaces_the_state_only_when_it_is_done() {
        let (store, mut writer) = store(phase);
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(pod("a", "old", "Running")));
        writer.apply(&watcher::Event::InitDone);
        // The watch restarts (say, after 410 Gone): the old state stays
        // until the new list is complete, then goes entirely.
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(pod("a", "new", "Running")));
        assert_eq!(contents(&store), [row("a", "old", "Running")]);
        writer.apply(&watcher::Event::InitDone);
        assert_eq!(contents(&store), [row("a", "new", "Running")]);
        // A key listed twice (it changed between pages): the later object.
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(pod("a", "new", "Pending")));
        writer.apply(&watcher::Event::InitApply(pod("b", "x", "Running")));
        writer.apply(&watcher::Event::InitApply(pod("a", "new", "Running")));
        writer.apply(&watcher::Event::InitDone);
        assert_eq!(
            contents(&store),
            [row("a", "new", "Running"), row("b", "x", "Running")]
        );
    }
}
