use super::*;
use crate::policy::DEFAULT_ROOT_NAMESPACE;

fn parse(text: &str) -> Result<LocalSnapshot, serde_yaml::Error> {
    super::parse(text, DEFAULT_ROOT_NAMESPACE)
}

fn load(path: &Path) -> Result<LocalSnapshot, LocalConfigError> {
    super::load(path, DEFAULT_ROOT_NAMESPACE)
}

const TWO_PODS: &str = r"
pods:
  - name: client
    namespace: shop
    serviceAccount: client
    ips: [10.10.1.11, 'fd00:10:10:1::b']
    netns: /run/netns/client
  - name: server
    ips: [10.10.2.11]
    netns: /run/netns/server
";

#[test]
fn parses_pods_with_defaults() {
    let snapshot = parse(TWO_PODS).unwrap();
    assert!(snapshot.rejected.is_empty());
    assert_eq!(snapshot.pods.len(), 2);
    let client = &snapshot.pods[0];
    assert_eq!(client.key().to_string(), "shop/client");
    assert_eq!(client.service_account, "client");
    assert_eq!(client.ips.len(), 2);
    let server = &snapshot.pods[1];
    assert_eq!(server.namespace, "default");
    assert_eq!(server.service_account, "default");
}

#[test]
fn empty_file_is_empty_config() {
    assert_eq!(parse("").unwrap(), LocalSnapshot::default());
    assert_eq!(parse("pods: []").unwrap(), LocalSnapshot::default());
}

#[test]
fn duplicate_pod_is_rejected_and_others_kept() {
    let text = format!(
        "{TWO_PODS}  - name: client\n    namespace: shop\n    ips: [10.10.1.99]\n    netns: /x\n"
    );
    let snapshot = parse(&text).unwrap();
    assert_eq!(snapshot.pods.len(), 2);
    assert_eq!(snapshot.rejected.len(), 1);
    let rejected = &snapshot.rejected[0];
    assert_eq!(rejected.entry, 3);
    assert!(
        rejected
            .reason
            .contains("shop/client is listed twice (entries 1 and 3)"),
        "{}",
        rejected.reason
    );
}

#[test]
fn shared_address_is_rejected() {
    let text = format!("{TWO_PODS}  - name: thief\n    ips: [10.10.2.11]\n    netns: /x\n");
    let snapshot = parse(&text).unwrap();
    assert_eq!(snapshot.pods.len(), 2);
    assert!(
        snapshot.rejected[0]
            .reason
            .contains("which pod default/server already has")
    );
}

#[test]
fn bad_entries_are_rejected_with_reasons() {
    let cases = [
        ("ips: []\n    netns: /x", "has no ips"),
        (
            "ips: [10.0.0.1, 10.0.0.2]\n    netns: /x",
            "more than one IPv4",
        ),
        ("ips: [127.0.0.1]\n    netns: /x", "cannot be a pod address"),
        ("ips: [10.0.0.1]\n    netns: relative/path", "not absolute"),
    ];
    for (body, expected) in cases {
        let text = format!("pods:\n  - name: p\n    {body}\n");
        let snapshot = parse(&text).unwrap();
        assert!(snapshot.pods.is_empty(), "{body}");
        assert!(
            snapshot.rejected[0].reason.contains(expected),
            "{body}: {}",
            snapshot.rejected[0].reason
        );
    }
}

#[test]
fn unparseable_file_names_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(
        &path,
        "pods:\n  - name: a\n    ips: [not-an-ip]\n    netns: /x\n",
    )
    .unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(err.contains("mesh.yaml"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn unknown_field_is_an_error() {
    let err = parse("pods:\n  - name: a\n    ips: [10.0.0.1]\n    netns: /x\n    colour: blue\n")
        .unwrap_err();
    assert!(err.to_string().contains("unknown field `colour`"), "{err}");
}

#[test]
fn missing_file_is_a_read_error() {
    let err = load(Path::new("/nonexistent/ambit.yaml")).unwrap_err();
    assert!(matches!(err, LocalConfigError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/ambit.yaml"));
}

const SERVICES: &str = r"
services:
  - name: server
    namespace: shop
    selector: {app: server}
    ports: [{name: http, port: 80, targetPort: 8080}]
  - name: web
    selector: {app: web}
";

#[test]
fn parses_services_with_defaults() {
    let snapshot = parse(SERVICES).unwrap();
    assert!(snapshot.rejected_services.is_empty());
    let names: Vec<String> = snapshot
        .services
        .iter()
        .map(|s| s.key().to_string())
        .collect();
    assert_eq!(names, ["shop/server", "default/web"]);
    assert_eq!(snapshot.services[0].ports[0].target_port, Some(8080));
}

#[test]
fn bad_service_entries_are_rejected_naming_the_entry_and_others_kept() {
    let text = format!(
        "{SERVICES}  - name: server\n    namespace: shop\n    selector: {{app: other}}\n  - name: Bad_Name\n    selector: {{app: x}}\n  - name: empty\n"
    );
    let snapshot = parse(&text).unwrap();
    assert_eq!(snapshot.services.len(), 2);
    let reasons: Vec<(usize, &str)> = snapshot
        .rejected_services
        .iter()
        .map(|r| (r.entry, r.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0].0, 3);
    assert!(
        reasons[0]
            .1
            .contains("service shop/server is listed twice (entries 1 and 3)"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1].0, 4);
    assert!(
        reasons[1].1.contains("default/Bad_Name") && reasons[1].1.contains("not a DNS label"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2].0, 5);
    assert!(reasons[2].1.contains("has no selector"), "{reasons:?}");
}

#[test]
fn unknown_service_field_fails_the_file_naming_the_field() {
    let err =
        parse("services:\n  - name: s\n    selector: {a: b}\n    type: ClusterIP\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `type`"), "{err}");
    let err = parse("services:\n  - namespace: shop\n").unwrap_err();
    assert!(err.to_string().contains("missing field `name`"), "{err}");
}

#[test]
fn a_cluster_ip_belongs_to_one_service() {
    let text = "services:\n  - {name: a, selector: {app: a}, clusterIPs: [10.96.0.1], ports: [{port: 80}]}\n  - {name: b, selector: {app: b}, clusterIPs: [10.96.0.1], ports: [{port: 80}]}\n";
    let snapshot = parse(text).unwrap();
    assert_eq!(snapshot.services.len(), 1);
    let reason = &snapshot.rejected_services[0].reason;
    assert!(
        reason.contains(
            "service default/b has cluster IP 10.96.0.1, which service default/a already has"
        ),
        "{reason}"
    );
}

#[test]
fn routes_are_carried_as_written() {
    let text = "routes:\n  - {apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, metadata: {name: r}}\n";
    let snapshot = parse(text).unwrap();
    assert_eq!(snapshot.routes.len(), 1);
    assert_eq!(snapshot.routes[0]["metadata"]["name"], "r");
}

#[test]
fn a_resource_as_written_keeps_its_fields_but_not_the_servers_bookkeeping() {
    let object: serde_yaml::Value = serde_yaml::from_str(
        "{apiVersion: v1, kind: X, metadata: {name: a, namespace: b, uid: u, resourceVersion: '1'}, spec: {k: v}, status: {s: 1}}",
    )
    .unwrap();
    let written = resource_as_written(&object);
    let expected: serde_yaml::Value = serde_yaml::from_str(
        "{apiVersion: v1, kind: X, metadata: {name: a, namespace: b}, spec: {k: v}}",
    )
    .unwrap();
    assert_eq!(written, expected);

    // A route's settings and its age (precedence) stay; other annotations
    // (kubectl's copy of the object) do not.
    let route: serde_yaml::Value = serde_yaml::from_str(
        "{metadata: {name: r, namespace: b, creationTimestamp: '2026-11-22T08:00:00Z',
          annotations: {ambit.dev/rate-limit: '5', kubectl.kubernetes.io/last-applied-configuration: '{}'}}}",
    )
    .unwrap();
    let expected: serde_yaml::Value = serde_yaml::from_str(
        "{metadata: {name: r, namespace: b, creationTimestamp: '2026-11-22T08:00:00Z',
          annotations: {ambit.dev/rate-limit: '5'}}}",
    )
    .unwrap();
    assert_eq!(resource_as_written(&route), expected);
}
