//! A black-holed destination delays only its own connections: a pod's HBONE
//! pool opens connections without holding its lock, so new connections to
//! a healthy destination never wait behind a handshake to an unreachable
//! one (node-agent/src/hbone/client.rs).

use std::time::{Duration, Instant};

use ambit_tests::{
    Proc, Testbed,
    mesh::Agent,
    testbed_or_skip,
    workload::{ClientServer, ECHO_PORT, client_and_server, pod_tool, send, serve},
};
use serde_json::Value;

/// The client agent's connect timeout: how long a connection to the
/// black-holed pod waits before it is refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the black-holed connections must have hung: the connect
/// timeout, less a margin.
const HUNG_AT_LEAST: Duration = Duration::from_secs(9);
/// Connections left hanging on the black-holed pod.
const HANGING: &str = "20";
/// New connections to the healthy pod, at once per round.
const HEALTHY_CONNS: &str = "20";
/// Rounds of them.
const HEALTHY_ROUNDS: &str = "5";
/// The bound on the healthy connections' p99 while the others hang.
const HEALTHY_P99_LIMIT: Duration = Duration::from_secs(1);

/// `pod-tool connect-times` from `pod` to `to`, started now.
fn spawn_connect_times(tb: &Testbed, pod: &ambit_tests::Pod, to: &str, args: &[&str]) -> Proc {
    let mut command = vec!["connect-times", "--to", to];
    command.extend_from_slice(args);
    tb.spawn_in_pod(pod, pod_tool(&command))
}

/// The `connect_times` report of a finished `pod-tool connect-times`.
fn report_of(times: &Proc, within: Duration) -> Value {
    let (_, lines) = times.output_json_lines(within);
    lines
        .into_iter()
        .find(|l| l["event"] == "connect_times")
        .unwrap_or_else(|| panic!("no connect_times report\n{}", times.report()))
}

/// Healthy connections from `pod` to `to`: their report, after checking
/// every one carried its round trip.
fn healthy_times(tb: &Testbed, pod: &ambit_tests::Pod, to: &str) -> Value {
    let times = spawn_connect_times(
        tb,
        pod,
        to,
        &[
            "--conns",
            HEALTHY_CONNS,
            "--rounds",
            HEALTHY_ROUNDS,
            "--timeout-secs",
            "15",
        ],
    );
    let report = report_of(&times, Duration::from_mins(2));
    assert!(
        report["failed_ms"].as_array().is_some_and(Vec::is_empty),
        "connections to the healthy pod failed: {report}"
    );
    report
}

fn p99(report: &Value) -> Duration {
    Duration::from_secs_f64(report["p99_us"].as_f64().expect("p99_us") / 1e6)
}

#[test]
fn a_black_holed_destination_delays_only_its_own_connections() {
    let mut tb = testbed_or_skip!("pool_isolation");
    let ClientServer {
        n1,
        n2,
        client,
        server,
    } = client_and_server(&mut tb);
    let sink = tb.add_pod(&n2, "sink", "shop");
    let pods = [&client, &server, &sink];
    let timeout_ms = CONNECT_TIMEOUT.as_millis().to_string();
    let _agent1 = Agent::start(&tb, &n1, &pods, &["--connect-timeout-ms", &timeout_ms]);
    let _agent2 = Agent::start(&tb, &n2, &pods, &[]);
    let _echo = serve(&tb, &server);
    let _sink_echo = serve(&tb, &sink);
    let healthy = format!("{}:{ECHO_PORT}", server.ipv4);
    let black_holed = format!("{}:{ECHO_PORT}", sink.ipv4);

    let without = healthy_times(&tb, &client, &healthy);
    eprintln!(
        "healthy p99 without black-holed connections: {:?}",
        p99(&without)
    );

    // Inside the sink's own network namespace, nothing goes back to the
    // client pod: the client agent's SYNs to the sink's HBONE port go
    // unanswered, as behind a firewall that drops them.
    let client_route = format!("{}/32", client.ipv4);
    let blackhole = tb.exec_in_netns(
        &sink.netns,
        &["ip", "route", "add", "blackhole", &client_route],
    );
    assert!(
        blackhole.status.success(),
        "ip route add blackhole: {blackhole:?}"
    );
    let hanging = spawn_connect_times(
        &tb,
        &client,
        &black_holed,
        &["--conns", HANGING, "--timeout-secs", "30"],
    );
    let hang_started = Instant::now();
    // Let every hanging connection reach the agent and wait on the pool.
    std::thread::sleep(Duration::from_secs(1));
    let with = healthy_times(&tb, &client, &healthy);
    let measured_after = hang_started.elapsed();

    let hung = report_of(&hanging, Duration::from_mins(1));
    let hung_ms: Vec<u64> = hung["failed_ms"]
        .as_array()
        .expect("failed_ms")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    eprintln!(
        "healthy p99 with {HANGING} black-holed connections hanging: {:?} (measured within {measured_after:?} of their start); the black-holed ones failed after {:?}..{:?} ms",
        p99(&with),
        hung_ms.first(),
        hung_ms.last()
    );
    assert_eq!(
        hung["samples"], 0,
        "no connection to the black-holed pod may succeed: {hung}"
    );
    assert_eq!(hung_ms.len().to_string(), HANGING, "{hung}");
    assert!(
        hung_ms
            .iter()
            .all(|ms| Duration::from_millis(*ms) >= HUNG_AT_LEAST),
        "the black-holed connections must have hung for the connect timeout: {hung}"
    );
    assert!(
        measured_after < HUNG_AT_LEAST,
        "the healthy connections were measured after the black-holed ones gave up ({measured_after:?}); the measurement proves nothing"
    );
    assert!(
        p99(&with) < HEALTHY_P99_LIMIT,
        "with the black-holed connections hanging, healthy connections took p99 {:?} (without: {:?}): {with}",
        p99(&with),
        p99(&without)
    );

    // The failed handshakes left nothing behind: with the black hole gone,
    // the sink's next connection gets a new handshake and goes through.
    let cleared = tb.exec_in_netns(
        &sink.netns,
        &["ip", "route", "del", "blackhole", &client_route],
    );
    assert!(
        cleared.status.success(),
        "ip route del blackhole: {cleared:?}"
    );
    send(&tb, &client, &black_holed, 1000);
}
