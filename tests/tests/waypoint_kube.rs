//! The waypoint in Kubernetes mode, against the fake API server: a
//! namespace labelled `ambit.dev/use-waypoint` sends its Services' traffic
//! through the waypoint, which reads Services, `EndpointSlices`, Pods,
//! policies and `HTTPRoute`s from the API server, and follows a route's
//! change within a second.

use std::time::{Duration, Instant};

use ambit_tests::{
    CgroupDriver, Node, Pod, Testbed,
    fake_kube::FakeKube,
    mesh::{Agent, mesh_ca},
    testbed_or_skip,
    waypoint::{ADMIN_PORT, WAYPOINT_BIN},
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

/// The waypoint in `wp`, in Kubernetes mode, once it says it is ready.
fn start_waypoint(tb: &Testbed, kube: &FakeKube, wp: &Pod) -> ambit_tests::Proc {
    let ca = mesh_ca(tb);
    let mut command = std::process::Command::new(Testbed::bin(WAYPOINT_BIN));
    command
        .args([
            "--name",
            "wp",
            "--namespace",
            NAMESPACE,
            "--kubernetes",
            "--kube-api-url",
            &kube.url(),
        ])
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

#[test]
fn in_kubernetes_mode_the_waypoint_follows_the_api_server() {
    let mut tb = testbed_or_skip!("waypoint_kube");
    let cp = tb.add_node("cp");
    let n1 = tb.add_node("n1");
    let n2 = tb.add_node("n2");
    let kube = FakeKube::start(&cp).expect("the fake API server");
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": NAMESPACE,
                                   "labels": {"ambit.dev/mesh": "enabled", "ambit.dev/use-waypoint": "wp"}}}))
        .expect("the namespace");
    let pod = |tb: &mut Testbed, node: &Node, name: &str, labels: Value| {
        kube.run_pod(tb, node, NAMESPACE, name, &labels, CgroupDriver::Cgroupfs)
            .expect("the pod")
    };
    let client = pod(&mut tb, &n1, "client", json!({"app": "client"}));
    let v1 = pod(&mut tb, &n2, "v1", json!({"app": "v1"}));
    let v2 = pod(&mut tb, &n2, "v2", json!({"app": "v2"}));
    let wp = pod(
        &mut tb,
        &n2,
        "wp",
        json!({"ambit.dev/waypoint": "wp", "ambit.dev/mesh": "disabled"}),
    );
    for object in [
        service("backend", 80, Some(BACKEND_IP), "http"),
        slice("backend", "http", ECHO_PORT, &[(&v1, &n2), (&v2, &n2)]),
        service("backend-v1", 80, None, "http"),
        slice("backend-v1", "http", ECHO_PORT, &[(&v1, &n2)]),
        service("backend-v2", 80, None, "http"),
        slice("backend-v2", "http", ECHO_PORT, &[(&v2, &n2)]),
        service("wp", 15008, None, "hbone"),
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
    let waypoint = start_waypoint(&tb, &kube, &wp);

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
    let config = tb.exec_in_netns(
        &wp.netns,
        &[
            "curl",
            "-sf",
            &format!("http://{}:{ADMIN_PORT}/config", wp.ipv4),
        ],
    );
    let config: Value = serde_json::from_slice(&config.stdout).expect("/config");
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
}
