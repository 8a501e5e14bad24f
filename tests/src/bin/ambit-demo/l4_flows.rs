//! Act two, the L4 flows: seven 1 MiB echo exchanges between the pods, one
//! at a time. For each, the agents' per-pod counters before and after show
//! whether it was captured on the way out (`connect4` rewrites it to the
//! agent's outbound listener) and on the way in (`sk_lookup` steers it to
//! the inbound listener); the agents' connection logs show how it was
//! secured (mutual TLS between meshed pods of different nodes, the
//! same-node fast path between meshed pods of one node, plaintext when one
//! end is outside the mesh), both ends' SPIFFE ids, and the authorization
//! verdict with the policy that decided it. A pod outside the mesh
//! (`legacy/batch`) is left alone and still talks to meshed pods, except
//! to `shop/cache`, whose policy admits only the shop's frontend and
//! backend.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ambit_tests::{Proc, Testbed};
use serde::Serialize;
use serde_json::Value;

use crate::cluster::{ECHO_PORT, NodeAgents, OpenedConnections, Workload, find_workload};
use crate::steps::human_bytes;
use crate::steps::{DemoError, check_interrupted, progress, wait_until};

/// How much each flow sends (and expects back).
pub const FLOW_BYTES: u64 = 1 << 20;
/// pod-tool's limit for connecting and for each read or write.
const CLIENT_IO_TIMEOUT_SECS: &str = "10";
/// How long one flow may take before its client is killed.
const FLOW_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to report a connection its client finished.
const SERVER_REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The flows, run one at a time: (source pod, destination pod, whether
/// policy allows it).
const FLOWS: [(&str, &str, bool); 7] = [
    ("frontend", "backend", true),
    ("frontend", "cache", true),
    ("batch", "backend", true),
    ("backend", "frontend", true),
    ("cache", "batch", true),
    ("backend", "cache", true),
    ("batch", "cache", false),
];

/// Runs [`FLOWS`] one after the other, a line for each as it ends.
pub fn run(
    testbed: &Testbed,
    agents: &NodeAgents,
    workloads: &[Workload],
    pod_tool: &Path,
) -> Result<Vec<FlowReport>, DemoError> {
    let mut flows = Vec::new();
    for (number, (source, destination, allowed)) in FLOWS.iter().enumerate() {
        check_interrupted()?;
        let source = find_workload(workloads, source);
        let destination = find_workload(workloads, destination);
        let flow = run_flow(testbed, agents, (source, destination, *allowed), pod_tool)?;
        progress(&format!(
            "flow {}/{}: {}/{} -> {}/{} ({}): {}",
            number + 1,
            FLOWS.len(),
            source.spec.namespace,
            source.spec.name,
            destination.spec.namespace,
            destination.spec.name,
            human_bytes(FLOW_BYTES),
            flow.result()
        ));
        flows.push(flow);
    }
    Ok(flows)
}

/// One flow: what was expected, what the mesh did, what arrived.
#[derive(Serialize)]
pub struct FlowReport {
    pub source: Endpoint,
    pub destination: Endpoint,
    pub expected: Capture,
    pub captured: Capture,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub echo_ok: bool,
    /// The client's address as the destination's server saw it.
    pub server_saw: Option<String>,
    /// How the mesh secured it: `mutual_tls`, `same_node` or `plaintext`.
    pub security: String,
    /// The two ends' SPIFFE ids as the agents recorded them.
    pub source_identity: Option<String>,
    /// The destination's SPIFFE id.
    pub destination_identity: Option<String>,
    /// Whether policy should allow it.
    pub expected_allowed: bool,
    /// The authorization verdict the agents recorded: `allow` or `deny`,
    /// and the deciding policy.
    pub verdict: Option<String>,
    pub policy: Option<String>,
    pub millis: Option<u64>,
    pub as_expected: bool,
    /// Why the flow is not as expected; empty when it is.
    pub problems: Vec<String>,
    /// The client's output, shown when the flow failed.
    #[serde(skip)]
    pub client_report: String,
}

#[derive(Serialize)]
pub struct Endpoint {
    pub namespace: String,
    pub pod: String,
    pub node: String,
    pub address: String,
    pub enrolled: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capture {
    pub outbound: bool,
    pub inbound: bool,
}

/// Sends [`FLOW_BYTES`] from `source` to `destination`'s echo server and
/// compares what the agents counted with what enrollment predicts. A flow
/// that misbehaves is reported, not an error; an agent that stops answering
/// is an error.
fn run_flow(
    testbed: &Testbed,
    agents: &NodeAgents,
    (source, destination, allowed): (&Workload, &Workload, bool),
    pod_tool: &Path,
) -> Result<FlowReport, DemoError> {
    let source_before = agents.opened_connections(testbed, &source.pod)?;
    let destination_before = agents.opened_connections(testbed, &destination.pod)?;
    let server_conns_before = conn_events(&destination.server).len();

    let to = SocketAddr::from((destination.pod.ipv4, ECHO_PORT));
    let mut send_command = Command::new(pod_tool);
    send_command.args([
        "send",
        "--to",
        &to.to_string(),
        "--bytes",
        &FLOW_BYTES.to_string(),
        "--timeout-secs",
        CLIENT_IO_TIMEOUT_SECS,
    ]);
    let client = testbed.spawn_in_pod(&source.pod, send_command);
    let mut problems = Vec::new();
    if wait_until(FLOW_TIMEOUT, || Ok(client.try_wait()))?.is_none() {
        client.kill();
        problems.push(format!("the client did not finish within {FLOW_TIMEOUT:?}"));
    }
    // The client has exited: this only waits for the end of its stdout.
    let (_, lines) = client.output_json_lines(Duration::from_secs(5));
    let sent = lines.iter().find(|line| line["event"] == "sent");
    let client_error = lines
        .iter()
        .find_map(|line| line["error"].as_str())
        .map(str::to_owned);
    let echo_ok = sent.is_some_and(|sent| sent["echo_ok"] == true);
    let bytes_sent = sent.and_then(|sent| sent["bytes_sent"].as_u64());
    let bytes_received = sent.and_then(|sent| sent["bytes_received"].as_u64());
    problems.extend(exchange_problem(
        allowed,
        echo_ok,
        client_error.as_deref(),
        bytes_received,
    ));

    // The server reports a connection once both ends are closed; give it a
    // moment when the client says the exchange completed.
    let report_wait = if echo_ok {
        SERVER_REPORT_TIMEOUT
    } else {
        Duration::from_millis(500)
    };
    let server_conn = wait_until(report_wait, || {
        Ok(conn_events(&destination.server)
            .into_iter()
            .nth(server_conns_before))
    })?;
    let server_saw = server_conn
        .as_ref()
        .and_then(|conn| conn["peer"].as_str())
        .map(|peer| {
            peer.parse::<SocketAddr>()
                .map_or(peer.to_owned(), |addr| addr.ip().to_string())
        });
    if echo_ok && server_conn.is_none() {
        problems.push("the server reported no connection".to_owned());
    }
    if !allowed && server_conn.is_some() {
        problems.push("a connection that policy denies reached the server".to_owned());
    }

    // Proxies count a connection when they accept it, before any byte moves,
    // so the counts are final once the exchange is over.
    let source_after = agents.opened_connections(testbed, &source.pod)?;
    let destination_after = agents.opened_connections(testbed, &destination.pod)?;
    let captured = Capture {
        outbound: grew(source_before, source_after, |opened| opened.outbound),
        inbound: grew(destination_before, destination_after, |opened| {
            opened.inbound
        }),
    };
    let expected = expected_capture(source, destination);
    problems.extend(capture_problems(source, destination, expected, captured));
    let record = flow_security(testbed, agents, source, destination, to)?;
    let security = record["security"]
        .as_str()
        .unwrap_or("plaintext")
        .to_owned();
    if let Some(problem) = security_problem(source, destination, &security).filter(|_| echo_ok) {
        problems.push(problem);
    }
    let (verdict, policy) = recorded_verdict(&record);
    problems.extend(verdict_problem(destination, allowed, verdict.as_deref()));

    Ok(FlowReport {
        source: Endpoint::new(source, source.pod.ipv4.to_string()),
        destination: Endpoint::new(destination, to.to_string()),
        expected,
        captured,
        bytes_sent: bytes_sent.unwrap_or(0),
        bytes_received: bytes_received.unwrap_or(0),
        echo_ok,
        server_saw,
        security,
        source_identity: record["src_identity"].as_str().map(str::to_owned),
        destination_identity: record["dst_identity"].as_str().map(str::to_owned),
        expected_allowed: allowed,
        verdict,
        policy,
        millis: sent.and_then(|sent| sent["millis"].as_u64()),
        as_expected: problems.is_empty(),
        problems,
        client_report: client.report(),
    })
}

/// What is wrong with the exchange's outcome: an allowed flow must echo
/// every byte; a denied one must not complete.
fn exchange_problem(
    allowed: bool,
    echo_ok: bool,
    client_error: Option<&str>,
    bytes_received: Option<u64>,
) -> Option<String> {
    if !allowed {
        return echo_ok
            .then(|| "policy should have denied it, yet the exchange completed".to_owned());
    }
    if echo_ok {
        return None;
    }
    Some(match (client_error, bytes_received) {
        (Some(error), _) => format!("client: {error}"),
        (None, Some(received)) => format!(
            "echo did not match ({} of {} back)",
            human_bytes(received),
            human_bytes(FLOW_BYTES)
        ),
        (None, None) => "the client reported nothing".to_owned(),
    })
}

/// The authorization verdict (`allow`/`deny`) and deciding policy in an
/// agent's connection record.
fn recorded_verdict(record: &Value) -> (Option<String>, Option<String>) {
    let field = |name: &str| record["authorization"][name].as_str().map(str::to_owned);
    (field("decision"), field("policy"))
}

/// What is wrong with the recorded verdict. Only a meshed destination's
/// agent enforces policy; a destination outside the mesh has no verdict.
fn verdict_problem(destination: &Workload, allowed: bool, verdict: Option<&str>) -> Option<String> {
    let expected = match (destination.spec.enrolled, allowed) {
        (false, _) => None,
        (true, true) => Some("allow"),
        (true, false) => Some("deny"),
    };
    (verdict != expected).then(|| {
        format!(
            "expected the verdict {}, the agents recorded {}",
            expected.unwrap_or("none"),
            verdict.unwrap_or("none")
        )
    })
}

/// What enrollment predicts: an enrolled source is captured on the way out,
/// an enrolled destination on the way in, except on the same-node fast path,
/// which goes past the destination's inbound proxy.
fn expected_capture(source: &Workload, destination: &Workload) -> Capture {
    let same_node_fast_path = source.spec.enrolled
        && destination.spec.enrolled
        && source.spec.node == destination.spec.node;
    Capture {
        outbound: source.spec.enrolled,
        inbound: destination.spec.enrolled && !same_node_fast_path,
    }
}

/// Where the capture differs from what enrollment predicts.
fn capture_problems(
    source: &Workload,
    destination: &Workload,
    expected: Capture,
    captured: Capture,
) -> Vec<String> {
    let mut problems = Vec::new();
    if captured.outbound != expected.outbound {
        problems.push(capture_problem("outbound", source, captured.outbound));
    }
    if captured.inbound != expected.inbound {
        problems.push(capture_problem("inbound", destination, captured.inbound));
    }
    problems
}

/// The agents' record of the flow from `source` to `to` (`null` when none
/// was found in time).
fn flow_security(
    testbed: &Testbed,
    agents: &NodeAgents,
    source: &Workload,
    destination: &Workload,
    to: SocketAddr,
) -> Result<Value, DemoError> {
    let record = wait_until(SERVER_REPORT_TIMEOUT, || {
        agents.flow_security(testbed, &source.pod, &destination.pod, to)
    })?;
    Ok(record.unwrap_or(Value::Null))
}

/// What is wrong with how a flow was secured: mutual TLS between meshed pods
/// of different nodes, the same-node fast path between meshed pods of one
/// node, plaintext when one end is outside the mesh.
fn security_problem(source: &Workload, destination: &Workload, security: &str) -> Option<String> {
    let expected = match (
        source.spec.enrolled && destination.spec.enrolled,
        source.spec.node == destination.spec.node,
    ) {
        (true, false) => "mutual_tls",
        (true, true) => "same_node",
        (false, _) => "plaintext",
    };
    (security != expected).then(|| format!("expected {expected}, the mesh used {security}"))
}

/// Whether the counter picked by `count` grew between two readings; a pod
/// the agent does not list (not enrolled) has no counters and captured nothing.
fn grew(
    before: Option<OpenedConnections>,
    after: Option<OpenedConnections>,
    count: impl Fn(OpenedConnections) -> u64,
) -> bool {
    match (before, after) {
        (Some(before), Some(after)) => count(after) > count(before),
        (None, Some(after)) => count(after) > 0,
        (_, None) => false,
    }
}

fn capture_problem(direction: &str, workload: &Workload, captured: bool) -> String {
    let pod = format!("{}/{}", workload.spec.namespace, workload.spec.name);
    if captured {
        format!("{direction} was captured although {pod} is not enrolled")
    } else {
        format!("{direction} was not captured although {pod} is enrolled")
    }
}

/// The `{"event":"conn"}` lines an echo server printed so far.
fn conn_events(server: &Proc) -> Vec<Value> {
    server
        .json_lines()
        .into_iter()
        .filter(|line| line["event"] == "conn")
        .collect()
}

// === impl FlowReport ===

impl FlowReport {
    /// `ok`, or `FAIL: ` and the problems.
    pub fn result(&self) -> String {
        if self.as_expected {
            "ok".to_owned()
        } else {
            format!("FAIL: {}", self.problems.join("; "))
        }
    }
}

// === impl Endpoint ===

impl Endpoint {
    fn new(workload: &Workload, address: String) -> Self {
        Self {
            namespace: workload.spec.namespace.to_owned(),
            pod: workload.spec.name.to_owned(),
            node: workload.spec.node.to_owned(),
            address,
            enrolled: workload.spec.enrolled,
        }
    }
}
