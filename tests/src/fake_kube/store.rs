//! The object store: JSON objects keyed by resource, namespace and name, one
//! global resourceVersion (as etcd's revision), and a bounded history of
//! changes from which watches are replayed.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::Value;

use super::objects::{self, ObjectFactory};
use super::resources::ResourceType;

#[cfg(test)]
mod tests;

/// How many changes the history keeps before the oldest are dropped (and a
/// watch from before them gets `410 Gone`).
pub(crate) const DEFAULT_HISTORY_LIMIT: usize = 10_000;

/// Why a store operation failed; the server turns each into the `Status`
/// the real API server sends.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such object.
    #[error("{resource} {name:?} not found")]
    NotFound {
        /// Plural resource name.
        resource: &'static str,
        /// Object name.
        name: String,
    },
    /// Create of a name that is taken.
    #[error("{resource} {name:?} already exists")]
    AlreadyExists {
        /// Plural resource name.
        resource: &'static str,
        /// Object name.
        name: String,
    },
    /// A write carrying a `metadata.resourceVersion` that is not the current one.
    #[error(
        "Operation cannot be fulfilled on {resource} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict {
        /// Plural resource name.
        resource: &'static str,
        /// Object name.
        name: String,
    },
    /// A request the server cannot make sense of.
    #[error("{0}")]
    BadRequest(String),
    /// A resourceVersion older than the kept history.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired {
        /// What the client asked for.
        requested: u64,
        /// The oldest version that can still be served.
        oldest: u64,
    },
    /// A resourceVersion the store has not reached.
    #[error("Too large resource version: {requested}, current: {current}")]
    TooLarge {
        /// What the client asked for.
        requested: u64,
        /// The store's current version.
        current: u64,
    },
}

/// Where an object lives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ObjectKey {
    pub(crate) resource: &'static str,
    /// Empty for cluster-scoped resources.
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// One committed write, as watches replay it.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub(crate) resource_version: u64,
    pub(crate) kind: ChangeKind,
    pub(crate) key: ObjectKey,
    /// The object after the change; for a deletion, its last state carrying
    /// the deletion's resourceVersion.
    pub(crate) object: Value,
    /// The object before the change, if it existed.
    pub(crate) previous: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// What [`Store::list_page`] is asked for.
pub(crate) struct PageRequest<'a> {
    pub(crate) resource: &'a ResourceType,
    pub(crate) namespace: Option<&'a str>,
    /// The version to list at; `None` for now.
    pub(crate) resource_version: Option<u64>,
    /// The last key of the previous page.
    pub(crate) after: Option<&'a ObjectKey>,
    /// At most this many objects; 0 for all.
    pub(crate) limit: usize,
    /// The request's selectors.
    pub(crate) matches: &'a dyn Fn(&Value) -> bool,
}

/// One page of a list.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) items: Vec<Value>,
    /// The version the page shows: every page of one list shows the same.
    pub(crate) resource_version: u64,
    /// The last key of this page, when more objects follow it.
    pub(crate) next: Option<ObjectKey>,
}

/// The store with a notification of its current resourceVersion, shared by
/// the HTTP server and the in-process API.
pub(crate) struct SharedStore {
    store: Mutex<Store>,
    current: tokio::sync::watch::Sender<u64>,
}

pub(crate) struct Store {
    objects: BTreeMap<ObjectKey, Value>,
    resource_version: u64,
    history: VecDeque<Change>,
    /// Every change after this version is in `history`.
    oldest_servable: u64,
    history_limit: usize,
    factory: ObjectFactory,
}

// === impl SharedStore ===

impl SharedStore {
    pub(crate) fn new(history_limit: usize) -> Self {
        let store = Store {
            objects: BTreeMap::new(),
            // Like a fresh etcd: one revision already written.
            resource_version: 1,
            history: VecDeque::new(),
            oldest_servable: 1,
            history_limit,
            factory: ObjectFactory::new(),
        };
        Self {
            current: tokio::sync::watch::channel(store.resource_version).0,
            store: Mutex::new(store),
        }
    }

    /// Locks the store for reading (or a write that commits no change).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a write and wakes the watches.
    pub(crate) fn write<T>(&self, write: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.lock();
        let result = write(&mut store);
        let current = store.resource_version;
        drop(store);
        self.current.send_replace(current);
        result
    }

    /// A receiver that changes whenever a write commits.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.current.subscribe()
    }
}

// === impl Store ===

impl Store {
    pub(crate) fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub(crate) fn get(&self, key: &ObjectKey) -> Result<Value, StoreError> {
        self.objects.get(key).cloned().ok_or_else(|| not_found(key))
    }

    /// The objects of `resource` (in `namespace`, if given), now.
    pub(crate) fn list(&self, resource: &ResourceType, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(key, _)| in_scope(key, resource, namespace))
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// The objects as they were at `resource_version`, undoing later changes.
    #[cfg(test)]
    pub(crate) fn list_at(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        resource_version: u64,
    ) -> Result<Vec<Value>, StoreError> {
        let page = self.list_page(&PageRequest {
            resource,
            namespace,
            resource_version: Some(resource_version),
            after: None,
            limit: 0,
            matches: &|_| true,
        })?;
        Ok(page.items)
    }

    /// One page of a list, in key order, as the API server pages a list
    /// with `limit` and `continue`: the objects of `request.resource` (in
    /// its namespace, if given) as they were at its version (now if none),
    /// after its `after` key, that satisfy its `matches`; at most
    /// `request.limit` of them (0: all). Only the page's objects are
    /// copied, so paging through 100,000 pods stays cheap.
    pub(crate) fn list_page(&self, request: &PageRequest<'_>) -> Result<Page, StoreError> {
        if let Some(version) = request.resource_version {
            self.check_servable(version)?;
        }
        let version = request.resource_version.unwrap_or(self.resource_version);
        let in_request_scope = |key: &ObjectKey| in_scope(key, request.resource, request.namespace);
        // What changed after the version, as it was then (`None`: it did
        // not exist). Walking back, the oldest change's previous state wins.
        let mut undone: BTreeMap<&ObjectKey, Option<&Value>> = BTreeMap::new();
        for change in self
            .history
            .iter()
            .rev()
            .take_while(|change| change.resource_version > version)
            .filter(|change| in_request_scope(&change.key))
        {
            undone.insert(&change.key, change.previous.as_ref());
        }
        let start = request.after.map_or_else(
            || ObjectKey {
                resource: request.resource.plural,
                namespace: request.namespace.unwrap_or_default().to_owned(),
                name: String::new(),
            },
            Clone::clone,
        );
        let start = &start;
        let lower = |key| match request.after {
            Some(_) => Bound::Excluded(key),
            None => Bound::Included(key),
        };
        let now = self
            .objects
            .range::<ObjectKey, _>((lower(start), Bound::Unbounded))
            .take_while(|(key, _)| in_request_scope(key))
            .filter(|(key, _)| !undone.contains_key(key));
        let then = undone
            .range::<&ObjectKey, _>((lower(start), Bound::Unbounded))
            .filter_map(|(key, object)| Some((*key, (*object)?)));
        let mut view = merge_by_key(now, then).filter(|(_, object)| (request.matches)(object));
        let mut items = Vec::new();
        let mut last = None;
        for (key, object) in view.by_ref() {
            items.push(object.clone());
            last = Some(key);
            if items.len() == request.limit {
                break;
            }
        }
        let more = request.limit > 0 && items.len() == request.limit && view.next().is_some();
        Ok(Page {
            items,
            resource_version: version,
            next: more.then(|| last.cloned()).flatten(),
        })
    }

    /// The changes of `resource` after `resource_version`, or `Expired` when
    /// some of them are no longer kept.
    pub(crate) fn changes_after(
        &self,
        resource: &ResourceType,
        resource_version: u64,
    ) -> Result<Vec<Change>, StoreError> {
        self.check_servable(resource_version)?;
        let start = self
            .history
            .partition_point(|change| change.resource_version <= resource_version);
        Ok(self
            .history
            .range(start..)
            .filter(|change| change.key.resource == resource.plural)
            .cloned()
            .collect())
    }

    /// Stores a new object; `metadata.name` (or `generateName`) is required.
    pub(crate) fn create(
        &mut self,
        resource: &'static ResourceType,
        namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Value, StoreError> {
        self.factory.fill_generated_name(&mut object);
        let key = objects::key_for(resource, namespace, &object)?;
        if self.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists {
                resource: key.resource,
                name: key.name,
            });
        }
        let resource_version = self.resource_version + 1;
        objects::admit(resource, &key, &mut object, resource_version, None)?;
        self.factory.stamp_new(&mut object);
        self.commit(ChangeKind::Added, key, object.clone(), None);
        Ok(object)
    }

    /// Replaces an existing object. A `metadata.resourceVersion` in `object`
    /// is a precondition, as in Kubernetes; none means "whatever is there".
    pub(crate) fn update(
        &mut self,
        key: &ObjectKey,
        mut object: Value,
    ) -> Result<Value, StoreError> {
        let previous = self.get(key)?;
        let wanted = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if wanted.is_some_and(|wanted| Some(wanted) != objects::resource_version_of(&previous)) {
            return Err(StoreError::Conflict {
                resource: key.resource,
                name: key.name.clone(),
            });
        }
        let resource = ResourceType::by_plural(key.resource).ok_or_else(|| not_found(key))?;
        let resource_version = self.resource_version + 1;
        objects::admit(
            resource,
            key,
            &mut object,
            resource_version,
            Some(&previous),
        )?;
        self.commit(
            ChangeKind::Modified,
            key.clone(),
            object.clone(),
            Some(previous),
        );
        Ok(object)
    }

    /// Removes an object, returning its last state with the deletion's version.
    pub(crate) fn delete(&mut self, key: &ObjectKey) -> Result<Value, StoreError> {
        let previous = self
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| not_found(key))?;
        let mut object = previous.clone();
        objects::set_resource_version(&mut object, self.resource_version + 1);
        self.commit(
            ChangeKind::Deleted,
            key.clone(),
            object.clone(),
            Some(previous),
        );
        Ok(object)
    }

    /// Forgets the history: a watch from any version before now gets `410 Gone`.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.oldest_servable = self.resource_version;
    }

    fn check_servable(&self, resource_version: u64) -> Result<(), StoreError> {
        if resource_version < self.oldest_servable {
            return Err(StoreError::Expired {
                requested: resource_version,
                oldest: self.oldest_servable,
            });
        }
        if resource_version > self.resource_version {
            return Err(StoreError::TooLarge {
                requested: resource_version,
                current: self.resource_version,
            });
        }
        Ok(())
    }

    fn commit(&mut self, kind: ChangeKind, key: ObjectKey, object: Value, previous: Option<Value>) {
        self.resource_version += 1;
        if kind == ChangeKind::Deleted {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key.clone(), object.clone());
        }
        self.history.push_back(Change {
            resource_version: self.resource_version,
            kind,
            key,
            object,
            previous,
        });
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest_servable = dropped.resource_version;
            }
        }
    }
}

fn in_scope(key: &ObjectKey, resource: &ResourceType, namespace: Option<&str>) -> bool {
    key.resource == resource.plural && namespace.is_none_or(|namespace| key.namespace == namespace)
}

/// Two iterators sorted by key, as one sorted iterator; no key is in both.
fn merge_by_key<'a>(
    left: impl Iterator<Item = (&'a ObjectKey, &'a Value)>,
    right: impl Iterator<Item = (&'a ObjectKey, &'a Value)>,
) -> impl Iterator<Item = (&'a ObjectKey, &'a Value)> {
    let mut left = left.peekable();
    let mut right = right.peekable();
    std::iter::from_fn(move || match (left.peek(), right.peek()) {
        (Some((l, _)), Some((r, _))) if r < l => right.next(),
        (Some(_), _) => left.next(),
        (None, _) => right.next(),
    })
}

fn not_found(key: &ObjectKey) -> StoreError {
    StoreError::NotFound {
        resource: key.resource,
        name: key.name.clone(),
    }
}
