//! `ambit-demo`: a two-node meshed cluster on this host, seven TCP flows
//! through it, a table of what the mesh did with each, then L7 checks
//! through a waypoint on two more nodes.
//!
//! The demo builds a test bed of simulated nodes and pods (network namespaces
//! and cgroups), runs the real node agent on each node, and sends 1 MiB echo
//! exchanges between pods. For every flow it reads the agents' per-pod
//! counters before and after, and shows:
//!
//! - an enrolled pod's connections are captured on the way out (`connect4`
//!   rewrites them to the agent's outbound listener) and on the way in
//!   (`sk_lookup` steers them to the inbound listener);
//! - a pod that is not enrolled (`legacy/batch`) is left alone in both
//!   directions, and still talks to enrolled pods;
//! - every byte arrives and comes back, whichever side is meshed;
//! - how each flow was secured, with both ends' SPIFFE ids from the agents'
//!   connection logs: mutual TLS (HBONE) between meshed pods of different
//!   nodes, the same-node fast path between meshed pods of one node,
//!   plaintext when one end is outside the mesh;
//! - the authorization verdict and the policy that decided it: `shop/cache`
//!   admits only the shop's frontend and backend, so the legacy batch job's
//!   plaintext connection to it is refused;
//! - L7 through a waypoint, on two more nodes: a 90/10 canary split and
//!   HTTP authorization by method and principal (see `l7.rs`).
//!
//! `cargo xtask demo` builds the release binaries and runs this as root.
//! Exit status: 0 when every flow behaved as expected, 1 when one did not or
//! the demo could not finish, 2 when this machine cannot host a test bed, 130
//! when interrupted. Everything the demo made is removed before it exits,
//! also after Ctrl-C or SIGTERM.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use ambit_tests::mesh::{self, AGENT_BIN, AGENT_READY_TIMEOUT, Agent};
use ambit_tests::{Pod, Proc, Testbed, interrupt};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use serde_json::Value;

#[path = "ambit-demo/l7.rs"]
mod l7;

/// The test bed's name, part of every namespace and cgroup it creates.
const TESTBED_NAME: &str = "demo";
/// Where every pod's echo server listens.
const ECHO_PORT: u16 = 8080;
/// How much each flow sends (and expects back).
const FLOW_BYTES: u64 = 1 << 20;
/// pod-tool's limit for connecting and for each read or write.
const CLIENT_IO_TIMEOUT_SECS: &str = "10";
/// How long one flow may take before its client is killed.
const FLOW_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to report a connection its client finished.
const SERVER_REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an echo server may take to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often waits look again (and notice Ctrl-C).
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The eBPF counters the summary shows, per node.
const SHOWN_COUNTERS: [&str; 3] = [
    "connect_redirected",
    "inbound_steered",
    "connect_skipped_not_enrolled",
];

/// The nodes, in creation order.
const NODES: [&str; 2] = ["n1", "n2"];

/// The pods, in creation order.
const PODS: [PodSpec; 4] = [
    PodSpec {
        name: "frontend",
        namespace: "shop",
        node: "n1",
        enrolled: true,
    },
    PodSpec {
        name: "batch",
        namespace: "legacy",
        node: "n1",
        enrolled: false,
    },
    PodSpec {
        name: "backend",
        namespace: "shop",
        node: "n2",
        enrolled: true,
    },
    PodSpec {
        name: "cache",
        namespace: "shop",
        node: "n2",
        enrolled: true,
    },
];

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

/// The mesh's authorization policies: the cache admits the shop's frontend
/// and backend only (by their SPIFFE ids); no policy selects the others.
const POLICIES: &str = "policies:
  - apiVersion: security.ambit.dev/v1alpha1
    kind: AuthorizationPolicy
    metadata: {name: cache-clients, namespace: shop}
    spec:
      selector: {matchLabels: {app: cache}}
      action: ALLOW
      rules:
        - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend, cluster.local/ns/shop/sa/backend]}}]
          to: [{operation: {ports: ['8080']}}]
";

/// The shop's services: they name the backend's and the cache's traffic
/// (`destination_service`, `ambit services`), and meshed clients reach them
/// by cluster IP (only inside the pods: the connect hook redirects them).
const SERVICES: &str = "services:
  - {name: backend, namespace: shop, selector: {app: backend}, clusterIPs: [10.96.0.10], ports: [{name: http, port: 80, targetPort: 8080}]}
  - {name: cache, namespace: shop, selector: {app: cache}, clusterIPs: [10.96.0.11], ports: [{name: cache, port: 6379, targetPort: 8080}]}
";

/// The backend service's cluster IP and port, which the inspection's open
/// connection dials.
const BACKEND_SERVICE: &str = "10.96.0.10:80";

#[derive(Parser)]
#[command(
    about = "Runs a two-node ambit mesh on this host (as root) and shows which flows it captured"
)]
struct Cli {
    /// How to print the results.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    /// Show every `ambit` listing at the end (workloads, services, certs,
    /// policies, check, the pinned eBPF state), not only `connections` and
    /// `bpf prog list`: the output docs/operations.md shows.
    #[arg(long)]
    every_command: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON document for scripts.
    Json,
}

/// One pod of the demo and whether its node agent enrolls it.
struct PodSpec {
    name: &'static str,
    namespace: &'static str,
    node: &'static str,
    enrolled: bool,
}

/// A pod of the running demo with its echo server.
struct Workload {
    spec: &'static PodSpec,
    pod: Pod,
    server: Proc,
}

/// The node agents, stopped with SIGTERM when dropped (so they detach and
/// unpin their eBPF programs) before the test bed removes their nodes.
#[derive(Default)]
struct NodeAgents(Vec<Agent>);

/// Why the demo could not run to its end.
enum DemoError {
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// A step failed; `detail` is the output of the process involved.
    Step { what: String, detail: String },
}

/// Connections an agent's proxies accepted for one pod.
#[derive(Clone, Copy)]
struct OpenedConnections {
    outbound: u64,
    inbound: u64,
}

/// Everything the demo found out, as `--output json` prints it.
#[derive(Serialize)]
struct DemoReport {
    flows: Vec<FlowReport>,
    flows_as_expected: usize,
    flows_total: usize,
    /// Node name → eBPF counter name → value.
    counters: BTreeMap<String, BTreeMap<String, u64>>,
    /// What `ambit` shows on each node at the end.
    inspections: Vec<Inspection>,
    /// The waypoint's checks.
    l7: Vec<l7::L7Check>,
}

/// One `ambit` command run on a node, and what it printed.
#[derive(Serialize)]
struct Inspection {
    node: String,
    command: String,
    output: String,
}

/// One flow: what was expected, what the mesh did, what arrived.
#[derive(Serialize)]
struct FlowReport {
    source: Endpoint,
    destination: Endpoint,
    expected: Capture,
    captured: Capture,
    bytes_sent: u64,
    bytes_received: u64,
    echo_ok: bool,
    /// The client's address as the destination's server saw it.
    server_saw: Option<String>,
    /// How the mesh secured it: `mutual_tls`, `same_node` or `plaintext`.
    security: String,
    /// The two ends' SPIFFE ids as the agents recorded them.
    source_identity: Option<String>,
    /// The destination's SPIFFE id.
    destination_identity: Option<String>,
    /// Whether policy should allow it.
    expected_allowed: bool,
    /// The authorization verdict the agents recorded: `allow` or `deny`,
    /// and the deciding policy.
    verdict: Option<String>,
    policy: Option<String>,
    millis: Option<u64>,
    as_expected: bool,
    /// Why the flow is not as expected; empty when it is.
    problems: Vec<String>,
    /// The client's output, shown when the flow failed.
    #[serde(skip)]
    client_report: String,
}

#[derive(Serialize)]
struct Endpoint {
    namespace: String,
    pod: String,
    node: String,
    address: String,
    enrolled: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
struct Capture {
    outbound: bool,
    inbound: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = interrupt::install() {
        eprintln!("ambit-demo: cannot install the Ctrl-C handler: {error}");
        return ExitCode::FAILURE;
    }
    // Both lookups panic with a hint to build when a binary is missing; do
    // them before anything needs cleaning up.
    let pod_tool = Testbed::bin("pod-tool");
    let _ = Testbed::bin(AGENT_BIN);

    let mut testbed = match Testbed::new(TESTBED_NAME) {
        Ok(testbed) => testbed,
        Err(skip) => {
            eprintln!("ambit-demo: cannot build a test bed here: {skip}");
            eprintln!("hint: run as root: sudo cargo xtask demo");
            return ExitCode::from(2);
        }
    };
    let mut agents = NodeAgents::default();
    let outcome = run_demo(&mut testbed, &mut agents, &pod_tool, cli.every_command);
    let code = finish(outcome, cli.output, &agents);
    drop(agents);
    progress(&format!(
        "removing the test bed ({}: namespaces, cgroups, bpffs)",
        testbed.id()
    ));
    drop(testbed);
    code
}

/// Builds the cluster, runs the flows and collects the report. The agents go
/// into `agents` as they start so the caller can show their output and stop
/// them, whatever happens here.
fn run_demo(
    testbed: &mut Testbed,
    agents: &mut NodeAgents,
    pod_tool: &Path,
    every_command: bool,
) -> Result<DemoReport, DemoError> {
    progress(&format!(
        "creating nodes {} and pods {}",
        NODES.join(", "),
        PODS.iter()
            .map(|spec| format!("{}/{}@{}", spec.namespace, spec.name, spec.node))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut pods = Vec::new();
    for node_name in NODES {
        check_interrupted()?;
        let node = testbed.add_node(node_name);
        for spec in PODS.iter().filter(|spec| spec.node == node_name) {
            pods.push((spec, testbed.add_pod(&node, spec.name, spec.namespace)));
        }
    }

    // Every agent knows every meshed pod: it enrolls its own node's and
    // reaches the others over HBONE.
    let meshed: Vec<&Pod> = pods
        .iter()
        .filter(|(spec, _)| spec.enrolled)
        .map(|(_, pod)| pod)
        .collect();
    for node in testbed.nodes().cloned().collect::<Vec<_>>() {
        check_interrupted()?;
        let enrolled: Vec<&Pod> = pods
            .iter()
            .filter(|(spec, _)| spec.node == node.name && spec.enrolled)
            .map(|(_, pod)| pod)
            .collect();
        let names: Vec<&str> = enrolled.iter().map(|pod| pod.name.as_str()).collect();
        progress(&format!(
            "starting the node agent on {} (enrolls {})",
            node.name,
            names.join(", ")
        ));
        agents.start(testbed, &node, &enrolled, &meshed)?;
    }

    check_interrupted()?;
    progress(&format!(
        "starting echo servers on port {ECHO_PORT} in {}",
        pods.iter()
            .map(|(spec, _)| spec.name)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let workloads = start_servers(testbed, pods, pod_tool)?;

    let mut flows = Vec::new();
    for (number, (source, destination, allowed)) in FLOWS.iter().enumerate() {
        check_interrupted()?;
        let source = find_workload(&workloads, source);
        let destination = find_workload(&workloads, destination);
        progress(&format!(
            "flow {}/{}: {}/{} -> {}/{} ({})",
            number + 1,
            FLOWS.len(),
            source.spec.namespace,
            source.spec.name,
            destination.spec.namespace,
            destination.spec.name,
            human_bytes(FLOW_BYTES)
        ));
        let flow = run_flow(testbed, agents, (source, destination, *allowed), pod_tool)?;
        progress(&format!("  {}", flow.result()));
        flows.push(flow);
    }

    check_interrupted()?;
    progress("reading the agents' eBPF counters");
    let mut counters = BTreeMap::new();
    for agent in &agents.0 {
        counters.insert(agent.node.name.clone(), ebpf_counters(testbed, agent)?);
    }
    progress(&format!(
        "asking `ambit` what each node sees, with frontend -> backend open (dialled as the service's cluster IP {BACKEND_SERVICE})"
    ));
    let frontend = find_workload(&workloads, "frontend");
    let mut ping = Command::new(pod_tool);
    ping.args(["ping", "--to", BACKEND_SERVICE])
        .args(["--max-secs", "30"]);
    let pinger = testbed.spawn_in_pod(&frontend.pod, ping);
    if pinger
        .poll_json(Duration::from_secs(10), |e| e["event"] == "ping_up")
        .is_none()
    {
        return Err(DemoError::step(
            "the open connection for the inspection did not come up".to_owned(),
            pinger.report(),
        ));
    }
    let inspections = inspect(testbed, agents, every_command)?;
    drop(pinger);
    check_interrupted()?;
    let l7 = l7::run(testbed, progress)
        .map_err(|detail| DemoError::step("the waypoint part could not run".to_owned(), detail))?;
    Ok(DemoReport {
        l7,
        flows_as_expected: flows.iter().filter(|flow| flow.as_expected).count(),
        flows_total: flows.len(),
        flows,
        counters,
        inspections,
    })
}

/// Prints the results (or why there are none) and picks the exit code.
fn finish(
    outcome: Result<DemoReport, DemoError>,
    output: OutputFormat,
    agents: &NodeAgents,
) -> ExitCode {
    let report = match outcome {
        Ok(report) => report,
        // A Ctrl-C from the terminal reaches the agents and workloads too, so
        // a step may have failed because of it: the interruption is the news.
        Err(DemoError::Interrupted) => return interrupted(),
        Err(_) if interrupt::requested() => return interrupted(),
        Err(DemoError::Step { what, detail }) => {
            eprintln!("ambit-demo: {what}");
            if !detail.is_empty() {
                eprintln!("{detail}");
            }
            agents.print_reports();
            return ExitCode::FAILURE;
        }
    };
    match output {
        OutputFormat::Table => print!("{}", render_report(&report)),
        OutputFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("ambit-demo: cannot encode the report as JSON: {error}");
                return ExitCode::FAILURE;
            }
        },
    }
    let l7_ok = report.l7.iter().all(|check| check.ok);
    if report.flows_as_expected == report.flows_total && l7_ok {
        return ExitCode::SUCCESS;
    }
    if !l7_ok {
        eprintln!("\nambit-demo: some waypoint checks did not behave as expected");
    }
    eprintln!("\nambit-demo: some flows did not behave as expected; the processes involved said:");
    for flow in report.flows.iter().filter(|flow| !flow.as_expected) {
        eprintln!("{}", flow.client_report);
    }
    agents.print_reports();
    ExitCode::FAILURE
}

fn interrupted() -> ExitCode {
    eprintln!("ambit-demo: interrupted; cleaning up");
    ExitCode::from(130)
}

/// Starts `pod-tool serve` in every pod and waits until all of them listen.
fn start_servers(
    testbed: &Testbed,
    pods: Vec<(&'static PodSpec, Pod)>,
    pod_tool: &Path,
) -> Result<Vec<Workload>, DemoError> {
    let listen = format!("0.0.0.0:{ECHO_PORT}");
    let workloads: Vec<Workload> = pods
        .into_iter()
        .map(|(spec, pod)| {
            let mut serve = Command::new(pod_tool);
            serve.args(["serve", "--listen", &listen]);
            let server = testbed.spawn_in_pod(&pod, serve);
            Workload { spec, pod, server }
        })
        .collect();
    for workload in &workloads {
        let server = &workload.server;
        let listening = wait_until(LISTEN_TIMEOUT, || {
            if let Some(line) =
                server.poll_json(Duration::ZERO, |line| line["event"] == "listening")
            {
                return Ok(Some(line));
            }
            match server.try_wait() {
                Some(status) => Err(DemoError::step(
                    format!(
                        "the echo server in {} exited ({status}) before listening",
                        workload.pod.name
                    ),
                    server.report(),
                )),
                None => Ok(None),
            }
        })?;
        if listening.is_none() {
            return Err(DemoError::step(
                format!(
                    "the echo server in {} did not listen within {LISTEN_TIMEOUT:?}",
                    workload.pod.name
                ),
                server.report(),
            ));
        }
    }
    Ok(workloads)
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

fn find_workload<'a>(workloads: &'a [Workload], name: &str) -> &'a Workload {
    workloads
        .iter()
        .find(|workload| workload.spec.name == name)
        .unwrap_or_else(|| panic!("FLOWS names {name}, which is not in PODS"))
}

/// The counters in [`SHOWN_COUNTERS`] from an agent's `/counters`.
fn ebpf_counters(testbed: &Testbed, agent: &Agent) -> Result<BTreeMap<String, u64>, DemoError> {
    let counters = admin_json(testbed, agent, "/counters")?;
    SHOWN_COUNTERS
        .iter()
        .map(|&name| {
            counters[name]
                .as_u64()
                .map(|value| (name.to_owned(), value))
                .ok_or_else(|| {
                    DemoError::step(
                        format!("the agent on {} has no counter {name}", agent.node.name),
                        counters.to_string(),
                    )
                })
        })
        .collect()
}

/// `GET path` on an agent's admin API, parsed as JSON.
fn admin_json(testbed: &Testbed, agent: &Agent, path: &str) -> Result<Value, DemoError> {
    let body = agent.get(testbed, path).ok_or_else(|| {
        DemoError::step(
            format!(
                "the admin API of the agent on {} did not answer {path}",
                agent.node.name
            ),
            String::new(),
        )
    })?;
    serde_json::from_str(&body).map_err(|error| {
        DemoError::step(
            format!(
                "the agent on {} sent bad JSON for {path}: {error}",
                agent.node.name
            ),
            body,
        )
    })
}

/// Calls `probe` until it returns `Some`, `timeout` passes (`Ok(None)`), it
/// fails, or the demo is interrupted.
fn wait_until<T>(
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>, DemoError>,
) -> Result<Option<T>, DemoError> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupted()?;
        if let Some(found) = probe()? {
            return Ok(Some(found));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn check_interrupted() -> Result<(), DemoError> {
    if interrupt::requested() {
        Err(DemoError::Interrupted)
    } else {
        Ok(())
    }
}

/// A progress line on stderr, so stdout stays the report alone.
fn progress(message: &str) {
    eprintln!("▸ {message}");
}

/// The flow table, the summary line and the counter table.
fn render_report(report: &DemoReport) -> String {
    let flow_rows: Vec<Vec<String>> = report
        .flows
        .iter()
        .map(|flow| {
            vec![
                format!(
                    "{}/{}@{}",
                    flow.source.namespace, flow.source.pod, flow.source.node
                ),
                format!(
                    "{}/{} {}",
                    flow.destination.namespace, flow.destination.pod, flow.destination.address
                ),
                yes_no(flow.captured.outbound).to_owned(),
                yes_no(flow.captured.inbound).to_owned(),
                human_bytes(flow.bytes_sent),
                human_bytes(flow.bytes_received),
                flow.server_saw.clone().unwrap_or_else(|| "-".to_owned()),
                flow.security.clone(),
                match (&flow.verdict, &flow.policy) {
                    (Some(verdict), Some(policy)) => format!("{verdict} ({policy})"),
                    _ => "-".to_owned(),
                },
                format!(
                    "{} → {}",
                    short_identity(flow.source_identity.as_deref()),
                    short_identity(flow.destination_identity.as_deref())
                ),
                flow.result(),
            ]
        })
        .collect();
    let mut out = String::from("\n");
    out.push_str(&render_table(
        &[
            "SOURCE",
            "DESTINATION",
            "OUT CAPTURE",
            "IN CAPTURE",
            "SENT",
            "RECEIVED",
            "SERVER SAW",
            "SECURITY",
            "VERDICT (POLICY)",
            "IDENTITIES",
            "RESULT",
        ],
        &flow_rows,
    ));
    let _ = writeln!(
        out,
        "\n{}/{} flows as expected\n",
        report.flows_as_expected, report.flows_total
    );

    let mut header = vec!["EBPF COUNTER"];
    header.extend(report.counters.keys().map(String::as_str));
    let counter_rows: Vec<Vec<String>> = SHOWN_COUNTERS
        .iter()
        .map(|&name| {
            let mut row = vec![name.to_owned()];
            row.extend(
                report
                    .counters
                    .values()
                    .map(|node| node.get(name).map_or("-".to_owned(), u64::to_string)),
            );
            row
        })
        .collect();
    out.push_str(&render_table(&header, &counter_rows));
    let l7_rows: Vec<Vec<String>> = report
        .l7
        .iter()
        .map(|check| {
            vec![
                check.request.clone(),
                check.expected.clone(),
                check.got.clone(),
                if check.ok { "ok" } else { "NOT AS EXPECTED" }.to_owned(),
            ]
        })
        .collect();
    out.push_str("\nL7 through the waypoint shop/wp (Service shop/backend):\n");
    out.push_str(&render_table(
        &["REQUEST", "EXPECTED", "GOT", "RESULT"],
        &l7_rows,
    ));
    for inspection in &report.inspections {
        let _ = write!(
            out,
            "\n$ {}   # on {}\n{}",
            inspection.command, inspection.node, inspection.output
        );
    }
    out
}

/// Runs `ambit connections` and `ambit bpf prog list` (with
/// `every_command`, every listing) on every node, in its network namespace
/// (where the agent's admin API listens).
fn inspect(
    testbed: &Testbed,
    agents: &NodeAgents,
    every_command: bool,
) -> Result<Vec<Inspection>, DemoError> {
    let mut inspections = Vec::new();
    for agent in &agents.0 {
        let bpffs_dir = agent.node.bpffs.join("ambit").display().to_string();
        let cgroup_root = agent.node.cgroup_root.display().to_string();
        let mut commands = vec![
            vec!["connections"],
            vec!["bpf", "--bpffs-dir", &bpffs_dir, "prog", "list"],
        ];
        if every_command {
            commands.extend([
                vec!["workloads"],
                vec!["services"],
                vec!["certs"],
                vec!["policies"],
                vec!["pods"],
                vec!["log-level"],
                vec![
                    "check",
                    "--bpffs-dir",
                    &bpffs_dir,
                    "--cgroup-root",
                    &cgroup_root,
                ],
                vec!["bpf", "--bpffs-dir", &bpffs_dir, "map", "list"],
                vec![
                    "bpf",
                    "--bpffs-dir",
                    &bpffs_dir,
                    "map",
                    "dump",
                    "AMBIT_ENROLLED",
                ],
                vec![
                    "bpf",
                    "--bpffs-dir",
                    &bpffs_dir,
                    "map",
                    "dump",
                    "AMBIT_COUNTERS",
                ],
                vec!["bpf", "--bpffs-dir", &bpffs_dir, "cgroup", "show"],
                vec!["bpf", "--bpffs-dir", &bpffs_dir, "netns", "list"],
            ]);
        }
        for args in commands {
            let mut command = Command::new(Testbed::bin("ambit"));
            command.args(&args);
            let cli = testbed.spawn_on_node(&agent.node, testbed.cgroup(), command);
            let (status, lines) = cli.output_lines(Duration::from_secs(30));
            let shown = format!("ambit {}", args.join(" "));
            if !status.success() {
                return Err(DemoError::step(
                    format!("`{shown}` failed on {}", agent.node.name),
                    cli.stderr_text(),
                ));
            }
            inspections.push(Inspection {
                node: agent.node.name.clone(),
                command: shown,
                output: lines.join("\n") + "\n",
            });
        }
    }
    Ok(inspections)
}

/// A SPIFFE id without the scheme and trust domain (`ns/shop/sa/frontend`),
/// or `-` when the end has none (not in the mesh).
fn short_identity(identity: Option<&str>) -> String {
    identity.map_or_else(
        || "-".to_owned(),
        |id| {
            id.strip_prefix("spiffe://")
                .and_then(|rest| rest.split_once('/'))
                .map_or(id, |(_, path)| path)
                .to_owned()
        },
    )
}

/// Left-aligned columns two spaces apart, the header first.
fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|&cell| cell.to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// `512 B`, `1.0 MiB`: binary units, one decimal.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut unit_size: u128 = 1;
    let mut unit = None;
    for name in UNITS {
        if u128::from(bytes) < unit_size * 1024 {
            break;
        }
        unit_size *= 1024;
        unit = Some(name);
    }
    let Some(unit) = unit else {
        return format!("{bytes} B");
    };
    let tenths = (u128::from(bytes) * 10 + unit_size / 2) / unit_size;
    format!("{}.{} {unit}", tenths / 10, tenths % 10)
}

// === impl NodeAgents ===

impl NodeAgents {
    /// Starts the agent on `node` knowing the `meshed` pods of the cluster,
    /// and waits until it has enrolled `pods`, those of its own node.
    fn start(
        &mut self,
        testbed: &Testbed,
        node: &ambit_tests::Node,
        pods: &[&Pod],
        meshed: &[&Pod],
    ) -> Result<(), DemoError> {
        let config = format!("{}{POLICIES}{SERVICES}", mesh::pods_yaml(meshed));
        let agent = Agent::spawn(testbed, node, &config, &[]);
        // Kept from here on, so a failed start still shows its output and stops cleanly.
        self.0.push(agent);
        let agent = self.0.last().expect("just pushed");
        let ready = wait_until(AGENT_READY_TIMEOUT, || {
            if let Some(status) = agent.proc.try_wait() {
                return Err(DemoError::step(
                    format!(
                        "the agent on {} exited ({status}) before it was ready",
                        node.name
                    ),
                    String::new(),
                ));
            }
            Ok(agent.get(testbed, "/ready"))
        })?;
        if ready.is_none() {
            return Err(DemoError::step(
                format!(
                    "the agent on {} did not become ready within {AGENT_READY_TIMEOUT:?}",
                    node.name
                ),
                String::new(),
            ));
        }
        for pod in pods {
            let mut last_seen = Value::Null;
            let enrolled = wait_until(AGENT_READY_TIMEOUT, || {
                last_seen =
                    pod_entry(&admin_json(testbed, agent, "/pods")?, pod).unwrap_or(Value::Null);
                Ok((last_seen["state"] == "enrolled").then_some(()))
            })?;
            if enrolled.is_none() {
                return Err(DemoError::step(
                    format!(
                        "the agent on {} did not enroll {} within {AGENT_READY_TIMEOUT:?}; its entry: {last_seen}",
                        node.name, pod.name
                    ),
                    String::new(),
                ));
            }
        }
        Ok(())
    }

    /// The connections the agent on `pod`'s node accepted for it, or `None`
    /// when that agent does not have the pod enrolled.
    fn opened_connections(
        &self,
        testbed: &Testbed,
        pod: &Pod,
    ) -> Result<Option<OpenedConnections>, DemoError> {
        let Some(agent) = self.0.iter().find(|agent| agent.node.name == pod.node) else {
            return Ok(None);
        };
        let entry = pod_entry(&admin_json(testbed, agent, "/pods")?, pod)
            .filter(|entry| entry["state"] == "enrolled");
        Ok(entry.map(|entry| {
            let traffic = &entry["traffic"];
            OpenedConnections {
                outbound: traffic["outbound"]["connections_opened"]
                    .as_u64()
                    .unwrap_or(0),
                inbound: traffic["inbound"]["connections_opened"]
                    .as_u64()
                    .unwrap_or(0),
            }
        }))
    }

    /// How the flow from `source` to `to` was secured and who the two ends
    /// were, from the connection log of the source's agent (outbound) or
    /// else the destination's (inbound).
    fn flow_security(
        &self,
        testbed: &Testbed,
        source: &Pod,
        destination: &Pod,
        to: SocketAddr,
    ) -> Result<Option<Value>, DemoError> {
        let source_ip = source.ipv4.to_string();
        for (pod, direction) in [(source, "outbound"), (destination, "inbound")] {
            let Some(agent) = self.0.iter().find(|agent| agent.node.name == pod.node) else {
                continue;
            };
            let records = admin_json(testbed, agent, "/connections")?;
            let found = records.as_array().into_iter().flatten().rev().find(|r| {
                r["state"] != "open"
                    && r["direction"] == direction
                    && r["dst"] == to.to_string().as_str()
                    && r["src"]
                        .as_str()
                        .and_then(|src| src.parse::<SocketAddr>().ok())
                        .is_some_and(|src| src.ip().to_string() == source_ip)
            });
            if let Some(found) = found {
                return Ok(Some(found.clone()));
            }
        }
        Ok(None)
    }

    fn print_reports(&self) {
        for agent in &self.0 {
            eprintln!("{}", agent.proc.report());
        }
    }
}

impl Drop for NodeAgents {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        // Stopping an agent never takes its pods out of the mesh (they would
        // fail closed until the next agent): `ambit uninstall` does, through
        // the running agent, which then exits.
        progress(
            "uninstalling: each node agent releases its pods, removes its eBPF state and exits (ambit uninstall)",
        );
        let ambit = ambit_tests::Testbed::bin("ambit");
        for agent in &self.0 {
            let bpffs_dir = agent.node.bpffs.join("ambit");
            let uninstalled = std::process::Command::new("ip")
                .args(["netns", "exec", &agent.node.netns])
                .arg(&ambit)
                .args(["--admin", &agent.admin_addr, "uninstall", "--bpffs-dir"])
                .arg(&bpffs_dir)
                .status()
                .is_ok_and(|status| status.success());
            if !uninstalled {
                eprintln!("ambit-demo: ambit uninstall failed on {}", agent.node.name);
            }
            let status = agent
                .proc
                .wait_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|| agent.proc.terminate());
            if !status.success() {
                eprintln!(
                    "ambit-demo: the agent on {} ended with {status}",
                    agent.node.name
                );
            }
        }
    }
}

/// `pod`'s entry in an agent's `/pods` list.
fn pod_entry(pods: &Value, pod: &Pod) -> Option<Value> {
    pods.as_array()?
        .iter()
        .find(|entry| {
            entry["name"] == pod.name.as_str() && entry["namespace"] == pod.namespace.as_str()
        })
        .cloned()
}

// === impl DemoError ===

impl DemoError {
    fn step(what: String, detail: String) -> Self {
        Self::Step { what, detail }
    }
}

// === impl FlowReport ===

impl FlowReport {
    /// `ok`, or `FAIL: ` and the problems.
    fn result(&self) -> String {
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
