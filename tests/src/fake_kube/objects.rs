//! What the server does to an object's metadata on each write, as the real
//! API server does: name and namespace from the request, `apiVersion` and
//! `kind`, `resourceVersion`, and `uid`, `creationTimestamp`, `generation`.

use std::hash::{BuildHasher, RandomState};

use serde_json::{Map, Value, json};

use super::resources::ResourceType;
use super::store::{ObjectKey, StoreError};

/// Characters of generated name suffixes, as Kubernetes picks them (no vowels).
const NAME_SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Makes the random parts of new objects: uids and generated names.
pub(crate) struct ObjectFactory {
    state: RandomState,
    counter: u64,
}

// === impl ObjectFactory ===

impl ObjectFactory {
    pub(crate) fn new() -> Self {
        Self {
            state: RandomState::new(),
            counter: 0,
        }
    }

    fn random(&mut self) -> u64 {
        self.counter += 1;
        self.state.hash_one(self.counter)
    }

    /// Turns `metadata.generateName` into a `metadata.name` when no name is set.
    pub(crate) fn fill_generated_name(&mut self, object: &mut Value) {
        let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
            return;
        };
        let has_name = metadata
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|name| !name.is_empty());
        let Some(prefix) = metadata.get("generateName").and_then(Value::as_str) else {
            return;
        };
        if has_name {
            return;
        }
        let mut name = prefix.to_owned();
        let mut random = self.random();
        for _ in 0..5 {
            let index = usize::try_from(random % NAME_SUFFIX_ALPHABET.len() as u64).unwrap_or(0);
            name.push(char::from(NAME_SUFFIX_ALPHABET[index]));
            random /= NAME_SUFFIX_ALPHABET.len() as u64;
        }
        metadata.insert("name".to_owned(), Value::String(name));
    }

    /// Sets what a create sets once: `uid`, `creationTimestamp`, `generation`.
    pub(crate) fn stamp_new(&mut self, object: &mut Value) {
        let (high, low) = (self.random(), self.random());
        let uid = uuid(high, low);
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let Some(metadata) = metadata_mut(object) else {
            return;
        };
        metadata.insert("uid".to_owned(), Value::String(uid));
        metadata.insert("creationTimestamp".to_owned(), Value::String(now));
        metadata.insert("generation".to_owned(), json!(1));
    }
}

/// Where `object` belongs: its name, and the request's namespace (`namespace`,
/// from the path) or else its own, or else `default`.
pub(crate) fn key_for(
    resource: &'static ResourceType,
    namespace: Option<&str>,
    object: &Value,
) -> Result<ObjectKey, StoreError> {
    if !object.is_object() {
        return Err(StoreError::BadRequest(format!(
            "a {} must be a JSON object",
            resource.kind
        )));
    }
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| StoreError::BadRequest("resource name may not be empty".to_owned()))?;
    let own_namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str);
    let namespace = if resource.namespaced {
        match (namespace, own_namespace) {
            (Some(path), Some(own)) if !own.is_empty() && own != path => {
                return Err(StoreError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request"
                        .to_owned(),
                ));
            }
            (Some(path), _) => path,
            (None, Some(own)) if !own.is_empty() => own,
            (None, _) => "default",
        }
    } else {
        ""
    };
    Ok(ObjectKey {
        resource: resource.plural,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// Makes `object` what the store keeps under `key` at `resource_version`,
/// carrying over what an update may not change from `previous`.
pub(crate) fn admit(
    resource: &ResourceType,
    key: &ObjectKey,
    object: &mut Value,
    resource_version: u64,
    previous: Option<&Value>,
) -> Result<(), StoreError> {
    let Some(fields) = object.as_object_mut() else {
        return Err(StoreError::BadRequest(format!(
            "a {} must be a JSON object",
            resource.kind
        )));
    };
    fields.insert(
        "apiVersion".to_owned(),
        Value::String(resource.api_version()),
    );
    fields.insert("kind".to_owned(), Value::String(resource.kind.to_owned()));
    if let Some(name) = object.pointer("/metadata/name").and_then(Value::as_str)
        && name != key.name
    {
        return Err(StoreError::BadRequest(format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            key.name
        )));
    }
    let spec_changed = previous.is_some_and(|previous| previous.get("spec") != object.get("spec"));
    let Some(metadata) = metadata_mut(object) else {
        return Err(StoreError::BadRequest(
            "metadata must be an object".to_owned(),
        ));
    };
    metadata.insert("name".to_owned(), Value::String(key.name.clone()));
    if resource.namespaced {
        metadata.insert("namespace".to_owned(), Value::String(key.namespace.clone()));
    } else {
        metadata.remove("namespace");
    }
    metadata.insert(
        "resourceVersion".to_owned(),
        Value::String(resource_version.to_string()),
    );
    if let Some(previous) = previous.and_then(|previous| previous.get("metadata")) {
        for field in ["uid", "creationTimestamp", "generation"] {
            match previous.get(field) {
                Some(value) => metadata.insert(field.to_owned(), value.clone()),
                None => metadata.remove(field),
            };
        }
        if spec_changed {
            let generation = metadata
                .get("generation")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            metadata.insert("generation".to_owned(), json!(generation + 1));
        }
    }
    Ok(())
}

/// `metadata.resourceVersion`, if set.
pub(crate) fn resource_version_of(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

/// Sets `metadata.resourceVersion`.
pub(crate) fn set_resource_version(object: &mut Value, resource_version: u64) {
    if let Some(metadata) = metadata_mut(object) {
        metadata.insert(
            "resourceVersion".to_owned(),
            Value::String(resource_version.to_string()),
        );
    }
}

/// The metadata-only `PartialObjectMetadata` view of an object.
pub(crate) fn metadata_only(object: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// `object.metadata` as a map, made so if missing; `None` if `object` is not
/// a JSON object.
fn metadata_mut(object: &mut Value) -> Option<&mut Map<String, Value>> {
    let metadata = object
        .as_object_mut()?
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !metadata.is_object() {
        *metadata = Value::Object(Map::new());
    }
    metadata.as_object_mut()
}

/// A version-4-shaped UUID made of two random (or hashed) words.
pub(crate) fn uuid(high: u64, low: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xfff,
        0x8000 | ((low >> 48) & 0x3fff),
        low & 0xffff_ffff_ffff
    )
}
