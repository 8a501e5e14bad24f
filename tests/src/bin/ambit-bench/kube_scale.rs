//! Kubernetes mode at scale: one node agent watching a fake API server that
//! serves 10,000 pods, 2,000 services (with their `EndpointSlices`) and
//! 1,000 authorization policies, measuring
//!
//! - how long the agent takes to list everything and become ready;
//! - its memory (RSS) and CPU at steady state (no change for a while);
//! - the time from a pod's `ambit.dev/mesh` label change on the API server
//!   to the pod enrolled (and from its removal to the pod gone), p50/p99;
//! - the time from an `AuthorizationPolicy` written on the API server to
//!   the data path enforcing it: an open connection, pinged every
//!   millisecond, is cut by the agent, p50/p99.
//!
//! The pods of the corpus live on 100 other (imaginary) nodes: they are
//! API objects only, destinations this agent indexes but never connects
//! to. Two real pods on the agent's node carry the measurements.

mod corpus;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ambit_tests::fake_kube::FakeKube;
use ambit_tests::mesh::Agent;
use ambit_tests::workload::{ECHO_PORT, pod_tool, serve, try_send};
use ambit_tests::{CgroupDriver, Node, Pod, Testbed};
use serde::Serialize;
use serde_json::{Value, json};

use crate::console::progress;
use crate::error::BenchError;
use crate::usage::{CpuSample, rss_mib};

/// The namespace of the two measuring pods; not labelled, so only the
/// pods' own labels put them in the mesh.
const PROBE_NAMESPACE: &str = "probe";
const MESH_LABEL: &str = "ambit.dev/mesh";
/// How long nothing changes before the steady-state figures are read, and
/// how long the CPU is sampled.
const SETTLE: Duration = Duration::from_secs(5);
const CPU_WINDOW: Duration = Duration::from_secs(10);
/// The longest any single wait may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the scale bench found.
#[derive(Debug, Serialize)]
pub struct KubeScaleReport {
    /// Objects the API server served.
    pub corpus: corpus::Counts,
    /// Seconds to load the corpus into the fake API server.
    pub load_secs: f64,
    /// Seconds from the agent's start to its readiness (every watch listed,
    /// the first snapshot applied).
    pub ready_secs: f64,
    /// Meshed pods of other nodes in the agent's index.
    pub destinations: u64,
    /// Agent RSS at steady state, MiB.
    pub rss_mib: f64,
    /// Agent CPU at steady state, in cores (1.0 = one core busy).
    pub steady_cpu_cores: f64,
    /// Label set → pod enrolled, milliseconds.
    pub enroll_ms: Percentiles,
    /// Label removed → pod gone, milliseconds.
    pub unenroll_ms: Percentiles,
    /// Policy written → open connection cut, milliseconds.
    pub policy_enforced_ms: Percentiles,
    /// Agent RSS after the measurements, MiB.
    pub rss_after_mib: f64,
}

/// p50 and p99 of a set of samples (nearest rank), and how many there were.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Number of samples.
    pub samples: usize,
}

// === impl Percentiles ===

impl Percentiles {
    fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            if samples.is_empty() {
                return f64::NAN;
            }
            // Nearest rank: the smallest sample with at least q of them at
            // or below it.
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "sample counts are small"
            )]
            let index = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[index]
        };
        Self {
            p50: rank(0.50),
            p99: rank(0.99),
            max: samples.last().copied().unwrap_or(f64::NAN),
            samples: samples.len(),
        }
    }
}

/// Runs the scale bench on nodes `kcp` (API server) and `k1` (the agent)
/// added to `tb`. `iterations` label changes and policy changes are timed.
pub fn measure(tb: &mut Testbed, iterations: usize) -> Result<KubeScaleReport, BenchError> {
    let cp = tb.add_node("kcp");
    let node = tb.add_node("k1");
    let kube =
        FakeKube::start(&cp).map_err(|e| BenchError::failed(format!("fake API server: {e}")))?;
    let counts = corpus::Counts::full();
    progress(&format!(
        "kube-scale: loading {} pods, {} services with their EndpointSlices, {} policies in {} namespaces",
        counts.pods, counts.services, counts.policies, counts.namespaces
    ));
    let started = Instant::now();
    corpus::load(&kube, &counts)?;
    let load_secs = started.elapsed().as_secs_f64();
    let (client, server) = probe_pods(tb, &kube, &node)?;
    let _servers = [serve(tb, &client), serve(tb, &server)];

    progress("kube-scale: starting the agent in Kubernetes mode");
    let started = Instant::now();
    let agent = Agent::spawn_kubernetes(tb, &node, &kube.url(), &[]);
    agent.wait_ready(tb);
    let ready_secs = started.elapsed().as_secs_f64();
    let destinations = agent
        .get_json(tb, "/workloads")
        .as_array()
        .map_or(0, |all| {
            all.iter().filter(|w| w["local"] == false).count() as u64
        });

    progress(&format!(
        "kube-scale: ready after {ready_secs:.1} s with {destinations} destinations; steady state for {} s",
        (SETTLE + CPU_WINDOW).as_secs()
    ));
    std::thread::sleep(SETTLE);
    let pid = agent.proc.pid();
    let before = CpuSample::take(pid).map_err(|e| BenchError::failed(format!("agent CPU: {e}")))?;
    std::thread::sleep(CPU_WINDOW);
    let after = CpuSample::take(pid).map_err(|e| BenchError::failed(format!("agent CPU: {e}")))?;
    let rss = rss_mib(pid).map_err(|e| BenchError::failed(format!("agent RSS: {e}")))?;

    progress(&format!(
        "kube-scale: {iterations} label changes each way, then {iterations} policy changes"
    ));
    let (enroll, unenroll) = time_label_changes(&kube, &node, iterations)?;
    let enforced = time_policy_changes(tb, &kube, &agent, &client, &server, iterations)?;
    let rss_after = rss_mib(pid).map_err(|e| BenchError::failed(format!("agent RSS: {e}")))?;
    Ok(KubeScaleReport {
        corpus: counts,
        load_secs,
        ready_secs,
        destinations,
        rss_mib: rss,
        steady_cpu_cores: before.cores_until(&after),
        enroll_ms: Percentiles::of(enroll),
        unenroll_ms: Percentiles::of(unenroll),
        policy_enforced_ms: Percentiles::of(enforced),
        rss_after_mib: rss_after,
    })
}

/// The two measuring pods on `node`: Pod objects bound to it, real network
/// namespaces and cgroups named after their UIDs.
fn probe_pods(tb: &mut Testbed, kube: &FakeKube, node: &Node) -> Result<(Pod, Pod), BenchError> {
    let failed =
        |e: ambit_tests::fake_kube::FakeKubeError| BenchError::failed(format!("probe pods: {e}"));
    kube.apply(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PROBE_NAMESPACE}}),
    )
    .map_err(failed)?;
    let mut pod = |name: &str| {
        kube.run_pod(
            tb,
            node,
            PROBE_NAMESPACE,
            name,
            &json!({"app": name}),
            CgroupDriver::Cgroupfs,
        )
        .map_err(failed)
    };
    Ok((pod("client")?, pod("server")?))
}

/// Sets and removes the mesh label of `probe/server` `iterations` times;
/// returns the milliseconds to enrolled and to gone. The agent's `/pods`
/// is polled from inside the node's namespace every 2 ms.
fn time_label_changes(
    kube: &FakeKube,
    node: &Node,
    iterations: usize,
) -> Result<(Vec<f64>, Vec<f64>), BenchError> {
    let patch = |value: Option<&str>| {
        kube.merge_patch(
            "pods",
            PROBE_NAMESPACE,
            "server",
            &json!({"metadata": {"labels": {MESH_LABEL: value}}}),
        )
        .map_err(|e| BenchError::failed(format!("label the probe pod: {e}")))
    };
    ambit_tests::netns::run_in_netns(&node.netns_path, || {
        let mut enroll = Vec::with_capacity(iterations);
        let mut unenroll = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            crate::error::check_interrupted()?;
            let started = Instant::now();
            patch(Some("enabled"))?;
            wait_pod(|state| state == Some("enrolled"))?;
            enroll.push(millis(started.elapsed()));
            let started = Instant::now();
            patch(None)?;
            wait_pod(|state| state.is_none())?;
            unenroll.push(millis(started.elapsed()));
        }
        Ok((enroll, unenroll))
    })
    .map_err(|e| BenchError::failed(format!("enter the node's namespace: {e}")))?
}

/// Polls the admin API's `/pods` until `probe/server`'s state satisfies
/// `done`. Runs inside the node's network namespace.
fn wait_pod(done: impl Fn(Option<&str>) -> bool) -> Result<(), BenchError> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let pods = admin_get("/pods")?;
        let state = pods.as_array().and_then(|pods| {
            pods.iter()
                .find(|p| p["name"] == "server" && p["namespace"] == PROBE_NAMESPACE)
                .and_then(|p| p["state"].as_str())
        });
        if done(state) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::failed(format!(
                "probe/server still {state:?} after {STEP_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `GET path` on the agent's admin API (HTTP/1.0, so the body ends with
/// the connection). Runs inside the node's network namespace.
fn admin_get(path: &str) -> Result<Value, BenchError> {
    let failed = |e: std::io::Error| BenchError::failed(format!("admin API {path}: {e}"));
    let mut stream = TcpStream::connect(("127.0.0.1", 15000)).map_err(failed)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(failed)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(failed)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(failed)?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body)
        .map_err(|e| BenchError::failed(format!("admin API {path}: {e}: {body}")))
}

/// Enrolls both probe pods, then `iterations` times: a connection from the
/// client to the server pinged every millisecond, a DENY policy for the
/// server written, the time until the agent cut the connection; the policy
/// deleted, and a connection let through again before the next round.
fn time_policy_changes(
    tb: &Testbed,
    kube: &FakeKube,
    agent: &Agent,
    client: &Pod,
    server: &Pod,
    iterations: usize,
) -> Result<Vec<f64>, BenchError> {
    let failed = |e: ambit_tests::fake_kube::FakeKubeError| {
        BenchError::failed(format!("policy change: {e}"))
    };
    for name in ["client", "server"] {
        kube.merge_patch(
            "pods",
            PROBE_NAMESPACE,
            name,
            &json!({"metadata": {"labels": {MESH_LABEL: "enabled"}}}),
        )
        .map_err(failed)?;
    }
    for name in ["client", "server"] {
        agent.wait_pod_state(tb, name, "enrolled", STEP_TIMEOUT);
    }
    let to = format!("{}:{ECHO_PORT}", server.ipv4);
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        crate::error::check_interrupted()?;
        wait_allowed(tb, client, &to)?;
        let ping = tb.spawn_in_pod(
            client,
            pod_tool(&[
                "ping",
                "--to",
                &to,
                "--interval-ms",
                "1",
                "--max-secs",
                "30",
            ]),
        );
        ping.wait_for_event("ping_up", STEP_TIMEOUT);
        let started = Instant::now();
        kube.apply(json!({
            "apiVersion": "security.ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "deny-server", "namespace": PROBE_NAMESPACE},
            "spec": {"selector": {"matchLabels": {"app": "server"}}, "action": "DENY", "rules": [{}]},
        }))
        .map_err(failed)?;
        let deadline = started + STEP_TIMEOUT;
        while ping.try_wait().is_none() {
            if Instant::now() > deadline {
                return Err(BenchError::failed(
                    "the DENY policy did not cut the open connection",
                ));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        samples.push(millis(started.elapsed()));
        kube.delete("authorizationpolicies", PROBE_NAMESPACE, "deny-server")
            .map_err(failed)?;
    }
    Ok(samples)
}

/// Waits until a connection from `client` to `to` goes through.
fn wait_allowed(tb: &Testbed, client: &Pod, to: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !try_send(tb, client, to, 10).0 {
        if Instant::now() > deadline {
            return Err(BenchError::failed(format!(
                "{to} still refused after the policy went"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[expect(clippy::cast_precision_loss, reason = "milliseconds fit")]
fn millis(elapsed: Duration) -> f64 {
    elapsed.as_micros() as f64 / 1000.0
}

/// The report as a Markdown section.
pub fn render(report: &KubeScaleReport) -> String {
    let c = &report.corpus;
    let row = |name: &str, p: &Percentiles| {
        format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {} |\n",
            p.p50, p.p99, p.max, p.samples
        )
    };
    let mut out = format!(
        "## Kubernetes mode at scale\n\n\
         One agent watching {} pods ({} namespaces, half of them meshed, on 100 other nodes), {} services with their EndpointSlices and {} policies, served by the fake API server.\n\n\
         | figure | value |\n| --- | --- |\n\
         | corpus loaded into the API server | {:.1} s |\n\
         | agent start → ready (everything listed) | {:.1} s |\n\
         | meshed destinations indexed | {} |\n\
         | agent RSS, steady state | {:.1} MiB |\n\
         | agent CPU, steady state | {:.3} cores |\n\
         | agent RSS after the changes | {:.1} MiB |\n\n\
         | change → effect (ms) | p50 | p99 | max | samples |\n| --- | --- | --- | --- | --- |\n",
        c.pods,
        c.namespaces,
        c.services,
        c.policies,
        report.load_secs,
        report.ready_secs,
        report.destinations,
        report.rss_mib,
        report.steady_cpu_cores,
        report.rss_after_mib,
    );
    out.push_str(&row("pod label set → enrolled", &report.enroll_ms));
    out.push_str(&row("pod label removed → un-enrolled", &report.unenroll_ms));
    out.push_str(&row(
        "DENY policy written → open connection cut",
        &report.policy_enforced_ms,
    ));
    out
}
