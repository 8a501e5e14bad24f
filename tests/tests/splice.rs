//! The same-node fast path in the kernel: connections between two pods of
//! one node that policy allows skip both proxies and are spliced socket to
//! socket by `sk_msg`. Real pods, real sockets, the real agent.

use std::time::{Duration, Instant};

use ambit_tests::{
    Pod, Testbed,
    mesh::{Agent, KERNEL_PATH_LABEL, pods_yaml, pods_yaml_labelled},
    testbed_or_skip,
    workload::{ECHO_PORT, WAIT, send, send_with, serve, try_send},
};
use serde_json::Value;

/// 4 MB each way, within the 4 MiB a spliced direction may hand over
/// (`mesh_ebpf_common::SPLICE_DIRECTION_BUDGET`): through TCP on a veth
/// that is well over a hundred segments, spliced it is none.
const BULK: u64 = 4_000_000;

/// More than the budget each way: the rest goes through TCP.
const PAST_BUDGET: u64 = 10_000_000;

/// TCP segments the server's namespace may receive for a spliced bulk
/// exchange: the handshake and the close, with room to spare.
const SPLICED_SEGMENT_LIMIT: u64 = 50;

/// `pod-tool send` over a spliced connection. Its reader thread blocks
/// while its writer thread half-closes; a spliced socket's read then
/// returns a spurious `EAGAIN` (the reason the splice is off by default),
/// so the client reads again until its timeout.
fn spliced_send(tb: &Testbed, client: &Pod, to: &str, bytes: u64) {
    send_with(tb, client, to, bytes, &["--retry-spurious-eagain"]);
}

fn echo_addr(pod: &Pod) -> String {
    format!("{}:{ECHO_PORT}", pod.ipv4)
}

/// `Tcp: InSegs` of a pod's network namespace.
fn tcp_in_segments(tb: &Testbed, pod: &Pod) -> u64 {
    let out = tb.exec_in_netns(&pod.netns, &["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        panic!("no Tcp lines in /proc/net/snmp:\n{text}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "InSegs")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no InSegs in /proc/net/snmp:\n{text}"))
}

fn outbound_record(agent: &Agent, tb: &Testbed, client: &Pod) -> Value {
    let pod = format!("{}/{}", client.namespace, client.name);
    agent.wait_connection(tb, |r| {
        r["direction"] == "outbound" && r["pod"] == pod.as_str()
    })
}

#[test]
fn same_node_connections_are_spliced_in_the_kernel_with_exact_byte_counts() {
    let mut tb = testbed_or_skip!("splice_bulk");
    let n1 = tb.add_node("n1");
    let client = tb.add_pod(&n1, "client", "shop");
    let server = tb.add_pod(&n1, "server", "shop");
    let agent = Agent::start_kernel_path(&tb, &n1, &[&client, &server], &[]);
    let _echo = serve(&tb, &server);

    let segments_before = tcp_in_segments(&tb, &server);
    spliced_send(&tb, &client, &echo_addr(&server), BULK);
    let segments = tcp_in_segments(&tb, &server) - segments_before;

    // The bytes the agent counted are the bytes sent, each way.
    let record = outbound_record(&agent, &tb, &client);
    assert_eq!(record["bytes_sent"], BULK, "{record}");
    assert_eq!(record["bytes_received"], BULK, "{record}");
    assert_eq!(record["security"], "same_node_kernel", "{record}");
    assert_eq!(
        record["authorization"]["enforcement_point"], "same-node-splice",
        "{record}"
    );
    assert_eq!(record["authorization"]["decision"], "allow", "{record}");
    assert_eq!(
        record["dst_identity"], "spiffe://cluster.local/ns/shop/sa/server",
        "{record}"
    );
    let pod = agent.wait_pod_state(&tb, "client", "enrolled", WAIT);
    let outbound = &pod["traffic"]["outbound"];
    assert_eq!(outbound["connections_opened"], 1, "{pod}");
    assert_eq!(outbound["connections_closed"], 1, "{pod}");
    assert_eq!(outbound["bytes_sent"], BULK, "{pod}");
    assert_eq!(outbound["bytes_received"], BULK, "{pod}");

    // It went straight there, past both proxies, and not through TCP.
    assert_eq!(agent.counter(&tb, "connect_direct"), 1);
    assert_eq!(agent.counter(&tb, "connect_redirected"), 0);
    assert_eq!(agent.counter(&tb, "inbound_direct"), 1);
    assert_eq!(agent.counter(&tb, "inbound_steered"), 0);
    assert_eq!(agent.counter(&tb, "sockets_spliced"), 2);
    assert!(agent.counter(&tb, "messages_spliced") > 0);
    let server_pod = agent.wait_pod_state(&tb, "server", "enrolled", WAIT);
    assert_eq!(
        server_pod["traffic"]["inbound"]["connections_opened"], 0,
        "{server_pod}"
    );
    assert!(
        segments < SPLICED_SEGMENT_LIMIT,
        "{segments} TCP segments reached the server for {BULK} bytes each way: the data went through TCP"
    );

    // Past the budget each direction goes on through TCP, in order, and
    // the counts stay exact.
    assert_eq!(agent.counter(&tb, "splice_budget_spent"), 0);
    spliced_send(&tb, &client, &echo_addr(&server), PAST_BUDGET);
    assert_eq!(
        agent.counter(&tb, "splice_budget_spent"),
        2,
        "one per direction"
    );
    let pod = format!("{}/{}", client.namespace, client.name);
    let record = agent.wait_connection(&tb, |r| {
        r["direction"] == "outbound" && r["pod"] == pod.as_str() && r["bytes_sent"] == PAST_BUDGET
    });
    assert_eq!(record["bytes_received"], PAST_BUDGET, "{record}");

    if let Some(v6) = server.ipv6 {
        spliced_send(&tb, &client, &format!("[{v6}]:{ECHO_PORT}"), 100_000);
        assert_eq!(
            agent.counter(&tb, "connect_direct"),
            3,
            "IPv6 goes direct too"
        );
        assert_eq!(
            agent.counter(&tb, "sockets_spliced"),
            6,
            "IPv6 is spliced too"
        );
    }
}

#[test]
fn a_connection_policy_denies_is_never_spliced() {
    let mut tb = testbed_or_skip!("splice_denied");
    let n1 = tb.add_node("n1");
    let client = tb.add_pod(&n1, "client", "shop");
    let friend = tb.add_pod(&n1, "friend", "shop");
    let server = tb.add_pod(&n1, "server", "shop");
    let pods = [&client, &friend, &server];
    let yaml = format!(
        "{}policies:
  - metadata: {{name: no-client, namespace: shop}}
    spec:
      selector: {{matchLabels: {{app: server}}}}
      action: DENY
      rules: [{{from: [{{source: {{principals: ['*/sa/client']}}}}]}}]
",
        pods_yaml_labelled(&pods, Some(KERNEL_PATH_LABEL))
    );
    let agent = Agent::spawn(&tb, &n1, &yaml, &[]);
    agent.wait_ready(&tb);
    for pod in pods {
        agent.wait_pod_state(&tb, &pod.name, "enrolled", WAIT);
    }
    let _echo = serve(&tb, &server);

    let started = Instant::now();
    let (ok, sent, report) = try_send(&tb, &client, &echo_addr(&server), 1000);
    assert!(!ok, "policy denies client -> server: {sent}\n{report}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a denial must not hang"
    );
    // It went to the agent, which refused it; nothing was spliced past the
    // agent. Only the client's leg to the agent (a pod on the kernel path)
    // was: the application and the agent's outbound listener.
    assert_eq!(agent.counter(&tb, "connect_direct"), 0);
    assert_eq!(agent.counter(&tb, "connect_redirected"), 1);
    assert_eq!(agent.counter(&tb, "pod_leg_sockets"), 2);
    assert_eq!(agent.counter(&tb, "sockets_spliced"), 2);
    let record = outbound_record(&agent, &tb, &client);
    assert_eq!(record["authorization"]["decision"], "deny", "{record}");
    assert_eq!(
        record["authorization"]["policy"], "shop/no-client",
        "{record}"
    );
    assert_eq!(
        record["authorization"]["enforcement_point"], "same-node-outbound",
        "{record}"
    );

    // A pod the policy does not name is spliced as usual.
    spliced_send(&tb, &friend, &echo_addr(&server), 1000);
    assert_eq!(agent.counter(&tb, "connect_direct"), 1);
    assert_eq!(agent.counter(&tb, "sockets_spliced"), 4);
}

#[test]
fn without_the_kernel_path_same_node_traffic_goes_through_the_agent() {
    let mut tb = testbed_or_skip!("splice_off");
    let n1 = tb.add_node("n1");
    let client = tb.add_pod(&n1, "client", "shop");
    let server = tb.add_pod(&n1, "server", "shop");
    // Off unless both pods ask: here only the server does.
    let yaml = format!(
        "{}{}",
        pods_yaml(&[&client]),
        pods_yaml_labelled(&[&server], Some(KERNEL_PATH_LABEL)).trim_start_matches("pods:\n")
    );
    let agent = Agent::start_with_config(&tb, &n1, &yaml, &[&client, &server], &[]);
    let pod = agent.wait_pod_state(&tb, "client", "enrolled", WAIT);
    assert_eq!(pod["kernel_path"], "off", "{pod}");
    let pod = agent.wait_pod_state(&tb, "server", "enrolled", WAIT);
    assert_eq!(pod["kernel_path"], "on", "{pod}");
    let _echo = serve(&tb, &server);

    send(&tb, &client, &echo_addr(&server), 1_000_000);
    let record = outbound_record(&agent, &tb, &client);
    assert_eq!(record["bytes_sent"], 1_000_000, "{record}");
    assert_eq!(record["bytes_received"], 1_000_000, "{record}");
    assert_eq!(
        record["authorization"]["enforcement_point"], "same-node-outbound",
        "{record}"
    );
    assert_eq!(agent.counter(&tb, "connect_direct"), 0);
    assert_eq!(agent.counter(&tb, "connect_redirected"), 1);
    assert_eq!(agent.counter(&tb, "sockets_spliced"), 0);
}
