//! `PeerAuthentication` status: each policy is compiled as the agents
//! compile it, its port-level modes are checked against the ports of the
//! pods it selects (the target ports of the Services that select them, a
//! named one resolved through the pod's container ports), and its
//! `Accepted` condition says whether it loads, or why not (the agents then
//! treat it as STRICT in its scope). Re-checked when policies, Services or
//! Pods change; written through the `status` subresource, only when it
//! changes.

use std::{collections::BTreeSet, sync::Arc};

use k8s_openapi::{
    api::core::v1::{Pod, PodSpec, Service},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{Client, runtime::watcher};
use mesh_core::peer_authn::{self, WorkloadPorts};
use mesh_kube::{resources::PEER_AUTHENTICATION, translate::trim_metadata, watch::Watches};
use serde_json::Value;

use crate::policy_status::write_condition;

/// The condition `object` should carry, given the pods of its namespace:
/// (status, reason, message).
#[must_use]
pub fn condition_for(
    object: &Value,
    workloads: &[WorkloadPorts<'_>],
) -> (&'static str, &'static str, String) {
    // Compiled from what the agents compile, so both reach one verdict.
    let yaml = serde_yaml::to_value(object).unwrap_or(serde_yaml::Value::Null);
    let as_written = mesh_core::local_config::resource_as_written(&yaml);
    let mut policies = [peer_authn::compile(&as_written)];
    peer_authn::check_ports(&mut policies, workloads);
    let [policy] = policies;
    match policy.rejected {
        None => (
            "True",
            "Accepted",
            "the peer authentication is in force".to_owned(),
        ),
        Some(error) => (
            "False",
            "Invalid",
            format!("{error}; the agents treat it as STRICT in its scope"),
        ),
    }
}

/// The target ports of the Services of `services` that select `pod`; a
/// named target port is the pod's container port of that name. `None`
/// when no Service selects it.
#[must_use]
pub fn target_ports(pod: &Pod, services: &[Arc<Service>]) -> Option<BTreeSet<u16>> {
    let namespace = pod.metadata.namespace.as_deref()?;
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let container_port = |name: &str| {
        pod.spec
            .iter()
            .flat_map(|spec| &spec.containers)
            .flat_map(|container| container.ports.iter().flatten())
            .find(|port| port.name.as_deref() == Some(name))
            .and_then(|port| u16::try_from(port.container_port).ok())
    };
    let mut ports: Option<BTreeSet<u16>> = None;
    for service in services {
        let Some(spec) = &service.spec else { continue };
        let selector = spec.selector.clone().unwrap_or_default();
        let selects = service.metadata.namespace.as_deref() == Some(namespace)
            && !selector.is_empty()
            && selector.iter().all(|(k, v)| labels.get(k) == Some(v));
        if !selects {
            continue;
        }
        let found = ports.get_or_insert_default();
        for port in spec.ports.iter().flatten() {
            let number = match &port.target_port {
                None => u16::try_from(port.port).ok(),
                Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                Some(IntOrString::String(name)) => container_port(name),
            };
            found.extend(number);
        }
    }
    ports
}

/// Follows every `PeerAuthentication`, Service and Pod and keeps the
/// policies' conditions current, until the process ends.
pub async fn run(client: Client) {
    let resource = PEER_AUTHENTICATION.api_resource();
    let watches = Watches::for_process(client.clone());
    let services = watches.typed::<Service>("Services", watcher::Config::default(), trim_metadata);
    // Only what the check reads: namespace, labels, container ports.
    let pods = watches.typed("Pods", watcher::Config::default(), trim_pod);
    let policies = watches.custom(PEER_AUTHENTICATION);
    loop {
        watches.changed.notified().await;
        let services = services.state();
        let pods = pods.state();
        for object in policies.state() {
            let namespace = object.metadata.namespace.as_deref();
            // Only port-level modes need the pods' ports: finding them
            // scans the namespace's pods and Services.
            let port_level = object.data["spec"]["portLevelMtls"]
                .as_object()
                .is_some_and(|ports| !ports.is_empty());
            let in_namespace: Vec<Arc<Service>> = services
                .iter()
                .filter(|s| port_level && s.metadata.namespace.as_deref() == namespace)
                .cloned()
                .collect();
            let ports: Vec<(&Pod, Option<BTreeSet<u16>>)> = pods
                .iter()
                .filter(|pod| port_level && pod.metadata.namespace.as_deref() == namespace)
                .map(|pod| (&**pod, target_ports(pod, &in_namespace)))
                .collect();
            let empty = std::collections::BTreeMap::new();
            let workloads: Vec<WorkloadPorts<'_>> = ports
                .iter()
                .filter_map(|(pod, ports)| {
                    Some(WorkloadPorts {
                        namespace: pod.metadata.namespace.as_deref()?,
                        labels: pod.metadata.labels.as_ref().unwrap_or(&empty),
                        ports: ports.clone(),
                    })
                })
                .collect();
            let value = serde_json::to_value(&*object).unwrap_or_default();
            let condition = condition_for(&value, &workloads);
            write_condition(
                &client,
                &resource,
                &object,
                condition,
                "peer authentication",
            )
            .await;
        }
    }
}

/// Keeps of a pod only what [`target_ports`] reads.
fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.status = None;
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        containers: spec
            .containers
            .into_iter()
            .map(|container| k8s_openapi::api::core::v1::Container {
                name: container.name,
                ports: container.ports,
                ..Default::default()
            })
            .collect(),
        ..PodSpec::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_good_peer_authentication_is_accepted_and_a_bad_one_says_why() {
        let policy = |spec: Value| {
            json!({"apiVersion": "security.ambit.dev/v1alpha1", "kind": "PeerAuthentication",
                   "metadata": {"name": "p", "namespace": "shop", "uid": "x", "generation": 2},
                   "spec": spec})
        };
        assert_eq!(
            condition_for(&policy(json!({"mtls": {"mode": "STRICT"}})), &[]).0,
            "True"
        );
        let (status, reason, message) =
            condition_for(&policy(json!({"mtls": {"mode": "Strict"}})), &[]);
        assert_eq!((status, reason), ("False", "Invalid"));
        assert!(message.contains("spec.mtls.mode"), "{message}");
        assert!(message.contains("STRICT in its scope"), "{message}");

        // A port-level mode for a port the selected pods do not have.
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]}
        }))
        .unwrap();
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}, {"port": 9000}]}
        }))
        .unwrap();
        let ports = target_ports(&pod, &[Arc::new(service)]);
        assert_eq!(ports, Some(BTreeSet::from([8080, 9000])));
        let labels = pod.metadata.labels.clone().unwrap();
        let workloads = [WorkloadPorts {
            namespace: "shop",
            labels: &labels,
            ports,
        }];
        let selected = |ports: Value| {
            policy(json!({"selector": {"matchLabels": {"app": "web"}}, "portLevelMtls": ports}))
        };
        assert_eq!(
            condition_for(&selected(json!({"8080": {"mode": "STRICT"}})), &workloads).0,
            "True"
        );
        let (status, _, message) =
            condition_for(&selected(json!({"9090": {"mode": "STRICT"}})), &workloads);
        assert_eq!(status, "False");
        assert!(message.contains("spec.portLevelMtls.9090"), "{message}");
    }
}
