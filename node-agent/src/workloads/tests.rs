use super::*;

const BEFORE: &str = "
pods:
  - {name: web-1, namespace: shop, serviceAccount: web, ips: [10.0.2.1], node: n2, labels: {app: web}}
  - {name: web-2, namespace: shop, serviceAccount: web, ips: [10.0.2.2], node: n2, labels: {app: web}}
  - {name: db-1, namespace: shop, serviceAccount: db, ips: [10.0.2.3], node: n3, labels: {app: db}}
services:
  - {name: web, namespace: shop, selector: {app: web}, clusterIPs: [10.96.0.1], ports: [{port: 80}]}
  - {name: db, namespace: shop, selector: {app: db}, clusterIPs: [10.96.0.2], ports: [{port: 5432}]}
";

fn index(config: &str, previous: &WorkloadIndex) -> WorkloadIndex {
    let snapshot =
        mesh_core::local_config::parse(config, mesh_core::policy::DEFAULT_ROOT_NAMESPACE).unwrap();
    WorkloadIndex::build(&snapshot, previous, "n1", "cluster.local", "cluster.local")
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn a_rebuild_keeps_the_entries_that_did_not_change_and_replaces_the_others() {
    let before = index(BEFORE, &WorkloadIndex::default());
    // db-1 gets a label: it and the db service's cluster IP (its
    // endpoints are the same, so that entry stays) are looked at again.
    let after_text = BEFORE.replace("labels: {app: db}", "labels: {app: db, tier: gold}");
    let after = index(&after_text, &before);
    for unchanged in ["10.0.2.1", "10.0.2.2"] {
        let (old, new) = (before.by_ip(ip(unchanged)), after.by_ip(ip(unchanged)));
        assert!(
            Arc::ptr_eq(old.unwrap(), new.unwrap()),
            "{unchanged} is shared with the previous index"
        );
    }
    let (old, new) = (
        before.by_ip(ip("10.0.2.3")).unwrap(),
        after.by_ip(ip("10.0.2.3")).unwrap(),
    );
    assert!(!Arc::ptr_eq(old, new), "a changed pod gets a new entry");
    assert_eq!(new.labels.get("tier").map(String::as_str), Some("gold"));
    for vip in ["10.96.0.1:80", "10.96.0.2:5432"] {
        let addr: SocketAddr = vip.parse().unwrap();
        assert!(
            Arc::ptr_eq(
                before.virtual_address(addr).unwrap(),
                after.virtual_address(addr).unwrap()
            ),
            "{vip}: same endpoints, same entry"
        );
    }
    // A second db pod: the db cluster IP has a new endpoint, a new entry.
    let scaled = after_text.replace(
        "services:",
        "  - {name: db-2, namespace: shop, serviceAccount: db, ips: [10.0.2.4], node: n3, labels: {app: db}}\nservices:",
    );
    let scaled = index(&scaled, &after);
    let db: SocketAddr = "10.96.0.2:5432".parse().unwrap();
    assert!(!Arc::ptr_eq(
        after.virtual_address(db).unwrap(),
        scaled.virtual_address(db).unwrap()
    ));
    assert_eq!(scaled.virtual_address(db).unwrap().endpoints.len(), 2);
}

#[test]
fn pods_of_one_service_account_share_their_identity_and_names() {
    let index = index(BEFORE, &WorkloadIndex::default());
    let (one, two) = (
        index.by_ip(ip("10.0.2.1")).unwrap(),
        index.by_ip(ip("10.0.2.2")).unwrap(),
    );
    assert!(Arc::ptr_eq(&one.names.principal, &two.names.principal));
    assert!(Arc::ptr_eq(&one.names.namespace, &two.names.namespace));
    assert!(Arc::ptr_eq(&one.names.workload, &two.names.workload));
    assert!(Arc::ptr_eq(&one.names.service, &two.names.service));
    assert_eq!(&*one.names.service, "web.shop.svc.cluster.local");
    assert_eq!(one.identity, two.identity);
}
