//! The waypoint in Kubernetes mode, against the fake API server:
//! `ambit waypoint apply` writes the waypoint's objects and labels the
//! namespace `ambit.dev/use-waypoint`; the test then does what the
//! Deployment controller and the kubelet would (a pod with the template's
//! labels and account, running the Deployment's arguments), and the
//! namespace's Services' traffic goes through the waypoint, which reads
//! Services, `EndpointSlices`, Pods, policies and `HTTPRoute`s from the API
//! server and follows a route's change within a second. `ambit waypoint
//! list` and `delete` complete the set.

use std::time::{Duration, Instant};

use ambit_tests::{
    CgroupDriver, Node, Pod, Testbed,
    fake_kube::FakeKube,
    mesh::{Agent, mesh_ca},
    testbed_or_skip,
    waypoint::{WAYPOINT_BIN, admin_views_on_localhost_only},
    workload::{ECHO_PORT, WAIT, pod_tool},
};
use serde_json::{Value, json};

const NAMESPACE: &str = "shop";
const BACKEND_IP: &str = "10.96.0.30";

fn service(name: &str, port: u16, cluster_ip: Option<&str>, port_name: &str) -> Value {
    let mut spec = json!({"ports": [{"name": port_name, "port": port}]});
    if let Some(ip) = cluster_ip {
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
    }
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec})
}

/// The `EndpointSlice` of `service` listing `pods` (ready) at `port`.
fn slice(service: &str, port_name: &str, port: u16, pods: &[(&Pod, &Node)]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(pod, node)| json!({"addresses": [pod.ipv4.to_string()], "conditions": {"ready": true}, "nodeName": node.name}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-1"), "namespace": NAMESPACE,
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
           "endpoints": endpoints})
}

fn route(v1: u32, v2: u32) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "canary", "namespace": NAMESPACE},
           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "backend", "port": 80}],
                    "rules": [{"backendRefs": [
                        {"name": "backend-v1", "port": 80, "weight": v1},
                        {"name": "backend-v2", "port": 80, "weight": v2}]}]}})
}

/// Which backend answered a GET to the cluster IP from `client`.
fn answered_by(tb: &Testbed, client: &Pod) -> String {
    let mut curl = std::process::Command::new("curl");
    curl.args(["-s", "--max-time", "10", "-D", "-", "-o", "/dev/null"])
        .arg(format!("http://{BACKEND_IP}/"));
    let out = tb.run_in_pod(client, curl);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("x-backend: ").map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| format!("no answer: {out:?}"))
}

/// Runs `ambit waypoint ARGS` against the fake API server from `cp`'s
/// network namespace; returns (success, stdout, stderr).
fn ambit_waypoint(
    tb: &Testbed,
    cp: &Node,
    kube: &FakeKube,
    args: &[&str],
) -> (bool, String, String) {
    let mut command = std::process::Command::new(Testbed::bin("ambit"));
    command
        .arg("waypoint")
        .args(args)
        .args(["--kube-api-url", &kube.url()]);
    let cli = tb.spawn_on_node(cp, tb.cgroup(), command);
    let (status, lines) = cli.output_lines(WAIT);
    (status.success(), lines.join("\n"), cli.stderr_text())
}

/// The waypoint in `wp`, in Kubernetes mode, started with `args` (the
/// Deployment's), once it says it is ready. The certificate comes from the
/// mesh CA's files here: the controller's path is tested in controller.rs.
fn start_waypoint(tb: &Testbed, kube: &FakeKube, wp: &Pod, args: &[String]) -> ambit_tests::Proc {
    let ca = mesh_ca(tb);
    let mut command = std::process::Command::new(Testbed::bin(WAYPOINT_BIN));
    command
        .args(args)
        .args(["--kube-api-url", &kube.url()])
        .arg("--ca-cert")
        .arg(ca.join("ca.pem"))
        .arg("--ca-key")
        .arg(ca.join("ca-key.pem"));
    let waypoint = tb.spawn_in_pod(wp, command);
    assert!(
        waypoint
            .wait_for_stderr_line(Duration::from_secs(20), |l| l.contains("waypoint ready"))
            .is_some(),
        "{}",
        waypoint.report()
    );
    waypoint
}

/// An `ambit.dev/` annotation set on the API server reaches the waypoint:
/// fault injection aborts every request with 503; without it, v2 answers
/// again.
fn expect_faults(tb: &Testbed, kube: &FakeKube, client: &Pod, waypoint: &ambit_tests::Proc) {
    let mut faulty = route(0, 100);
    faulty["metadata"]["annotations"] = json!({"ambit.dev/fault-abort-status": "503"});
    kube.apply(faulty).expect("annotate the route");
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..5 {
        assert_eq!(status_of(tb, client), "503", "{}", waypoint.report());
    }
    kube.apply(route(0, 100)).expect("the route without faults");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(answered_by(tb, client), "v2", "{}", waypoint.report());
}

/// The status of a GET to the cluster IP from `client`.
fn status_of(tb: &Testbed, client: &Pod) -> String {
    let mut curl = std::process::Command::new("curl");
    curl.args([
        "-s",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ])
    .arg(format!("http://{BACKEND_IP}/"));
    String::from_utf8_lossy(&tb.run_in_pod(client, curl).stdout).into_owned()
}

/// `ambit waypoint apply` refuses a missing namespace, then writes the
/// waypoint's objects and labels the namespace. Returns what the
/// Deployment's pods get: their labels and the container's arguments.
fn apply_waypoint(tb: &Testbed, cp: &Node, kube: &FakeKube) -> (Value, Vec<String>) {
    let (ok, _, stderr) = ambit_waypoint(tb, cp, kube, &["apply", "-n", NAMESPACE, "--name", "wp"]);
    assert!(!ok, "apply to a missing namespace succeeded");
    assert!(stderr.contains("namespace \"shop\" not found"), "{stderr}");
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": NAMESPACE, "labels": {"ambit.dev/mesh": "enabled"}}}))
        .expect("the namespace");
    let (ok, stdout, stderr) =
        ambit_waypoint(tb, cp, kube, &["apply", "-n", NAMESPACE, "--name", "wp"]);
    assert!(ok, "ambit waypoint apply: {stderr}");
    for line in [
        "serviceaccount/wp applied",
        "clusterrolebinding/ambit-waypoint:shop:wp applied",
        "deployment/wp applied",
        "service/wp applied",
        "namespace/shop labelled ambit.dev/use-waypoint=wp",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{stdout}"
        );
    }
    let deployment = kube
        .get("deployments", NAMESPACE, "wp")
        .expect("get")
        .expect("the Deployment apply wrote");
    let pod_spec = &deployment["spec"]["template"];
    assert_eq!(pod_spec["spec"]["serviceAccountName"], "wp");
    let args: Vec<String> = pod_spec["spec"]["containers"][0]["args"]
        .as_array()
        .expect("the container's args")
        .iter()
        .map(|a| a.as_str().expect("a string").to_owned())
        .collect();
    let binding = kube
        .get("clusterrolebindings", "", "ambit-waypoint:shop:wp")
        .expect("get")
        .expect("the binding apply wrote");
    assert_eq!(binding["roleRef"]["name"], "ambit-waypoint");
    (pod_spec["metadata"]["labels"].clone(), args)
}

#[test]
fn in_kubernetes_mode_the_waypoint_follows_the_api_server() {
    let mut tb = testbed_or_skip!("waypoint_kube");
    let cp = tb.add_node("cp");
    let n1 = tb.add_node("n1");
    let n2 = tb.add_node("n2");
    let kube = FakeKube::start(&cp).expect("the fake API server");
    let (pod_labels, args) = apply_waypoint(&tb, &cp, &kube);
    let pod = |tb: &mut Testbed, node: &Node, name: &str, labels: Value| {
        kube.run_pod(tb, node, NAMESPACE, name, &labels, CgroupDriver::Cgroupfs)
            .expect("the pod")
    };
    let client = pod(&mut tb, &n1, "client", json!({"app": "client"}));
    let v1 = pod(&mut tb, &n2, "v1", json!({"app": "v1"}));
    let v2 = pod(&mut tb, &n2, "v2", json!({"app": "v2"}));
    // The Deployment's pod: its template's labels, its account (run_pod
    // names the account after the pod).
    let wp = pod(&mut tb, &n2, "wp", pod_labels);
    for object in [
        service("backend", 80, Some(BACKEND_IP), "http"),
        slice("backend", "http", ECHO_PORT, &[(&v1, &n2), (&v2, &n2)]),
        service("backend-v1", 80, None, "http"),
        slice("backend-v1", "http", ECHO_PORT, &[(&v1, &n2)]),
        service("backend-v2", 80, None, "http"),
        slice("backend-v2", "http", ECHO_PORT, &[(&v2, &n2)]),
        slice("wp", "hbone", 15008, &[(&wp, &n2)]),
        route(100, 0),
    ] {
        kube.apply(object).expect("apply");
    }
    let listen = format!("0.0.0.0:{ECHO_PORT}");
    // A pod is enrolled while a process runs in it (its network namespace
    // is found through one): the client runs an echo server meanwhile.
    let _client_process = ambit_tests::workload::serve(&tb, &client);
    let _servers: Vec<_> = [&v1, &v2]
        .iter()
        .map(|pod| {
            let server = tb.spawn_in_pod(
                pod,
                pod_tool(&["http-serve", "--listen", &listen, "--name", &pod.name]),
            );
            server.wait_for_event("listening", WAIT);
            server
        })
        .collect();
    let agents = [
        Agent::spawn_kubernetes(&tb, &n1, &kube.url(), &[]),
        Agent::spawn_kubernetes(&tb, &n2, &kube.url(), &[]),
    ];
    for agent in &agents {
        agent.wait_ready(&tb);
    }
    let waypoint = start_waypoint(&tb, &kube, &wp, &args);

    // The client's agent sends the Service's traffic to the waypoint,
    // which routes it by the HTTPRoute from the API server.
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered_by(&tb, &client) != "v1" {
        assert!(
            Instant::now() < deadline,
            "never routed to v1\n{}",
            waypoint.report()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..5 {
        assert_eq!(answered_by(&tb, &client), "v1");
    }
    let config = admin_views_on_localhost_only(&tb, &wp);
    assert_eq!(
        config["services"][0]["service"], "shop/backend",
        "{config:#}"
    );

    // The route changes on the API server: within a second every request
    // goes to v2.
    kube.apply(route(0, 100)).expect("update the route");
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..10 {
        assert_eq!(answered_by(&tb, &client), "v2", "{}", waypoint.report());
    }

    // ambit's settings on the route reach the waypoint: every request
    // aborted with 503 by fault injection.
    expect_faults(&tb, &kube, &client, &waypoint);

    // An invalid route is refused and the last good version stays.
    let mut broken = route(0, 100);
    broken["spec"]["rules"][0]["backendRefs"][0]["name"] = json!("nowhere");
    kube.apply(broken).expect("apply");
    let logged = waypoint.wait_for_stderr_line(Duration::from_secs(10), |l| {
        l.contains("route rejected") && l.contains("nowhere")
    });
    assert!(logged.is_some(), "{}", waypoint.report());
    assert_eq!(answered_by(&tb, &client), "v2");

    list_and_delete(&tb, &cp, &kube);
}

/// `ambit waypoint list` shows the waypoint, its readiness and the
/// Services using it (not its own); `delete` removes what `apply` wrote and
/// the namespace's label, and a second `delete` finds nothing.
fn list_and_delete(tb: &Testbed, cp: &Node, kube: &FakeKube) {
    // No replica is ready (nothing writes the Deployment's status here):
    // `--wait` gives up with what to look at; once one is, it succeeds.
    let apply_and_wait = ["apply", "-n", NAMESPACE, "--name", "wp", "--wait"];
    let (ok, _, stderr) = ambit_waypoint(tb, cp, kube, &[&apply_and_wait[..], &["1"]].concat());
    assert!(!ok, "--wait succeeded with no ready replica");
    assert!(
        stderr.contains("not ready after 1 s") && stderr.contains("describe deployment wp"),
        "{stderr}"
    );
    kube.merge_patch(
        "deployments",
        NAMESPACE,
        "wp",
        &json!({"status": {"replicas": 1, "readyReplicas": 1}}),
    )
    .expect("the Deployment's status");
    let (ok, stdout, stderr) =
        ambit_waypoint(tb, cp, kube, &[&apply_and_wait[..], &["5"]].concat());
    assert!(ok, "apply --wait: {stderr}");
    assert!(
        stdout.contains("waypoint shop/wp ready (1 replica(s))"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = ambit_waypoint(tb, cp, kube, &["list", "-o", "json"]);
    assert!(ok, "list: {stderr}");
    let listed: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed:#}");
    let entry = &listed[0];
    assert_eq!(entry["namespace"], NAMESPACE);
    assert_eq!(entry["name"], "wp");
    assert_eq!(entry["readyReplicas"], 1);
    assert_eq!(entry["namespaceUsesIt"], true);
    assert_eq!(
        entry["services"],
        json!(["backend", "backend-v1", "backend-v2"]),
        "{entry:#}"
    );
    let (ok, table, _) = ambit_waypoint(tb, cp, kube, &["list"]);
    assert!(ok);
    assert!(table.starts_with("NAMESPACE  NAME  READY"), "{table}");
    assert!(
        table.contains("shop       wp    1/1    namespace (3 services)"),
        "{table}"
    );

    let (ok, stdout, stderr) =
        ambit_waypoint(tb, cp, kube, &["delete", "-n", NAMESPACE, "--name", "wp"]);
    assert!(ok, "delete: {stderr}");
    assert!(stdout.contains("deployment/wp deleted"), "{stdout}");
    for (resource, namespace, name) in [
        ("deployments", NAMESPACE, "wp"),
        ("services", NAMESPACE, "wp"),
        ("serviceaccounts", NAMESPACE, "wp"),
        ("clusterrolebindings", "", "ambit-waypoint:shop:wp"),
    ] {
        assert!(
            kube.get(resource, namespace, name).expect("get").is_none(),
            "{resource} {name} left behind"
        );
    }
    let namespace = kube
        .get("namespaces", "", NAMESPACE)
        .expect("get")
        .expect("the namespace");
    assert!(
        namespace["metadata"]["labels"]
            .get("ambit.dev/use-waypoint")
            .is_none(),
        "{namespace:#}"
    );
    let (ok, _, stderr) =
        ambit_waypoint(tb, cp, kube, &["delete", "-n", NAMESPACE, "--name", "wp"]);
    assert!(!ok, "a second delete succeeded");
    assert!(
        stderr.contains("no waypoint \"wp\" in namespace \"shop\""),
        "{stderr}"
    );
}
