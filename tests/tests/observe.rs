//! `ambit`, the inspection CLI, against live agents in the test topology:
//! open and closed connections with identities and verdicts, the follow
//! stream, workloads, certificates, the log filter, and `ambit check`
//! passing on a ready node and failing with the right hints.

use std::{path::Path, process::Command};

use ambit_tests::{
    Node, Testbed,
    mesh::{Agent, pods_yaml},
    testbed_or_skip,
    workload::{ClientServer, ECHO_PORT, WAIT, client_and_server, ping, send, serve, try_send},
};
use serde_json::Value;

/// A port no policy allows and nothing listens on.
const DENIED_PORT: u16 = 9099;

const DENY_PORT: &str = "policies:
  - metadata: {name: deny-9099, namespace: shop}
    spec:
      action: DENY
      rules:
        - to:
            - operation: {ports: [\"9099\"]}
";

/// The service in front of `shop/server`.
const SERVICE: &str = "services:
  - name: server
    namespace: shop
    selector: {app: server}
    ports: [{name: echo, port: 80, targetPort: 8080}]
";

/// Runs `ambit ARGS` in `node`'s network namespace (where its agent's admin
/// API listens; entered with `setns`, so the host's mounts stay visible) and
/// returns (exit success, stdout, stderr).
fn ambit(tb: &Testbed, node: &Node, args: &[&str]) -> (bool, String, String) {
    let cli = tb.spawn_on_node(node, tb.cgroup(), cli_command(args));
    let (status, lines) = cli.output_lines(WAIT);
    let mut stdout = lines.join("\n");
    if !stdout.is_empty() {
        stdout.push('\n');
    }
    (status.success(), stdout, cli.stderr_text())
}

/// `ambit ARGS -o json`, which must succeed, parsed.
fn ambit_json(tb: &Testbed, node: &Node, args: &[&str]) -> Value {
    let mut with_json = args.to_vec();
    with_json.extend_from_slice(&["-o", "json"]);
    let (ok, stdout, stderr) = ambit(tb, node, &with_json);
    assert!(ok, "ambit {args:?} failed: {stderr}\n{stdout}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("ambit {args:?}: bad JSON ({e}): {stdout}"))
}

fn items(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

#[test]
fn connections_workloads_and_certificates_are_listed_live() {
    let mut tb = testbed_or_skip!("observe_live");
    let cs = client_and_server(&mut tb);
    let yaml = format!("{}{SERVICE}", pods_yaml(&[&cs.client, &cs.server]));
    let client_agent = Agent::start_with_config(&tb, &cs.n1, &yaml, &[&cs.client], &[]);
    let server_agent = Agent::start_with_config(&tb, &cs.n2, &yaml, &[&cs.server], &[]);
    let server = serve(&tb, &cs.server);
    let pinger = ping(
        &tb,
        &cs.client,
        &format!("{}:{ECHO_PORT}", cs.server.ipv4),
        3,
    );

    // Open, on both sides, with both ends resolved to workloads.
    let open = ambit_json(
        &tb,
        &cs.n1,
        &["connections", "--state", "open", "--workload", "server"],
    );
    let outbound = items(&open)
        .into_iter()
        .find(|c| c["direction"] == "outbound")
        .unwrap_or_else(|| panic!("no open outbound connection on n1: {open}"));
    assert_eq!(outbound["state"], "open", "{outbound}");
    assert_eq!(outbound["src_workload"], "shop/client", "{outbound}");
    assert_eq!(outbound["dst_workload"], "shop/server", "{outbound}");
    assert_eq!(outbound["node"], "n1", "{outbound}");
    assert_eq!(outbound["dst_node"], "n2", "{outbound}");
    assert_eq!(outbound["security"], "mutual_tls", "{outbound}");
    assert_eq!(
        outbound["src_identity"],
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    assert_eq!(
        outbound["dst_identity"],
        "spiffe://cluster.local/ns/shop/sa/server"
    );
    assert_eq!(outbound["authorization"]["decision"], "allow", "{outbound}");
    assert_eq!(
        outbound["authorization"]["policy"], "default allow",
        "{outbound}"
    );
    assert!(
        outbound["age_secs"].as_f64().is_some_and(|age| age > 0.0),
        "{outbound}"
    );
    assert!(
        outbound["bytes_sent"].as_u64().is_some_and(|b| b > 0),
        "{outbound}"
    );
    let inbound = ambit_json(
        &tb,
        &cs.n2,
        &["connections", "--state", "open", "--direction", "inbound"],
    );
    let inbound = items(&inbound)
        .into_iter()
        .find(|c| c["src_workload"] == "shop/client")
        .unwrap_or_else(|| panic!("no open inbound connection on n2: {inbound}"));
    assert_eq!(
        inbound["authorization"]["enforcement_point"],
        "hbone-inbound"
    );
    filters_select_and_the_table_shows_the_open_connection(&tb, &cs.n1);

    // Closed: the final bytes are the round trips, one byte each way.
    let end = pinger.wait_for_event("ping_end", WAIT);
    let round_trips = end["round_trips"].as_u64().expect("round trips");
    let closed = client_agent.wait_connection(&tb, |c| {
        c["direction"] == "outbound" && c["dst"] == format!("{}:{ECHO_PORT}", cs.server.ipv4)
    });
    assert_eq!(closed["bytes_sent"], round_trips, "{closed}");
    // The access log line names both ends as the connection view does.
    let line = client_agent
        .proc
        .wait_for_stderr_line(WAIT, |l| {
            l.contains("connection closed") && l.contains("direction=Outbound")
        })
        .expect("an access log line");
    for field in [
        "node=n1",
        "src_workload=\"shop/client\"",
        "dst_workload=\"shop/server\"",
        "dst_node=\"n2\"",
        "verdict=\"allow\"",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    let listed = ambit_json(&tb, &cs.n1, &["connections", "--state", "closed"]);
    assert!(
        items(&listed)
            .iter()
            .any(|c| c["bytes_received"] == round_trips && c["dst_workload"] == "shop/server"),
        "{listed}"
    );
    drop(server);
    workloads_certificates_and_log_filter(&tb, &cs, &client_agent);
    drop(server_agent);
}

/// On `node`, whose agent relays one open connection to `shop/server`:
/// the filters select, and the table shows it.
fn filters_select_and_the_table_shows_the_open_connection(tb: &Testbed, node: &Node) {
    // The filters select: nothing of namespace `other`, nothing inbound on n1.
    assert_eq!(
        items(&ambit_json(
            tb,
            node,
            &["connections", "--namespace", "other"]
        ))
        .len(),
        0
    );
    assert_eq!(
        items(&ambit_json(
            tb,
            node,
            &["connections", "--direction", "inbound"]
        ))
        .len(),
        0
    );
    let (ok, table, stderr) = ambit(tb, node, &["connections"]);
    assert!(ok, "{stderr}");
    assert!(table.starts_with("STATE"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("open")
            && l.contains("shop/server (")
            && l.contains("allow (default allow)")),
        "{table}"
    );
}

/// `ambit workloads`, `certs` and `log-level` on `cs.n1`, whose agent is
/// `agent`.
fn workloads_certificates_and_log_filter(tb: &Testbed, cs: &ClientServer, agent: &Agent) {
    let client_agent = agent;
    // Workloads of every node, filtered by node.
    let all = ambit_json(tb, &cs.n1, &["workloads"]);
    assert_eq!(items(&all).len(), 2, "{all}");
    let on_n2 = ambit_json(tb, &cs.n1, &["workloads", "--node", "n2"]);
    let on_n2 = items(&on_n2);
    assert_eq!(on_n2.len(), 1, "{on_n2:?}");
    assert_eq!(on_n2[0]["name"], "server");
    assert_eq!(on_n2[0]["local"], false);
    assert_eq!(on_n2[0]["ips"][0], cs.server.ipv4.to_string());

    // Services, with the pods behind them.
    let services = ambit_json(tb, &cs.n1, &["services", "--workload", "server"]);
    let services = items(&services);
    assert_eq!(services.len(), 1, "{services:?}");
    assert_eq!(services[0]["hostname"], "server.shop.svc.cluster.local");
    assert_eq!(services[0]["endpoints"], serde_json::json!(["shop/server"]));
    let (ok, table, _) = ambit(tb, &cs.n1, &["services"]);
    assert!(
        ok && table.contains("80→8080") && table.contains("app=server"),
        "{table}"
    );

    // Certificates: the client's, valid.
    let certs = ambit_json(tb, &cs.n1, &["certs"]);
    let cert = items(&certs)
        .into_iter()
        .find(|c| c["identity"] == "spiffe://cluster.local/ns/shop/sa/client")
        .unwrap_or_else(|| panic!("no client certificate: {certs}"));
    assert_eq!(cert["state"], "valid", "{cert}");
    let (ok, table, _) = ambit(tb, &cs.n1, &["certs"]);
    assert!(
        ok && table.contains("EXPIRES IN") && table.contains("valid"),
        "{table}"
    );

    // The log filter, changed while the agent runs; a bad one is refused.
    let (ok, shown, stderr) = ambit(tb, &cs.n1, &["log-level"]);
    let current = client_agent.get_json(tb, "/logging")["filter"].clone();
    assert!(
        ok && shown == format!("log filter: {}\n", current.as_str().expect("a filter")),
        "{shown}{stderr}"
    );
    let set = ambit_json(tb, &cs.n1, &["log-level", "debug"]);
    assert_eq!(set["filter"], "debug");
    assert_eq!(client_agent.get_json(tb, "/logging")["filter"], "debug");
    let (ok, _, stderr) = ambit(tb, &cs.n1, &["log-level", "node_agent=loud"]);
    assert!(!ok, "a bad filter must fail");
    assert!(stderr.contains("invalid log filter"), "{stderr}");
    assert_eq!(client_agent.get_json(tb, "/logging")["filter"], "debug");
}

#[test]
fn follow_streams_each_connection_with_its_verdict() {
    let mut tb = testbed_or_skip!("observe_follow");
    let cs = client_and_server(&mut tb);
    let yaml = format!("{}{DENY_PORT}", pods_yaml(&[&cs.client, &cs.server]));
    let _client_agent = Agent::start_with_config(&tb, &cs.n1, &yaml, &[&cs.client], &[]);
    let server_agent = Agent::start_with_config(&tb, &cs.n2, &yaml, &[&cs.server], &[]);
    let _server = serve(&tb, &cs.server);
    let follower = tb.spawn_on_node(
        &cs.n2,
        tb.cgroup(),
        cli_command(&[
            "connections",
            "--follow",
            "--direction",
            "inbound",
            "--count",
            "2",
            "--for",
            "60",
            "-o",
            "json",
        ]),
    );
    // Connections that close before the agent has the follower subscribed
    // are not streamed: wait for it.
    server_agent
        .proc
        .wait_for_stderr_line(WAIT, |l| l.contains("a client follows closed connections"))
        .unwrap_or_else(|| panic!("the follower did not subscribe\n{}", follower.report()));

    send(
        &tb,
        &cs.client,
        &format!("{}:{ECHO_PORT}", cs.server.ipv4),
        1234,
    );
    let (ok, _, report) = try_send(
        &tb,
        &cs.client,
        &format!("{}:{DENIED_PORT}", cs.server.ipv4),
        10,
    );
    assert!(!ok, "port {DENIED_PORT} must be denied\n{report}");

    let status = follower.wait_timeout(WAIT).unwrap_or_else(|| {
        panic!(
            "follow did not stop after 2 connections\n{}",
            follower.report()
        )
    });
    assert!(status.success(), "{}", follower.report());
    let lines = follower.json_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let allowed = lines
        .iter()
        .find(|c| c["dst"] == format!("{}:{ECHO_PORT}", cs.server.ipv4))
        .unwrap_or_else(|| panic!("no allowed connection: {lines:?}"));
    assert_eq!(allowed["authorization"]["decision"], "allow", "{allowed}");
    assert_eq!(allowed["bytes_sent"], 1234, "{allowed}");
    assert_eq!(allowed["src_workload"], "shop/client", "{allowed}");
    let denied = lines
        .iter()
        .find(|c| c["dst"] == format!("{}:{DENIED_PORT}", cs.server.ipv4))
        .unwrap_or_else(|| panic!("no denied connection: {lines:?}"));
    assert_eq!(denied["authorization"]["decision"], "deny", "{denied}");
    assert_eq!(
        denied["authorization"]["policy"], "shop/deny-9099",
        "{denied}"
    );
}

#[test]
fn check_passes_on_a_ready_node_and_names_what_is_missing() {
    let mut tb = testbed_or_skip!("observe_check");
    let cs = client_and_server(&mut tb);
    let yaml = pods_yaml(&[&cs.client, &cs.server]);
    let agent = Agent::start_with_config(&tb, &cs.n1, &yaml, &[&cs.client], &[]);
    let bpffs_dir = cs.n1.bpffs.join("ambit");
    let cgroup_root = cs.n1.cgroup_root.display().to_string();
    let ready_args = [
        "check",
        "--bpffs-dir",
        bpffs_dir.to_str().expect("UTF-8"),
        "--cgroup-root",
        &cgroup_root,
    ];
    let (ok, report, stderr) = ambit(&tb, &cs.n1, &ready_args);
    assert!(
        ok,
        "check must pass on a ready node:\n{report}{stderr}\n{}",
        agent.proc.report()
    );
    for line in [
        "✓ bpffs",
        "✓ cgroup v2",
        "✓ agent ready",
        "✓ workload certificates",
        "✓ CA bundle",
        "all checks passed",
    ] {
        assert!(report.contains(line), "{line}:\n{report}");
    }
    let json = ambit_json(&tb, &cs.n1, &ready_args);
    assert_eq!(json["ok"], true, "{json}");

    // bpffs not at the configured path, and no agent at the admin address.
    let not_bpffs = tb.run_dir().join("not-bpffs");
    std::fs::create_dir_all(&not_bpffs).expect("mkdir");
    let ca = agent.get_json(&tb, "/config")["ca_cert"]
        .as_str()
        .expect("ca_cert")
        .to_owned();
    let (ok, report, stderr) = ambit(
        &tb,
        &cs.n1,
        &[
            "check",
            "--bpffs-dir",
            not_bpffs.to_str().expect("UTF-8"),
            "--cgroup-root",
            &cgroup_root,
            "--admin",
            "127.0.0.1:1",
            "--ca-cert",
            &ca,
        ],
    );
    assert!(!ok, "check must fail:\n{report}");
    assert!(stderr.contains("some checks failed"), "{stderr}");
    for line in [
        "✗ bpffs",
        "hint: mount bpffs",
        "✗ agent ready",
        "hint: start the agent",
        "✓ CA bundle",
    ] {
        assert!(report.contains(line), "{line}:\n{report}");
    }
    assert!(
        report.contains(&format!("{} is on", not_bpffs.display())),
        "the path tried must be named:\n{report}"
    );

    // A listing with no agent to ask: the address tried and a hint, no trace.
    let (ok, stdout, stderr) = ambit(&tb, &cs.n1, &["workloads", "--admin", "127.0.0.1:1"]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with("error: cannot reach the node agent at 127.0.0.1:1"),
        "{stderr}"
    );
    assert!(stderr.contains("is the agent running?"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(Path::new(&ca).exists());
}

fn cli_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(Testbed::bin("ambit"));
    cmd.args(args);
    cmd
}
