//! Hitless handoff: a new agent process takes a node's pods over from the
//! running one (their listener sockets change hands over the handoff
//! socket) while clients open hundreds of meshed connections a second and
//! long-lived streams exchange a message every 10 ms. Nothing is refused or
//! reset, and every long-lived stream ends with exact byte counts.

use std::{collections::BTreeMap, time::Duration};

use ambit_tests::{
    Pod, Proc, Testbed,
    mesh::{Agent, pods_yaml},
    testbed_or_skip,
    workload::{ECHO_PORT, RR_PORT, WAIT, ip_of, pod_tool, rr_server, serve},
};
use serde_json::Value;

/// Handoffs in a row.
const HANDOFFS: usize = 5;
/// Long-lived streams, half from each client.
const STREAMS: usize = 20;
/// How long the load runs; the handoffs happen inside it.
const LOAD_SECS: u64 = 16;

fn crr(tb: &Testbed, from: &Pod, to: &Pod, conns: &str) -> Proc {
    tb.spawn_in_pod(
        from,
        pod_tool(&[
            "crr",
            "--to",
            &format!("{}:{RR_PORT}", to.ipv4),
            "--conns",
            conns,
            "--duration-secs",
            &LOAD_SECS.to_string(),
        ]),
    )
}

fn ping(tb: &Testbed, from: &Pod, to: &Pod) -> Proc {
    tb.spawn_in_pod(
        from,
        pod_tool(&[
            "ping",
            "--to",
            &format!("{}:{ECHO_PORT}", to.ipv4),
            "--interval-ms",
            "10",
            "--max-secs",
            &(LOAD_SECS - 2).to_string(),
        ]),
    )
}

#[test]
fn five_handoffs_under_load_refuse_and_reset_nothing() {
    // Per-connection logs would make the agents, not the mesh, the load.
    // SAFETY: nextest runs this test in a process of its own, and no other
    // thread reads the environment yet.
    unsafe {
        std::env::set_var(
            ambit_tests::mesh::AGENT_LOG_ENV,
            "warn,node_agent::agent=info,node_agent::handoff=info",
        );
    }
    let mut tb = testbed_or_skip!("handoff_load");
    let n1 = tb.add_node("n1");
    let n2 = tb.add_node("n2");
    let far = tb.add_pod(&n1, "far", "shop");
    let legacy = tb.add_pod(&n1, "legacy", "legacy");
    let strict = tb.add_pod(&n2, "strict", "shop");
    let open = tb.add_pod(&n2, "open", "shop");
    let near = tb.add_pod(&n2, "near", "shop");
    let config = pods_yaml(&[&far, &open, &near])
        + &pods_yaml(&[&strict]).replacen("pods:\n", "", 1)
        + "    mtls: strict\n";
    let mut agents: BTreeMap<&str, Agent> = BTreeMap::new();
    agents.insert(
        "n1",
        Agent::start_with_config(&tb, &n1, &config, &[&far, &strict, &open, &near], &[]),
    );
    agents.insert(
        "n2",
        Agent::start_with_config(&tb, &n2, &config, &[&far, &strict, &open, &near], &[]),
    );
    let echoes = [serve(&tb, &strict), serve(&tb, &open)];
    let _rr = [rr_server(&tb, &strict), rr_server(&tb, &open)];

    // The load: connection churn cross-node (far → strict) and same-node
    // (near → open), and long-lived streams both ways across the bed.
    let churn = [crr(&tb, &far, &strict, "4"), crr(&tb, &near, &open, "4")];
    // And plaintext from outside the mesh keeps knocking on the strict pod:
    // no handoff may let one through.
    let outsider = crr(&tb, &legacy, &strict, "1");
    let pings: Vec<Proc> = (0..STREAMS)
        .map(|i| {
            if i % 2 == 0 {
                ping(&tb, &far, &open)
            } else {
                ping(&tb, &near, &strict)
            }
        })
        .collect();
    for pinger in &pings {
        pinger.wait_for_event("ping_up", WAIT);
    }

    // Five handoffs, alternating nodes, while the load runs.
    let mut retired = Vec::new();
    for generation in 1..=HANDOFFS {
        std::thread::sleep(Duration::from_millis(1500));
        let (name, node) = if generation % 2 == 1 {
            ("n2", &n2)
        } else {
            ("n1", &n1)
        };
        let next = Agent::spawn_successor(
            &tb,
            node,
            &config,
            u16::try_from(generation).expect("few handoffs"),
        );
        next.proc
            .wait_for_stderr_line(WAIT, |l| {
                l.contains("took the pods over from the previous agent")
            })
            .unwrap_or_else(|| {
                panic!(
                    "handoff {generation} on {name} did not complete\n{}",
                    next.proc.report()
                )
            });
        let previous = agents.insert(name, next).expect("an agent per node");
        previous
            .proc
            .wait_for_stderr_line(WAIT, |l| l.contains("stopped accepting and drains"))
            .expect("the previous agent lets go");
        retired.push(previous);
    }

    assert_churn_refused_nothing(&churn);
    assert_strict_refused_everything(&outsider);
    assert_streams_exact(&pings, &echoes);
    assert_retired_drained(&retired);
}

/// A retired agent still applies policy changes to the connections it
/// drains: a DENY added after the handoff cuts an open connection that
/// the old agent carries, as the new agent would.
#[test]
fn a_deny_after_a_handoff_cuts_what_the_retired_agent_still_carries() {
    let mut tb = testbed_or_skip!("handoff_deny");
    let n1 = tb.add_node("n1");
    let n2 = tb.add_node("n2");
    let client = tb.add_pod(&n1, "client", "shop");
    let server = tb.add_pod(&n2, "server", "shop");
    let pods = [&client, &server];
    let config = pods_yaml(&pods);
    let _client_agent = Agent::start_with_config(&tb, &n1, &config, &pods, &[]);
    let old = Agent::start_with_config(&tb, &n2, &config, &pods, &[]);
    let _echo = serve(&tb, &server);
    let pinger = tb.spawn_in_pod(
        &client,
        pod_tool(&[
            "ping",
            "--to",
            &format!("{}:{ECHO_PORT}", server.ipv4),
            "--max-secs",
            "60",
        ]),
    );
    pinger.wait_for_event("ping_up", WAIT);

    let new = Agent::spawn_successor(&tb, &n2, &config, 1);
    new.proc
        .wait_for_stderr_line(WAIT, |l| {
            l.contains("took the pods over from the previous agent")
        })
        .unwrap_or_else(|| panic!("the handoff did not complete\n{}", new.proc.report()));
    old.proc
        .wait_for_stderr_line(WAIT, |l| l.contains("stopped accepting and drains"))
        .expect("the previous agent lets go");
    // The old agent still carries the ping's connection.
    assert!(
        pinger
            .poll_json(Duration::from_millis(500), |l| l["event"] == "ping_end")
            .is_none(),
        "the handoff cut nothing"
    );

    let deny = format!(
        "{config}policies:
  - metadata: {{name: no-client, namespace: shop}}
    spec:
      selector: {{matchLabels: {{app: server}}}}
      action: DENY
      rules: [{{from: [{{source: {{principals: [cluster.local/ns/shop/sa/client]}}}}]}}]
"
    );
    // One file per node: the successor and the retired agent read the same.
    new.set_config_text(&deny);
    let end = pinger
        .poll_json(Duration::from_secs(5), |l| l["event"] == "ping_end")
        .unwrap_or_else(|| {
            panic!(
                "the DENY did not cut the connection the retired agent carries\n{}",
                old.proc.report()
            )
        });
    assert!(
        matches!(end["kind"].as_str(), Some("reset" | "eof")),
        "cut, not timed out: {end}"
    );
    old.proc
        .wait_for_stderr_line(WAIT, |l| {
            l.contains("open connection reset: the new policies deny it")
        })
        .expect("the retired agent logs the reset");
    let status = old
        .proc
        .wait_timeout(WAIT)
        .expect("with its connection cut, the retired agent exits");
    assert!(status.success(), "{status}\n{}", old.proc.report());
}

/// Every churn client: no failed connection, and the rate it was asked for.
fn assert_churn_refused_nothing(churn: &[Proc; 2]) {
    for (client, to) in churn
        .iter()
        .zip(["far → strict (cross-node)", "near → open (same node)"])
    {
        let (status, lines) = client.output_json_lines(Duration::from_secs(LOAD_SECS + 60));
        let report = lines
            .iter()
            .find(|l| l["event"] == "crr")
            .cloned()
            .unwrap_or(Value::Null);
        assert!(status.success(), "{to}: {report}\n{}", client.report());
        assert_eq!(
            report["errors"], 0,
            "{to}: connections failed during the handoffs: {report}"
        );
        let rate = report["rate"].as_f64().unwrap_or_default();
        eprintln!(
            "{to}: {} connections, {rate:.0}/s, p99 {} µs, 0 errors",
            report["samples"], report["p99_us"]
        );
        // The rate is the machine's (debug build, maybe two test beds at
        // once: 240-750/s seen here); the bench measures it in release
        // builds (about 3,000/s across a handoff). This only checks that
        // the handoffs happened under continuous churn.
        assert!(
            report["samples"].as_u64().unwrap_or_default() >= 1000 && rate >= 60.0,
            "{to}: the churn must keep going through the handoffs: {report}"
        );
    }
}

/// Plaintext from outside the mesh to the strict pod never completed a
/// round trip, before, during or after the handoffs.
fn assert_strict_refused_everything(outsider: &Proc) {
    let (_, lines) = outsider.output_json_lines(Duration::from_secs(LOAD_SECS + 60));
    let report = lines
        .iter()
        .find(|l| l["event"] == "crr")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        report["samples"], 0,
        "plaintext reached the strict pod: {report}"
    );
    assert!(
        report["errors"].as_u64().unwrap_or_default() > 100,
        "the outsider kept trying: {report}"
    );
}

/// Every long-lived stream ran to its end, and its server saw exactly the
/// bytes its client exchanged, in both directions (one byte each way per
/// round trip).
fn assert_streams_exact(pings: &[Proc], echoes: &[Proc; 2]) {
    let mut round_trips: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for pinger in pings {
        let end = pinger.wait_for_event("ping_end", Duration::from_secs(LOAD_SECS + 30));
        assert!(end["kind"].is_null(), "a long-lived stream was cut: {end}");
        let trips = end["round_trips"].as_u64().unwrap_or_default();
        assert!(trips > 500, "the stream kept exchanging: {end}");
        let up = pinger
            .json_lines()
            .into_iter()
            .find(|l| l["event"] == "ping_up")
            .expect("ping_up");
        round_trips
            .entry(ip_of(up["local"].as_str().unwrap_or("")).to_owned())
            .or_default()
            .push(trips);
    }
    let mut served: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for echo in echoes {
        let conns = echo.wait_for_events("conn", STREAMS / 2, WAIT);
        for conn in conns {
            assert_eq!(conn["bytes_in"], conn["bytes_out"], "{conn}");
            assert!(conn["error"].is_null(), "{conn}");
            served
                .entry(ip_of(conn["peer"].as_str().unwrap_or("")).to_owned())
                .or_default()
                .push(conn["bytes_in"].as_u64().unwrap_or_default());
        }
    }
    for counts in round_trips.values_mut().chain(served.values_mut()) {
        counts.sort_unstable();
    }
    assert_eq!(served, round_trips, "bytes seen by the servers, by client");
}

/// The retired agents drained what they carried and exited cleanly.
fn assert_retired_drained(retired: &[Agent]) {
    for agent in retired {
        let status = agent.proc.wait_timeout(WAIT).unwrap_or_else(|| {
            panic!(
                "a retired agent did not finish draining\n{}",
                agent.proc.report()
            )
        });
        assert!(status.success(), "{status}\n{}", agent.proc.report());
        assert!(
            agent.proc.stderr_text().contains("drained"),
            "{}",
            agent.proc.report()
        );
    }
}
