//! `HTTPRoute` status: each route attached to a Service is compiled as the
//! waypoint compiles it, and each of its `parents` entries says whether it
//! is in force (`Accepted`) and whether its backends resolve
//! (`ResolvedRefs`), with Gateway API's reasons. A route is re-checked when
//! it changes and when Services come or go (a missing backend may appear).
//! Written through the `status` subresource, only when it changes.

use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client, ResourceExt as _,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::watcher,
};
use mesh_core::route::{self, Reason};
use mesh_kube::{resources::HTTP_ROUTE, translate::trim_metadata, watch::Watches};
use serde_json::{Value, json};

/// The controller name written in each parent's status.
pub const CONTROLLER_NAME: &str = "ambit.dev/waypoint";

/// The two conditions of each parent: ((status, reason, message) for
/// `Accepted`, the same for `ResolvedRefs`).
pub type Conditions = (
    (&'static str, &'static str, String),
    (&'static str, &'static str, String),
);

/// The conditions `object` should carry, given which Services exist.
#[must_use]
pub fn conditions_for(object: &Value, services: &dyn Fn(&str, &str) -> bool) -> Conditions {
    let yaml = serde_yaml::to_value(object).unwrap_or(serde_yaml::Value::Null);
    let as_written = mesh_core::local_config::resource_as_written(&yaml);
    match route::compile(&as_written, services) {
        Ok(_) => (
            (
                "True",
                "Accepted",
                "the route is in force at the waypoint".to_owned(),
            ),
            (
                "True",
                "ResolvedRefs",
                "every backend Service exists".to_owned(),
            ),
        ),
        Err(error) => {
            let message =
                format!("{error}; the waypoint keeps the route's last good version, if any");
            let refs = match error.kind {
                Reason::BackendNotFound | Reason::RefNotPermitted => {
                    ("False", error.reason(), message.clone())
                }
                _ => (
                    "True",
                    "ResolvedRefs",
                    "not checked: the route is invalid".to_owned(),
                ),
            };
            (("False", error.reason(), message), refs)
        }
    }
}

/// Follows every `HTTPRoute` and Service and keeps the routes' status
/// current, until the process ends.
pub async fn run(client: Client) {
    let resource = HTTP_ROUTE.api_resource();
    let watches = Watches::for_process(client.clone());
    let services = watches.typed::<Service>("Services", watcher::Config::default(), trim_metadata);
    let route_store = watches.custom(HTTP_ROUTE);
    loop {
        watches.changed.notified().await;
        let exists = |namespace: &str, name: &str| {
            services
                .state()
                .iter()
                .any(|s| s.namespace().as_deref() == Some(namespace) && s.name_any() == name)
        };
        for object in route_store.state() {
            update(&client, &resource, &object, &exists).await;
        }
    }
}

async fn update(
    client: &Client,
    resource: &ApiResource,
    object: &DynamicObject,
    services: &(dyn Fn(&str, &str) -> bool + Sync),
) {
    let (Some(namespace), Some(name)) = (&object.metadata.namespace, &object.metadata.name) else {
        return;
    };
    let value = serde_json::to_value(object).unwrap_or_default();
    let (accepted, resolved) = conditions_for(&value, services);
    let generation = object.metadata.generation;
    let previous = value
        .pointer("/status/parents")
        .cloned()
        .unwrap_or(Value::Null);
    let parent_refs = value
        .pointer("/spec/parentRefs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let condition = |kind: &str, (status, reason, message): &(&str, &str, String), i: usize| {
        // The transition time moves only when the status does.
        let transition = previous
            .get(i)
            .and_then(|p| p["conditions"].as_array())
            .and_then(|c| c.iter().find(|c| c["type"] == kind))
            .filter(|c| c["status"] == *status)
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
            .unwrap_or_else(|| k8s_openapi::jiff::Timestamp::now().to_string());
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "observedGeneration": generation, "lastTransitionTime": transition})
    };
    let parents: Vec<Value> = parent_refs
        .iter()
        .enumerate()
        .map(|(i, parent)| {
            json!({"parentRef": parent, "controllerName": CONTROLLER_NAME,
                   "conditions": [condition("Accepted", &accepted, i), condition("ResolvedRefs", &resolved, i)]})
        })
        .collect();
    if same_conditions(&previous, &parents) {
        return;
    }
    let patch = json!({"status": {"parents": parents}});
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(route = %format!("{namespace}/{name}"), accepted = accepted.0, reason = accepted.1, "route status written");
        }
        Err(error) => {
            tracing::warn!(route = %format!("{namespace}/{name}"), %error, "cannot write the route's status");
        }
    }
}

/// Whether the written parents already say what `wanted` says (times aside).
fn same_conditions(previous: &Value, wanted: &[Value]) -> bool {
    let strip = |parents: &[Value]| -> Vec<Value> {
        parents
            .iter()
            .map(|p| {
                let conditions: Vec<Value> = p["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        json!([
                            c["type"],
                            c["status"],
                            c["reason"],
                            c["message"],
                            c["observedGeneration"]
                        ])
                    })
                    .collect();
                json!([p["parentRef"], p["controllerName"], conditions])
            })
            .collect()
    };
    previous
        .as_array()
        .is_some_and(|previous| strip(previous) == strip(wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(backend: &str) -> Value {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "r", "namespace": "shop", "uid": "u", "generation": 2},
               "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                        "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]}})
    }

    #[test]
    fn a_good_route_is_accepted_and_a_bad_one_says_why() {
        let exists = |_: &str, name: &str| name == "web" || name == "web-v2";
        let ((status, reason, _), (refs, _, _)) = conditions_for(&route("web-v2"), &exists);
        assert_eq!((status, reason, refs), ("True", "Accepted", "True"));
        let ((status, reason, message), (refs, refs_reason, _)) =
            conditions_for(&route("nowhere"), &exists);
        assert_eq!((status, reason), ("False", "BackendNotFound"));
        assert_eq!((refs, refs_reason), ("False", "BackendNotFound"));
        assert!(message.contains("nowhere"), "{message}");
        let mut regex = route("web-v2");
        regex["spec"]["rules"][0]["matches"] =
            json!([{"path": {"type": "RegularExpression", "value": "/(x"}}]);
        let ((status, reason, _), (refs, _, _)) = conditions_for(&regex, &exists);
        assert_eq!((status, reason, refs), ("False", "Invalid", "True"));
    }
}
