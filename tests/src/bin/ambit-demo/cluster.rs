//! Act one, the cluster: two nodes joined by a fabric, four pods (three of
//! the shop, enrolled in the mesh, and a legacy batch job that is not), the
//! real node agent on each node enrolling its meshed pods, and an echo
//! server in every pod. Every agent knows every meshed pod: it enrolls its
//! own node's and reaches the others over HBONE.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ambit_tests::mesh::{self, AGENT_READY_TIMEOUT, Agent};
use ambit_tests::{Pod, Proc, Testbed};
use serde_json::Value;

use crate::steps::{DemoError, check_interrupted, progress, wait_until};

/// Where every pod's echo server listens.
pub const ECHO_PORT: u16 = 8080;
/// How many of an agent's last log lines a failure shows.
const REPORT_TAIL_LINES: usize = 40;
/// How long an echo server may take to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The nodes, in creation order.
pub const NODES: [&str; 2] = ["n1", "n2"];

/// The pods, in creation order.
pub const PODS: [PodSpec; 4] = [
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

/// The mesh's authorization policies: the cache admits the shop's frontend
/// and backend only (by their SPIFFE ids); no policy selects the others.
pub const POLICIES: &str = "policies:
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
pub const SERVICES: &str = "services:
  - {name: backend, namespace: shop, selector: {app: backend}, clusterIPs: [10.96.0.10], ports: [{name: http, port: 80, targetPort: 8080}]}
  - {name: cache, namespace: shop, selector: {app: cache}, clusterIPs: [10.96.0.11], ports: [{name: cache, port: 6379, targetPort: 8080}]}
";

/// One pod of the demo and whether its node agent enrolls it.
pub struct PodSpec {
    pub name: &'static str,
    pub namespace: &'static str,
    pub node: &'static str,
    pub enrolled: bool,
}

/// A pod of the running demo with its echo server.
pub struct Workload {
    pub spec: &'static PodSpec,
    pub pod: Pod,
    pub server: Proc,
}

/// The node agents, stopped with SIGTERM when dropped (so they detach and
/// unpin their eBPF programs) before the test bed removes their nodes.
#[derive(Default)]
pub struct NodeAgents(pub Vec<Agent>);

/// Connections an agent's proxies accepted for one pod.
#[derive(Clone, Copy)]
pub struct OpenedConnections {
    pub outbound: u64,
    pub inbound: u64,
}

/// Creates the nodes and pods, starts the agents (into `agents`, so the
/// caller stops them whatever happens) and the echo servers.
pub fn build(
    testbed: &mut Testbed,
    agents: &mut NodeAgents,
    pod_tool: &Path,
) -> Result<Vec<Workload>, DemoError> {
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
    start_servers(testbed, pods, pod_tool)
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

/// The workload of the pod called `name`.
pub fn find_workload<'a>(workloads: &'a [Workload], name: &str) -> &'a Workload {
    workloads
        .iter()
        .find(|workload| workload.spec.name == name)
        .unwrap_or_else(|| panic!("FLOWS names {name}, which is not in PODS"))
}

/// `GET path` on an agent's admin API, parsed as JSON.
pub fn admin_json(testbed: &Testbed, agent: &Agent, path: &str) -> Result<Value, DemoError> {
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

/// `pod`'s entry in an agent's `/pods` list.
fn pod_entry(pods: &Value, pod: &Pod) -> Option<Value> {
    pods.as_array()?
        .iter()
        .find(|entry| {
            entry["name"] == pod.name.as_str() && entry["namespace"] == pod.namespace.as_str()
        })
        .cloned()
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
    pub fn opened_connections(
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
    pub fn flow_security(
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

    /// Each agent's last log lines and where the rest is, for a failure.
    pub fn print_reports(&self) {
        for agent in &self.0 {
            let stderr = agent.proc.stderr_text();
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = &lines[lines.len().saturating_sub(REPORT_TAIL_LINES)..];
            eprintln!(
                "--- the agent on {} (pid {}), last {} lines; all of it in {}:\n{}",
                agent.node.name,
                agent.proc.pid(),
                tail.len(),
                agent
                    .proc
                    .log_path()
                    .unwrap_or(agent.proc.stderr_path())
                    .display(),
                tail.join("\n")
            );
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
            let uninstall = std::process::Command::new("ip")
                .args(["netns", "exec", &agent.node.netns])
                .arg(&ambit)
                .args(["--admin", &agent.admin_addr, "uninstall", "--bpffs-dir"])
                .arg(&bpffs_dir)
                .output();
            match uninstall {
                // Its last line is the outcome (✓ and what was removed).
                Ok(output) if output.status.success() => {
                    let stdout = String::from_utf8_lossy(&output.stdout);
                    progress(&format!(
                        "  {}: {}",
                        agent.node.name,
                        stdout.lines().last().unwrap_or("uninstalled")
                    ));
                }
                Ok(output) => eprintln!(
                    "ambit-demo: ambit uninstall failed on {} ({}):\n{}{}",
                    agent.node.name,
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
                Err(error) => eprintln!(
                    "ambit-demo: cannot run ambit uninstall on {}: {error}",
                    agent.node.name
                ),
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
