//! Enforcement never lapses: whatever happens to the node agent (SIGKILL,
//! SIGTERM, its cgroup deleted), an enrolled pod's traffic is carried by an
//! agent or refused, never delivered around the mesh. The pinned eBPF state
//! outlives the agent and is what refuses.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use ambit_tests::{
    Node, Pod, Proc, Testbed,
    mesh::{Agent, pods_yaml},
    testbed_or_skip,
    workload::{ECHO_PORT, WAIT, ip_of, ping, send, serve, wait_conn_from},
};

/// Bytes that mark this test's plaintext on the wire.
const MARKER: &str = "AMBIT-FAIL-CLOSED-MARKER";

/// How the agent goes away.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// `kill -9`.
    Kill,
    /// SIGTERM with the default settings: a graceful stop.
    Terminate,
    /// Every process of its cgroup killed (`cgroup.kill`) and the cgroup
    /// removed, as when the kubelet deletes the pod.
    DeleteCgroup,
}

/// The bed: `legacy` on n1 outside the mesh; on n2 a strict `server`, a
/// permissive `open` that a DENY policy closes to `legacy`, and `client`
/// (enrolled) whose outbound traffic goes through n2's agent.
struct Bed {
    n2: Node,
    legacy: Pod,
    server: Pod,
    open: Pod,
    client: Pod,
    config: String,
}

fn bed(tb: &mut Testbed) -> Bed {
    let n1 = tb.add_node("n1");
    let n2 = tb.add_node("n2");
    let legacy = tb.add_pod(&n1, "legacy", "legacy");
    let server = tb.add_pod(&n2, "server", "shop");
    let open = tb.add_pod(&n2, "open", "shop");
    let client = tb.add_pod(&n2, "client", "shop");
    let strict = pods_yaml(&[&server]).replacen("pods:\n", "", 1) + "    mtls: strict\n";
    let others = pods_yaml(&[&open, &client]).replacen("pods:\n", "", 1);
    let config = format!(
        "pods:\n{strict}{others}policies:\n  - metadata: {{name: deny-legacy, namespace: shop}}\n    spec:\n      selector: {{matchLabels: {{app: open}}}}\n      action: DENY\n      rules: [{{from: [{{source: {{ipBlocks: [{}/32]}}}}]}}]\n",
        legacy.ipv4
    );
    Bed {
        n2,
        legacy,
        server,
        open,
        client,
        config,
    }
}

/// Connects from `from` to `to`, sends [`MARKER`] and reads; prints what
/// happened: `refused`, `reset`, `closed` (the peer closed without a byte)
/// or `echoed`.
fn try_plaintext(tb: &Testbed, from: &Pod, to: &str) -> String {
    let (ip, port) = to.rsplit_once(':').expect("ip:port");
    let script = format!(
        "import socket\ntry:\n  s=socket.create_connection(('{ip}',{port}),timeout=5)\n  s.sendall(b'{MARKER}')\n  d=s.recv(100)\n  print('echoed' if d else 'closed')\nexcept ConnectionRefusedError:\n  print('refused')\nexcept ConnectionResetError:\n  print('reset')\nexcept Exception as e:\n  print(type(e).__name__)\n"
    );
    let out = tb.run_in_pod(from, {
        let mut python = Command::new("python3");
        python.args(["-c", &script]);
        python
    });
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// How many connections `echo` accepted from `ip`.
fn accepted_from(echo: &Proc, ip: &str) -> usize {
    echo.json_lines()
        .iter()
        .filter(|l| l["event"] == "conn" && ip_of(l["peer"].as_str().unwrap_or("")) == ip)
        .count()
}

/// Starts tcpdump on every interface of `node` (the pods' veths included).
fn capture(tb: &Testbed, node: &Node, pcap: &Path) -> Proc {
    let mut tcpdump = Command::new("tcpdump");
    tcpdump
        .args(["-i", "any", "-U", "-s", "0", "-w"])
        .arg(pcap)
        .arg("tcp");
    let tools = node
        .cgroup_root
        .parent()
        .expect("node cgroup")
        .join("tools");
    let proc = tb.spawn_on_node(node, &tools, tcpdump);
    proc.wait_for_stderr_line(WAIT, |l| l.contains("listening on"))
        .expect("tcpdump starts");
    proc
}

/// The capture as tcpdump prints it.
fn decode(pcap: &Path) -> String {
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(pcap)
        .output()
        .expect("tcpdump runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The capture of the gap holds no plaintext, and shows each attempt on the
/// strict pod answered with a reset.
fn assert_refused_on_the_wire(pcap: &Path, server: &Pod) {
    let bytes = std::fs::read(pcap).expect("the capture was written");
    assert!(
        !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "plaintext crossed a veth of node n2 during the gap"
    );
    let wire = decode(pcap);
    let syns = wire
        .lines()
        .filter(|l| {
            l.contains(&format!("> {}.{ECHO_PORT}:", server.ipv4)) && l.contains("Flags [S]")
        })
        .count();
    let resets = wire
        .lines()
        .filter(|l| {
            l.contains(&format!("{}.{ECHO_PORT} > ", server.ipv4)) && l.contains("Flags [R")
        })
        .count();
    assert!(
        syns >= 3,
        "the capture saw the attempts (SYNs: {syns})\n{wire}"
    );
    assert!(
        resets >= 3,
        "each attempt was answered with a reset (RSTs: {resets})\n{wire}"
    );
}

fn stop_agent(agent: &Agent, how: Stop) {
    match how {
        Stop::Kill => {
            agent.proc.kill();
        }
        Stop::Terminate => {
            let status = agent.proc.terminate();
            assert!(
                status.success(),
                "agent exit: {status}\n{}",
                agent.proc.report()
            );
        }
        Stop::DeleteCgroup => {
            let cgroup = &agent.node.agent_cgroup;
            std::fs::write(cgroup.join("cgroup.kill"), "1").expect("cgroup.kill");
            assert!(
                agent.proc.wait_timeout(WAIT).is_some(),
                "the agent survived cgroup.kill"
            );
            let deadline = Instant::now() + WAIT;
            while let Err(error) = std::fs::remove_dir(cgroup) {
                assert!(
                    Instant::now() < deadline,
                    "cannot remove {}: {error}",
                    cgroup.display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The whole check for one way of stopping: before, during the gap, and
/// after a new agent takes over.
fn nothing_lapses_when_the_agent(how: Stop, name: &str) {
    let mut tb = testbed_or_skip!(name);
    let Bed {
        n2,
        legacy,
        server,
        open,
        client,
        config,
    } = bed(&mut tb);
    let agent = Agent::start_with_config(&tb, &n2, &config, &[&server, &open, &client], &[]);
    let server_echo = serve(&tb, &server);
    let open_echo = serve(&tb, &open);
    let legacy_echo = serve(&tb, &legacy);
    let to_server = format!("{}:{ECHO_PORT}", server.ipv4);
    let to_open = format!("{}:{ECHO_PORT}", open.ipv4);
    let to_legacy = format!("{}:{ECHO_PORT}", legacy.ipv4);
    let legacy_ip = legacy.ipv4.to_string();
    let client_ip = client.ipv4.to_string();

    // With the agent: strict refuses, the DENY holds, outbound works.
    assert_ne!(try_plaintext(&tb, &legacy, &to_server), "echoed");
    assert_ne!(try_plaintext(&tb, &legacy, &to_open), "echoed");
    send(&tb, &client, &to_legacy, 10_000);
    // The echo server reports a connection when it ends, which may be just
    // after the client is done.
    wait_conn_from(&legacy_echo, &client_ip);
    assert_eq!(accepted_from(&server_echo, &legacy_ip), 0);
    assert_eq!(accepted_from(&open_echo, &legacy_ip), 0);
    let outbound_before = accepted_from(&legacy_echo, &client_ip);
    assert_eq!(
        outbound_before, 1,
        "the client reaches legacy through the agent"
    );
    let refused_before = agent.counter(&tb, "inbound_refused_no_agent");

    let pcap = tb.run_dir().join("gap.pcap");
    let tcpdump = capture(&tb, &n2, &pcap);
    // Mid-traffic: a meshed stream (client → open, through the agent)
    // exchanges a byte every 50 ms while the agent goes away.
    let in_flight = ping(&tb, &client, &to_open, 60);
    stop_agent(&agent, how);
    let cut = in_flight.wait_for_event("ping_end", WAIT);
    assert!(
        cut["kind"].is_string(),
        "the stream the agent carried ends with it: {cut}"
    );

    // The gap: nothing reaches an application around the mesh.
    for (to, what) in [
        (&to_server, "the strict pod"),
        (&to_open, "the permissive pod with a DENY"),
    ] {
        for attempt in 0..3 {
            let result = try_plaintext(&tb, &legacy, to);
            assert_eq!(
                result, "refused",
                "attempt {attempt}: plaintext to {what} without an agent must be refused with a reset"
            );
        }
    }
    for attempt in 0..3 {
        let result = try_plaintext(&tb, &client, &to_legacy);
        assert_eq!(
            result, "refused",
            "attempt {attempt}: an enrolled pod's outbound connection without an agent must be refused"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    tcpdump.terminate();
    assert_eq!(
        accepted_from(&server_echo, &legacy_ip),
        0,
        "the strict pod accepted plaintext"
    );
    assert_eq!(
        accepted_from(&open_echo, &legacy_ip),
        0,
        "the DENY was bypassed"
    );
    assert_eq!(
        accepted_from(&legacy_echo, &client_ip),
        outbound_before,
        "the client's traffic left the pod around the mesh"
    );
    assert_refused_on_the_wire(&pcap, &server);

    // A new agent takes the pods over from the pinned state.
    let restarted = Instant::now();
    let next = Agent::spawn(&tb, &n2, &config, &[]);
    next.wait_ready(&tb);
    let ready = restarted.elapsed();
    for pod in ["server", "open", "client"] {
        next.wait_pod_state(&tb, pod, "enrolled", WAIT);
    }
    send(&tb, &client, &to_server, 10_000);
    let serving = restarted.elapsed();
    eprintln!(
        "{how:?}: new agent ready after {} ms, serving meshed traffic after {} ms",
        ready.as_millis(),
        serving.as_millis()
    );
    assert_ne!(try_plaintext(&tb, &legacy, &to_server), "echoed");
    assert_eq!(accepted_from(&server_echo, &legacy_ip), 0);
    // The pinned counters carry over: every refusal of the gap is there.
    let refused = next.counter(&tb, "inbound_refused_no_agent") - refused_before;
    assert!(
        refused >= 6,
        "inbound_refused_no_agent counted {refused} refusals, expected at least 6"
    );
}

#[test]
fn sigkill_fails_closed() {
    nothing_lapses_when_the_agent(Stop::Kill, "fc_kill");
}

#[test]
fn sigterm_fails_closed() {
    nothing_lapses_when_the_agent(Stop::Terminate, "fc_term");
}

#[test]
fn deleting_the_agent_cgroup_fails_closed() {
    nothing_lapses_when_the_agent(Stop::DeleteCgroup, "fc_cgroup");
}
