//! L4 authorization policies, end to end: real sockets across simulated
//! nodes, verdicts enforced by the destination's agent, attributed in the
//! connection log, the access log and the metrics, and applied to open
//! connections when the policies change.

use std::time::{Duration, Instant};

use ambit_tests::{
    Pod, Testbed,
    mesh::{Agent, KERNEL_PATH_LABEL, pods_yaml, pods_yaml_labelled},
    testbed_or_skip,
    workload::{
        ClientServer, ECHO_PORT, WAIT, client_and_server, expect_refused, ping, send, serve,
        try_send,
    },
};
use serde_json::Value;

/// The local config: `pods`, then `policies` (YAML list items, indented as
/// top-level entries).
fn config(pods: &[&Pod], policies: &str) -> String {
    format!("{}policies:\n{policies}", pods_yaml(pods))
}

/// [`config`], every pod opted in to the kernel path when `kernel_path`.
fn config_with_kernel_path(pods: &[&Pod], policies: &str, kernel_path: bool) -> String {
    let label = kernel_path.then_some(KERNEL_PATH_LABEL);
    format!("{}policies:\n{policies}", pods_yaml_labelled(pods, label))
}

fn echo_addr(pod: &Pod) -> String {
    format!("{}:{ECHO_PORT}", pod.ipv4)
}

/// Starts an agent on each of the two nodes, both with the same config
/// text, and waits until each has enrolled its pods.
fn start_agents(
    tb: &Testbed,
    nodes: [&ambit_tests::Node; 2],
    pods: &[&Pod],
    yaml: &str,
) -> (Agent, Agent) {
    start_agents_with(tb, nodes, pods, yaml, &[])
}

/// [`start_agents`] with extra agent arguments.
fn start_agents_with(
    tb: &Testbed,
    nodes: [&ambit_tests::Node; 2],
    pods: &[&Pod],
    yaml: &str,
    args: &[&str],
) -> (Agent, Agent) {
    let [first, second] = nodes.map(|node| Agent::start_with_config(tb, node, yaml, pods, args));
    (first, second)
}

fn metric_value(agent: &Agent, tb: &Testbed, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = agent.get(tb, "/metrics").expect("/metrics answers");
    text.lines()
        .filter(|line| line.starts_with(name))
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// A connection record says the policy `shop/no-shop` reset it at `point`.
fn assert_reset_by_policy_change(record: &Value, point: &str) {
    let verdict = &record["authorization"];
    assert_eq!(verdict["decision"], "deny", "{record}");
    assert_eq!(verdict["policy"], "shop/no-shop", "{record}");
    assert_eq!(verdict["enforcement_point"], point, "{record}");
    assert!(
        record["error"]
            .as_str()
            .is_some_and(|e| e.contains("policy change")),
        "{record}"
    );
}

fn is_inbound_from(record: &Value, client: &Pod) -> bool {
    record["direction"] == "inbound"
        && record["src"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{}:", client.ipv4)))
}

fn is_outbound_from(record: &Value, client: &Pod) -> bool {
    record["direction"] == "outbound"
        && record["pod"] == format!("{}/{}", client.namespace, client.name)
}

const ALLOW_CLIENT: &str = "  - metadata: {name: allow-client, namespace: shop}
    spec:
      selector: {matchLabels: {app: server}}
      rules:
        - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
          to: [{operation: {ports: ['8080']}}]
";

#[test]
fn cross_node_denial_resets_the_client_and_is_attributed_on_both_sides() {
    let mut tb = testbed_or_skip!("authz_cross_node");
    let ClientServer {
        n1,
        n2,
        client,
        server,
    } = client_and_server(&mut tb);
    let intruder = tb.add_pod(&n1, "intruder", "shop");
    let pods = [&client, &server, &intruder];
    let (agent1, agent2) = start_agents(&tb, [&n1, &n2], &pods, &config(&pods, ALLOW_CLIENT));
    let echo = serve(&tb, &server);

    // The allowed principal gets through; both sides say why.
    send(&tb, &client, &echo_addr(&server), 100_000);
    let inbound = agent2.wait_connection(&tb, |r| is_inbound_from(r, &client));
    let verdict = &inbound["authorization"];
    assert_eq!(verdict["decision"], "allow", "{inbound}");
    assert_eq!(verdict["policy"], "shop/allow-client", "{inbound}");
    assert_eq!(verdict["enforced_by"], "n2", "{inbound}");
    assert_eq!(verdict["enforcement_point"], "hbone-inbound", "{inbound}");
    let outbound = agent1.wait_connection(&tb, |r| is_outbound_from(r, &client));
    assert_eq!(
        outbound["authorization"]["policy"], "shop/allow-client",
        "{outbound}"
    );
    assert_eq!(outbound["authorization"]["enforced_by"], "n2", "{outbound}");

    // Another principal is refused at once, and never reaches the server.
    expect_refused(&tb, &intruder, &echo_addr(&server));
    let denied = agent2.wait_connection(&tb, |r| is_inbound_from(r, &intruder));
    assert_eq!(denied["authorization"]["decision"], "deny", "{denied}");
    assert_eq!(
        denied["authorization"]["policy"], "no ALLOW matched",
        "{denied}"
    );
    assert_eq!(
        denied["src_identity"], "spiffe://cluster.local/ns/shop/sa/intruder",
        "{denied}"
    );
    assert!(
        denied["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("denied")),
        "{denied}"
    );
    assert_eq!(denied["bytes_sent"], 0, "{denied}");
    let reported = agent1.wait_connection(&tb, |r| is_outbound_from(r, &intruder));
    assert_eq!(reported["authorization"]["decision"], "deny", "{reported}");
    assert!(
        reported["error"]
            .as_str()
            .is_some_and(|e| e.contains("403")),
        "the source's agent says the destination refused: {reported}"
    );
    let intruder_ip = intruder.ipv4.to_string();
    assert!(
        !echo.json_lines().iter().any(|l| l["event"] == "conn"
            && l["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with(&intruder_ip))),
        "a denied connection must never reach the application"
    );
    agent2
        .proc
        .wait_for_stderr_line(WAIT, |l| {
            l.contains("connection denied by authorization policy") && l.contains(&intruder_ip)
        })
        .expect("the denial is logged with the client");

    // Counted, with the reason, per pod and in the metrics.
    let traffic = &agent2.wait_pod_state(&tb, "server", "enrolled", WAIT)["traffic"]["inbound"];
    assert_eq!(traffic["connections_denied"], 1, "{traffic}");
    let deny = [
        ("decision", "deny"),
        ("policy", "no ALLOW matched"),
        ("enforcement_point", "hbone-inbound"),
    ];
    assert_eq!(
        metric_value(&agent2, &tb, "ambit_authorization_decisions_total", &deny),
        Some(1.0)
    );
    let allow = [("decision", "allow"), ("policy", "shop/allow-client")];
    assert_eq!(
        metric_value(&agent2, &tb, "ambit_authorization_decisions_total", &allow),
        Some(1.0)
    );
}

#[test]
fn plaintext_has_no_principal_and_ip_blocks_match_it() {
    let mut tb = testbed_or_skip!("authz_plaintext");
    let ClientServer {
        n1,
        n2,
        client,
        server,
    } = client_and_server(&mut tb);
    // Not in the config: outside the mesh, so it connects in plaintext.
    let legacy = tb.add_pod(&n1, "legacy", "legacy");
    let pods = [&client, &server];
    let any_principal = "  - metadata: {name: mesh-only, namespace: shop}
    spec: {rules: [{from: [{source: {principals: ['*']}}]}]}
";
    let (_agent1, agent2) = start_agents(&tb, [&n1, &n2], &pods, &config(&pods, any_principal));
    let _echo = serve(&tb, &server);

    send(&tb, &client, &echo_addr(&server), 1000);
    expect_refused(&tb, &legacy, &echo_addr(&server));
    let denied = agent2.wait_connection(&tb, |r| is_inbound_from(r, &legacy));
    assert_eq!(denied["security"], "plaintext", "{denied}");
    assert_eq!(
        denied["authorization"]["enforcement_point"], "plaintext-inbound",
        "{denied}"
    );
    assert_eq!(
        denied["authorization"]["policy"], "no ALLOW matched",
        "{denied}"
    );

    // Allowing the legacy pod's address lets it in, for new connections,
    // as soon as the agent has read the file.
    let by_address = format!(
        "{any_principal}  - metadata: {{name: legacy-subnet, namespace: shop}}
    spec: {{rules: [{{from: [{{source: {{ipBlocks: ['{}/32']}}}}]}}]}}
",
        legacy.ipv4
    );
    agent2.set_config_text(&config(&pods, &by_address));
    let deadline = Instant::now() + WAIT;
    while !try_send(&tb, &legacy, &echo_addr(&server), 1000).0 {
        assert!(
            Instant::now() < deadline,
            "the new policy never applied\n{}",
            agent2.proc.report()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let allowed = agent2.wait_connection(&tb, |r| {
        is_inbound_from(r, &legacy) && r["authorization"]["decision"] == "allow"
    });
    assert_eq!(
        allowed["authorization"]["policy"], "shop/legacy-subnet",
        "{allowed}"
    );
}

#[test]
fn a_policy_change_resets_open_connections_it_now_denies() {
    let tb = testbed_or_skip!("authz_revoke");
    policy_change_resets_open_connections(tb, true);
}

#[test]
fn a_policy_change_resets_open_connections_without_the_kernel_path() {
    let tb = testbed_or_skip!("authz_revoke_no_splice");
    policy_change_resets_open_connections(tb, false);
}

/// Open connections across nodes (HBONE, with the pods' legs to and from
/// the agents on the kernel path or not) and on one node (spliced in the
/// kernel, or through the agent's outbound proxy) are cut when a new
/// policy denies them, and only those.
fn policy_change_resets_open_connections(mut tb: Testbed, kernel_path: bool) {
    let ClientServer {
        n1,
        n2,
        client,
        server,
    } = client_and_server(&mut tb);
    // On the server's node: the same-node fast path, spliced in the kernel
    // or through the outbound proxy.
    let neighbor = tb.add_pod(&n2, "neighbor", "shop");
    let bystander = tb.add_pod(&n2, "bystander", "other");
    let pods = [&client, &server, &neighbor, &bystander];
    let (_agent1, agent2) = start_agents_with(
        &tb,
        [&n1, &n2],
        &pods,
        &config_with_kernel_path(&pods, "  []\n", kernel_path),
        &[],
    );
    let same_node_point = if kernel_path {
        "same-node-splice"
    } else {
        "same-node-outbound"
    };
    let _echo = serve(&tb, &server);

    let from_client = ping(&tb, &client, &echo_addr(&server), 60);
    let from_neighbor = ping(&tb, &neighbor, &echo_addr(&server), 60);
    let from_bystander = ping(&tb, &bystander, &echo_addr(&server), 60);

    let deny_shop = "  - metadata: {name: no-shop, namespace: shop}
    spec:
      selector: {matchLabels: {app: server}}
      action: DENY
      rules: [{from: [{source: {namespaces: [shop]}}]}]
";
    let changed = Instant::now();
    agent2.set_config_text(&config_with_kernel_path(&pods, deny_shop, kernel_path));
    for (pinger, who) in [
        (&from_client, "client (HBONE)"),
        (&from_neighbor, "neighbor (same node)"),
    ] {
        let end = pinger.wait_for_event("ping_end", WAIT);
        let took = changed.elapsed();
        assert!(
            matches!(end["kind"].as_str(), Some("reset" | "eof")),
            "{who}: the connection must be cut, not left to time out: {end}"
        );
        assert!(
            took < Duration::from_secs(3),
            "{who}: cut {took:?} after the change"
        );
        eprintln!("{who}: cut {took:?} after the policy file changed");
    }
    // A connection the new policy still allows stays up.
    assert!(
        from_bystander
            .poll_json(Duration::from_millis(500), |l| l["event"] == "ping_end")
            .is_none(),
        "the bystander's connection must stay open"
    );

    let revoked = agent2.wait_connection(&tb, |r| is_inbound_from(r, &client));
    assert_reset_by_policy_change(&revoked, "hbone-inbound");
    assert!(
        revoked["bytes_sent"].as_u64().is_some_and(|b| b > 0),
        "bytes carried before the reset are counted: {revoked}"
    );
    let same_node = agent2.wait_connection(&tb, |r| is_outbound_from(r, &neighbor));
    assert_reset_by_policy_change(&same_node, same_node_point);
    agent2
        .proc
        .wait_for_stderr_line(WAIT, |l| {
            l.contains("open connection reset: the new policies deny it")
        })
        .expect("the reset is logged");
    for point in ["hbone-inbound", same_node_point] {
        let labels = [("policy", "shop/no-shop"), ("enforcement_point", point)];
        let metric = "ambit_authorization_revocations_total";
        assert_eq!(
            metric_value(&agent2, &tb, metric, &labels),
            Some(1.0),
            "{point}"
        );
    }

    // New connections are denied too, on both paths.
    expect_refused(&tb, &client, &echo_addr(&server));
    expect_refused(&tb, &neighbor, &echo_addr(&server));
    let fresh = agent2.wait_connection(&tb, |r| {
        is_outbound_from(r, &neighbor)
            && r["error"].as_str().is_some_and(|e| e.starts_with("denied"))
    });
    assert_eq!(
        fresh["authorization"]["enforcement_point"], "same-node-outbound",
        "{fresh}"
    );
}

#[test]
fn waypoint_only_fields_fail_closed_without_a_waypoint() {
    let mut tb = testbed_or_skip!("authz_l7");
    let ClientServer {
        n1,
        n2,
        client,
        server,
    } = client_and_server(&mut tb);
    let pods = [&client, &server];
    let get_only = "  - metadata: {name: get-only, namespace: shop}
    spec:
      selector: {matchLabels: {app: server}}
      rules: [{to: [{operation: {methods: [GET], paths: [/api]}}]}]
";
    let (_agent1, agent2) = start_agents(&tb, [&n1, &n2], &pods, &config(&pods, get_only));
    let _echo = serve(&tb, &server);

    expect_refused(&tb, &client, &echo_addr(&server));
    let denied = agent2.wait_connection(&tb, |r| is_inbound_from(r, &client));
    assert_eq!(
        denied["authorization"]["policy"], "shop/get-only",
        "{denied}"
    );
    assert!(
        denied["authorization"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("need a waypoint")),
        "{denied}"
    );
    let policies = agent2.get_json(&tb, "/policies");
    let policy = &policies[0];
    assert_eq!(policy["state"], "failing-closed", "{policies}");
    assert!(
        policy["status"]
            .as_str()
            .is_some_and(|s| s.contains("spec.rules[0].to[0].operation.methods")),
        "the status names the fields: {policies}"
    );
    agent2
        .proc
        .wait_for_stderr_line(WAIT, |l| {
            l.contains("only a waypoint can enforce") && l.contains("shop/get-only")
        })
        .expect("the agent logs why the policy fails closed");
}

#[test]
fn a_bad_policy_is_rejected_and_fails_closed_while_the_others_apply() {
    let mut tb = testbed_or_skip!("authz_bad_policy");
    let ClientServer {
        n1,
        n2,
        client,
        server,
    } = client_and_server(&mut tb);
    let open = tb.add_pod(&n2, "open", "shop");
    let intruder = tb.add_pod(&n1, "intruder", "shop");
    let pods = [&client, &server, &open, &intruder];
    let policies = "  - metadata: {name: no-intruder, namespace: shop}
    spec: {action: DENY, rules: [{from: [{source: {principals: ['*/sa/intruder']}}]}]}
  - metadata: {name: typo, namespace: shop}
    spec:
      selector: {matchLabels: {app: server}}
      rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]
";
    let (_agent1, agent2) = start_agents(&tb, [&n1, &n2], &pods, &config(&pods, policies));
    let _server_echo = serve(&tb, &server);
    let _open_echo = serve(&tb, &open);

    // The rejected ALLOW allows nothing in its scope: the server is closed.
    expect_refused(&tb, &client, &echo_addr(&server));
    let denied = agent2.wait_connection(&tb, |r| is_inbound_from(r, &client));
    assert_eq!(denied["authorization"]["policy"], "shop/typo", "{denied}");
    // The good policy is still enforced elsewhere, and nothing else closed.
    send(&tb, &client, &echo_addr(&open), 1000);
    expect_refused(&tb, &intruder, &echo_addr(&open));
    let by_good = agent2.wait_connection(&tb, |r| is_inbound_from(r, &intruder));
    assert_eq!(
        by_good["authorization"]["policy"], "shop/no-intruder",
        "{by_good}"
    );

    let policies = agent2.get_json(&tb, "/policies");
    let typo = policies
        .as_array()
        .and_then(|list| list.iter().find(|p| p["key"]["name"] == "typo"))
        .unwrap_or_else(|| panic!("typo is listed: {policies}"));
    assert_eq!(typo["state"], "rejected", "{typo}");
    assert_eq!(
        typo["rejected"]["field"], "spec.rules[0].from[0].source.ipBlocks[0]",
        "{typo}"
    );
    agent2
        .proc
        .wait_for_stderr_line(WAIT, |l| {
            l.contains("authorization policy rejected")
                && l.contains("shop/typo")
                && l.contains("ipBlocks[0]")
        })
        .expect("the rejection names the policy and the field");

    // `ambit policies` shows the same, as a table by default.
    let ambit = Testbed::bin("ambit");
    let ambit = ambit.to_str().expect("a UTF-8 path");
    let out = tb.exec_in_netns(&n2.netns, &[ambit, "policies"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.starts_with("NAMESPACE  NAME"), "{table}");
    let typo_row = table
        .lines()
        .find(|l| l.contains(" typo "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        typo_row.contains("rejected") && typo_row.contains("ipBlocks[0]"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("no-intruder") && l.contains("DENY") && l.contains("accepted")),
        "{table}"
    );
}

/// A label change enrolls the pod again, under its new labels; its peers'
/// HBONE connections, pooled from before, are asked to go away with the
/// old enrolment, so the next connection is judged by the new labels (here
/// a DENY that selects them) and not served by the old enrolment.
#[test]
fn a_relabelled_pod_is_judged_by_its_new_labels_also_on_pooled_connections() {
    let mut tb = testbed_or_skip!("authz_relabel");
    let ClientServer {
        n1,
        n2,
        client,
        server,
    } = client_and_server(&mut tb);
    let pods = [&client, &server];
    let deny_locked = "  - metadata: {name: locked, namespace: shop}
    spec:
      selector: {matchLabels: {tier: locked}}
      action: DENY
      rules: [{from: [{source: {namespaces: [shop]}}]}]
";
    let (agent1, agent2) = start_agents(&tb, [&n1, &n2], &pods, &config(&pods, deny_locked));
    let _echo = serve(&tb, &server);
    // Leaves an idle HBONE connection to the server in the client's pool.
    send(&tb, &client, &echo_addr(&server), 1_000);

    let relabelled = format!(
        "{}{}policies:\n{deny_locked}",
        pods_yaml(&[&client]),
        pods_yaml_labelled(&[&server], Some("tier: locked")).replacen("pods:\n", "", 1)
    );
    agent1.set_config_text(&relabelled);
    agent2.set_config_text(&relabelled);
    let enrolled = |agent: &Agent| {
        agent
            .proc
            .stderr_text()
            .matches("pod enrolled pod=shop/server")
            .count()
    };
    let deadline = Instant::now() + WAIT;
    while enrolled(&agent2) < 2 {
        assert!(
            Instant::now() < deadline,
            "the server was not enrolled again\n{}",
            agent2.proc.report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let (ok, result, _) = try_send(&tb, &client, &echo_addr(&server), 1_000);
    assert!(
        !ok,
        "the DENY on the new label lets nothing through: {result}"
    );
    let denied = agent2.wait_connection(&tb, |r| {
        is_inbound_from(r, &client) && r["authorization"]["decision"] != "allow"
    });
    assert_eq!(denied["authorization"]["decision"], "deny", "{denied}");
    assert_eq!(denied["authorization"]["policy"], "shop/locked", "{denied}");
}
