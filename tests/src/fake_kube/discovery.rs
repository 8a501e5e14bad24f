//! Discovery documents: `/version`, `/api`, `/apis` and the resource list of
//! each group version (the legacy, unaggregated form), enough for
//! `kube::discovery` and `kubectl api-resources`.

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::resources::{AUTHENTICATION_GROUP, RESOURCES, group_versions};
use super::status::{self, Body};

/// The Kubernetes version the server claims to be.
pub const KUBERNETES_VERSION: &str = "v1.33.0";

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `GET /version`.
pub(crate) fn version() -> Response<Body> {
    ok(&json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "gitVersion": KUBERNETES_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    }))
}

/// `GET /api`: the core group's versions; `server_address` is `ip:port`.
pub(crate) fn core_versions(server_address: &str) -> Response<Body> {
    ok(&json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            { "clientCIDR": "0.0.0.0/0", "serverAddress": server_address },
        ],
    }))
}

/// `GET /apis`: the named groups, one version each.
pub(crate) fn groups() -> Response<Body> {
    let groups: Vec<Value> = group_versions()
        .into_iter()
        .filter(|(group, _)| !group.is_empty())
        .map(|(group, version)| {
            let group_version =
                json!({ "groupVersion": format!("{group}/{version}"), "version": version });
            json!({
                "name": group,
                "versions": [group_version.clone()],
                "preferredVersion": group_version,
            })
        })
        .collect();
    ok(&json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }))
}

/// `GET /api/v1`, `GET /apis/{group}/{version}`: the resources served there,
/// each with its `status` subresource.
pub(crate) fn resources(group: &str, version: &str) -> Response<Body> {
    let mut listed = Vec::new();
    for resource in RESOURCES
        .iter()
        .filter(|resource| resource.group == group && resource.version == version)
    {
        listed.push(json!({
            "name": resource.plural,
            "singularName": resource.kind.to_lowercase(),
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": VERBS,
        }));
        listed.push(json!({
            "name": format!("{}/status", resource.plural),
            "singularName": "",
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    if group == AUTHENTICATION_GROUP {
        listed.push(json!({
            "name": "tokenreviews",
            "singularName": "tokenreview",
            "namespaced": false,
            "kind": "TokenReview",
            "verbs": ["create"],
        }));
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    ok(&json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": listed,
    }))
}

fn ok(body: &Value) -> Response<Body> {
    status::json_response(StatusCode::OK, body)
}
