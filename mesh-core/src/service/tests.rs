use super::*;

fn service(yaml: &str) -> Service {
    serde_yaml::from_str(yaml).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn parses_with_defaults_and_names_its_host() {
    let svc =
        service("{name: server, selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}");
    assert_eq!(svc.namespace, "default");
    assert_eq!(svc.ports[0].target_port, Some(8080));
    assert_eq!(svc.validate(), Ok(()));
    assert_eq!(
        svc.hostname("cluster.local"),
        "server.default.svc.cluster.local"
    );
}

#[test]
fn selects_pods_of_its_namespace_carrying_every_selector_label() {
    let svc = service("{name: web, namespace: shop, selector: {app: web, tier: front}}");
    assert!(svc.selects(
        "shop",
        &labels(&[("app", "web"), ("tier", "front"), ("x", "y")])
    ));
    assert!(!svc.selects("shop", &labels(&[("app", "web")])));
    assert!(!svc.selects("other", &labels(&[("app", "web"), ("tier", "front")])));
}

#[test]
fn the_first_selecting_service_by_name_wins() {
    let services = [
        service("{name: zeta, namespace: shop, selector: {app: web}}"),
        service("{name: alpha, namespace: shop, selector: {app: web}}"),
        service("{name: aaa, namespace: other, selector: {app: web}}"),
    ];
    let pod = labels(&[("app", "web")]);
    let first = first_selecting(&services, "shop", &pod).map(|s| s.name.as_str());
    assert_eq!(first, Some("alpha"));
    assert!(first_selecting(&services, "shop", &labels(&[("app", "db")])).is_none());
}

#[test]
fn bad_entries_say_what_is_wrong_and_name_the_service() {
    let cases = [
        (
            "{name: Server, selector: {a: b}}",
            "name \"Server\", which is not a DNS label",
        ),
        (
            "{name: s, namespace: 'a.b', selector: {a: b}}",
            "namespace \"a.b\"",
        ),
        ("{name: '', selector: {a: b}}", "not a DNS label"),
        ("{name: 9s, selector: {a: b}}", "not a DNS label"),
        ("{name: s-, selector: {a: b}}", "not a DNS label"),
        (
            "{name: s, namespace: '-x', selector: {a: b}}",
            "not a DNS label",
        ),
        ("{name: s}", "has no selector"),
        (
            "{name: s, selector: {a: b}, ports: [{port: 0}]}",
            "port 0 in ports entry 1",
        ),
        (
            "{name: s, selector: {a: b}, ports: [{port: 80}, {port: 81, targetPort: 0}]}",
            "port 0 in ports entry 2",
        ),
        (
            "{name: s, selector: {a: b}, ports: [{port: 80}, {port: 80}]}",
            "port 80 twice",
        ),
        (
            "{name: s, selector: {a: b}, ports: [{name: h, port: 80}, {name: h, port: 81}]}",
            "port name \"h\" twice",
        ),
        (
            "{name: s, selector: {a: b}, clusterIPs: [127.0.0.1]}",
            "cluster IP 127.0.0.1, which cannot be a service address",
        ),
    ];
    for (yaml, expected) in cases {
        let error = service(yaml).validate().unwrap_err().to_string();
        assert!(error.contains(expected), "{yaml}: {error}");
        assert!(error.starts_with("service "), "{yaml}: {error}");
    }
}

#[test]
fn unknown_fields_and_bad_ports_do_not_parse() {
    let error = serde_yaml::from_str::<Service>("{name: s, selektor: {a: b}}").unwrap_err();
    assert!(
        error.to_string().contains("unknown field `selektor`"),
        "{error}"
    );
    let error = serde_yaml::from_str::<Service>("{name: s, ports: [{port: 70000}]}").unwrap_err();
    assert!(error.to_string().contains("70000"), "{error}");
}

fn pod(yaml: &str) -> Pod {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn backends_are_the_selected_pods_at_the_target_port_of_the_dialled_family() {
    let svc = service(
        "{name: web, namespace: shop, selector: {app: web}, clusterIPs: [10.96.0.1, 'fd00::1'], ports: [{port: 80, targetPort: 8080}, {name: m, port: 9090}]}",
    );
    assert_eq!(svc.validate(), Ok(()));
    let pods = [
        pod("{name: a, namespace: shop, ips: [10.0.0.2, 'fd00::2'], node: n, labels: {app: web}}"),
        pod("{name: b, namespace: shop, ips: [10.0.0.1], node: n, labels: {app: web}}"),
        pod("{name: c, namespace: shop, ips: [10.0.0.3], node: n, labels: {app: db}}"),
        pod("{name: d, namespace: other, ips: [10.0.0.4], node: n, labels: {app: web}}"),
    ];
    let addrs = |port: usize, ipv4: bool| -> Vec<String> {
        backends(&svc, &svc.ports[port], ipv4, &pods)
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(addrs(0, true), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert_eq!(addrs(1, true), ["10.0.0.1:9090", "10.0.0.2:9090"]);
    assert_eq!(addrs(0, false), ["[fd00::2]:8080"]);
}

#[test]
fn listed_endpoints_replace_the_selector_and_name_their_ports() {
    let svc = service(
        "{name: web, selector: {app: web}, clusterIPs: [10.96.0.1], ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 81}],
          endpoints: [{ip: 10.0.0.7, ports: {http: 8000, admin: 9000}, node: n2}, {ip: 10.0.0.8, ports: {http: 8001}}]}",
    );
    let selected = [pod(
        "{name: a, ips: [10.0.0.2], node: n, labels: {app: web}}",
    )];
    let http: Vec<String> = backends(&svc, &svc.ports[0], true, &selected)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(http, ["10.0.0.7:8000", "10.0.0.8:8001"]);
    let admin = backends(&svc, &svc.ports[1], true, &selected);
    assert_eq!(admin, ["10.0.0.7:9000".parse().unwrap()]);
    // Without a selector the endpoints alone make a valid service.
    let manual = service("{name: ext, endpoints: [{ip: 10.0.0.9, ports: {'': 80}}]}");
    assert_eq!(manual.validate(), Ok(()));
}

#[test]
fn a_port_declares_its_protocol_by_app_protocol() {
    let svc = service(
        "{name: s, ports: [{port: 80, appProtocol: HTTP}, {port: 81, appProtocol: kubernetes.io/h2c},
          {port: 3306, appProtocol: mysql}, {port: 82, appProtocol: tcp}, {port: 83, appProtocol: example.com/x},
          {name: tcp-named, port: 84}]}",
    );
    let declared: Vec<_> = svc
        .ports
        .iter()
        .map(ServicePort::declared_protocol)
        .collect();
    assert_eq!(
        declared,
        [
            Some(DeclaredProtocol::Http),
            Some(DeclaredProtocol::Http),
            Some(DeclaredProtocol::Tcp),
            Some(DeclaredProtocol::Tcp),
            None,
            // Only `appProtocol` declares: a port's name does not.
            None,
        ]
    );
    // It is written back only when set.
    let yaml = serde_yaml::to_string(&svc.ports[..=0]).unwrap();
    assert!(yaml.contains("appProtocol: HTTP"), "{yaml}");
    let yaml = serde_yaml::to_string(&svc.ports[5]).unwrap();
    assert!(!yaml.contains("appProtocol"), "{yaml}");
}
