use std::net::{IpAddr, Ipv4Addr};

use mesh_core::identity::{DEFAULT_TRUST_DOMAIN, SpiffeId};
use mesh_core::policy::{Decision, Request, Verdict};

use super::*;

fn corpus() -> policies::Corpus {
    policies::generate(&policies::BenchPods {
        namespace: "bench",
        server_app: "server",
        client_account: "client",
        server_ports: &[RR_1B_PORT, RR_1K_PORT],
    })
}

fn verdict(
    compiled: &evaluate::Compiled,
    (namespace, account): (&str, &str),
    source_ip: [u8; 4],
    port: u16,
) -> Verdict {
    let labels = BTreeMap::from([("app".to_owned(), "server".to_owned())]);
    let peer = SpiffeId::new(DEFAULT_TRUST_DOMAIN, namespace, account).expect("valid id");
    let request = Request::new(Some(&peer), IpAddr::V4(Ipv4Addr::from(source_ip)), port);
    compiled.set.evaluate(
        Workload {
            namespace: "bench",
            labels: &labels,
        },
        &request,
    )
}

#[test]
fn every_generated_policy_is_accepted_as_written() {
    let corpus = corpus();
    let expected = policies::NAMESPACES * policies::PER_NAMESPACE + policies::MESH_WIDE;
    assert_eq!(corpus.count, expected);
    let compiled = evaluate::compile(&corpus).expect("compiles");
    assert_eq!(compiled.set.policies().len(), expected);
    // As the agent reads it: after the pods, under `policies:`.
    let config = format!("pods: []\npolicies:\n{}", corpus.yaml);
    let snapshot =
        mesh_core::local_config::parse(&config, mesh_core::policy::DEFAULT_ROOT_NAMESPACE)
            .expect("parses");
    assert_eq!(snapshot.policies.len(), expected);
    assert!(snapshot.policies.iter().all(|p| p.rejected.is_none()));
}

#[test]
fn the_bench_client_is_allowed_to_the_server_by_one_policy() {
    let corpus = corpus();
    assert_eq!(corpus.server_allow, "bench/allow-server-from-client");
    let compiled = evaluate::compile(&corpus).expect("compiles");
    let labels = BTreeMap::from([("app".to_owned(), "server".to_owned())]);
    let server = Workload {
        namespace: "bench",
        labels: &labels,
    };
    // Three mesh-wide, one namespace-wide, three for the server's app.
    assert_eq!(compiled.set.applicable(server).count(), 7);
    let client = ("bench", "client");
    let allowed = verdict(&compiled, client, [10, 10, 1, 11], RR_1B_PORT);
    assert_eq!(allowed.decision, Decision::Allow, "{allowed:?}");
    assert_eq!(allowed.policy, corpus.server_allow);
    assert!(allowed.audited.is_empty(), "{allowed:?}");
    let other_port = verdict(&compiled, client, [10, 10, 1, 11], 7003);
    assert_eq!(other_port.decision, Decision::Deny);
    let banned = verdict(&compiled, ("bench", "banned"), [10, 10, 1, 11], RR_1B_PORT);
    assert_eq!(banned.policy, "bench/deny-banned");
    let blocked = verdict(&compiled, client, [100, 64, 0, 7], RR_1B_PORT);
    assert_eq!(blocked.policy, "bench/deny-server-blocked-range");
}

#[test]
fn the_cases_mix_verdicts_and_look_at_a_few_policies_each() {
    let corpus = corpus();
    let compiled = evaluate::compile(&corpus).expect("compiles");
    let cases = evaluate::cases(&corpus.tenants).expect("valid cases");
    let figures = evaluate::measure(&compiled, &cases, Duration::from_millis(10));
    assert_eq!(figures.cases, 256);
    assert!(
        figures.allowed_cases > 256 / 10 && figures.allowed_cases < 256 * 9 / 10,
        "{figures:?}"
    );
    assert!(figures.applicable_mean > 4.0, "{figures:?}");
    assert!(figures.applicable_max <= 8, "{figures:?}");
    assert!(figures.evaluations >= 256, "{figures:?}");
    assert!(figures.evaluations_per_sec > 0.0, "{figures:?}");
}
