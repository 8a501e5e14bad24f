use std::net::SocketAddr;

use mesh_core::policy::Decision;
use prometheus_client::metrics::family::Family;

use super::*;
use crate::{
    flow::{Authorization, EnforcementPoint},
    metrics::Metrics,
};

/// Two nodes: `client` and `peer` on n1 (this agent's), `server` on n2;
/// one service selects the server.
const CONFIG: &str = "
pods:
  - {name: client-1, namespace: shop, serviceAccount: client, ips: [10.0.1.1], netns: /x, node: n1, labels: {app: client}}
  - {name: peer, namespace: shop, serviceAccount: peer, ips: [10.0.1.2], netns: /x, node: n1}
  - {name: server-1, namespace: shop, serviceAccount: server, ips: [10.0.2.1], node: n2, labels: {app: server}}
services:
  - {name: server, namespace: shop, selector: {app: server}, ports: [{port: 80}]}
";

const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const PEER_ID: &str = "spiffe://cluster.local/ns/shop/sa/peer";
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/server";

fn index() -> WorkloadIndex {
    let snapshot =
        mesh_core::local_config::parse(CONFIG, mesh_core::policy::DEFAULT_ROOT_NAMESPACE).unwrap();
    WorkloadIndex::build(
        &snapshot,
        &WorkloadIndex::default(),
        "n1",
        "cluster.local",
        "cluster.local",
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn flow(
    direction: Direction,
    src: &str,
    dst: &str,
    ids: (Option<&str>, Option<&str>),
    security: Security,
) -> Flow {
    Flow {
        direction,
        pod: "shop/x".to_owned(),
        src: addr(src),
        dst: addr(dst),
        src_identity: ids.0.map(str::to_owned),
        dst_identity: ids.1.map(str::to_owned),
        security,
        authorization: None,
    }
}

/// The labels as (name, value) pairs, for readable assertions.
fn pairs(labels: &TcpLabels) -> Vec<(String, String)> {
    let mut text = String::new();
    let family = Family::<TcpLabels, Counter>::default();
    family.get_or_create(labels).inc();
    let mut registry = Registry::default();
    registry.register("t", "t", family);
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let line = text.lines().find(|l| l.starts_with("t_total{")).unwrap();
    let inner = &line["t_total{".len()..line.rfind('}').unwrap()];
    inner
        .split("\",")
        .map(|kv| {
            let (k, v) = kv.split_once("=\"").unwrap();
            (k.to_owned(), v.trim_end_matches('"').to_owned())
        })
        .collect()
}

fn value<'a>(pairs: &'a [(String, String)], key: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map_or_else(|| panic!("no label {key}"), |(_, v)| v.as_str())
}

#[test]
fn outbound_over_hbone_is_reported_by_the_source_with_both_ends_named() {
    let index = index();
    let flow = flow(
        Direction::Outbound,
        "10.0.1.1:40000",
        "10.0.2.1:80",
        (Some(CLIENT_ID), Some(SERVER_ID)),
        Security::MutualTls,
    );
    let got = pairs(&labels(&flow, &index, ResponseFlags::None));
    let expected = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("source_workload_namespace", "shop"),
        ("source_principal", CLIENT_ID),
        ("destination_workload", "server"),
        ("destination_workload_namespace", "shop"),
        ("destination_principal", SERVER_ID),
        ("destination_service", "server.shop.svc.cluster.local"),
        ("connection_security_policy", "mutual_tls"),
        ("response_flags", "-"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(got, expected, "Istio's labels, in Istio's order");
}

#[test]
fn inbound_names_the_source_only_as_far_as_it_proved_itself() {
    let index = index();
    // Over HBONE, from the pod whose identity the certificate proved.
    let proved = flow(
        Direction::Inbound,
        "10.0.1.1:40000",
        "10.0.2.1:80",
        (Some(CLIENT_ID), Some(SERVER_ID)),
        Security::MutualTls,
    );
    let got = pairs(&labels(&proved, &index, ResponseFlags::None));
    assert_eq!(value(&got, "reporter"), "destination");
    assert_eq!(value(&got, "source_workload"), "client");
    // An identity that is not the address's pod's: the workload is not
    // named, the namespace comes from the identity.
    let other = flow(
        Direction::Inbound,
        "10.0.1.1:40000",
        "10.0.2.1:80",
        (
            Some("spiffe://cluster.local/ns/ops/sa/robot"),
            Some(SERVER_ID),
        ),
        Security::MutualTls,
    );
    let got = pairs(&labels(&other, &index, ResponseFlags::None));
    assert_eq!(value(&got, "source_workload"), UNKNOWN);
    assert_eq!(value(&got, "source_workload_namespace"), "ops");
    assert_eq!(
        value(&got, "source_principal"),
        "spiffe://cluster.local/ns/ops/sa/robot"
    );
    // Plaintext from outside the mesh: nothing is known of the source.
    let outsider = flow(
        Direction::Inbound,
        "10.0.9.9:40000",
        "10.0.2.1:80",
        (None, Some(SERVER_ID)),
        Security::Plaintext,
    );
    let got = pairs(&labels(&outsider, &index, ResponseFlags::Deny));
    for key in [
        "source_workload",
        "source_workload_namespace",
        "source_principal",
    ] {
        assert_eq!(value(&got, key), UNKNOWN, "{key}");
    }
    assert_eq!(value(&got, "connection_security_policy"), "unknown");
    assert_eq!(value(&got, "response_flags"), "DENY");
    assert_eq!(
        value(&got, "destination_service"),
        "server.shop.svc.cluster.local"
    );
}

#[test]
fn outbound_outside_the_mesh_knows_only_its_source() {
    let flow = flow(
        Direction::Outbound,
        "10.0.1.2:40000",
        "192.0.2.7:443",
        (Some(PEER_ID), None),
        Security::Plaintext,
    );
    let got = pairs(&labels(&flow, &index(), ResponseFlags::UpstreamFailure));
    assert_eq!(
        value(&got, "source_workload"),
        "peer",
        "no app label: the pod name"
    );
    for key in [
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "destination_service",
    ] {
        assert_eq!(value(&got, key), UNKNOWN, "{key}");
    }
    assert_eq!(value(&got, "response_flags"), "UF");
}

#[test]
fn same_node_connections_are_reported_by_both_ends_and_counted_in_istio_sense() {
    let metrics = Metrics::default();
    let index = index();
    let same_node = flow(
        Direction::Outbound,
        "10.0.1.1:40000",
        "10.0.1.2:80",
        (Some(CLIENT_ID), Some(PEER_ID)),
        Security::SameNode,
    );
    let open = metrics.tcp.opened(&same_node, &index);
    metrics
        .tcp
        .closed(&same_node, &index, ResponseFlags::None, 1000, 20);
    drop(open);
    let refused = flow(
        Direction::Inbound,
        "10.0.9.9:40000",
        "10.0.1.2:80",
        (None, Some(PEER_ID)),
        Security::Plaintext,
    );
    metrics.tcp.refused(&refused, &index, ResponseFlags::Deny);
    let text = metrics.encode().unwrap();
    let sample = |name: &str, reporter: &str, flags: &str| -> Option<u64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| l.contains(&format!("reporter=\"{reporter}\"")))
            .find(|l| l.contains(&format!("response_flags=\"{flags}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    for reporter in ["source", "destination"] {
        assert_eq!(
            sample("istio_tcp_connections_opened_total", reporter, "-"),
            Some(1)
        );
        assert_eq!(
            sample("istio_tcp_connections_closed_total", reporter, "-"),
            Some(1)
        );
        assert_eq!(
            sample("istio_tcp_received_bytes_total", reporter, "-"),
            Some(1000),
            "received: from the source to the destination"
        );
        assert_eq!(
            sample("istio_tcp_sent_bytes_total", reporter, "-"),
            Some(20),
            "sent: from the destination back"
        );
    }
    // A refusal is opened and closed at once, with no bytes, reported once.
    assert_eq!(
        sample("istio_tcp_connections_opened_total", "destination", "DENY"),
        Some(1)
    );
    assert_eq!(
        sample("istio_tcp_connections_closed_total", "destination", "DENY"),
        Some(1)
    );
    assert_eq!(
        sample("istio_tcp_received_bytes_total", "destination", "DENY"),
        Some(0)
    );
    assert_eq!(
        sample("istio_tcp_connections_opened_total", "source", "DENY"),
        None
    );
}

#[test]
fn flags_come_from_what_went_wrong() {
    let hbone = addr("10.0.2.1:15008");
    let refused = |status| {
        std::io::Error::other(HboneError::Refused {
            addr: hbone,
            authority: addr("10.0.2.1:80"),
            status,
        })
    };
    let end = |error| ResponseFlags::of_end(&RelayEnd::Failed(error));
    assert_eq!(
        end(refused(http::StatusCode::FORBIDDEN)),
        ResponseFlags::Deny
    );
    assert_eq!(
        end(refused(http::StatusCode::SERVICE_UNAVAILABLE)),
        ResponseFlags::UpstreamFailure
    );
    assert_eq!(
        end(std::io::ErrorKind::ConnectionReset.into()),
        ResponseFlags::Io
    );
    assert_eq!(ResponseFlags::of_end(&RelayEnd::Done), ResponseFlags::None);
    let revoked = Authorization {
        decision: Decision::Deny,
        policy: "shop/deny".to_owned(),
        reason: "denied".to_owned(),
        enforced_by: "n1".to_owned(),
        enforcement_point: EnforcementPoint::HboneInbound,
        audited: Vec::new(),
    };
    assert_eq!(
        ResponseFlags::of_end(&RelayEnd::Revoked(revoked)),
        ResponseFlags::Deny
    );

    let dst = addr("10.0.2.1:80");
    let connect = ProxyError::Connect {
        dst,
        source: std::io::ErrorKind::ConnectionRefused.into(),
    };
    assert_eq!(
        ResponseFlags::of_error(&connect),
        ResponseFlags::UpstreamFailure
    );
    assert_eq!(
        ResponseFlags::of_error(&ProxyError::ConnectTimeout(dst)),
        ResponseFlags::UpstreamTimeout
    );
    assert_eq!(
        ResponseFlags::of_error(&ProxyError::Hbone(HboneError::Timeout(hbone))),
        ResponseFlags::UpstreamTimeout
    );
    // Streams that waited for a shared handshake get its error, and the
    // same flag.
    let shared = HboneError::Shared(std::sync::Arc::new(HboneError::Timeout(hbone)));
    assert_eq!(
        ResponseFlags::of_error(&ProxyError::Hbone(shared)),
        ResponseFlags::UpstreamTimeout
    );
    let strict = ProxyError::StrictMtls {
        pod: mesh_core::workload::PodKey {
            namespace: "shop".to_owned(),
            name: "server".to_owned(),
        },
        port: 8080,
        client: addr("10.0.9.9:1"),
    };
    assert_eq!(ResponseFlags::of_error(&strict), ResponseFlags::Deny);
    let values: Vec<&str> = [
        ResponseFlags::None,
        ResponseFlags::Deny,
        ResponseFlags::UpstreamFailure,
        ResponseFlags::UpstreamTimeout,
        ResponseFlags::Io,
    ]
    .iter()
    .map(|f| f.as_str())
    .collect();
    assert_eq!(
        values,
        ["-", "DENY", "UF", "UT", "IO"],
        "the documented set"
    );
}

/// The samples of `name` in `text`, as (labels, value) lines.
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .collect()
}

#[test]
fn an_open_connection_keeps_its_series_however_long_it_is_idle_and_they_go_together_after_it_closes()
 {
    let metrics = Metrics::default();
    let index = index();
    let long = flow(
        Direction::Outbound,
        "10.0.1.1:40000",
        "10.0.2.1:80",
        (Some(CLIENT_ID), Some(SERVER_ID)),
        Security::MutualTls,
    );
    let short = flow(
        Direction::Outbound,
        "10.0.1.2:40000",
        "10.0.2.1:80",
        (Some(PEER_ID), Some(SERVER_ID)),
        Security::MutualTls,
    );
    let open = metrics.tcp.opened(&long, &index);
    drop(metrics.tcp.opened(&short, &index));
    metrics
        .tcp
        .closed(&short, &index, ResponseFlags::Io, 10, 10);
    let retain = std::time::Duration::from_millis(30);
    std::thread::sleep(retain * 2);
    assert_eq!(
        metrics.evict_idle(retain),
        1,
        "the closed connection's label set"
    );
    let text = metrics.encode().unwrap();
    let opened = samples(&text, "istio_tcp_connections_opened_total");
    assert_eq!(opened.len(), 1, "{text}");
    assert!(
        opened[0].contains(CLIENT_ID) && opened[0].ends_with(" 1"),
        "{text}"
    );
    assert!(
        !text.contains(PEER_ID),
        "every flag of the idle label set went: {text}"
    );

    // It closes after a long idle: its close is counted in the series it
    // opened in, so opened - closed is 0, not -1.
    metrics.tcp.closed(&long, &index, ResponseFlags::None, 5, 7);
    drop(open);
    let text = metrics.encode().unwrap();
    let value = |name: &str| -> Vec<&str> {
        samples(&text, name)
            .into_iter()
            .filter(|line| line.contains(CLIENT_ID))
            .collect()
    };
    assert_eq!(
        value("istio_tcp_connections_opened_total").len(),
        1,
        "{text}"
    );
    assert!(
        value("istio_tcp_connections_opened_total")[0].ends_with(" 1"),
        "{text}"
    );
    assert!(
        value("istio_tcp_connections_closed_total")[0].ends_with(" 1"),
        "{text}"
    );
    assert!(
        value("istio_tcp_received_bytes_total")[0].ends_with(" 5"),
        "{text}"
    );

    // And once idle with nothing holding it, it goes too.
    assert_eq!(metrics.evict_idle(retain), 0, "it just changed");
    std::thread::sleep(retain * 2);
    assert_eq!(metrics.evict_idle(retain), 1);
    assert!(
        samples(
            &metrics.encode().unwrap(),
            "istio_tcp_connections_opened_total"
        )
        .is_empty()
    );
}

#[test]
fn a_decision_naming_a_policy_goes_once_idle() {
    let metrics = Metrics::default();
    let labels = |policy: &str| crate::metrics::AuthorizationLabels {
        reporter: "destination",
        decision: "deny",
        policy: policy.to_owned(),
        enforcement_point: "hbone-inbound",
        destination_workload_namespace: "shop".to_owned(),
    };
    metrics
        .authorization_decisions
        .touch(&labels("shop/deleted"))
        .inc();
    metrics
        .authorization_revocations
        .touch(&labels("shop/deleted"))
        .inc();
    let retain = std::time::Duration::from_millis(30);
    std::thread::sleep(retain * 2);
    metrics
        .authorization_decisions
        .touch(&labels("shop/live"))
        .inc();
    assert_eq!(metrics.evict_idle(retain), 2);
    let text = metrics.encode().unwrap();
    assert!(
        text.contains("shop/live") && !text.contains("shop/deleted"),
        "{text}"
    );
}

#[test]
fn every_flag_has_its_own_place_in_a_label_sets_series() {
    for (place, flags) in ResponseFlags::ALL.into_iter().enumerate() {
        assert_eq!(flags.index(), place, "{flags:?}");
    }
}
