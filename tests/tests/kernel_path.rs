//! The kernel path: a pod labelled `ambit.dev/kernel-path=enabled` has the
//! legs between its applications and the agent spliced by `sk_msg` (the
//! application's socket and the agent's outbound listener's, the inbound
//! proxy's socket and the application's), so their bytes skip loopback TCP.
//! Real pods, real agents on two nodes, mutual TLS between them, and
//! clients that read non-blocking with epoll, as the kernel path's contract
//! asks: the project's own `pod-tool --epoll`, and Debian's `h2load` against
//! `nghttpd`.

use std::{process::Command, time::Duration};

use ambit_tests::{
    Node, Pod, Proc, Testbed,
    mesh::{Agent, KERNEL_PATH_LABEL, pods_yaml, pods_yaml_labelled},
    testbed_or_skip,
    workload::{
        ClientServer, ECHO_PORT, RR_PORT, WAIT, client_and_server, pod_tool, run_ok_in_pod,
        send_with, try_send_with,
    },
};
use serde_json::Value;

/// 100 MB each way through both legs of each node.
const BULK: u64 = 100_000_000;

/// Request/response rounds on one connection.
const ROUNDS: u64 = 10_000;

/// Where `nghttpd` listens in the server pod.
const HTTP_PORT: u16 = 8443;

/// The config of both agents: `pods`, every one opted in, then `rest`.
fn kernel_path_config(pods: &[&Pod], rest: &str) -> String {
    format!(
        "{}{rest}",
        pods_yaml_labelled(pods, Some(KERNEL_PATH_LABEL))
    )
}

/// A client on `n1` and a server on `n2`, both on the kernel path, and an
/// agent on each node with `config`.
fn kernel_path_agents(tb: &mut Testbed, rest: &str) -> (ClientServer, Agent, Agent) {
    let setup = client_and_server(tb);
    let pods = [&setup.client, &setup.server];
    let config = kernel_path_config(&pods, rest);
    let first = Agent::start_with_config(tb, &setup.n1, &config, &pods, &[]);
    let second = Agent::start_with_config(tb, &setup.n2, &config, &pods, &[]);
    for (agent, pod) in [(&first, &setup.client), (&second, &setup.server)] {
        let status = agent.wait_pod_state(tb, &pod.name, "enrolled", WAIT);
        assert_eq!(status["kernel_path"], "on", "{status}");
    }
    (setup, first, second)
}

/// `pod-tool serve --epoll` on the echo port of `pod`, listening.
fn epoll_echo(tb: &Testbed, pod: &Pod) -> Proc {
    let listen = format!("0.0.0.0:{ECHO_PORT}");
    let server = tb.spawn_in_pod(pod, pod_tool(&["serve", "--epoll", "--listen", &listen]));
    server.wait_for_event("listening", WAIT);
    server
}

/// `pod-tool rr-server --epoll --size 1` on the rr port of `pod`, listening.
fn epoll_rr_server(tb: &Testbed, pod: &Pod) -> Proc {
    let listen = format!("0.0.0.0:{RR_PORT}");
    let server = tb.spawn_in_pod(
        pod,
        pod_tool(&["rr-server", "--epoll", "--size", "1", "--listen", &listen]),
    );
    server.wait_for_event("listening", WAIT);
    server
}

/// Starts `pod-tool rr --epoll` from `client` to the rr server of `server`:
/// `rounds` 1-byte round trips, for at most `max_secs`.
fn epoll_rr(tb: &Testbed, client: &Pod, server: &Pod, rounds: u64, max_secs: u64) -> Proc {
    let to = format!("{}:{RR_PORT}", server.ipv4);
    tb.spawn_in_pod(
        client,
        pod_tool(&[
            "rr",
            "--epoll",
            "--to",
            &to,
            "--rounds",
            &rounds.to_string(),
            "--duration-secs",
            &max_secs.to_string(),
        ]),
    )
}

/// The `rr` report of a finished `pod-tool rr`, which must have succeeded.
fn rr_report(rr: &Proc, timeout: Duration) -> Value {
    let (status, lines) = rr.output_json_lines(timeout);
    let report = lines
        .into_iter()
        .find(|l| l["event"] == "rr")
        .unwrap_or(Value::Null);
    assert!(status.success(), "rr failed: {report}\n{}", rr.report());
    report
}

/// The keys `bpftool map dump` lists in the node's splice sock hash: the
/// sockets that are in it now.
fn sock_hash_entries(node: &Node) -> usize {
    let pin = node.bpffs.join("ambit/maps/AMBIT_SPLICE_SK");
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .output()
        .expect("bpftool runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let dump: Value = serde_json::from_str(&text).unwrap_or_else(|error| {
        panic!(
            "bpftool map dump {}: {error}: {text}{}",
            pin.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    dump.as_array().map_or(0, Vec::len)
}

/// Waits until the node's splice sock hash is empty; panics with what is
/// left when it is not within [`WAIT`].
fn wait_sock_hash_empty(node: &Node, why: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = sock_hash_entries(node);
        if left == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{why}: {left} sockets still in {}'s splice sock hash",
            node.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the agent's metric `name` with `labels`, if it has one.
fn metric(agent: &Agent, tb: &Testbed, name: &str, labels: &str) -> Option<f64> {
    let text = agent.get(tb, "/metrics").expect("/metrics answers");
    text.lines()
        .find(|line| line.starts_with(&format!("{name}{{{labels}}}")))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

fn record_of(agent: &Agent, tb: &Testbed, direction: &str, pod: &Pod, port: u16) -> Value {
    let name = format!("{}/{}", pod.namespace, pod.name);
    agent.wait_connection(tb, |r| {
        r["direction"] == direction
            && r["pod"] == name.as_str()
            && r["dst"]
                .as_str()
                .is_some_and(|d| d.ends_with(&format!(":{port}")))
    })
}

#[test]
fn epoll_clients_exchange_100_mb_and_10000_rounds_through_the_kernel_path() {
    let mut tb = testbed_or_skip!("kernel_path_epoll");
    let (setup, first, second) = kernel_path_agents(&mut tb, "");
    let ClientServer {
        n1,
        n2,
        client,
        server,
    } = &setup;
    let _echo = epoll_echo(&tb, server);
    let _rr = epoll_rr_server(&tb, server);

    let to = format!("{}:{ECHO_PORT}", server.ipv4);
    send_with(&tb, client, &to, BULK, &["--epoll"]);

    // Exact counts on both agents, and each pod's leg was on the kernel
    // path: both of its sockets in the sock hash.
    let outbound = record_of(&first, &tb, "outbound", client, ECHO_PORT);
    let inbound = record_of(&second, &tb, "inbound", server, ECHO_PORT);
    for record in [&outbound, &inbound] {
        assert_eq!(record["bytes_sent"], BULK, "{record}");
        assert_eq!(record["bytes_received"], BULK, "{record}");
        assert_eq!(record["security"], "mutual_tls_kernel_path", "{record}");
    }
    for (agent, leg) in [(&first, "outbound"), (&second, "inbound")] {
        assert_eq!(agent.counter(&tb, "pod_leg_sockets"), 2, "{leg}");
        assert!(agent.counter(&tb, "messages_spliced") > 0, "{leg}");
        let labels = format!("leg=\"{leg}\"");
        assert_eq!(
            metric(agent, &tb, "ambit_kernel_path_connections_total", &labels),
            Some(1.0),
            "{leg}"
        );
    }

    // 10,000 request/response rounds, every one answered.
    let rr = epoll_rr(&tb, client, server, ROUNDS, 300);
    let report = rr_report(&rr, Duration::from_mins(6));
    assert_eq!(report["samples"], ROUNDS, "{report}");
    eprintln!(
        "{ROUNDS} rounds through the kernel path: p50 {} µs, p99 {} µs",
        report["p50_us"], report["p99_us"]
    );
    let rounds = record_of(&first, &tb, "outbound", client, RR_PORT);
    assert_eq!(rounds["bytes_sent"], ROUNDS, "{rounds}");
    assert_eq!(rounds["bytes_received"], ROUNDS, "{rounds}");
    assert_eq!(rounds["security"], "mutual_tls_kernel_path", "{rounds}");
    for agent in [&first, &second] {
        assert_eq!(agent.counter(&tb, "pod_leg_sockets"), 4);
    }

    // Closed sockets leave the sock hash: nothing lingers.
    wait_sock_hash_empty(n1, "after the connections closed");
    wait_sock_hash_empty(n2, "after the connections closed");
}

#[test]
fn h2load_and_nghttpd_run_through_the_kernel_path() {
    let mut tb = testbed_or_skip!("kernel_path_nghttp2");
    let (setup, first, second) = kernel_path_agents(&mut tb, "");
    let ClientServer { client, server, .. } = &setup;
    let docroot = tb.run_dir().join("htdocs");
    std::fs::create_dir_all(&docroot).expect("docroot");
    std::fs::write(docroot.join("small"), b"kernel path\n").expect("small file");
    let big = std::fs::File::create(docroot.join("big")).expect("big file");
    big.set_len(BULK).expect("100 MB file");
    let docroot_arg = docroot.display().to_string();
    let mut nghttpd = Command::new("nghttpd");
    nghttpd.args([
        "--no-tls",
        "-a",
        "0.0.0.0",
        "-d",
        &docroot_arg,
        &HTTP_PORT.to_string(),
    ]);
    let _nghttpd = tb.spawn_in_pod(server, nghttpd);
    wait_listening(&tb, server, HTTP_PORT);

    let base = format!("http://{}:{HTTP_PORT}", server.ipv4);
    let rounds = h2load(&tb, client, &format!("{base}/small"), ROUNDS);
    assert!(
        rounds.contains(&format!("{ROUNDS} succeeded, 0 failed, 0 errored")),
        "{rounds}"
    );
    let bulk = h2load(&tb, client, &format!("{base}/big"), 1);
    assert!(bulk.contains("1 succeeded, 0 failed, 0 errored"), "{bulk}");

    let records = [
        record_of(&first, &tb, "outbound", client, HTTP_PORT),
        record_of(&second, &tb, "inbound", server, HTTP_PORT),
    ];
    for record in &records {
        assert_eq!(record["security"], "mutual_tls_kernel_path", "{record}");
    }
    // The big file's bytes came back through both legs (both records
    // count the server's bytes as received by the client).
    for (agent, node) in [(&first, "client's"), (&second, "server's")] {
        let largest = agent
            .connections(&tb)
            .iter()
            .filter_map(|r| r["bytes_received"].as_u64())
            .max()
            .unwrap_or_default();
        assert!(
            largest > BULK,
            "the {node} agent carried {largest} bytes of the big file"
        );
    }
    for agent in [&first, &second] {
        assert_eq!(agent.counter(&tb, "pod_leg_sockets"), 4);
    }
}

/// Waits until something listens on `port` in `pod`.
fn wait_listening(tb: &Testbed, pod: &Pod, port: u16) {
    let deadline = std::time::Instant::now() + WAIT;
    let filter = format!("sport = :{port}");
    loop {
        let out = tb.exec_in_netns(&pod.netns, &["ss", "-Htln", &filter]);
        if !out.stdout.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `h2load -n requests -c 1 -m 1 url` in `client`; its report.
fn h2load(tb: &Testbed, client: &Pod, url: &str, requests: u64) -> String {
    let mut command = Command::new("h2load");
    command.args([
        "-n",
        &requests.to_string(),
        "-c",
        "1",
        "-m",
        "1",
        "-T",
        "60",
        url,
    ]);
    run_ok_in_pod(tb, client, command)
}

#[test]
fn a_denied_connection_never_gets_a_kernel_path_leg_to_the_application() {
    let mut tb = testbed_or_skip!("kernel_path_denied");
    let deny = "policies:
  - metadata: {name: no-client, namespace: shop}
    spec:
      selector: {matchLabels: {app: server}}
      action: DENY
      rules: [{from: [{source: {principals: ['*/sa/client']}}]}]
";
    let (setup, _first, second) = kernel_path_agents(&mut tb, deny);
    let ClientServer { client, server, .. } = &setup;
    let echo = epoll_echo(&tb, server);

    let to = format!("{}:{ECHO_PORT}", server.ipv4);
    let (ok, sent, report) = try_send_with(&tb, client, &to, 1000, &["--epoll"]);
    assert!(!ok, "policy denies client -> server: {sent}\n{report}");

    let denied = record_of(&second, &tb, "inbound", server, ECHO_PORT);
    assert_eq!(denied["authorization"]["decision"], "deny", "{denied}");
    assert_eq!(denied["security"], "mutual_tls", "{denied}");
    // The server's agent never connected to the application: no socket of
    // the server's pod joined the sock hash, and the server saw nothing.
    assert_eq!(second.counter(&tb, "pod_leg_sockets"), 0);
    assert_eq!(sock_hash_entries(&setup.n2), 0);
    assert!(
        echo.poll_json(Duration::from_millis(300), |l| l["event"] == "conn")
            .is_none(),
        "the denied client must not reach the server"
    );
}

#[test]
fn an_unreadable_label_is_rejected_and_the_pod_stays_on_the_user_space_path() {
    let mut tb = testbed_or_skip!("kernel_path_label");
    let ClientServer {
        n1,
        n2,
        client,
        server,
    } = client_and_server(&mut tb);
    let pods = [&client, &server];
    let config = format!(
        "{}{}",
        pods_yaml_labelled(&[&client], Some("ambit.dev/kernel-path: 'yes'")),
        pods_yaml(&[&server]).trim_start_matches("pods:\n"),
    );
    let first = Agent::start_with_config(&tb, &n1, &config, &pods, &[]);
    let _second = Agent::start_with_config(&tb, &n2, &config, &pods, &[]);
    let status = first.wait_pod_state(&tb, "client", "enrolled", WAIT);
    let state = status["kernel_path"].as_str().unwrap_or_default();
    assert!(
        state.starts_with("rejected: ")
            && state.contains("ambit.dev/kernel-path=\"yes\"")
            && state.contains("user-space path"),
        "{status}"
    );
    // The CLI shows it, with the reason among the notes.
    let cli = tb.spawn_on_node(&n1, tb.cgroup(), {
        let mut ambit = Command::new(Testbed::bin("ambit"));
        ambit.args(["pods", "--admin", &first.admin_addr]);
        ambit
    });
    let (ok, lines) = cli.output_lines(WAIT);
    let table = lines.join("\n");
    assert!(ok.success(), "{table}\n{}", cli.stderr_text());
    assert!(table.contains("KERNEL PATH"), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(" client "))
        .unwrap_or_else(|| panic!("no client row:\n{table}"));
    assert!(row.contains("rejected"), "{row}");
    assert!(
        row.contains("kernel path: the pod's ambit.dev/kernel-path"),
        "{row}"
    );

    // Traffic still flows, on the user-space path.
    let _echo = epoll_echo(&tb, &server);
    send_with(
        &tb,
        &client,
        &format!("{}:{ECHO_PORT}", server.ipv4),
        100_000,
        &["--epoll"],
    );
    assert_eq!(first.counter(&tb, "pod_leg_sockets"), 0);
    let record = record_of(&first, &tb, "outbound", &client, ECHO_PORT);
    assert_eq!(record["security"], "mutual_tls", "{record}");
}

#[test]
fn unenrolment_and_handoff_leave_no_socket_in_the_sock_hash() {
    let mut tb = testbed_or_skip!("kernel_path_unenrol");
    let (setup, first, _second) = kernel_path_agents(&mut tb, "");
    let ClientServer {
        n1, client, server, ..
    } = &setup;
    let pods = [client, server];
    let config = kernel_path_config(&pods, "");
    let _rr_server = epoll_rr_server(&tb, server);

    // A handoff while a kernel-path connection is open: the previous
    // agent drains it; once it ends, its sockets are gone from the hash.
    let open = epoll_rr(&tb, client, server, u64::MAX, 3);
    wait_counter(&first, &tb, "pod_leg_sockets", 2);
    assert_eq!(sock_hash_entries(n1), 2, "the app's socket and the agent's");
    let next = Agent::spawn_successor(&tb, n1, &config, 1);
    next.proc
        .wait_for_stderr_line(WAIT, |l| {
            l.contains("took the pods over from the previous agent")
        })
        .unwrap_or_else(|| panic!("no handoff\n{}", next.proc.report()));
    let report = rr_report(&open, Duration::from_mins(1));
    assert!(
        report["samples"].as_u64().unwrap_or_default() > 0,
        "{report}"
    );
    wait_sock_hash_empty(n1, "after a handoff, once its connection ended");
    assert!(
        first.proc.wait_timeout(WAIT).is_some(),
        "the previous agent exits once drained\n{}",
        first.proc.report()
    );

    // The successor puts new connections on the kernel path too. Then the
    // client leaves the mesh with one open: it is reset, and nothing of it
    // stays in the hash.
    let open = epoll_rr(&tb, client, server, u64::MAX, 60);
    wait_counter(&next, &tb, "pod_leg_sockets", 2);
    assert_eq!(sock_hash_entries(n1), 2);
    next.set_config_text(&kernel_path_config(&[server], ""));
    next.wait_pod_gone(&tb, "client", WAIT);
    wait_sock_hash_empty(n1, "after the client left the mesh");
    let (status, _) = open.output_json_lines(WAIT);
    assert!(
        !status.success(),
        "the open connection is cut when its pod leaves the mesh\n{}",
        open.report()
    );
}

/// Waits until the agent's eBPF counter `name` reaches `value`.
fn wait_counter(agent: &Agent, tb: &Testbed, name: &str, value: u64) {
    let deadline = std::time::Instant::now() + WAIT;
    while agent.counter(tb, name) < value {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never reached {value}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where `iperf3 -s` listens in the server pod.
const IPERF_PORT: u16 = 5201;

/// What each direction of a spliced connection may hand over with
/// `sk_msg` (`mesh_ebpf_common::SPLICE_DIRECTION_BUDGET`).
const SPLICE_BUDGET: u64 = 4 << 20;

#[test]
fn a_writer_faster_than_its_reader_never_sees_enomem_and_its_queue_is_bounded() {
    let mut tb = testbed_or_skip!("kernel_path_bulk");
    let (setup, first, second) = kernel_path_agents(&mut tb, "");
    let ClientServer { client, server, .. } = &setup;
    // iperf3 reads and writes non-blocking (pselect), as the contract asks.
    let mut serve = Command::new("iperf3");
    serve.args(["-s", "-1", "-p", &IPERF_PORT.to_string()]);
    let iperf_server = tb.spawn_in_pod(server, serve);
    wait_listening(&tb, server, IPERF_PORT);

    // The client writes far faster than its agent can encrypt and forward:
    // without a bound, the agent's socket queues what sk_msg hands over
    // until the kernel's TCP memory runs out, and the write fails (ENOMEM).
    let mut upload = Command::new("iperf3");
    upload.args([
        "-c",
        &server.ipv4.to_string(),
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        "4",
        "-J",
    ]);
    let text = run_ok_in_pod(&tb, client, upload);
    let report: Value = serde_json::from_str(&text).expect("iperf3 -J prints JSON");
    let bytes = report["end"]["sum_received"]["bytes"]
        .as_u64()
        .unwrap_or_default();
    assert!(
        bytes > 2 * SPLICE_BUDGET,
        "{bytes} bytes: the upload must outlast the budget"
    );
    eprintln!("{bytes} bytes uploaded through the kernel path in 4 s");
    // The upload's direction took the kernel path, then TCP once past its
    // budget: the application's leg on n1, the agent's leg on n2.
    for (agent, node) in [(&first, "n1"), (&second, "n2")] {
        assert!(agent.counter(&tb, "pod_leg_sockets") >= 2, "{node}");
        assert!(agent.counter(&tb, "messages_spliced") > 0, "{node}");
        assert!(agent.counter(&tb, "splice_budget_spent") >= 1, "{node}");
    }
    let _ = iperf_server.wait_timeout(WAIT);
}
