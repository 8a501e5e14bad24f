//! The bench's cluster: two nodes, a meshed and an unmeshed client on `n1`,
//! meshed and unmeshed servers on both nodes, pods on the kernel path (a
//! client on each node and a server on `n2`), one node agent per node, and
//! the request/response servers the tests talk to.
//!
//! ```text
//!  n1: client (enrolled)              local-server (enrolled)
//!      client-direct                  local-server-direct
//!      kernel-client (kernel path)
//!  n2: server (enrolled)              server-direct
//!      kernel-server (kernel path)    local-kernel-client (kernel path)
//! ```
//!
//! The `-direct` pods are not enrolled, so the agents leave their traffic
//! alone although they run: direct and meshed figures come from one test
//! bed, one kernel and one moment. The kernel-path pods are enrolled and
//! labelled `ambit.dev/kernel-path: enabled`: their legs between application
//! and agent are spliced by `sk_msg`, and connections between the two of
//! them on `n2` skip both proxies. The other enrolled pods carry no label,
//! so their traffic goes through the agents' proxies over loopback TCP.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ambit_tests::mesh::{Agent, KERNEL_PATH_LABEL, pods_yaml, pods_yaml_labelled};
use ambit_tests::netns::run_in_netns;
use ambit_tests::{Pod, Proc, Testbed};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde_json::Value;

use crate::console::progress;
use crate::error::BenchError;
use crate::measure::wait_for;

/// Port of the `rr-server --size 1` in every server pod (`rr_1b`,
/// `rr_1b_x8`, `crr`).
pub const RR_1B_PORT: u16 = 7001;
/// Port of the `rr-server --size 1024` in every server pod (`rr_1k`).
pub const RR_1K_PORT: u16 = 7002;

/// How long a server may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Kubernetes namespace of every pod.
const NAMESPACE: &str = "bench";

/// Set in every pod: a connection-rate test opens a connection per
/// iteration, and without reuse the client's `TIME_WAIT` sockets would use up
/// its ephemeral ports within a few seconds.
const POD_SYSCTLS: [(&str, &str); 1] = [("net.ipv4.tcp_tw_reuse", "1")];

/// The pods of the bench.
pub struct Pods {
    /// `n1`, enrolled: the meshed client.
    pub client: Pod,
    /// `n1`, not enrolled: the direct client.
    pub client_direct: Pod,
    /// `n1`, enrolled: the meshed same-node server.
    pub local_server: Pod,
    /// `n1`, not enrolled: the direct same-node server.
    pub local_server_direct: Pod,
    /// `n2`, enrolled: the meshed cross-node server.
    pub server: Pod,
    /// `n2`, not enrolled: the direct cross-node server.
    pub server_direct: Pod,
    /// `n1`, on the kernel path: the cross-node kernel-path client.
    pub kernel_client: Pod,
    /// `n2`, on the kernel path: the server of both kernel-path scenarios,
    /// whose `rr-server`s read with epoll (the kernel path's contract).
    pub kernel_server: Pod,
    /// `n2`, on the kernel path: the client whose same-node connections to
    /// `kernel-server` the kernel splices.
    pub local_kernel_client: Pod,
}

/// The running cluster. Dropping it stops the agents politely (so they
/// detach their eBPF programs) before the test bed goes.
pub struct Cluster {
    /// The pods.
    pub pods: Pods,
    /// The agent on `n1` (client side, and both sides of same-node traffic).
    pub client_agent: Agent,
    /// The agent on `n2` (server side of cross-node traffic, and the one
    /// that splices the same-node connections between its kernel-path pods).
    pub server_agent: Agent,
    /// Both agents' configuration: every enrolled pod, the kernel-path ones
    /// labelled.
    pub config: String,
    /// `rr-server`s in the server pods; killed with the test bed.
    _servers: Vec<Proc>,
}

// === impl Cluster ===

impl Cluster {
    /// Creates the nodes and pods, starts the agents and the servers.
    pub fn start(tb: &mut Testbed, pod_tool: &Path) -> Result<Self, BenchError> {
        progress("creating nodes n1, n2 and their pods");
        let n1 = tb.add_node("n1");
        let n2 = tb.add_node("n2");
        let pods = Pods {
            client: tb.add_pod(&n1, "client", NAMESPACE),
            client_direct: tb.add_pod(&n1, "client-direct", NAMESPACE),
            local_server: tb.add_pod(&n1, "local-server", NAMESPACE),
            local_server_direct: tb.add_pod(&n1, "local-server-direct", NAMESPACE),
            server: tb.add_pod(&n2, "server", NAMESPACE),
            server_direct: tb.add_pod(&n2, "server-direct", NAMESPACE),
            kernel_client: tb.add_pod(&n1, "kernel-client", NAMESPACE),
            kernel_server: tb.add_pod(&n2, "kernel-server", NAMESPACE),
            local_kernel_client: tb.add_pod(&n2, "local-kernel-client", NAMESPACE),
        };
        for pod in pods.all() {
            set_sysctls(pod)?;
        }
        crate::error::check_interrupted()?;
        raise_open_file_limit();

        // Each agent knows every meshed pod: it enrolls those on its node
        // and reaches the others over HBONE.
        let meshed = pods.meshed();
        let config = pods.config();
        progress(
            "starting the node agent on n1 (enrolls client, local-server; kernel-client on the kernel path)",
        );
        let client_agent = Agent::start_with_config(tb, &n1, &config, &meshed, &[]);
        crate::error::check_interrupted()?;
        progress(
            "starting the node agent on n2 (enrolls server; kernel-server, local-kernel-client on the kernel path)",
        );
        let server_agent = Agent::start_with_config(tb, &n2, &config, &meshed, &[]);
        crate::error::check_interrupted()?;
        for agent in [&client_agent, &server_agent] {
            report_kernel_path(tb, agent, &pods);
        }

        progress(&format!(
            "starting rr-servers on ports {RR_1B_PORT} (1 B) and {RR_1K_PORT} (1 KiB) in the server pods (with --epoll in kernel-server)"
        ));
        let mut servers = Vec::new();
        for (pod, epoll) in pods.servers() {
            for (port, size) in [(RR_1B_PORT, "1"), (RR_1K_PORT, "1024")] {
                let mut cmd = Command::new(pod_tool);
                cmd.args([
                    "rr-server",
                    "--listen",
                    &format!("0.0.0.0:{port}"),
                    "--size",
                    size,
                ]);
                if epoll {
                    cmd.arg("--epoll");
                }
                let server = tb.spawn_in_pod(pod, cmd);
                wait_listening(&server, &pod.name)?;
                servers.push(server);
            }
        }
        Ok(Self {
            pods,
            client_agent,
            server_agent,
            config,
            _servers: servers,
        })
    }

    /// Connections an agent's proxy accepted for `pod` in `direction`
    /// (`outbound`, `inbound`), from its admin API's `/pods`; `None` when the
    /// API does not answer or does not list them.
    pub fn opened_connections(
        tb: &Testbed,
        agent: &Agent,
        pod: &Pod,
        direction: &str,
    ) -> Option<u64> {
        let pods: Value = serde_json::from_str(&agent.get(tb, "/pods")?).ok()?;
        pods.as_array()?
            .iter()
            .find(|entry| entry["name"] == pod.name.as_str())?["traffic"][direction]
            ["connections_opened"]
            .as_u64()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        progress("stopping the node agents (they detach their eBPF programs)");
        for agent in [&self.client_agent, &self.server_agent] {
            let status = agent.proc.terminate();
            if !status.success() {
                eprintln!(
                    "ambit-bench: the agent on {} ended with {status}",
                    agent.node.name
                );
            }
        }
    }
}

// === impl Pods ===

impl Pods {
    fn all(&self) -> [&Pod; 9] {
        [
            &self.client,
            &self.client_direct,
            &self.local_server,
            &self.local_server_direct,
            &self.server,
            &self.server_direct,
            &self.kernel_client,
            &self.kernel_server,
            &self.local_kernel_client,
        ]
    }

    /// The enrolled pods, as each agent's configuration lists them.
    pub fn meshed(&self) -> [&Pod; 6] {
        let [client, local_server, server] = self.user_space();
        let [kernel_client, kernel_server, local_kernel_client] = self.kernel_path();
        [
            client,
            local_server,
            server,
            kernel_client,
            kernel_server,
            local_kernel_client,
        ]
    }

    /// The enrolled pods without the kernel-path label: their traffic goes
    /// through the agents' proxies over loopback TCP.
    fn user_space(&self) -> [&Pod; 3] {
        [&self.client, &self.local_server, &self.server]
    }

    /// The enrolled pods on the kernel path.
    fn kernel_path(&self) -> [&Pod; 3] {
        [
            &self.kernel_client,
            &self.kernel_server,
            &self.local_kernel_client,
        ]
    }

    /// The agents' configuration: the enrolled pods, those on the kernel
    /// path with [`KERNEL_PATH_LABEL`].
    fn config(&self) -> String {
        let labelled = pods_yaml_labelled(&self.kernel_path(), Some(KERNEL_PATH_LABEL));
        format!(
            "{}{}",
            pods_yaml(&self.user_space()),
            labelled.trim_start_matches("pods:\n")
        )
    }

    /// The server pods, each with whether its `rr-server`s read with epoll:
    /// the kernel-path server does, as the kernel path's contract asks.
    fn servers(&self) -> [(&Pod, bool); 5] {
        [
            (&self.local_server, false),
            (&self.local_server_direct, false),
            (&self.server, false),
            (&self.server_direct, false),
            (&self.kernel_server, true),
        ]
    }
}

/// Says on a progress line which of the agent's pods are on the kernel path
/// (`/pods`, `kernel_path`), and warns when one differs from its label: the
/// kernel-path scenarios' route check then fails too.
fn report_kernel_path(tb: &Testbed, agent: &Agent, pods: &Pods) {
    let node = &agent.node.name;
    let expected = pods
        .user_space()
        .map(|pod| (pod, "off"))
        .into_iter()
        .chain(pods.kernel_path().map(|pod| (pod, "on")));
    let mut states = Vec::new();
    for (pod, expected) in expected.filter(|(pod, _)| pod.node == *node) {
        let state = agent
            .pod(tb, &pod.name)
            .and_then(|status| status["kernel_path"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        if state != expected {
            progress(&format!(
                "WARNING: the agent on {node} has {} with kernel_path {state}, expected {expected}",
                pod.name
            ));
        }
        states.push(format!("{} {state}", pod.name));
    }
    progress(&format!("kernel path on {node}: {}", states.join(", ")));
}

/// Raises this process's soft open-file limit to the hard one, for the
/// agents and servers to inherit: with the idle connections open each agent
/// holds over a thousand sockets, as a kubelet's container runtime would let
/// it (its limit is commonly 2^20), and 1024 is a common soft limit.
pub fn raise_open_file_limit() {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                progress(&format!(
                    "cannot raise the open-file limit from {soft} to {hard} ({error}); the idle-connections test may fail"
                ));
            }
        }
        Ok(_) => {}
        Err(error) => progress(&format!("cannot read the open-file limit: {error}")),
    }
}

pub fn set_sysctls(pod: &Pod) -> Result<(), BenchError> {
    let written = run_in_netns(&pod.netns_path, || {
        for (key, value) in POD_SYSCTLS {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value)
                .map_err(|error| format!("cannot set {key}={value}: {error}"))?;
        }
        Ok::<(), String>(())
    });
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(BenchError::failed(format!("in pod {}: {error}", pod.name))),
        Err(error) => Err(BenchError::failed(format!(
            "cannot enter pod {}'s network namespace: {error}",
            pod.name
        ))),
    }
}

/// Waits for a `pod-tool` server's `listening` line.
fn wait_listening(server: &Proc, pod: &str) -> Result<(), BenchError> {
    let listening = wait_for(LISTEN_TIMEOUT, || {
        if server
            .poll_json(Duration::ZERO, |line| line["event"] == "listening")
            .is_some()
        {
            return Ok(Some(()));
        }
        match server.try_wait() {
            Some(status) => Err(BenchError::failed(format!(
                "the rr-server in {pod} exited ({status}) before listening: {}",
                server.report()
            ))),
            None => Ok(None),
        }
    })?;
    listening.ok_or_else(|| {
        let mut message =
            format!("the rr-server in {pod} did not listen within {LISTEN_TIMEOUT:?}");
        let _ = write!(message, ": {}", server.report());
        BenchError::failed(message)
    })
}
