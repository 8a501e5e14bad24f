//! The waypoint with real clients (curl, h2load, nghttp): canary splits,
//! retries within a budget, timeouts (also of a streaming body), outlier detection and circuit
//! breaking, HTTP authorization, HTTP/2 streaming with trailers, fault
//! injection, opaque TCP, protocols declared by `appProtocol`, bad input,
//! and failing closed when the waypoint is gone.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use ambit_tests::{
    Pod, Testbed,
    mesh::mesh_ca,
    testbed_or_skip,
    waypoint::{GET_ONLY_FOR_CLIENT_A, VIP, WaypointMesh, admin_views_on_localhost_only},
    workload::{pod_tool, run_ok_in_pod, try_send},
};

/// A route attached to `backend:80` with `rules` (YAML, indented for the
/// rules list) and `annotations` (YAML map).
fn route(name: &str, annotations: &str, rules: &str) -> String {
    format!(
        "  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata:
      name: {name}
      namespace: shop
      annotations: {annotations}
    spec:
      parentRefs: [{{group: '', kind: Service, name: backend, port: 80}}]
      rules:
{rules}"
    )
}

/// A rule sending everything to `backend-v1` and `backend-v2` with these
/// weights, plus `more` (YAML lines at rule level).
fn split(v1: u32, v2: u32, more: &str) -> String {
    format!(
        "        - backendRefs:
            - {{name: backend-v1, port: 80, weight: {v1}}}
            - {{name: backend-v2, port: 80, weight: {v2}}}
{more}"
    )
}

/// Runs h2load in `client` against `path` on the backend's cluster IP and
/// returns its report; HTTP/2 unless `http1`.
fn h2load(
    tb: &Testbed,
    client: &Pod,
    path: &str,
    requests: u32,
    clients: u32,
    http1: bool,
) -> H2load {
    let mut command = Command::new("h2load");
    command.args([
        "-n",
        &requests.to_string(),
        "-c",
        &clients.to_string(),
        "-m",
        "1",
        "-T",
        "20",
    ]);
    if http1 {
        command.arg("--h1");
    }
    command.arg(format!("http://{VIP}{path}"));
    H2load::parse(&run_ok_in_pod(tb, client, command))
}

/// The parts of h2load's report the tests read.
#[derive(Debug)]
struct H2load {
    status_2xx: u64,
    status_5xx: u64,
    text: String,
}

impl H2load {
    fn parse(text: &str) -> Self {
        // "status codes: 100 2xx, 0 3xx, 0 4xx, 0 5xx"
        let number_before = |line: &str, word: &str| -> u64 {
            let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
            words
                .windows(2)
                .find(|w| w[1] == word)
                .and_then(|w| w[0].parse().ok())
                .unwrap_or(0)
        };
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_default()
                .to_owned()
        };
        let codes = line("status codes:");
        Self {
            status_2xx: number_before(&codes, "2xx"),
            status_5xx: number_before(&codes, "5xx"),
            text: text.to_owned(),
        }
    }
}

/// Requests the waypoint sent to `backend` (a Service name) so far.
fn routed_to(tb: &Testbed, mesh: &WaypointMesh, backend: &str) -> u64 {
    mesh.metric(
        tb,
        "istio_requests_total",
        &[&format!("destination_backend=\"{backend}\"")],
    )
}

/// The mesh with `v1` (with `v1_args`), `v2` and `v3` serving and the
/// waypoint running, configured with `extra`.
fn mesh_with(tb: &mut Testbed, extra: &str, v1_args: &[&str]) -> WaypointMesh {
    mesh_serving(tb, extra, v1_args, true)
}

/// [`mesh_with`], with `v3` serving only if `v3_serves`.
fn mesh_serving(tb: &mut Testbed, extra: &str, v1_args: &[&str], v3_serves: bool) -> WaypointMesh {
    let mut mesh = WaypointMesh::new(tb, extra);
    let (v1, v2, v3) = (mesh.v1.clone(), mesh.v2.clone(), mesh.v3.clone());
    mesh.serve_http(tb, &v1, v1_args);
    mesh.serve_http(tb, &v2, &[]);
    if v3_serves {
        mesh.serve_http(tb, &v3, &[]);
    }
    mesh.start_waypoint(tb, &[]);
    mesh
}

#[test]
fn canary_split_lands_within_binomial_bounds_and_follows_weight_changes() {
    let mut tb = testbed_or_skip!("waypoint_canary");
    let routes = format!("routes:\n{}", route("canary", "{}", &split(90, 10, "")));
    let mesh = mesh_with(&mut tb, &routes, &[]);

    // 10,000 requests over HTTP/2 (h2load's default, prior knowledge).
    let report = h2load(&tb, &mesh.client_a, "/", 10_000, 10, false);
    assert_eq!(report.status_2xx, 10_000, "{}", report.text);
    let v1 = routed_to(&tb, &mesh, "backend-v1");
    let v2 = routed_to(&tb, &mesh, "backend-v2");
    assert_eq!(v1 + v2, 10_000);
    // Binomial(10000, 0.1): sd 30; 99.9% two-sided is ±3.29 sd.
    assert!((901..=1099).contains(&v2), "v1 {v1}, v2 {v2}");

    // New weights take effect within a second of the file changing.
    let routes = format!("routes:\n{}", route("canary", "{}", &split(0, 100, "")));
    let changed = Instant::now();
    mesh.set_extra(&routes);
    std::thread::sleep(Duration::from_secs(1).saturating_sub(changed.elapsed()));
    let before = routed_to(&tb, &mesh, "backend-v1");
    let report = h2load(&tb, &mesh.client_a, "/", 200, 2, true);
    assert_eq!(report.status_2xx, 200, "{}", report.text);
    assert_eq!(
        routed_to(&tb, &mesh, "backend-v1"),
        before,
        "v1 still got requests"
    );
}

#[test]
fn retries_hide_a_failing_backend_and_the_budget_caps_them() {
    let mut tb = testbed_or_skip!("waypoint_retries");
    let retry = "          retry: {codes: [503], attempts: 3, backoff: 1ms}\n";
    let generous = "{ambit.dev/retry-budget-percent: '50'}";
    let rules = |budget: &str| {
        format!(
            "routes:\n{}",
            route(
                "flaky",
                budget,
                &format!("        - backendRefs: [{{name: backend-v1, port: 80}}]\n{retry}")
            )
        )
    };
    let mesh = mesh_with(&mut tb, &rules(generous), &["--fail-percent", "30"]);

    // 30% of the backend's answers are 503; the client sees none of them.
    let report = h2load(&tb, &mesh.client_a, "/", 1000, 1, true);
    assert_eq!(report.status_2xx, 1000, "{}", report.text);
    let retries = mesh.metric(&tb, "ambit_waypoint_retries_total", &[]);
    // About 3/7 of 1000 (each try fails with p = 0.3), within the budget.
    assert!(retries >= 300, "retries {retries}");
    assert!(retries <= 500 + 10 * 10, "retries {retries}");

    // A tight budget (5%, no floor): retries stop multiplying the load and
    // the failures show.
    let tight = "{ambit.dev/retry-budget-percent: '5', ambit.dev/retry-budget-min-per-second: '0'}";
    mesh.set_extra(&rules(tight));
    std::thread::sleep(Duration::from_secs(1));
    let before = mesh.metric(&tb, "ambit_waypoint_retries_total", &[]);
    let report = h2load(&tb, &mesh.client_a, "/", 1000, 1, true);
    let spent = mesh.metric(&tb, "ambit_waypoint_retries_total", &[]) - before;
    assert!(spent <= 50 + 5, "retries {spent} exceed the 5% budget");
    assert!(report.status_5xx > 100, "{}", report.text);
    assert!(mesh.metric(&tb, "ambit_waypoint_retry_budget_exhausted_total", &[]) > 0);
}

#[test]
fn a_slow_backend_gets_504_within_the_timeout() {
    let mut tb = testbed_or_skip!("waypoint_timeout");
    let rules = "        - backendRefs: [{name: backend-v1, port: 80}]\n          timeouts: {request: 300ms}\n";
    let routes = format!("routes:\n{}", route("slow", "{}", rules));
    let mesh = mesh_with(&mut tb, &routes, &["--delay-ms", "2000"]);
    let mut times = Vec::new();
    for _ in 0..5 {
        let got = mesh.curl(&tb, &mesh.client_a, "/", &[]);
        assert_eq!(got.status, 504, "{got:?}");
        assert_eq!(got.body.trim(), "upstream request timeout");
        times.push(got.seconds);
    }
    times.sort_by(f64::total_cmp);
    let median = times[2];
    assert!(median >= 0.3, "answered before the timeout: {times:?}");
    assert!(median <= 0.35, "504 later than timeout + 50 ms: {times:?}");
}

#[test]
fn a_response_still_streaming_at_the_timeout_is_cut() {
    let mut tb = testbed_or_skip!("waypoint_body_timeout");
    let rules = "        - backendRefs: [{name: backend-v2, port: 80}]\n          timeouts: {request: 300ms}\n";
    let routes = format!("routes:\n{}", route("streaming", "{}", rules));
    let mesh = mesh_with(&mut tb, &routes, &[]);
    // 100 chunks 10 ms apart: about a second, cut at 300 ms.
    let cut = mesh.curl(&tb, &mesh.client_a, "/stream?chunks=100", &[]);
    assert_eq!(cut.status, 200, "{cut:?}");
    assert!(cut.body.contains("chunk 0\n"), "{cut:?}");
    assert!(!cut.body.contains("chunk 99\n"), "not cut: {cut:?}");
    assert!(
        (0.3..0.6).contains(&cut.seconds),
        "cut after {} s, not at the 300 ms timeout",
        cut.seconds
    );
    // A response that ends in time is whole.
    let whole = mesh.curl(&tb, &mesh.client_a, "/stream?chunks=10", &[]);
    assert!(whole.body.contains("chunk 9\n"), "{whole:?}");
    assert_eq!(
        mesh.metric(&tb, "ambit_waypoint_response_bodies_cut_total", &[]),
        1
    );
}

#[test]
fn a_dead_backend_is_ejected_and_traffic_moves_to_the_healthy_ones() {
    let mut tb = testbed_or_skip!("waypoint_outlier");
    // No route: the Service's own endpoints v1, v2 and v3; v3 runs nothing.
    let annotations =
        "{ambit.dev/outlier-consecutive-failures: '3', ambit.dev/outlier-base-ejection: 30s}";
    let rules = "        - backendRefs: [{name: backend, port: 80}]\n          retry: {codes: [503], attempts: 2}\n";
    let routes = format!("routes:\n{}", route("pool", annotations, rules));
    let mesh = mesh_serving(&mut tb, &routes, &[], false);
    let report = h2load(&tb, &mesh.client_a, "/", 300, 1, true);
    assert_eq!(report.status_2xx, 300, "{}", report.text);
    let backends = mesh.config_view(&tb)["endpoints"].clone();
    let count = |ip: std::net::Ipv4Addr, field: &str| {
        backends
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| {
                e["endpoint"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(&format!("{ip}:")))
            })
            .map(|e| e[field].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let (v1, v2, v3) = (
        count(mesh.v1.ipv4, "attempts"),
        count(mesh.v2.ipv4, "attempts"),
        count(mesh.v3.ipv4, "attempts"),
    );
    assert!(
        v3 <= 3,
        "the dead backend kept getting requests: v1 {v1}, v2 {v2}, v3 {v3}\n{backends:#}"
    );
    assert!(v1 >= 100 && v2 >= 100, "v1 {v1}, v2 {v2}, v3 {v3}");
    assert!(count(mesh.v3.ipv4, "ejections") >= 1, "{backends:#}");
    assert!(mesh.metric(&tb, "ambit_waypoint_outlier_ejections_total", &[]) >= 1);
}

#[test]
fn the_circuit_breaker_sheds_load_past_its_limits() {
    let mut tb = testbed_or_skip!("waypoint_circuit");
    let annotations = "{ambit.dev/max-requests: '1', ambit.dev/max-pending-requests: '1'}";
    let rules = "        - backendRefs: [{name: backend-v1, port: 80}]\n";
    let routes = format!("routes:\n{}", route("guarded", annotations, rules));
    let mesh = mesh_with(&mut tb, &routes, &["--delay-ms", "200"]);
    // Ten at once against one slow endpoint: one in flight, one waiting,
    // the rest refused at once.
    let report = h2load(&tb, &mesh.client_a, "/", 20, 10, true);
    assert!(report.status_2xx >= 2, "{}", report.text);
    assert!(report.status_5xx >= 5, "{}", report.text);
    let overflowed = mesh.metric(
        &tb,
        "istio_requests_total",
        &["response_flags=\"UO\"", "response_code=\"503\""],
    );
    assert_eq!(overflowed, report.status_5xx);
}

#[test]
fn http_authorization_by_method_and_principal() {
    let mut tb = testbed_or_skip!("waypoint_authz");
    let policy = GET_ONLY_FOR_CLIENT_A;
    let mesh = mesh_with(&mut tb, policy, &[]);
    let get = mesh.curl(&tb, &mesh.client_a, "/", &[]);
    assert_eq!(get.status, 200, "{get:?}");
    let delete = mesh.curl(&tb, &mesh.client_a, "/", &["-X", "DELETE"]);
    assert_eq!(delete.status, 403, "{delete:?}");
    assert!(delete.body.contains("shop/backend-get-only"), "{delete:?}");
    let other = mesh.curl(&tb, &mesh.client_b, "/", &[]);
    assert_eq!(other.status, 403, "{other:?}");
    assert!(other.body.contains("access denied"), "{other:?}");
}

#[test]
fn http2_streams_and_trailers_pass_through_intact() {
    let mut tb = testbed_or_skip!("waypoint_h2");
    let mesh = mesh_with(&mut tb, "", &[]);
    let mut command = Command::new("nghttp");
    command.args(["-v", "-t", "20", &format!("http://{VIP}/stream?chunks=20")]);
    let out = tb.run_in_pod(&mesh.client_a, command);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for i in 0..20 {
        assert!(
            text.contains(&format!("chunk {i}\n")),
            "chunk {i} missing:\n{text}"
        );
    }
    assert!(text.contains("grpc-status: 0"), "trailers missing:\n{text}");
    assert!(text.contains("x-chunks: 20"), "trailers missing:\n{text}");
    // The backend saw HTTP/2 and a traceparent the waypoint started.
    let got = mesh.curl(&tb, &mesh.client_a, "/", &["--http2-prior-knowledge"]);
    assert_eq!(got.status, 200, "{got:?}");
    let seen: serde_json::Value = serde_json::from_str(got.body.trim()).expect("JSON body");
    assert_eq!(seen["version"], "HTTP/2.0", "{seen}");
    // The client's :authority reaches the backend, not the endpoint's address.
    assert_eq!(seen["authority"], VIP, "{seen}");
    let traceparent = seen["headers"]["traceparent"].as_str().unwrap_or_default();
    assert_eq!(traceparent.len(), 55, "{seen}");
}

#[test]
fn fault_injection_aborts_the_configured_share() {
    let mut tb = testbed_or_skip!("waypoint_fault");
    let annotations = "{ambit.dev/fault-abort-status: '503', ambit.dev/fault-abort-percent: '20'}";
    let rules = "        - backendRefs: [{name: backend-v1, port: 80}]\n";
    let routes = format!("routes:\n{}", route("faulty", annotations, rules));
    let mesh = mesh_with(&mut tb, &routes, &[]);
    let report = h2load(&tb, &mesh.client_a, "/", 2000, 4, false);
    assert_eq!(
        report.status_2xx + report.status_5xx,
        2000,
        "{}",
        report.text
    );
    // Every 5xx is an injected abort, none an upstream failure.
    let injected = mesh.metric(&tb, "istio_requests_total", &["response_flags=\"FI\""]);
    assert_eq!(
        injected, report.status_5xx,
        "5xx that are not injected aborts:\n{}",
        report.text
    );
    // Binomial(2000, 0.2): sd 17.9; ±4 sd (a false alarm once in about
    // 16,000 runs) still fails a 15% or a 25% abort rate.
    eprintln!("injected aborts: {injected} of 2000 (expected 400)");
    assert!((329..=471).contains(&injected), "{}", report.text);
}

/// Runs `script` in bash in `pod` and returns what it printed.
fn bash_in(tb: &Testbed, pod: &Pod, script: &str) -> String {
    let mut command = Command::new("bash");
    command.args(["-c", script]);
    let out = tb.run_in_pod(pod, command);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn opaque_tcp_passes_through_and_bad_input_is_refused() {
    let mut tb = testbed_or_skip!("waypoint_opaque");
    let mesh = mesh_with(&mut tb, "", &[]);
    // Bytes that are not HTTP pass through to an endpoint, echoed intact.
    // (The echo servers listen on 9000; the Service's port 80 maps to 8080,
    // so this port is reached by its own entry.)
    let echo = tb.spawn_in_pod(&mesh.v1, pod_tool(&["serve", "--listen", "0.0.0.0:9000"]));
    echo.wait_for_event("listening", Duration::from_secs(20));
    let yaml = "  - name: echo
    namespace: shop
    waypoint: wp
    clusterIPs: [10.96.0.21]
    selector: {app: v1}
    ports: [{name: tcp, port: 9000}]
";
    let text = mesh.config("").replace(
        "  - name: backend-v1\n",
        &format!("{yaml}  - name: backend-v1\n"),
    );
    mesh.set_raw_config(&text);
    std::thread::sleep(Duration::from_secs(3));
    let (ok, sent, report) = try_send(&tb, &mesh.client_a, "10.96.0.21:9000", 100_000);
    assert!(ok, "{sent}\n{report}");
    assert_eq!(sent["echo_ok"], true, "{sent}");

    // A malformed request gets 400 from the waypoint.
    let answered = bash_in(
        &tb,
        &mesh.client_a,
        &format!(
            "exec 3<>/dev/tcp/{VIP}/80; printf 'GET / HTTP/1.1\\r\\nHost x\\r\\n\\r\\n' >&3; head -c 12 <&3"
        ),
    );
    assert_eq!(answered, "HTTP/1.1 400", "{}", mesh.waypoint().report());
}

#[test]
fn a_declared_app_protocol_replaces_detection() {
    let mut tb = testbed_or_skip!("waypoint_declared");
    let mut mesh = WaypointMesh::new(&mut tb, "");
    let (v1, v2) = (mesh.v1.clone(), mesh.v2.clone());
    mesh.serve_http(&tb, &v1, &[]);
    mesh.serve_http(&tb, &v2, &[]);
    // Detection waits this long for a client's first bytes.
    mesh.start_waypoint(&tb, &["--detect-timeout", "60s"]);
    // A server-first protocol on 9025 (it greets before reading) and an
    // echo server on 9000, behind three services using the waypoint.
    let greeter = tb.spawn_in_pod(
        &v1,
        pod_tool(&["serve", "--listen", "0.0.0.0:9025", "--banner", "220 ready"]),
    );
    greeter.wait_for_event("listening", Duration::from_secs(20));
    let echo = tb.spawn_in_pod(&v1, pod_tool(&["serve", "--listen", "0.0.0.0:9000"]));
    echo.wait_for_event("listening", Duration::from_secs(20));
    let service = |name: &str, ip: &str, port: &str| {
        format!(
            "  - name: {name}\n    namespace: shop\n    waypoint: wp\n    clusterIPs: [{ip}]\n    selector: {{app: v1}}\n    ports: [{port}]\n"
        )
    };
    let services = [
        service("greeter-tcp", "10.96.0.23", "{port: 9025, appProtocol: tcp}"),
        service("greeter", "10.96.0.24", "{port: 9025}"),
        service(
            "echo-http",
            "10.96.0.25",
            "{name: raw, port: 9000, appProtocol: http}, {name: web, port: 80, targetPort: 8080, appProtocol: HTTP}",
        ),
    ]
    .concat();
    let text = mesh.config("").replace(
        "  - name: backend-v1\n",
        &format!("{services}  - name: backend-v1\n"),
    );
    mesh.set_raw_config(&text);
    std::thread::sleep(Duration::from_secs(3));

    // Declared `tcp`: passed through at once, so the greeting arrives.
    let greeting = bash_in(
        &tb,
        &mesh.client_a,
        "exec 3<>/dev/tcp/10.96.0.23/9025; timeout 5 head -c 9 <&3",
    );
    assert_eq!(greeting, "220 ready", "{}", mesh.waypoint().report());
    // Undeclared: the waypoint waits for the client's first bytes (up to
    // the detection timeout), so the server is not even reached yet.
    let waiting = bash_in(
        &tb,
        &mesh.client_a,
        "exec 3<>/dev/tcp/10.96.0.24/9025; timeout 3 head -c 9 <&3",
    );
    assert_eq!(
        waiting, "",
        "an undeclared server-first stream was not detected"
    );
    // Declared `http`: bytes that are not HTTP get 400 instead of passing
    // through as opaque TCP (the echo server would send them back). Here
    // the client's second line comes after the 400 (bash's printf writes
    // line by line; under load the agent can get both at once): the
    // waypoint takes it and the stream ends cleanly, so the client's agent
    // relays to the end. A reset after the 400 failed the agent's relay
    // ("the HBONE stream closed"), and lost the 400 when the answer and the
    // second write reached the agent together.
    let answered = bash_in(
        &tb,
        &mesh.client_a,
        "exec 3<>/dev/tcp/10.96.0.25/9000; printf 'hello there\\r\\n' >&3; timeout 5 head -c 12 <&3; printf '\\r\\n' >&3; timeout 5 cat <&3 >/dev/null",
    );
    assert_eq!(answered, "HTTP/1.1 400", "{}", mesh.waypoint().report());
    let relayed = mesh.agents[0].wait_connection(&tb, |r| r["dst"] == "10.96.0.25:9000");
    assert!(
        relayed["error"].is_null(),
        "the client's agent did not relay the 400 exchange to its end: {relayed}"
    );
    // And many times over, as the client writes it (two writes in a row).
    let answers = bash_in(
        &tb,
        &mesh.client_a,
        "for i in $(seq 50); do exec 3<>/dev/tcp/10.96.0.25/9000; printf 'hello there\\r\\n\\r\\n' >&3; echo \"$(timeout 5 head -c 12 <&3)\"; exec 3<&-; done",
    );
    let lost = answers.lines().filter(|a| *a != "HTTP/1.1 400").count();
    assert_eq!(
        lost,
        0,
        "{lost} of 50 bad requests got no 400:\n{answers}\n{}",
        mesh.waypoint().report()
    );
    // HTTP/1.1 and HTTP/2 on a port declared HTTP are served as usual.
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let http = bash_in(
            &tb,
            &mesh.client_a,
            &format!(
                "curl -s {version} -o /dev/null -w '%{{http_code}}' --max-time 5 http://10.96.0.25/"
            ),
        );
        assert_eq!(http, "200", "{version}");
    }
}

#[test]
fn the_waypoint_is_ready_only_once_it_can_serve() {
    let mut tb = testbed_or_skip!("waypoint_readiness");
    let mut mesh = WaypointMesh::new(&mut tb, "");
    // Every backend serves: the request at the end may go to any of them.
    let (v1, v2, v3) = (mesh.v1.clone(), mesh.v2.clone(), mesh.v3.clone());
    for backend in [&v1, &v2, &v3] {
        mesh.serve_http(&tb, backend, &[]);
    }
    // The CA's files are not there yet (as a secret not yet mounted): the
    // waypoint has its configuration but no certificate, keeps asking for
    // one, and its readiness says so.
    let ca = tb.run_dir().join("ca-not-yet");
    mesh.spawn_waypoint(&tb, &ca, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut status, mut body) = mesh.readiness(&tb);
    while status != 503 || body.contains("the configuration has not been applied yet") {
        assert!(
            Instant::now() < deadline,
            "readiness: {status} {body:?}\n{}",
            mesh.waypoint().report()
        );
        std::thread::sleep(Duration::from_millis(100));
        (status, body) = mesh.readiness(&tb);
    }
    assert_eq!(status, 503, "{body:?}");
    assert!(
        body.starts_with("not ready: no certificate yet: ")
            && body.contains("ca-not-yet")
            && body.ends_with("; HBONE is not served yet\n"),
        "{body:?}"
    );
    assert_eq!(
        mesh.curl(&tb, &mesh.client_a, "/", &["--max-time", "2"])
            .status,
        0,
        "a waypoint without a certificate served a client"
    );
    // The files appear: it serves, and says it is ready.
    std::fs::create_dir_all(&ca).expect("the CA directory");
    for file in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(mesh_ca(&tb).join(file), ca.join(file)).expect("the CA's files");
    }
    let ready = mesh
        .waypoint()
        .wait_for_stderr_line(Duration::from_secs(40), |l| l.contains("waypoint ready"));
    assert!(ready.is_some(), "{}", mesh.waypoint().report());
    assert_eq!(mesh.readiness(&tb), (200, "ready\n".to_owned()));
    assert_eq!(mesh.curl(&tb, &mesh.client_a, "/", &[]).status, 200);
}

#[test]
fn invalid_routes_are_rejected_and_the_previous_version_stays() {
    let mut tb = testbed_or_skip!("waypoint_bad_route");
    let good = format!("routes:\n{}", route("canary", "{}", &split(0, 100, "")));
    let mesh = mesh_with(&mut tb, &good, &[]);
    assert_eq!(
        mesh.curl(&tb, &mesh.client_a, "/", &[])
            .header("x-backend")
            .as_deref(),
        Some("v2")
    );
    // What the routes are and which were rejected is the waypoint's own
    // business: /config answers on localhost in its pod only.
    let view = admin_views_on_localhost_only(&tb, &mesh.wp);
    assert_eq!(view["waypoint"], "shop/wp", "{view:#}");

    let bad_regex = "        - matches: [{path: {type: RegularExpression, value: '/(unclosed'}}]\n          backendRefs: [{name: backend-v1, port: 80}]\n";
    let unknown = "        - backendRefs: [{name: nowhere, port: 80}]\n";
    let zero = split(0, 0, "");
    let routes = format!(
        "routes:\n{}{}{}",
        route("canary", "{}", bad_regex),
        route("lost", "{}", unknown),
        route("empty", "{}", &zero)
    );
    mesh.set_extra(&routes);
    std::thread::sleep(Duration::from_secs(1));
    let view = mesh.config_view(&tb);
    let rejected = view["rejectedRoutes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let reason_of = |name: &str| {
        let found = rejected
            .iter()
            .find(|r| r["route"] == format!("shop/{name}"))
            .unwrap_or_else(|| panic!("{name} not rejected: {view:#}"));
        (
            found["reason"].as_str().unwrap_or_default().to_owned(),
            found["message"].to_string(),
        )
    };
    let (_, message) = reason_of("canary");
    assert!(
        message.contains("regular expression") || message.contains("regex"),
        "{message}"
    );
    assert_eq!(reason_of("lost").0, "BackendNotFound");
    let (_, message) = reason_of("empty");
    assert!(message.contains("sum to 0"), "{message}");
    // The last good version of `canary` still routes.
    for _ in 0..10 {
        let got = mesh.curl(&tb, &mesh.client_a, "/", &[]);
        assert_eq!(got.header("x-backend").as_deref(), Some("v2"), "{got:?}");
    }
}

#[test]
fn without_its_waypoint_a_service_fails_closed() {
    let mut tb = testbed_or_skip!("waypoint_down");
    let mut mesh = mesh_with(&mut tb, "", &[]);
    assert_eq!(mesh.curl(&tb, &mesh.client_a, "/", &[]).status, 200);
    // The waypoint process is gone: connections are refused, never sent
    // straight to the backends.
    let waypoint = mesh.waypoint.take().expect("running");
    waypoint.terminate();
    let got = mesh.curl(&tb, &mesh.client_a, "/", &[]);
    assert_eq!(
        got.status, 0,
        "a response came without the waypoint: {got:?}"
    );
    // No ready waypoint pod at all: refused by the client's agent, which
    // says why.
    let text = mesh.config("").replace(
        &format!(
            "endpoints: [{{ip: {}, ports: {{hbone: 15008}}}}]",
            mesh.wp.ipv4
        ),
        "endpoints: []",
    );
    mesh.set_raw_config(&text);
    std::thread::sleep(Duration::from_secs(3));
    let got = mesh.curl(&tb, &mesh.client_a, "/", &[]);
    assert_eq!(got.status, 0, "{got:?}");
    let agent = &mesh.agents[0];
    let logged = agent
        .proc
        .wait_for_stderr_line(Duration::from_secs(10), |line| {
            line.contains("uses waypoint shop/wp, which has no ready endpoint")
        });
    assert!(logged.is_some(), "{}", agent.proc.report());
}

#[test]
fn connections_are_spread_over_the_workers_and_backend_connections_reused() {
    let mut tb = testbed_or_skip!("waypoint_workers");
    let mut mesh = WaypointMesh::new(&mut tb, "");
    let (v1, v2, v3) = (mesh.v1.clone(), mesh.v2.clone(), mesh.v3.clone());
    for pod in [&v1, &v2, &v3] {
        mesh.serve_http(&tb, pod, &[]);
    }
    mesh.start_waypoint(&tb, &["--workers", "2"]);
    // Two HBONE connections, one from each node's agent (a client on n1,
    // a backend pod on n2 calling its own service); the second request
    // from n1 reuses the first connection.
    for client in [&mesh.client_a, &v1, &mesh.client_a] {
        let got = mesh.curl(&tb, client, "/", &[]);
        assert_eq!(got.status, 200, "{got:?}");
    }
    let workers = mesh.config_view(&tb)["workers"].clone();
    let counts: Vec<(u64, u64)> = workers
        .as_array()
        .unwrap_or_else(|| panic!("no workers in /config: {workers}"))
        .iter()
        .map(|w| {
            (
                w["connections"].as_u64().unwrap_or_default(),
                w["requests"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(counts.len(), 2, "{workers}");
    assert!(
        counts
            .iter()
            .all(|&(connections, requests)| connections >= 1 && requests >= 1),
        "a worker got no connection or no request: {workers}"
    );
    assert_eq!(counts.iter().map(|c| c.1).sum::<u64>(), 3, "{workers}");

    // HTTP/1.1 connections to backends are pooled per worker: 30 more
    // requests, each on a new client connection (a new curl), open at most
    // one connection per (worker, endpoint).
    let opened = || mesh.metric(&tb, "ambit_waypoint_backend_connections_opened_total", &[]);
    let before = opened();
    for _ in 0..30 {
        let got = mesh.curl(&tb, &mesh.client_a, "/", &[]);
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(got.header("x-backend").map(|b| b.len()), Some(2), "{got:?}");
    }
    let after = opened();
    assert!(before >= 1, "no backend connection counted");
    assert!(
        after - before <= 6,
        "{} backend connections for 30 requests: not reused",
        after - before
    );
}
