//! `AuthorizationPolicy` status: each policy is compiled as the agents
//! compile it, and its `Accepted` condition says whether it loads, or why
//! not (the agents then apply it fail-closed). Written through the `status`
//! subresource, only when it changes, so the controller's own writes do not
//! loop.

use std::pin::pin;

use futures_util::StreamExt as _;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::{WatchStreamExt as _, watcher},
};
use mesh_kube::resources::AUTHORIZATION_POLICY;
use serde_json::{Value, json};

/// The condition type written on every policy.
pub const CONDITION: &str = "Accepted";

/// The condition `object` should carry: (status, reason, message).
#[must_use]
pub fn condition_for(object: &Value) -> (&'static str, &'static str, String) {
    // Compiled from what the agents compile, so both reach one verdict.
    let yaml = serde_yaml::to_value(object).unwrap_or(serde_yaml::Value::Null);
    let policy = mesh_core::local_config::resource_as_written(&yaml);
    match mesh_core::policy::compile(&policy).rejected {
        None => ("True", "Accepted", "the policy is in force".to_owned()),
        Some(error) => (
            "False",
            "Invalid",
            format!("{error}; it is enforced fail-closed"),
        ),
    }
}

/// Follows every policy and keeps its condition current, until the
/// process ends.
pub async fn run(client: Client) {
    let resource = AUTHORIZATION_POLICY.api_resource();
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let mut events = pin!(
        watcher(all, watcher::Config::default())
            .default_backoff()
            .applied_objects()
    );
    while let Some(event) = events.next().await {
        match event {
            Ok(object) => update(&client, &resource, &object).await,
            Err(error) => tracing::warn!(%error, "watching AuthorizationPolicies failed; retrying"),
        }
    }
}

async fn update(client: &Client, resource: &ApiResource, object: &DynamicObject) {
    let value = serde_json::to_value(object).unwrap_or_default();
    write_condition(client, resource, object, condition_for(&value), "policy").await;
}

/// Writes `condition` (status, reason, message) as the `Accepted`
/// condition of `object`, a `resource`, unless it already says so; `what`
/// names the object in the log.
pub(crate) async fn write_condition(
    client: &Client,
    resource: &ApiResource,
    object: &DynamicObject,
    (status, reason, message): (&str, &str, String),
    what: &str,
) {
    let (Some(namespace), Some(name)) = (&object.metadata.namespace, &object.metadata.name) else {
        return;
    };
    let value = serde_json::to_value(object).unwrap_or_default();
    let generation = object.metadata.generation;
    let current = value
        .pointer("/status/conditions")
        .and_then(Value::as_array);
    let previous =
        current.and_then(|conditions| conditions.iter().find(|c| c["type"] == CONDITION));
    let same = previous.is_some_and(|c| {
        c["status"] == status
            && c["reason"] == reason
            && c["message"] == message.as_str()
            && c["observedGeneration"].as_i64() == generation
    });
    if same {
        return;
    }
    // As Kubernetes conditions do: the transition time moves only when the
    // status does, not for a new message or generation.
    let transition = previous
        .filter(|c| c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
        .unwrap_or_else(|| k8s_openapi::jiff::Timestamp::now().to_string());
    let patch = json!({"status": {"conditions": [{
        "type": CONDITION, "status": status, "reason": reason, "message": message,
        "observedGeneration": generation, "lastTransitionTime": transition,
    }]}});
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(object = %format!("{namespace}/{name}"), what, status, reason, "status written");
        }
        Err(error) => {
            tracing::warn!(object = %format!("{namespace}/{name}"), what, %error, "cannot write the status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_policy_is_accepted_and_a_bad_one_says_why() {
        let good = json!({"apiVersion": "security.ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "shop", "uid": "x"},
            "spec": {"action": "DENY", "rules": [{}]}});
        assert_eq!(condition_for(&good).0, "True");
        let bad = json!({"apiVersion": "security.ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"action": "MAYBE"}});
        let (status, reason, message) = condition_for(&bad);
        assert_eq!((status, reason), ("False", "Invalid"));
        assert!(message.contains("action"), "{message}");
    }
}
