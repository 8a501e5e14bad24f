//! End to end: an enrolled pod's TCP traffic is captured by eBPF into the
//! node agents on both ends and delivered to its real destination, through
//! real sockets in network namespaces.

use std::time::Duration;

use ambit_tests::{
    Testbed,
    mesh::Agent,
    testbed_or_skip,
    workload::{
        ClientServer, ECHO_PORT as PORT, WAIT, client_and_server, ip_of, send, serve,
        wait_conn_from,
    },
};
use serde_json::Value;

const HUNDRED_MB: u64 = 100 * 1000 * 1000;

fn traffic(agent: &Agent, tb: &Testbed, pod: &str, direction: &str) -> Value {
    let entry = agent.wait_pod_state(tb, pod, "enrolled", WAIT);
    entry["traffic"][direction].clone()
}

/// Waits until the agent has counted `closed` finished connections for a pod.
fn wait_closed(agent: &Agent, tb: &Testbed, pod: &str, direction: &str, closed: u64) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let t = traffic(agent, tb, pod, direction);
        if t["connections_closed"].as_u64() >= Some(closed) {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pod} {direction}: {t}\n{}",
            agent.proc.report()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cross_node_connection_is_captured_by_both_agents() {
    let mut tb = testbed_or_skip!("cross_node_capture");
    let ClientServer {
        n1,
        n2,
        client,
        server,
    } = client_and_server(&mut tb);
    let agent1 = Agent::start(&tb, &n1, &[&client], &[]);
    let agent2 = Agent::start(&tb, &n2, &[&server], &[]);
    let echo = serve(&tb, &server);

    let to = format!("{}:{PORT}", server.ipv4);
    let sent = send(&tb, &client, &to, HUNDRED_MB);

    // The application sees its real peer, not the agent's listener.
    assert_eq!(
        sent["peer"],
        to.as_str(),
        "getpeername must show the real server: {sent}"
    );
    // ...and its own address is the pod's, not loopback.
    assert_eq!(
        ip_of(sent["local"].as_str().unwrap_or("")),
        client.ipv4.to_string(),
        "getsockname must show the pod's address: {sent}"
    );
    // The server sees the client pod's own address.
    let conn = wait_conn_from(&echo, &client.ipv4.to_string());
    assert_eq!(conn["bytes_in"], HUNDRED_MB, "{conn}");
    assert_eq!(conn["bytes_out"], HUNDRED_MB, "{conn}");
    assert_eq!(conn["local"], to.as_str(), "{conn}");

    // Both agents carried it, and counted every byte both ways.
    let out = wait_closed(&agent1, &tb, "client", "outbound", 1);
    assert_eq!(out["connections_opened"], 1, "{out}");
    assert_eq!(out["connections_failed"], 0, "{out}");
    assert_eq!(out["bytes_sent"], HUNDRED_MB, "{out}");
    assert_eq!(out["bytes_received"], HUNDRED_MB, "{out}");
    let inb = wait_closed(&agent2, &tb, "server", "inbound", 1);
    assert_eq!(inb["connections_opened"], 1, "{inb}");
    assert_eq!(inb["bytes_sent"], HUNDRED_MB, "{inb}");
    assert_eq!(inb["bytes_received"], HUNDRED_MB, "{inb}");

    // eBPF saw exactly one application connect; the agent's own upstream
    // connect carried the mesh mark and was not captured again (no loop).
    assert_eq!(agent1.counter(&tb, "connect_redirected"), 1);
    assert_eq!(agent1.counter(&tb, "tuple_recorded"), 1);
    assert!(agent1.counter(&tb, "connect_skipped_mesh_mark") >= 1);
    assert!(agent1.counter(&tb, "getpeername_translated") >= 1);
    assert_eq!(agent2.counter(&tb, "inbound_steered"), 1);
    // The server pod made no outbound connection of its own.
    assert_eq!(
        traffic(&agent2, &tb, "server", "outbound")["connections_opened"],
        0
    );
}

#[test]
fn pod_that_is_not_enrolled_is_untouched() {
    let mut tb = testbed_or_skip!("unenrolled_untouched");
    let n1 = tb.add_node("n1");
    let n2 = tb.add_node("n2");
    let meshed = tb.add_pod(&n1, "meshed", "shop");
    let legacy = tb.add_pod(&n1, "legacy", "legacy");
    let server = tb.add_pod(&n2, "server", "shop");
    // Only `meshed` is enrolled, but `legacy` runs under the same cgroup root
    // the programs are attached to.
    let agent = Agent::start(&tb, &n1, &[&meshed], &[]);
    let echo = serve(&tb, &server);

    send(&tb, &legacy, &format!("{}:{PORT}", server.ipv4), 1_000_000);
    wait_conn_from(&echo, &legacy.ipv4.to_string());

    assert_eq!(
        agent.counter(&tb, "connect_redirected"),
        0,
        "a connection of a pod that is not enrolled was redirected"
    );
    assert!(
        agent.counter(&tb, "connect_skipped_not_enrolled") >= 1,
        "the connect hook never saw the legacy pod"
    );
    assert!(
        agent.pod(&tb, "legacy").is_none(),
        "the agent must not know the legacy pod"
    );
    let meshed_out = traffic(&agent, &tb, "meshed", "outbound");
    assert_eq!(meshed_out["connections_opened"], 0, "{meshed_out}");
}

#[test]
fn application_cannot_bind_mesh_ports() {
    let mut tb = testbed_or_skip!("bind_mesh_ports");
    let n1 = tb.add_node("n1");
    let meshed = tb.add_pod(&n1, "meshed", "shop");
    let legacy = tb.add_pod(&n1, "legacy", "legacy");
    let agent = Agent::start(&tb, &n1, &[&meshed], &[]);

    let try_bind = |pod, addr: &str| -> serde_json::Value {
        let out = tb.run_in_pod(
            pod,
            ambit_tests::workload::pod_tool(&["try-bind", "--addr", addr]),
        );
        let line = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(line.lines().next().unwrap_or("null"))
            .unwrap_or(serde_json::Value::Null)
    };
    // 15001 and 15006 are also held by the agent; EPERM (not EADDRINUSE)
    // proves the bind hook refused before the port was even looked at.
    for addr in ["0.0.0.0:15001", "0.0.0.0:15006", "0.0.0.0:15008"] {
        let result = try_bind(&meshed, addr);
        assert_eq!(result["ok"], false, "{addr}: {result}");
        assert_eq!(result["errno"], libc::EPERM, "{addr}: {result}");
    }
    let result = try_bind(&meshed, "0.0.0.0:8081");
    assert_eq!(result["ok"], true, "other ports stay free: {result}");
    let result = try_bind(&legacy, "0.0.0.0:15008");
    assert_eq!(
        result["ok"], true,
        "pods outside the mesh may use any port: {result}"
    );
    assert_eq!(agent.counter(&tb, "bind_denied"), 3);
}

#[test]
fn ipv6_connection_is_captured() {
    let mut tb = testbed_or_skip!("ipv6_capture");
    if !tb.ipv6_available() {
        ambit_tests::Skip::new(
            "IPv6 is disabled on this machine (/proc/sys/net/ipv6 is missing or AMBIT_TEST_IPV6=0)",
        )
        .report("ipv6_connection_is_captured");
        return;
    }
    let ClientServer {
        n1,
        n2,
        client,
        server,
    } = client_and_server(&mut tb);
    let agent1 = Agent::start(&tb, &n1, &[&client], &[]);
    let agent2 = Agent::start(&tb, &n2, &[&server], &[]);
    let echo = serve(&tb, &server);

    let server_v6 = server.ipv6.expect("IPv6 is available");
    let client_v6 = client.ipv6.expect("IPv6 is available");
    let to = format!("[{server_v6}]:{PORT}");
    let sent = send(&tb, &client, &to, 10_000_000);
    assert_eq!(
        sent["peer"],
        to.as_str(),
        "getpeername6 must show the real server: {sent}"
    );
    assert_eq!(
        ip_of(sent["local"].as_str().unwrap_or("")),
        client_v6.to_string(),
        "getsockname must show the pod's address: {sent}"
    );
    let conn = wait_conn_from(&echo, &client_v6.to_string());
    assert_eq!(conn["bytes_in"], 10_000_000, "{conn}");

    let out = wait_closed(&agent1, &tb, "client", "outbound", 1);
    assert_eq!(out["bytes_sent"], 10_000_000, "{out}");
    let inb = wait_closed(&agent2, &tb, "server", "inbound", 1);
    assert_eq!(inb["bytes_received"], 10_000_000, "{inb}");
    assert_eq!(agent1.counter(&tb, "connect_redirected"), 1);
    assert_eq!(agent2.counter(&tb, "inbound_steered"), 1);
}

#[test]
fn third_party_proxy_reads_original_dst_with_getsockopt() {
    let mut tb = testbed_or_skip!("so_original_dst");
    if !tb.ipv6_available() {
        eprintln!(
            "SKIPPED: third_party_proxy_reads_original_dst_with_getsockopt: needs IPv6 (the pod is enrolled by its IPv6 address so that 127.0.0.1:15001 is free for the third-party proxy)"
        );
        return;
    }
    let n1 = tb.add_node("n1");
    let n2 = tb.add_node("n2");
    let proxied = tb.add_pod(&n1, "proxied", "shop");
    let server = tb.add_pod(&n2, "server", "shop");
    // Enroll the pod by its IPv6 address only: the agent then listens on
    // [::1]:15001 and leaves 127.0.0.1:15001 to a proxy of the pod's own,
    // the way a pod might run its own iptables-style proxy.
    let v6 = proxied.ipv6.expect("IPv6 is available");
    let yaml =
        ambit_tests::mesh::pods_yaml(&[&proxied]).replace(&format!("{}, ", proxied.ipv4), "");
    assert!(
        yaml.contains(&v6.to_string()) && !yaml.contains(&proxied.ipv4.to_string()),
        "{yaml}"
    );
    let agent = Agent::spawn(&tb, &n1, &yaml, &[]);
    agent.wait_ready(&tb);
    agent.wait_pod_state(&tb, "proxied", "enrolled", WAIT);

    let proxy = tb.spawn_in_pod(
        &proxied,
        ambit_tests::workload::pod_tool(&[
            "original-dst-proxy",
            "--listen",
            "127.0.0.1:15001",
            "--mark",
            "0x539",
        ]),
    );
    proxy.wait_for_event("listening", WAIT);
    let to = format!("{}:{PORT}", server.ipv4);
    let _ = ambit_tests::workload::try_send(&tb, &proxied, &to, 10);
    let answer = proxy.wait_for_event("original_dst", WAIT);
    assert_eq!(
        answer["original_dst"],
        to.as_str(),
        "SO_ORIGINAL_DST must name the real destination: {answer}"
    );
    assert_eq!(agent.counter(&tb, "original_dst_answered"), 1);
}
