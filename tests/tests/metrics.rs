//! Prometheus metrics end to end: known byte counts cross the mesh, then
//! both agents' metrics ports (15020) are scraped and read with a real
//! `OpenMetrics` parser (Python's `prometheus_client`, Debian's
//! `python3-prometheus-client`, installed by `cargo xtask setup`), and the
//! Istio TCP series must match the traffic exactly; the readiness port
//! (15021) answers; the Grafana dashboard uses only metrics that exist.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ambit_tests::{
    Node, Pod, Proc, Testbed,
    mesh::{Agent, KERNEL_PATH_LABEL, pods_yaml, pods_yaml_labelled},
    testbed_or_skip,
    workload::{ClientServer, ECHO_PORT, WAIT, client_and_server, send_with, serve},
};
use serde_json::Value;

const METRICS_PORT: u16 = 15020;
const READINESS_PORT: u16 = 15021;
/// The port of the reply server: it reads a request to its end, then answers
/// [`REPLY`] bytes, so the two directions' counts differ.
const REPLY_PORT: u16 = 9090;
const REPLY: u64 = 777;
/// The meshed client's requests, one connection each.
const REQUESTS: [u64; 2] = [30_000, 12_345];
/// The unmeshed pod's one plaintext request.
const LEGACY_REQUEST: u64 = 5_000;
/// The interpreter Debian's `python3-prometheus-client` installs for.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";
const INSTALL_HINT: &str =
    "install it with `cargo xtask setup` (or `apt-get install python3-prometheus-client`)";
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../manifests/grafana/ambit-golden-signals.json"
);

const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/server";
const INTRUDER_ID: &str = "spiffe://cluster.local/ns/shop/sa/intruder";
const SERVER_SERVICE: &str = "server.shop.svc.cluster.local";

const DENY_INTRUDER: &str = "policies:
  - metadata: {name: deny-intruder, namespace: shop}
    spec:
      selector: {matchLabels: {app: server}}
      action: DENY
      rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/intruder]}}]}]
";
const SERVICES: &str = "services:
  - {name: server, namespace: shop, selector: {app: server}, ports: [{port: 9090}]}
";

/// Reads a request to its end and answers `REPLY` bytes, per connection.
const REPLY_SERVER: &str = "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', PORT))
s.listen(16)
print('listening', flush=True)
while True:
    c, peer = s.accept()
    n = 0
    while True:
        d = c.recv(65536)
        if not d:
            break
        n += len(d)
    c.sendall(b'r' * REPLY)
    c.close()
    print('served', peer[0], n, flush=True)
";

/// Sends `bytes`, half-closes, and expects exactly `REPLY` bytes back.
const REQUEST_CLIENT: &str = "
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b'q' * int(sys.argv[3]))
s.shutdown(socket.SHUT_WR)
r = b''
while True:
    d = s.recv(65536)
    if not d:
        break
    r += d
assert len(r) == REPLY, len(r)
print('ok')
";

/// Prints the families and samples of an `OpenMetrics` text on stdin as JSON.
/// The parser is strict: a malformed exposition raises.
const PARSER: &str = "
import json, sys
try:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
except ImportError as error:
    sys.stderr.write('MISSING %s\\n' % error)
    sys.exit(3)
families, samples = [], []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append({'name': family.name, 'type': family.type})
    for s in family.samples:
        # Every value ambit exports is a whole number.
        value = int(s.value) if float(s.value).is_integer() else s.value
        samples.append({'name': s.name, 'labels': s.labels, 'value': value})
json.dump({'families': families, 'samples': samples}, sys.stdout)
";

/// The labels every Istio TCP series carries, in Istio's names.
const ISTIO_LABELS: [&str; 10] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_service",
    "connection_security_policy",
    "response_flags",
];

/// A scrape, as the parser read it.
struct Scrape {
    text: String,
    families: Vec<(String, String)>,
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: u64,
}

// === the parser ===

/// Parses `text` with Python's `OpenMetrics` parser; panics, naming the
/// package to install, when it is missing, and with the parser's complaint
/// when the text is malformed.
fn parse_openmetrics(text: &str) -> Scrape {
    let mut child = Command::new(SYSTEM_PYTHON)
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {SYSTEM_PYTHON} ({e}); {INSTALL_HINT}"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("the parser reads the scrape");
    let out = child.wait_with_output().expect("the parser runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(3),
        "python3-prometheus-client is not installed ({}); {INSTALL_HINT}",
        stderr.trim()
    );
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected the scrape: {stderr}\n{text}"
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).expect("the parser prints JSON");
    let families = parsed["families"]
        .as_array()
        .expect("families")
        .iter()
        .map(|f| (string(&f["name"]), string(&f["type"])))
        .collect();
    let samples = parsed["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| Sample {
            name: string(&s["name"]),
            labels: s["labels"]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), string(v)))
                .collect(),
            value: s["value"]
                .as_u64()
                .unwrap_or_else(|| panic!("not a whole number: {s}")),
        })
        .collect();
    Scrape {
        text: text.to_owned(),
        families,
        samples,
    }
}

fn string(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

// === impl Scrape ===

impl Scrape {
    /// The sum of the samples called `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The value of the one sample called `name` with exactly `labels`.
    fn exact(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// Every name a `PromQL` expression may use: sample names, and the
    /// `_total` name of counter families that have no series yet.
    fn names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.samples.iter().map(|s| s.name.clone()).collect();
        for (family, kind) in &self.families {
            names.insert(if kind == "counter" {
                format!("{family}_total")
            } else {
                family.clone()
            });
        }
        names
    }

    /// The Istio TCP lines of the text, for the test's output.
    fn istio_lines(&self) -> String {
        self.text
            .lines()
            .filter(|l| l.starts_with("istio_tcp_"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// === helpers ===

/// `GET url` with curl inside `netns`: the status and the body.
fn http_get(tb: &Testbed, netns: &str, url: &str) -> (u16, String) {
    let out = tb.exec_in_netns(
        netns,
        &["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", url],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Scrapes the metrics port of the agent at `host` from `from`'s netns.
fn scrape(tb: &Testbed, from: &Node, host: IpAddr) -> Scrape {
    let (status, body) = http_get(
        tb,
        &from.netns,
        &format!("http://{host}:{METRICS_PORT}/metrics"),
    );
    assert_eq!(status, 200, "scraping {host}:{METRICS_PORT}: {body}");
    parse_openmetrics(&body)
}

/// Scrapes until `done` holds, then returns that scrape.
fn scrape_until(
    tb: &Testbed,
    from: &Node,
    host: IpAddr,
    agent: &Agent,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let scrape = scrape(tb, from, host);
        if done(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics never reached the expected counts:\n{}\n{}",
            scrape.istio_lines(),
            agent.proc.report()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn reply_server(tb: &Testbed, pod: &Pod) -> Proc {
    let script = REPLY_SERVER
        .replace("PORT", &REPLY_PORT.to_string())
        .replace("REPLY", &REPLY.to_string());
    let server = tb.spawn_in_pod(pod, {
        let mut c = Command::new("python3");
        c.args(["-c", &script]);
        c
    });
    server
        .wait_for_line(WAIT, |l| l == "listening")
        .unwrap_or_else(|| panic!("the reply server did not start\n{}", server.report()));
    server
}

/// Sends a request of `bytes` from `client` to `server`'s reply port;
/// whether the full reply came back.
fn request(tb: &Testbed, client: &Pod, server: &Pod, bytes: u64) -> bool {
    let script = REQUEST_CLIENT.replace("REPLY", &REPLY.to_string());
    let out = tb.run_in_pod(client, {
        let mut c = Command::new("python3");
        c.args(["-c", &script])
            .arg(server.ipv4.to_string())
            .arg(REPLY_PORT.to_string())
            .arg(bytes.to_string());
        c
    });
    out.status.success()
}

/// The labels of one Istio series, `reporter` first.
fn series<'a>(
    reporter: &'a str,
    source: [&'a str; 3],
    destination: [&'a str; 4],
    security: &'a str,
    flags: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let values = [
        reporter,
        source[0],
        source[1],
        source[2],
        destination[0],
        destination[1],
        destination[2],
        destination[3],
        security,
        flags,
    ];
    ISTIO_LABELS.iter().copied().zip(values).collect()
}

fn assert_counts(scrape: &Scrape, labels: &[(&str, &str)], expected: [Option<u64>; 4]) {
    let names = [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_sent_bytes_total",
    ];
    for (name, expected) in names.iter().zip(expected) {
        assert_eq!(
            scrape.exact(name, labels),
            expected,
            "{name}{labels:?}\n{}",
            scrape.istio_lines()
        );
    }
}

/// Every Istio TCP sample carries exactly Istio's labels, with values from
/// their bounded sets.
fn assert_istio_label_sets(scrape: &Scrape) {
    let expected: BTreeSet<&str> = ISTIO_LABELS.into_iter().collect();
    let istio: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.name.starts_with("istio_tcp_"))
        .collect();
    assert!(!istio.is_empty(), "no Istio series:\n{}", scrape.text);
    for sample in istio {
        let keys: BTreeSet<&str> = sample.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, expected, "{sample:?}");
        assert!(
            ["source", "destination"].contains(&sample.labels["reporter"].as_str()),
            "{sample:?}"
        );
        assert!(
            ["mutual_tls", "unknown"]
                .contains(&sample.labels["connection_security_policy"].as_str()),
            "{sample:?}"
        );
        assert!(
            ["-", "DENY", "UF", "UT", "IO"].contains(&sample.labels["response_flags"].as_str()),
            "{sample:?}"
        );
    }
}

// === tests ===

#[test]
fn istio_tcp_metrics_match_the_traffic_on_both_agents_and_parse_as_openmetrics() {
    let mut tb = testbed_or_skip!("metrics_cross_node");
    let ClientServer {
        n1,
        n2,
        client,
        server,
    } = client_and_server(&mut tb);
    let intruder = tb.add_pod(&n1, "intruder", "shop");
    // Not in the configuration: outside the mesh, plaintext.
    let legacy = tb.add_pod(&n1, "legacy", "legacy");
    let pods = [&client, &server, &intruder];
    let yaml = format!("{}{DENY_INTRUDER}{SERVICES}", pods_yaml(&pods));
    let agent1 = Agent::start_with_config(&tb, &n1, &yaml, &pods, &[]);
    let agent2 = Agent::start_with_config(&tb, &n2, &yaml, &pods, &[]);
    let replies = reply_server(&tb, &server);

    for bytes in REQUESTS {
        assert!(
            request(&tb, &client, &server, bytes),
            "client -> server\n{}",
            replies.report()
        );
    }
    assert!(
        request(&tb, &legacy, &server, LEGACY_REQUEST),
        "legacy -> server (plaintext, permissive)\n{}",
        replies.report()
    );
    assert!(
        !request(&tb, &intruder, &server, 1_000),
        "the policy must refuse the intruder"
    );

    let n1_ip = IpAddr::from(n1.underlay_v4);
    // The destination's agent, scraped in its own netns; the source's from
    // the other node, as Prometheus would (the port listens on 0.0.0.0).
    let dst = scrape_until(&tb, &n2, IpAddr::from([127, 0, 0, 1]), &agent2, |s| {
        closed(s, "destination") >= 4
    });
    let src = scrape_until(&tb, &n2, n1_ip, &agent1, |s| closed(s, "source") >= 3);
    println!(
        "--- n2 (destination) ---\n{}\n--- n1 (source) ---\n{}",
        dst.istio_lines(),
        src.istio_lines()
    );
    assert_istio_label_sets(&dst);
    assert_istio_label_sets(&src);
    assert_destination_counts(&dst);
    assert_source_counts(&src);
    assert_ambit_metrics(&dst, &src);

    // The admin API serves the same metrics.
    let admin = parse_openmetrics(&agent2.get(&tb, "/metrics").expect("admin /metrics"));
    assert_eq!(admin.families, dst.families);

    // Readiness: ready, in the node's netns and from the other node.
    for (netns, host) in [
        (&n1.netns, IpAddr::from([127, 0, 0, 1])),
        (&n2.netns, n1_ip),
    ] {
        let url = format!("http://{host}:{READINESS_PORT}/healthz/ready");
        assert_eq!(
            http_get(&tb, netns, &url),
            (200, "ready\n".to_owned()),
            "{url}"
        );
    }
    let (status, _) = http_get(
        &tb,
        &n2.netns,
        &format!("http://127.0.0.1:{READINESS_PORT}/healthz/live"),
    );
    assert_eq!(status, 404);
}

fn closed(scrape: &Scrape, reporter: &str) -> u64 {
    scrape.sum(
        "istio_tcp_connections_closed_total",
        &[("reporter", reporter)],
    )
}

const CLIENT_END: [&str; 3] = ["client", "shop", CLIENT_ID];
const INTRUDER_END: [&str; 3] = ["intruder", "shop", INTRUDER_ID];
const SERVER_END: [&str; 4] = ["server", "shop", SERVER_ID, SERVER_SERVICE];

/// The destination's agent saw two mTLS connections from the client, one
/// plaintext one from outside the mesh, one denial.
fn assert_destination_counts(dst: &Scrape) {
    let request_bytes: u64 = REQUESTS.iter().sum();
    let reply_bytes = REPLY * REQUESTS.len() as u64;
    let two = Some(REQUESTS.len() as u64);
    // Istio's way round: received is the request, sent the reply.
    assert_counts(
        dst,
        &series("destination", CLIENT_END, SERVER_END, "mutual_tls", "-"),
        [two, two, Some(request_bytes), Some(reply_bytes)],
    );
    // Plaintext from outside the mesh: nothing is known of the source.
    assert_counts(
        dst,
        &series(
            "destination",
            ["unknown", "unknown", "unknown"],
            SERVER_END,
            "unknown",
            "-",
        ),
        [Some(1), Some(1), Some(LEGACY_REQUEST), Some(REPLY)],
    );
    // Refused during set-up: opened and closed at once, no bytes.
    assert_counts(
        dst,
        &series(
            "destination",
            INTRUDER_END,
            SERVER_END,
            "mutual_tls",
            "DENY",
        ),
        [Some(1), Some(1), Some(0), Some(0)],
    );
    assert_eq!(closed(dst, "destination"), 4);
    assert_eq!(closed(dst, "source"), 0, "only its own end");
}

/// The source's agent saw the client's two connections and the intruder's.
fn assert_source_counts(src: &Scrape) {
    let request_bytes: u64 = REQUESTS.iter().sum();
    let reply_bytes = REPLY * REQUESTS.len() as u64;
    let two = Some(REQUESTS.len() as u64);
    assert_counts(
        src,
        &series("source", CLIENT_END, SERVER_END, "mutual_tls", "-"),
        [two, two, Some(request_bytes), Some(reply_bytes)],
    );
    // The stream had opened when the destination's refusal came back.
    let intruder = |flags| series("source", INTRUDER_END, SERVER_END, "mutual_tls", flags);
    assert_eq!(
        src.exact("istio_tcp_connections_opened_total", &intruder("-")),
        Some(1),
        "{}",
        src.istio_lines()
    );
    assert_eq!(
        src.exact("istio_tcp_connections_closed_total", &intruder("DENY")),
        Some(1),
        "{}",
        src.istio_lines()
    );
    assert_eq!(closed(src, "source"), 3);
    assert_eq!(closed(src, "destination"), 0, "only its own end");
}

/// ambit's own: the denial by policy, eBPF events, certificate expiry.
fn assert_ambit_metrics(dst: &Scrape, src: &Scrape) {
    assert_eq!(
        dst.sum(
            "ambit_authorization_decisions_total",
            &[("decision", "deny"), ("policy", "shop/deny-intruder")]
        ),
        1
    );
    assert!(dst.sum("ambit_ebpf_events_total", &[("event", "inbound_steered")]) >= 1);
    assert!(
        src.sum(
            "ambit_ebpf_events_total",
            &[("event", "connect_redirected")]
        ) >= 3
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs();
    let expiry = dst
        .exact(
            "ambit_certificate_expiration_timestamp_seconds",
            &[("identity", SERVER_ID)],
        )
        .unwrap_or_else(|| panic!("no expiry for the server's certificate\n{}", dst.text));
    assert!(
        expiry > now && expiry < now + 2 * 86_400,
        "{expiry} vs now {now}"
    );
}

#[test]
fn same_node_traffic_is_reported_by_both_ends_and_the_dashboard_uses_only_exported_metrics() {
    let mut tb = testbed_or_skip!("metrics_same_node");
    let n1 = tb.add_node("n1");
    let client = tb.add_pod(&n1, "client", "shop");
    let server = tb.add_pod(&n1, "server", "shop");
    let pods = [&client, &server];
    let yaml = format!("{}{SERVICES}", pods_yaml(&pods));
    let agent = Agent::start_with_config(&tb, &n1, &yaml, &pods, &[]);
    let _replies = reply_server(&tb, &server);
    assert!(request(&tb, &client, &server, 4_096), "client -> server");

    let local = IpAddr::from([127, 0, 0, 1]);
    let scrape = scrape_until(&tb, &n1, local, &agent, |s| {
        s.sum("istio_tcp_connections_closed_total", &[]) >= 2
    });
    println!("{}", scrape.istio_lines());
    assert_istio_label_sets(&scrape);
    // The same-node fast path skips TLS and the server's inbound proxy; the
    // agent is both ends' agent and reports the connection once for each.
    for reporter in ["source", "destination"] {
        assert_counts(
            &scrape,
            &series(reporter, CLIENT_END, SERVER_END, "unknown", "-"),
            [Some(1), Some(1), Some(4_096), Some(REPLY)],
        );
    }

    // The dashboard: valid JSON, a Prometheus data source variable, and
    // only metric names this agent exports.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(DASHBOARD).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}")),
    )
    .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"));
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("template variables");
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "the dashboard needs a Prometheus data source variable"
    );
    let mut expressions = Vec::new();
    collect_expressions(&dashboard, &mut expressions);
    assert!(expressions.len() >= 8, "{expressions:?}");
    let exported = scrape.names();
    let mut used = BTreeSet::new();
    for expression in &expressions {
        for name in metric_names(expression) {
            assert!(
                exported.contains(&name),
                "the dashboard uses {name}, which the agent does not export ({expression})\nexported: {exported:?}"
            );
            used.insert(name);
        }
    }
    for signal in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_sent_bytes_total",
        "ambit_authorization_decisions_total",
    ] {
        assert!(used.contains(signal), "no panel uses {signal}: {used:?}");
    }
}

#[test]
fn spliced_connections_are_counted_from_the_kernel_by_both_reporters() {
    let mut tb = testbed_or_skip!("metrics_spliced");
    let n1 = tb.add_node("n1");
    let client = tb.add_pod(&n1, "client", "shop");
    let server = tb.add_pod(&n1, "server", "shop");
    let pods = [&client, &server];
    let yaml = format!(
        "{}{SERVICES}",
        pods_yaml_labelled(&pods, Some(KERNEL_PATH_LABEL))
    );
    let agent = Agent::spawn(&tb, &n1, &yaml, &[]);
    agent.wait_ready(&tb);
    for pod in pods {
        agent.wait_pod_state(&tb, &pod.name, "enrolled", WAIT);
    }
    let _echo = serve(&tb, &server);
    // The spliced socket's spurious EAGAIN: see tests/tests/splice.rs.
    let bytes = 200_000;
    send_with(
        &tb,
        &client,
        &format!("{}:{ECHO_PORT}", server.ipv4),
        bytes,
        &["--retry-spurious-eagain"],
    );

    let local = IpAddr::from([127, 0, 0, 1]);
    let scrape = scrape_until(&tb, &n1, local, &agent, |s| {
        s.sum("istio_tcp_connections_closed_total", &[]) >= 2
    });
    println!("{}", scrape.istio_lines());
    assert!(
        scrape.sum("ambit_ebpf_events_total", &[("event", "sockets_spliced")]) >= 2,
        "the connection was spliced\n{}",
        scrape.text
    );
    for reporter in ["source", "destination"] {
        assert_counts(
            &scrape,
            &series(reporter, CLIENT_END, SERVER_END, "unknown", "-"),
            [Some(1), Some(1), Some(bytes), Some(bytes)],
        );
    }
}

/// Every `PromQL` expression in the dashboard: panel targets and variable
/// queries.
fn collect_expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_expressions(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_expressions(v, out)),
        _ => {}
    }
}

/// The metric names in a `PromQL` expression: identifiers with ambit's or
/// Istio's prefix (label names and values have neither).
fn metric_names(expression: &str) -> Vec<String> {
    expression
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("istio_") || word.starts_with("ambit_"))
        .map(str::to_owned)
        .collect()
}
