use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod as KubePod, Service as KubeService};
use kube::api::DynamicObject;
use mesh_core::{local_config, policy::DEFAULT_ROOT_NAMESPACE, workload::MtlsMode};
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
    // The modes are resolved with the namespace's label and the peer
    // authentications, when the snapshot is validated (see below).
    assert_eq!(meshed.pod.mtls, MtlsMode::Permissive);
    assert_eq!(*meshed.pod.labels, labels(&[("app", "web")]));
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
    let waypoint = |svc: &KubeService, ns| service_of(svc, [], ns).waypoint;
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
    let service = service_of(&service, [], None);
    assert_eq!(service.endpoints.as_deref(), Some(&[][..]));
    assert_eq!(service.waypoint, None);
    assert!(service.cluster_ips.is_empty());
    assert_eq!(
        service.hostname("cluster.local"),
        "web.shop.svc.cluster.local"
    );
    assert_eq!(service.ports[0].target_port, Some(8080));
    assert_eq!(service.ports[1].target_port, None, "named: the slices say");
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
    let snapshot = local_config::validate(
        config(
            Vec::new(),
            vec![service.into()],
            CustomResources::default(),
            BTreeMap::new(),
        ),
        DEFAULT_ROOT_NAMESPACE,
    );
    assert_eq!(snapshot.services.len(), 1);
    // Policies are compiled as they arrive, as the snapshot then takes them.
    let compiled = super::policy(&object).expect("every policy is kept");
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
    let compact = compact_slice(&slice).unwrap();
    assert_eq!((&*compact.namespace, &*compact.service), ("shop", "web"));
    let kube_service = service;
    let service = service_of(&kube_service, [&compact], None);
    assert!(
        Arc::ptr_eq(service.endpoints.as_ref().unwrap(), &compact.endpoints),
        "a Service's only slice's endpoints are shared, not copied"
    );
    let two = service_of(&kube_service, [&compact, &compact], None);
    assert_eq!(two.endpoints.as_deref().map(<[_]>::len), Some(4));
    assert_eq!(
        service.cluster_ips,
        [
            "10.96.0.10".parse::<IpAddr>().unwrap(),
            "fd00:96::10".parse().unwrap()
        ]
    );
    let endpoints = service.endpoints.as_deref().unwrap().to_vec();
    let ips: Vec<String> = endpoints.iter().map(|e| e.ip.to_string()).collect();
    assert_eq!(ips, ["10.1.0.5", "10.1.0.7"], "the unready one is left out");
    assert_eq!(endpoints[0].node.as_deref(), Some("n2"));
    assert_eq!(
        endpoints[0].ports.len(),
        1,
        "UDP ports are not TCP endpoints"
    );
    let backends = mesh_core::service::backends(
        &service,
        &service.ports[0],
        true,
        &[] as &[mesh_core::workload::Pod],
    );
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
    let compact = compact(&pod).expect("a running pod with an address");
    assert_eq!(compact.node, "n2");
    assert_eq!(compact.service_account, "web-sa");
    let remote = remote_pod(&compact, Some(&namespace), "n1").expect("meshed pod of n2");
    assert_eq!(remote.node.as_deref(), Some("n2"));
    assert!(remote.netns.as_os_str().is_empty());
    assert_eq!(remote.ips, ["10.2.0.9".parse::<IpAddr>().unwrap()]);
    // The same translation as a pod of this node's gets, netns aside.
    let mut on_n2 = node_pod(&pod, Some(&namespace), "n2")
        .expect("meshed")
        .expect("ready")
        .pod;
    on_n2.netns = remote.netns.clone();
    assert_eq!(remote, on_n2);
    // Its own node's pods come from the node's watch, not from this one.
    assert_eq!(remote_pod(&compact, Some(&namespace), "n2"), None);
    // Not meshed: not a mesh destination; meshed later by its namespace's
    // label, without the pod changing.
    assert_eq!(remote_pod(&compact, None, "n1"), None);
    // The pod's own `disabled` wins over its namespace.
    let mut opted_out = compact.clone();
    Arc::make_mut(&mut opted_out.labels).insert(MESH_LABEL.to_owned(), "disabled".to_owned());
    assert_eq!(remote_pod(&opted_out, Some(&namespace), "n1"), None);
}

#[test]
fn pods_that_cannot_be_destinations_are_not_kept() {
    let running = json!({"phase": "Running", "podIP": "10.2.0.9"});
    let scheduled = |status: &serde_json::Value| {
        let mut pod = kube_pod(&json!({}), status);
        pod.spec.as_mut().unwrap().node_name = Some("n2".to_owned());
        pod
    };
    assert!(compact(&scheduled(&running)).is_some());
    // Not scheduled yet.
    let mut unscheduled = scheduled(&running);
    unscheduled.spec.as_mut().unwrap().node_name = None;
    assert_eq!(compact(&unscheduled), None);
    // No address yet, or an unparsable one.
    assert_eq!(compact(&scheduled(&json!({"phase": "Pending"}))), None);
    assert_eq!(
        compact(&scheduled(
            &json!({"phase": "Running", "podIP": "not-an-ip"})
        )),
        None
    );
    // Finished, or being deleted.
    for phase in ["Succeeded", "Failed"] {
        assert_eq!(
            compact(&scheduled(&json!({"phase": phase, "podIP": "10.2.0.9"}))),
            None
        );
    }
    let deleting: KubePod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop", "deletionTimestamp": "2026-12-07T00:00:00Z"},
        "spec": {"nodeName": "n2", "containers": []},
        "status": running,
    }))
    .unwrap();
    assert_eq!(compact(&deleting), None);
}

#[test]
fn metadata_keeps_only_ambit_annotations() {
    let mut pod = kube_pod(&json!({}), &json!({}));
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
    pod.metadata.annotations = Some([("big".to_owned(), "x".repeat(1000))].into());
    trim_metadata(&mut pod);
    assert!(pod.metadata.annotations.is_none());
}

/// The pod `web` of `shop` with `pod_labels`, in a namespace with
/// `namespace_labels`, under `peer_authentications`, resolved as the
/// agent's snapshot resolves it: (mode, port modes, warnings).
fn resolved(
    pod_labels: &serde_json::Value,
    namespace_labels: &[(&str, &str)],
    peer_authentications: &[serde_json::Value],
) -> (MtlsMode, BTreeMap<u16, MtlsMode>, Vec<String>) {
    let pod = validated(pod_labels, namespace_labels, peer_authentications);
    (pod.mtls, pod.port_mtls, pod.mtls_warnings)
}

/// The pod `web` of `shop` as the agent's snapshot validates it (see
/// [`resolved`]).
fn validated(
    pod_labels: &serde_json::Value,
    namespace_labels: &[(&str, &str)],
    peer_authentications: &[serde_json::Value],
) -> Pod {
    let mut namespace_labels = labels(namespace_labels);
    namespace_labels.insert(MESH_LABEL.to_owned(), "enabled".to_owned());
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": "shop", "labels": namespace_labels}
    }))
    .unwrap();
    let index = super::namespace_labels(&[namespace]);
    let Some(Ok(meshed)) = node_pod(&kube_pod(pod_labels, &running()), index.get("shop"), "n1")
    else {
        panic!("a running pod of a meshed namespace is enrolled");
    };
    let service: KubeService = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}, {"port": 9090, "targetPort": 9090}]}
    }))
    .unwrap();
    let resources = CustomResources {
        peer_authentications: peer_authentications
            .iter()
            .map(|object| local_object(&serde_json::from_value(object.clone()).unwrap()))
            .collect(),
        ..CustomResources::default()
    };
    let snapshot = local_config::validate(
        config(
            vec![meshed.pod.into()],
            vec![service_of(&service, [], None).into()],
            resources,
            &index,
        ),
        DEFAULT_ROOT_NAMESPACE,
    );
    let pod = snapshot
        .pods
        .into_iter()
        .next()
        .expect("the pod is accepted");
    std::sync::Arc::unwrap_or_clone(pod)
}

#[test]
fn the_kernel_path_comes_from_the_pods_label_else_its_namespaces() {
    let label = mesh_core::workload::KERNEL_PATH_LABEL;
    let from_namespace = validated(&json!({"app": "web"}), &[(label, "enabled")], &[]);
    assert_eq!(from_namespace.kernel_path, KernelPath::Requested);
    let opted_out = validated(
        &json!({"app": "web", label: "disabled"}),
        &[(label, "enabled")],
        &[],
    );
    assert_eq!(opted_out.kernel_path, KernelPath::Off);
    let unreadable = validated(&json!({"app": "web"}), &[(label, "on")], &[]);
    assert!(
        matches!(&unreadable.kernel_path, KernelPath::Rejected(reason) if reason.contains("namespace")),
        "{:?}",
        unreadable.kernel_path
    );
    assert_eq!(
        validated(&json!({"app": "web"}), &[], &[]).kernel_path,
        KernelPath::Off
    );
}

fn peer_authn(name: &str, spec: &serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "security.ambit.dev/v1alpha1", "kind": "PeerAuthentication",
           "metadata": {"name": name, "namespace": "shop", "uid": "u", "resourceVersion": "7",
                        "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": spec})
}

#[test]
fn mtls_labels_are_exact_the_namespaces_acts_at_its_level_and_the_pods_only_tightens() {
    use MtlsMode::{Permissive, Strict};
    let app = json!({"app": "web"});
    let none = BTreeMap::new();
    // No label, no policy: permissive.
    assert_eq!(resolved(&app, &[], &[]), (Permissive, none.clone(), vec![]));
    // The namespace's label, exactly as written.
    assert_eq!(resolved(&app, &[(MTLS_LABEL, "strict")], &[]).0, Strict);
    assert_eq!(
        resolved(&app, &[(MTLS_LABEL, "permissive")], &[]).0,
        Permissive
    );
    // Anything else is strict, with a warning naming the label, the value
    // and the namespace.
    for value in ["Strict", "STRICT", "Permissive", "permisive"] {
        let (mode, _, warnings) = resolved(&app, &[(MTLS_LABEL, value)], &[]);
        assert_eq!(mode, Strict, "{value}");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("namespace shop")
                    && w.contains(&format!("{MTLS_LABEL}={value:?}"))),
            "{value}: {warnings:?}"
        );
    }
    // The pod's label cannot loosen its namespace's...
    let permissive_pod = json!({"app": "web", MTLS_LABEL: "permissive"});
    assert_eq!(
        resolved(&permissive_pod, &[(MTLS_LABEL, "strict")], &[]).0,
        Strict
    );
    // ...nor a namespace-wide policy's...
    let strict_namespace = peer_authn("ns", &json!({"mtls": {"mode": "STRICT"}}));
    assert_eq!(
        resolved(
            &permissive_pod,
            &[],
            std::slice::from_ref(&strict_namespace)
        )
        .0,
        Strict
    );
    // ...and a namespace label cannot loosen a namespace-wide policy: the
    // stricter of the two.
    assert_eq!(
        resolved(&app, &[(MTLS_LABEL, "permissive")], &[strict_namespace]).0,
        Strict
    );
    // The pod's label tightens, every port too.
    let workload = peer_authn(
        "w",
        &json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "PERMISSIVE"},
                "portLevelMtls": {"9090": {"mode": "STRICT"}}}),
    );
    assert_eq!(
        resolved(&app, &[], std::slice::from_ref(&workload)),
        (Permissive, BTreeMap::from([(9090, Strict)]), vec![])
    );
    let strict_pod = json!({"app": "web", MTLS_LABEL: "strict"});
    assert_eq!(
        resolved(&strict_pod, &[], std::slice::from_ref(&workload)),
        (Strict, none.clone(), vec![])
    );
    // An unreadable pod label is strict, with a warning naming the pod.
    let (mode, ports, warnings) = resolved(
        &json!({"app": "web", MTLS_LABEL: "Permissive"}),
        &[],
        &[workload],
    );
    assert_eq!((mode, ports), (Strict, none));
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("pod shop/web") && w.contains("\"Permissive\"")),
        "{warnings:?}"
    );
}

#[test]
fn peer_authentications_from_the_api_server_load_with_their_metadata() {
    // Server-side metadata (uid, resourceVersion) does not reject it, and
    // the port-level mode is checked against the Service's target ports:
    // 8080 (no targetPort: the port) and 9090.
    let good = peer_authn(
        "w",
        &json!({"selector": {"matchLabels": {"app": "web"}}, "portLevelMtls": {"8080": {"mode": "STRICT"}}}),
    );
    assert_eq!(
        resolved(&json!({"app": "web"}), &[], &[good]),
        (
            MtlsMode::Permissive,
            BTreeMap::from([(8080, MtlsMode::Strict)]),
            vec![]
        )
    );
    let missing = peer_authn(
        "w",
        &json!({"selector": {"matchLabels": {"app": "web"}}, "portLevelMtls": {"7070": {"mode": "PERMISSIVE"}}}),
    );
    let (mode, _, warnings) = resolved(&json!({"app": "web"}), &[], &[missing]);
    assert_eq!(mode, MtlsMode::Strict);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("shop/w is rejected (spec.portLevelMtls.7070")),
        "{warnings:?}"
    );
}

/// A pod's compact form, its labels in a table of their own.
fn compact(pod: &KubePod) -> Option<RemotePod> {
    compact_pod(pod, &mut LabelSets::default())
}

/// A Kubernetes Service through its compact form, with `slices`.
fn service_of<'a>(
    service: &KubeService,
    slices: impl IntoIterator<Item = &'a SliceEndpoints>,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Service {
    let source = compact_service(service).expect("a Service with a name, namespace and spec");
    super::service(&source, slices, namespace_labels)
}
