//! The verbs on stored objects: list, get, create, update (PUT), patch and
//! delete, for whole objects and their `status` subresource.

use hyper::{Response, StatusCode};
use serde_json::Value;

use super::params::{ContinueToken, ListParams, Projection};
use super::resources::ResourceType;
use super::status::{self, Body};
use super::store::{ObjectKey, PageRequest, SharedStore, Store, StoreError};

/// A verb's outcome: a status code and body, or a failure `Status`.
type Outcome = Result<(StatusCode, Value), Value>;

/// The object or subresource a request names.
pub(crate) struct Target {
    pub(crate) key: ObjectKey,
    /// Whether the request is for the `status` subresource.
    pub(crate) status: bool,
}

/// Content types of `PATCH`.
const MERGE_PATCH: &str = "application/merge-patch+json";
const STRATEGIC_MERGE_PATCH: &str = "application/strategic-merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";
const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// Turns an outcome into the response.
pub(crate) fn respond(outcome: Outcome, projection: Projection) -> Response<Body> {
    match outcome {
        Ok((code, body)) => status::json_response(code, &projection.object(body)),
        Err(status) => status::error_response(&status),
    }
}

/// `GET` a collection: everything that matches at the newest version, or
/// exactly at `resourceVersion` with `resourceVersionMatch=Exact`; in pages
/// of `limit` objects, each but the last with the `continue` token that
/// resumes the list at the same version.
pub(crate) fn list(
    store: &SharedStore,
    params: &ListParams,
    projection: Projection,
) -> Response<Body> {
    let resource = params.filter.resource;
    let after = params
        .continue_from
        .as_ref()
        .map(|token| token.key(resource));
    let page = {
        let store = store.lock();
        let version = match (&params.continue_from, params.resource_version_number()) {
            (Some(token), _) => Ok(Some(token.resource_version)),
            (None, Err(status)) => return status::error_response(&status),
            (None, Ok(Some(version))) if params.exact => Ok(Some(version)),
            (None, Ok(Some(version))) if version > store.resource_version() => {
                Err(StoreError::TooLarge {
                    requested: version,
                    current: store.resource_version(),
                })
            }
            (None, Ok(_)) => Ok(None),
        };
        version.and_then(|resource_version| {
            store.list_page(&PageRequest {
                resource,
                namespace: params.filter.namespace.as_deref(),
                resource_version,
                after: after.as_ref(),
                limit: params.limit,
                matches: &|object| params.filter.matches(object),
            })
        })
    };
    match page {
        Ok(page) => {
            let next = page
                .next
                .map(|key| ContinueToken::after(&key, page.resource_version));
            let list = projection.list(resource, page.items, page.resource_version, next.as_ref());
            status::json_response(StatusCode::OK, &list)
        }
        Err(error) => status::error_response(&status::for_store_error(&error)),
    }
}

/// `DELETE` a collection: removes every match, answering the removed objects.
pub(crate) fn delete_collection(store: &SharedStore, params: &ListParams) -> Outcome {
    let resource = params.filter.resource;
    let namespace = params.filter.namespace.as_deref();
    store.write(|store| {
        let mut deleted = Vec::new();
        for object in store.list(resource, namespace) {
            if params.filter.matches(&object) {
                let key = key_of(resource, &object);
                deleted.push(
                    store
                        .delete(&key)
                        .map_err(|error| status::for_store_error(&error))?,
                );
            }
        }
        let list = Projection::Full.list(resource, deleted, store.resource_version(), None);
        Ok((StatusCode::OK, list))
    })
}

/// `GET` one object (or its `status`, which is the same document).
pub(crate) fn get(store: &SharedStore, target: &Target) -> Outcome {
    let object = store.lock().get(&target.key).map_err(store_status)?;
    Ok((StatusCode::OK, object))
}

/// `POST` to a collection.
pub(crate) fn create(
    store: &SharedStore,
    resource: &'static ResourceType,
    namespace: Option<&str>,
    body: &[u8],
) -> Outcome {
    let object = parse_json(body)?;
    let created = store
        .write(|store| store.create(resource, namespace, object))
        .map_err(store_status)?;
    Ok((StatusCode::CREATED, created))
}

/// `PUT` an object, or only its `status`.
pub(crate) fn replace(store: &SharedStore, target: &Target, body: &[u8]) -> Outcome {
    let object = parse_json(body)?;
    store.write(|store| {
        let new = if target.status {
            status_from(&store.get(&target.key).map_err(store_status)?, &object)
        } else {
            object
        };
        let updated = store.update(&target.key, new).map_err(store_status)?;
        Ok((StatusCode::OK, updated))
    })
}

/// `PATCH` an object, or only its `status`. A server-side apply of a missing
/// object creates it; otherwise apply is taken as a merge patch (no field
/// managers, no conflicts).
pub(crate) fn patch(
    store: &SharedStore,
    target: &Target,
    content_type: &str,
    body: &[u8],
) -> Outcome {
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    let patch = match media_type {
        MERGE_PATCH | STRATEGIC_MERGE_PATCH | JSON_PATCH => parse_json(body)?,
        APPLY_PATCH => serde_yaml::from_slice::<Value>(body).map_err(|error| {
            bad_request(&format!("the apply patch is not YAML or JSON: {error}"))
        })?,
        other => {
            return Err(status::failure(
                415,
                "UnsupportedMediaType",
                &format!(
                    "the body of the request was in an unknown format - accepted media types include: {MERGE_PATCH}, {STRATEGIC_MERGE_PATCH}, {JSON_PATCH}, {APPLY_PATCH} (got {other:?})"
                ),
                None,
            ));
        }
    };
    if media_type != JSON_PATCH && !patch.is_object() {
        return Err(bad_request("a merge or apply patch must be a JSON object"));
    }
    store.write(|store| patch_in(store, target, media_type, &patch))
}

fn patch_in(store: &mut Store, target: &Target, media_type: &str, patch: &Value) -> Outcome {
    let current = match store.get(&target.key) {
        Ok(current) => current,
        Err(StoreError::NotFound { .. }) if media_type == APPLY_PATCH && !target.status => {
            let resource =
                ResourceType::by_plural(target.key.resource).ok_or_else(status::unknown_path)?;
            let mut object = patch.clone();
            object["metadata"]["name"] = Value::String(target.key.name.clone());
            let namespace = resource.namespaced.then_some(target.key.namespace.as_str());
            let created = store
                .create(resource, namespace, object)
                .map_err(store_status)?;
            return Ok((StatusCode::CREATED, created));
        }
        Err(error) => return Err(store_status(error)),
    };
    let mut patched = current.clone();
    if media_type == JSON_PATCH {
        let operations: json_patch::Patch = serde_json::from_value(patch.clone())
            .map_err(|error| bad_request(&format!("not a JSON patch: {error}")))?;
        json_patch::patch(&mut patched, &operations)
            .map_err(|error| status::failure(422, "Invalid", &error.to_string(), None))?;
    } else {
        json_patch::merge(&mut patched, patch);
    }
    let new = if target.status {
        status_from(&current, &patched)
    } else {
        patched
    };
    let updated = store.update(&target.key, new).map_err(store_status)?;
    Ok((StatusCode::OK, updated))
}

/// `DELETE` an object: gone at once (no finalizers, no grace period).
pub(crate) fn delete(store: &SharedStore, target: &Target) -> Outcome {
    let deleted = store
        .write(|store| store.delete(&target.key))
        .map_err(store_status)?;
    Ok((StatusCode::OK, deleted))
}

/// `current` with the `status` of `source` (and its resourceVersion, a
/// precondition if set).
fn status_from(current: &Value, source: &Value) -> Value {
    let mut new = current.clone();
    if let Some(fields) = new.as_object_mut() {
        match source.get("status") {
            Some(status) => fields.insert("status".to_owned(), status.clone()),
            None => fields.remove("status"),
        };
    }
    if let Some(version) = source.pointer("/metadata/resourceVersion") {
        new["metadata"]["resourceVersion"] = version.clone();
    }
    new
}

fn key_of(resource: &'static ResourceType, object: &Value) -> ObjectKey {
    let field = |pointer| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    ObjectKey {
        resource: resource.plural,
        namespace: field("/metadata/namespace"),
        name: field("/metadata/name"),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, Value> {
    serde_json::from_slice(body)
        .map_err(|error| bad_request(&format!("the request body is not JSON: {error}")))
}

fn bad_request(message: &str) -> Value {
    status::failure(400, "BadRequest", message, None)
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "used as map_err(store_status)"
)]
fn store_status(error: StoreError) -> Value {
    status::for_store_error(&error)
}
