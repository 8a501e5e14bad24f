use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod as KubePod, Service as KubeService};
use kube::api::DynamicObject;
use mesh_core::{local_config, workload::MtlsMode};
use serde_json::json;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn kube_pod(pod_labels: &serde_json::Value, status: &serde_json::Value) -> KubePod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "labels": pod_labels},
        "spec": {"nodeName": "n1", "serviceAccountName": "web-sa", "containers": []},
        "status": status,
    }))
    .unwrap()
}

fn running() -> serde_json::Value {
    json!({"phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}]})
}

#[test]
fn the_pod_label_wins_then_the_namespace_label() {
    let enabled = labels(&[(MESH_LABEL, "enabled")]);
    let disabled = labels(&[(MESH_LABEL, "disabled")]);
    let none = labels(&[]);
    assert!(is_enrolled(&none, &enabled));
    assert!(!is_enrolled(&disabled, &enabled));
    assert!(is_enrolled(&enabled, &none));
    assert!(!is_enrolled(&none, &none));
    assert!(!is_enrolled(&labels(&[(MESH_LABEL, "yes")]), &none));
}

#[test]
fn a_meshed_running_pod_becomes_a_config_entry() {
    let namespace = labels(&[(MESH_LABEL, "enabled"), (MTLS_LABEL, "strict")]);
    let pod = kube_pod(&json!({"app": "web"}), &running());
    let Some(Ok(meshed)) = node_pod(&pod, Some(&namespace), "n1") else {
        panic!("a running pod of a meshed namespace is enrolled");
    };
    assert_eq!(meshed.uid, "u-1");
    assert_eq!(meshed.pod.service_account, "web-sa");
    assert_eq!(meshed.pod.ips.len(), 2);
    assert_eq!(meshed.pod.node.as_deref(), Some("n1"));
    assert_eq!(meshed.pod.mtls, MtlsMode::Strict);
    assert_eq!(meshed.pod.labels, labels(&[("app", "web")]));
    assert!(node_pod(&pod, None, "n1").is_none(), "no label: not meshed");
}

#[test]
fn pods_that_cannot_be_enrolled_yet_say_why() {
    let namespace = labels(&[(MESH_LABEL, "enabled")]);
    let pending = kube_pod(&json!({}), &json!({"phase": "Pending"}));
    assert_eq!(
        node_pod(&pending, Some(&namespace), "n1"),
        Some(Err(NotReady::NoAddress))
    );
    let done = kube_pod(
        &json!({}),
        &json!({"phase": "Succeeded", "podIP": "10.1.0.5"}),
    );
    assert_eq!(
        node_pod(&done, Some(&namespace), "n1"),
        Some(Err(NotReady::Ended))
    );
}

#[test]
fn a_service_uses_its_own_waypoint_label_else_its_namespaces() {
    let service = |labels: serde_json::Value| -> KubeService {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "labels": labels},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
        }))
        .unwrap()
    };
    let namespace: BTreeMap<String, String> =
        [("ambit.dev/use-waypoint".to_owned(), "shop-wp".to_owned())].into();
    let plain = service(json!({}));
    let own = service(json!({"ambit.dev/use-waypoint": "web-wp"}));
    let opted_out = service(json!({"ambit.dev/use-waypoint": "none"}));
    let the_waypoints_own = service(json!({"ambit.dev/waypoint": "shop-wp"}));
    let waypoint = |svc: &KubeService, ns| super::service(svc, [], ns).unwrap().waypoint;
    assert_eq!(waypoint(&the_waypoints_own, Some(&namespace)), None);
    assert_eq!(waypoint(&plain, None), None);
    assert_eq!(
        waypoint(&plain, Some(&namespace)).as_deref(),
        Some("shop-wp")
    );
    assert_eq!(waypoint(&own, Some(&namespace)).as_deref(), Some("web-wp"));
    assert_eq!(waypoint(&opted_out, Some(&namespace)), None);
}

#[test]
fn services_and_policies_read_as_the_local_file_would() {
    let service: KubeService = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"port": 443, "targetPort": "https", "appProtocol": "tcp"}
        ]}
    }))
    .unwrap();
    let service = super::service(&service, [], None).unwrap();
    assert_eq!(service.endpoints, Some(Vec::new()));
    assert_eq!(service.waypoint, None);
    assert!(service.cluster_ips.is_empty());
    assert_eq!(
        service.hostname("cluster.local"),
        "web.shop.svc.cluster.local"
    );
    assert_eq!(service.ports[0].target_port, Some(8080));
    assert_eq!(service.ports[1].target_port, None);
    assert_eq!(service.ports[0].declared_protocol(), None);
    assert_eq!(
        service.ports[1].declared_protocol(),
        Some(mesh_core::service::DeclaredProtocol::Tcp)
    );

    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "security.ambit.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-all", "namespace": "shop", "uid": "x", "resourceVersion": "42",
                     "managedFields": [], "creationTimestamp": "2026-11-22T08:00:00Z"},
        "spec": {"action": "DENY", "rules": [{}]},
        "status": {"conditions": [{"type": "Accepted", "status": "True"}]}
    }))
    .unwrap();
    let snapshot = local_config::validate(config(
        Vec::new(),
        vec![service],
        vec![local_object(&object)],
        Vec::new(),
    ));
    assert_eq!(snapshot.services.len(), 1);
    assert_eq!(snapshot.policies.len(), 1);
    let compiled = &snapshot.policies[0];
    assert_eq!(
        compiled.rejected, None,
        "server-side metadata must not reject it"
    );
    assert_eq!(compiled.key.to_string(), "shop/deny-all");
}

#[test]
fn namespace_labels_are_indexed_by_name() {
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": "shop", "labels": {MESH_LABEL: "enabled"}}
    }))
    .unwrap();
    let index = namespace_labels(&[namespace]);
    assert_eq!(index["shop"][MESH_LABEL], "enabled");
}

#[test]
fn a_service_resolves_through_its_ready_slice_endpoints() {
    let service: KubeService = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                 "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}
    }))
    .unwrap();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-abc", "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        "endpoints": [
            {"addresses": ["10.1.0.5"], "conditions": {"ready": true}, "nodeName": "n2"},
            {"addresses": ["10.1.0.6"], "conditions": {"ready": false, "terminating": true}},
            {"addresses": ["10.1.0.7"]}
        ]
    }))
    .unwrap();
    assert_eq!(slice_owner(&slice), Some(("shop", "web")));
    let service = super::service(&service, [&slice], None).unwrap();
    assert_eq!(
        service.cluster_ips,
        [
            "10.96.0.10".parse::<IpAddr>().unwrap(),
            "fd00:96::10".parse().unwrap()
        ]
    );
    let endpoints = service.endpoints.clone().unwrap();
    let ips: Vec<String> = endpoints.iter().map(|e| e.ip.to_string()).collect();
    assert_eq!(ips, ["10.1.0.5", "10.1.0.7"], "the unready one is left out");
    assert_eq!(endpoints[0].node.as_deref(), Some("n2"));
    assert_eq!(
        endpoints[0].ports.len(),
        1,
        "UDP ports are not TCP endpoints"
    );
    let backends = mesh_core::service::backends(&service, &service.ports[0], true, &[]);
    assert_eq!(
        backends,
        [
            "10.1.0.5:8080".parse().unwrap(),
            "10.1.0.7:8080".parse().unwrap()
        ]
    );
}

#[test]
fn other_nodes_meshed_pods_are_destinations() {
    let namespace = labels(&[(MESH_LABEL, "enabled")]);
    let mut pod = kube_pod(
        &json!({}),
        &json!({"phase": "Running", "podIP": "10.2.0.9", "conditions": [{"type": "Ready", "status": "True"}]}),
    );
    pod.spec.as_mut().unwrap().node_name = Some("n2".to_owned());
    pod.spec.as_mut().unwrap().containers = vec![k8s_openapi::api::core::v1::Container::default()];
    pod.metadata.annotations = Some([("big".to_owned(), "x".repeat(1000))].into());
    trim_remote_pod(&mut pod);
    assert!(pod.metadata.annotations.is_none());
    pod.metadata.annotations = Some(
        [
            ("big".to_owned(), "x".repeat(1000)),
            ("ambit.dev/rate-limit".to_owned(), "5".to_owned()),
        ]
        .into(),
    );
    trim_metadata(&mut pod);
    assert_eq!(
        pod.metadata.annotations,
        Some([("ambit.dev/rate-limit".to_owned(), "5".to_owned())].into())
    );
    assert!(pod.spec.as_ref().unwrap().containers.is_empty());
    assert!(pod.status.as_ref().unwrap().conditions.is_none());
    let remote = remote_pod(&pod, Some(&namespace), "n1").expect("meshed pod of n2");
    assert_eq!(remote.node.as_deref(), Some("n2"));
    assert!(remote.netns.as_os_str().is_empty());
    assert_eq!(remote.ips, ["10.2.0.9".parse::<IpAddr>().unwrap()]);
    // Its own node's pods come from the node's watch, not from this one.
    assert_eq!(remote_pod(&pod, Some(&namespace), "n2"), None);
    // Not meshed: not a mesh destination.
    assert_eq!(remote_pod(&pod, None, "n1"), None);
}
