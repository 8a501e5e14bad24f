//! End to end: an enrolled pod's TCP traffic is captured by eBPF into the
//! node agents on both ends and delivered to its real destination, through
//! real sockets in network namespaces.

use std::{process::Command, time::Duration};

use ambit_tests::{Pod, Proc, Testbed, mesh::Agent, testbed_or_skip};
use serde_json::Value;

const PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(30);
const HUNDRED_MB: u64 = 100 * 1000 * 1000;

fn pod_tool(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pod-tool"));
    cmd.args(args);
    cmd
}

fn serve(tb: &Testbed, pod: &Pod) -> Proc {
    let mut listen = format!("0.0.0.0:{PORT}");
    if tb.ipv6_available() {
        listen.push_str(&format!(",[::]:{PORT}"));
    }
    let server = tb.spawn_in_pod(pod, pod_tool(&["serve", "--listen", &listen]));
    server.wait_for_event("listening", WAIT);
    server
}

/// Sends `bytes` from `client` to `to` and returns pod-tool's report, after
/// checking that every byte came back.
fn send(tb: &Testbed, client: &Pod, to: &str, bytes: u64) -> Value {
    let sender = tb.spawn_in_pod(
        client,
        pod_tool(&["send", "--to", to, "--bytes", &bytes.to_string()]),
    );
    let (status, lines) = sender.output_json_lines(Duration::from_secs(120));
    let sent = lines.into_iter().find(|l| l["event"] == "sent");
    let sent = sent.unwrap_or_else(|| panic!("no report from send to {to}\n{}", sender.report()));
    assert!(
        status.success(),
        "send to {to} failed: {sent}\n{}",
        sender.report()
    );
    assert_eq!(sent["echo_ok"], true, "{sent}");
    assert_eq!(sent["bytes_sent"], bytes, "{sent}");
    assert_eq!(sent["bytes_received"], bytes, "{sent}");
    sent
}

fn ip_of(addr: &str) -> &str {
    addr.rsplit_once(':')
        .map_or(addr, |(ip, _)| ip)
        .trim_matches(['[', ']'])
}

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
    let n1 = tb.add_node("n1");
    let n2 = tb.add_node("n2");
    let client = tb.add_pod(&n1, "client", "shop");
    let server = tb.add_pod(&n2, "server", "shop");
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
    // The server sees the client pod's own address.
    let conn = echo.wait_for_json(WAIT, |l| {
        l["event"] == "conn" && ip_of(l["peer"].as_str().unwrap_or("")) == client.ipv4.to_string()
    });
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
