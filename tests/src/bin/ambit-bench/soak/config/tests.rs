use std::net::Ipv4Addr;
use std::path::PathBuf;

use mesh_core::local_config;
use mesh_core::policy::Action;
use mesh_core::workload::KernelPath;

use super::*;

fn pod(name: &str, last: u8) -> Pod {
    Pod {
        name: name.to_owned(),
        namespace: NAMESPACE.to_owned(),
        node: "n1".to_owned(),
        netns: format!("soak-{name}"),
        netns_path: PathBuf::from(format!("/run/netns/soak-{name}")),
        cgroup: PathBuf::from("/sys/fs/cgroup/soak"),
        ipv4: Ipv4Addr::new(10, 10, 1, last),
        ipv6: None,
        host_ifname: format!("p{last}"),
    }
}

const SERVICES: &str = "services:
  - name: backend
    namespace: shop
    selector: {tier: backend}
    ports: [{name: http, port: 80, targetPort: 8080}]
  - name: backend-v1
    namespace: shop
    selector: {app: v1}
    ports: [{name: http, port: 80, targetPort: 8080}]
  - name: backend-v2
    namespace: shop
    selector: {app: v2}
    ports: [{name: http, port: 80, targetPort: 8080}]
";

fn rendered(desired: &Desired) -> local_config::LocalSnapshot {
    let (cli, srv, typo) = (pod("cli-1", 11), pod("srv-6", 12), pod(TYPO_POD, 13));
    let parts = Parts {
        waypoint_pods: "pods:\n",
        services: SERVICES,
        enrolled: &[&cli, &srv],
        typo: &typo,
    };
    let text = render(&parts, desired);
    local_config::parse(&text, "ambit-system").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn routes(snapshot: &local_config::LocalSnapshot) -> Vec<(String, bool)> {
    let services = |namespace: &str, name: &str| {
        namespace == NAMESPACE && ["backend", "backend-v1", "backend-v2"].contains(&name)
    };
    snapshot
        .routes
        .iter()
        .map(|value| {
            let name = value["metadata"]["name"].as_str().unwrap_or_default();
            let compiled = mesh_core::route::compile(value, &services);
            (name.to_owned(), compiled.is_ok())
        })
        .collect()
}

#[test]
fn the_bad_objects_are_rejected_and_the_rest_accepted() {
    let desired = Desired {
        denies: vec![Deny {
            client: "cli-1".to_owned(),
            target: "srv-6".to_owned(),
        }],
        // Two policy lanes allowing the same pod: one policy.
        allow_all: vec!["srv-6".to_owned(), "srv-6".to_owned()],
        route: RouteVariant::ByPath,
    };
    let snapshot = rendered(&desired);
    assert!(snapshot.rejected.is_empty(), "{:?}", snapshot.rejected);
    let names: Vec<&str> = snapshot.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["cli-1", "srv-6", TYPO_POD]);
    let typo = &snapshot.pods[2];
    assert!(
        matches!(&typo.kernel_path, KernelPath::Rejected(reason) if reason.contains("enabeld")),
        "{:?}",
        typo.kernel_path
    );
    assert_eq!(snapshot.pods[0].kernel_path, KernelPath::Off);

    let policies: Vec<(&str, Action, bool)> = snapshot
        .policies
        .iter()
        .map(|p| (p.key.name.as_str(), p.action, p.rejected.is_some()))
        .collect();
    assert_eq!(
        policies,
        [
            (BAD_POLICY, Action::Allow, true),
            ("deny-cli-1-srv-6", Action::Deny, false),
            ("allow-all-srv-6", Action::Allow, false),
        ]
    );
    assert_eq!(
        routes(&snapshot),
        [
            (BAD_ROUTE.to_owned(), false),
            (CANARY_ROUTE.to_owned(), true)
        ]
    );
}

#[test]
fn every_route_variant_compiles_and_they_take_turns() {
    let mut variant = RouteVariant::default();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let snapshot = rendered(&Desired {
            route: variant,
            ..Desired::default()
        });
        let canary: Vec<_> = routes(&snapshot)
            .into_iter()
            .filter(|(name, _)| name == CANARY_ROUTE)
            .collect();
        assert_eq!(
            canary.len(),
            usize::from(variant != RouteVariant::Absent),
            "{variant:?}"
        );
        assert!(canary.iter().all(|(_, ok)| *ok), "{variant:?}");
        seen.push(variant);
        variant = variant.next();
    }
    assert_eq!(variant, RouteVariant::Absent, "back to the start: {seen:?}");
}
