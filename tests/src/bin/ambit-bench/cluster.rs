//! The bench's cluster: two nodes, a meshed and an unmeshed client on `n1`,
//! meshed and unmeshed servers on both nodes, a meshed client and server
//! pair on `n2` for the kernel splice, one node agent per node, and the
//! request/response servers the tests talk to.
//!
//! ```text
//!  n1: client (enrolled)         local-server (enrolled)
//!      client-direct             local-server-direct
//!  n2: server (enrolled)         server-direct
//!      splice-client (enrolled)  splice-server (enrolled)
//! ```
//!
//! The `-direct` pods are not enrolled, so the agents leave their traffic
//! alone although they run: direct and meshed figures come from one test
//! bed, one kernel and one moment. The agent on `n2` runs with
//! `--kernel-splice`, so same-node connections between its pods skip both
//! proxies; the one on `n1` keeps the default, so its same-node traffic
//! goes through the agent.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ambit_tests::mesh::Agent;
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

/// The agent setting that splices same-node connections in the kernel,
/// given to the agent on `n2` only.
const KERNEL_SPLICE: &str = "--kernel-splice";

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
    /// `n2`, enrolled: the client whose same-node connections the kernel
    /// splices.
    pub splice_client: Pod,
    /// `n2`, enrolled: its server.
    pub splice_server: Pod,
}

/// The running cluster. Dropping it stops the agents politely (so they
/// detach their eBPF programs) before the test bed goes.
pub struct Cluster {
    /// The pods.
    pub pods: Pods,
    /// The agent on `n1` (client side, and both sides of same-node traffic).
    pub client_agent: Agent,
    /// The agent on `n2` (server side of cross-node traffic, and the one
    /// that splices same-node connections in the kernel: `--kernel-splice`).
    pub server_agent: Agent,
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
            splice_client: tb.add_pod(&n2, "splice-client", NAMESPACE),
            splice_server: tb.add_pod(&n2, "splice-server", NAMESPACE),
        };
        for pod in pods.all() {
            set_sysctls(pod)?;
        }
        crate::error::check_interrupted()?;
        raise_open_file_limit();

        // Each agent knows every meshed pod: it enrolls those on its node
        // and reaches the others over HBONE.
        let meshed = pods.meshed();
        progress("starting the node agent on n1 (enrolls client, local-server)");
        let client_agent = Agent::start(tb, &n1, &meshed, &[]);
        crate::error::check_interrupted()?;
        progress(&format!(
            "starting the node agent on n2 with {KERNEL_SPLICE} (enrolls server, splice-client, splice-server)"
        ));
        let server_agent = Agent::start(tb, &n2, &meshed, &[KERNEL_SPLICE]);
        crate::error::check_interrupted()?;

        progress(&format!(
            "starting rr-servers on ports {RR_1B_PORT} (1 B) and {RR_1K_PORT} (1 KiB) in the server pods"
        ));
        let mut servers = Vec::new();
        for pod in pods.servers() {
            for (port, size) in [(RR_1B_PORT, "1"), (RR_1K_PORT, "1024")] {
                let mut cmd = Command::new(pod_tool);
                cmd.args([
                    "rr-server",
                    "--listen",
                    &format!("0.0.0.0:{port}"),
                    "--size",
                    size,
                ]);
                let server = tb.spawn_in_pod(pod, cmd);
                wait_listening(&server, &pod.name)?;
                servers.push(server);
            }
        }
        Ok(Self {
            pods,
            client_agent,
            server_agent,
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
    fn all(&self) -> [&Pod; 8] {
        [
            &self.client,
            &self.client_direct,
            &self.local_server,
            &self.local_server_direct,
            &self.server,
            &self.server_direct,
            &self.splice_client,
            &self.splice_server,
        ]
    }

    /// The enrolled pods, as each agent's configuration lists them.
    pub fn meshed(&self) -> [&Pod; 5] {
        [
            &self.client,
            &self.local_server,
            &self.server,
            &self.splice_client,
            &self.splice_server,
        ]
    }

    fn servers(&self) -> [&Pod; 5] {
        [
            &self.local_server,
            &self.local_server_direct,
            &self.server,
            &self.server_direct,
            &self.splice_server,
        ]
    }
}

/// Raises this process's soft open-file limit to the hard one, for the
/// agents and servers to inherit: with the idle connections open each agent
/// holds over a thousand sockets, as a kubelet's container runtime would let
/// it (its limit is commonly 2^20), and 1024 is a common soft limit.
fn raise_open_file_limit() {
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
