//! Running ambit's node agent on a simulated node, and reading its admin API.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Node, Pod, Proc, Testbed};

/// Name of the node agent binary.
pub const AGENT_BIN: &str = "ambit-node-agent";
/// Overrides the agents' log filter (`AMBIT_LOG`); tests default to debug
/// for the data path, the benchmark sets the production default.
pub const AGENT_LOG_ENV: &str = "AMBIT_TEST_AGENT_LOG";
/// How long an agent may take to start and enroll its pods.
pub const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A node agent running on a node, in the node's agent cgroup (as a
/// `DaemonSet` pod would be), so the cgroup programs see its sockets too.
pub struct Agent {
    /// The agent process.
    pub proc: Proc,
    /// The node it runs on.
    pub node: Node,
    /// Its local configuration file.
    pub config_path: PathBuf,
    /// Its admin API address in the node's network namespace.
    pub admin_addr: String,
}

/// The label that opts a pod in to the kernel path, as the YAML of
/// [`pods_yaml_labelled`] writes it.
pub const KERNEL_PATH_LABEL: &str = "ambit.dev/kernel-path: enabled";

/// The local-config YAML that enrolls `pods`. Each runs as the service
/// account named like the pod and carries the label `app: <pod name>`.
#[must_use]
pub fn pods_yaml(pods: &[&Pod]) -> String {
    pods_yaml_labelled(pods, None)
}

/// [`pods_yaml`] with one more label (`key: value`) on every pod, e.g.
/// [`KERNEL_PATH_LABEL`].
#[must_use]
pub fn pods_yaml_labelled(pods: &[&Pod], label: Option<&str>) -> String {
    let extra = label.map(|l| format!(", {l}")).unwrap_or_default();
    let mut yaml = String::from("pods:\n");
    for pod in pods {
        let mut ips = vec![pod.ipv4.to_string()];
        if let Some(v6) = pod.ipv6 {
            ips.push(format!("'{v6}'"));
        }
        let _ = write!(
            yaml,
            "  - name: {}\n    namespace: {}\n    serviceAccount: {}\n    labels: {{app: {}{extra}}}\n    ips: [{}]\n    netns: {}\n    node: {}\n",
            pod.name,
            pod.namespace,
            pod.name,
            pod.name,
            ips.join(", "),
            pod.netns_path.display(),
            pod.node
        );
    }
    yaml
}

/// The node's handoff socket: agents of one node (sharing its bpffs) hand
/// their pods over through it.
#[must_use]
pub fn handoff_socket(node: &Node) -> PathBuf {
    node.bpffs
        .parent()
        .expect("the bpffs is mounted in the node's directory")
        .join("handoff.sock")
}

/// The test bed's mesh CA, made with `ambit ca init` the first time it is
/// needed; returns its directory (`ca.pem`, `ca-key.pem`).
pub fn mesh_ca(tb: &Testbed) -> PathBuf {
    let dir = tb.run_dir().join("ca");
    if !dir.join("ca.pem").exists() {
        let out = Command::new(Testbed::bin("ambit"))
            .args(["ca", "init", "--dir"])
            .arg(&dir)
            .output()
            .expect("ambit runs");
        assert!(
            out.status.success(),
            "ambit ca init failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

// === impl Agent ===

impl Agent {
    /// Starts an agent on `node` that knows `pods` (meshed pods of any
    /// node: it enrolls those of its own node and reaches the others over
    /// HBONE), and waits until it has enrolled its own.
    pub fn start(tb: &Testbed, node: &Node, pods: &[&Pod], extra_args: &[&str]) -> Agent {
        Self::start_with_config(tb, node, &pods_yaml(pods), pods, extra_args)
    }

    /// [`Agent::start`] with every pod opted in to the kernel path
    /// ([`KERNEL_PATH_LABEL`]).
    pub fn start_kernel_path(
        tb: &Testbed,
        node: &Node,
        pods: &[&Pod],
        extra_args: &[&str],
    ) -> Agent {
        let yaml = pods_yaml_labelled(pods, Some(KERNEL_PATH_LABEL));
        Self::start_with_config(tb, node, &yaml, pods, extra_args)
    }

    /// Starts an agent on `node` with this configuration text and waits
    /// until it is ready and has enrolled those of `pods` on its node.
    pub fn start_with_config(
        tb: &Testbed,
        node: &Node,
        config_yaml: &str,
        pods: &[&Pod],
        extra_args: &[&str],
    ) -> Agent {
        let agent = Self::spawn(tb, node, config_yaml, extra_args);
        agent.wait_ready(tb);
        for pod in pods.iter().filter(|p| p.node == node.name) {
            agent.wait_pod_state(tb, &pod.name, "enrolled", AGENT_READY_TIMEOUT);
        }
        agent
    }

    /// Starts an agent with this configuration text and returns at once.
    pub fn spawn(tb: &Testbed, node: &Node, config_yaml: &str, extra_args: &[&str]) -> Agent {
        let config_path = Self::write_config(tb, node, config_yaml);
        let mut args = vec!["--config", config_path.to_str().expect("UTF-8 path")];
        args.extend_from_slice(extra_args);
        Self::spawn_with(tb, node, config_path.clone(), &args)
    }

    /// Starts a successor on `node`, which takes the pods over from the
    /// agent running there (the handoff): a new agent process with the same
    /// bpffs and handoff socket and its own admin, metrics and readiness
    /// ports (`generation` picks them: 15000 + 100 × generation, …), since
    /// it shares the node's network namespace with its predecessor. Returns
    /// at once.
    pub fn spawn_successor(tb: &Testbed, node: &Node, config_yaml: &str, generation: u16) -> Agent {
        Self::spawn_successor_with(tb, node, config_yaml, generation, &[])
    }

    /// [`Agent::spawn_successor`] with more arguments (those its
    /// predecessor was started with, e.g. `--cert-lifetime-secs`).
    pub fn spawn_successor_with(
        tb: &Testbed,
        node: &Node,
        config_yaml: &str,
        generation: u16,
        extra_args: &[&str],
    ) -> Agent {
        let base = 15_000 + 100 * (generation % 50 + 1);
        let admin = format!("127.0.0.1:{base}");
        let metrics = format!("0.0.0.0:{}", base + 20);
        let readiness = format!("0.0.0.0:{}", base + 21);
        let mut args = vec![
            "--admin-addr",
            &admin,
            "--metrics-addr",
            &metrics,
            "--readiness-addr",
            &readiness,
        ];
        args.extend_from_slice(extra_args);
        Self::spawn(tb, node, config_yaml, &args)
    }

    /// Starts an agent in Kubernetes mode, reading the API server at
    /// `api_url`, and returns at once.
    pub fn spawn_kubernetes(
        tb: &Testbed,
        node: &Node,
        api_url: &str,
        extra_args: &[&str],
    ) -> Agent {
        let mut args = vec!["--kubernetes", "--kube-api-url", api_url];
        args.extend_from_slice(extra_args);
        // No configuration file: `set_pods` has nothing to write to.
        let unused = tb.run_dir().join(format!("{}-unused.yaml", node.name));
        Self::spawn_with(tb, node, unused, &args)
    }

    /// Starts an agent in Kubernetes mode whose certificates the
    /// controller at `ca_address` signs: it holds no CA key, only the mesh
    /// CA as its trust bundle, and sends the token in `token_file`.
    pub fn spawn_kubernetes_with_controller(
        tb: &Testbed,
        node: &Node,
        api_url: &str,
        ca_address: &str,
        token_file: &Path,
    ) -> Agent {
        Self::spawn_kubernetes_with_controller_and(tb, node, api_url, ca_address, token_file, &[])
    }

    /// [`Agent::spawn_kubernetes_with_controller`] with more arguments.
    pub fn spawn_kubernetes_with_controller_and(
        tb: &Testbed,
        node: &Node,
        api_url: &str,
        ca_address: &str,
        token_file: &Path,
        extra_args: &[&str],
    ) -> Agent {
        let trust_bundle = mesh_ca(tb).join("ca.pem");
        let mut args = vec![
            "--kubernetes",
            "--kube-api-url",
            api_url,
            "--ca-address",
            ca_address,
            "--ca-token-file",
            token_file.to_str().expect("UTF-8 path"),
            "--trust-bundle",
            trust_bundle.to_str().expect("UTF-8 path"),
        ];
        args.extend_from_slice(extra_args);
        let unused = tb.run_dir().join(format!("{}-unused.yaml", node.name));
        Self::spawn_inner(tb, node, unused, &args, false)
    }

    /// The command line [`Agent::spawn`] runs for this configuration text,
    /// without running it: for tests that start the agent another way.
    pub fn command(tb: &Testbed, node: &Node, config_yaml: &str, extra_args: &[&str]) -> Command {
        let config_path = Self::write_config(tb, node, config_yaml);
        let mut args = vec!["--config", config_path.to_str().expect("UTF-8 path")];
        args.extend_from_slice(extra_args);
        Self::command_inner(tb, node, &args, true)
    }

    /// Writes the node's configuration file, which the agent re-reads.
    fn write_config(tb: &Testbed, node: &Node, config_yaml: &str) -> PathBuf {
        let config_path = tb.run_dir().join(format!("{}-mesh.yaml", node.name));
        write_atomically(&config_path, config_yaml);
        config_path
    }

    fn command_inner(tb: &Testbed, node: &Node, args: &[&str], local_ca: bool) -> Command {
        let ca = mesh_ca(tb);
        let mut cmd = Command::new(Testbed::bin(AGENT_BIN));
        if local_ca {
            cmd.arg("--ca-cert")
                .arg(ca.join("ca.pem"))
                .arg("--ca-key")
                .arg(ca.join("ca-key.pem"));
        }
        cmd.arg("--bpffs-dir")
            .arg(node.bpffs.join("ambit"))
            .arg("--handoff-socket")
            .arg(handoff_socket(node))
            .arg("--cgroup-root")
            .arg(&node.cgroup_root)
            .args(["--node-name", &node.name, "--config-poll-ms", "100"])
            .args(args)
            .env(
                "AMBIT_LOG",
                std::env::var(AGENT_LOG_ENV).unwrap_or_else(|_| "info,node_agent=debug".to_owned()),
            );
        cmd
    }

    fn spawn_with(tb: &Testbed, node: &Node, config_path: PathBuf, args: &[&str]) -> Agent {
        Self::spawn_inner(tb, node, config_path, args, true)
    }

    fn spawn_inner(
        tb: &Testbed,
        node: &Node,
        config_path: PathBuf,
        args: &[&str],
        local_ca: bool,
    ) -> Agent {
        let cmd = Self::command_inner(tb, node, args, local_ca);
        let proc = tb.spawn_on_node(node, &node.agent_cgroup, cmd);
        let admin_addr = args
            .iter()
            .position(|a| *a == "--admin-addr")
            .and_then(|i| args.get(i + 1))
            .map_or_else(|| "127.0.0.1:15000".to_owned(), |a| (*a).to_owned());
        Agent {
            proc,
            node: node.clone(),
            config_path,
            admin_addr,
        }
    }

    /// Waits for the admin API to answer `/ready`.
    pub fn wait_ready(&self, tb: &Testbed) {
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        loop {
            if let Some(status) = self.proc.try_wait() {
                panic!(
                    "the agent on {} exited ({status}) before it was ready\n{}",
                    self.node.name,
                    self.proc.report()
                );
            }
            if self.get(tb, "/ready").is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent on {} never became ready\n{}",
                self.node.name,
                self.proc.report()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Replaces the agent's configuration file; the agent notices within a
    /// poll interval.
    pub fn set_pods(&self, pods: &[&Pod]) {
        write_atomically(&self.config_path, &pods_yaml(pods));
    }

    /// Replaces the agent's configuration file with raw text.
    pub fn set_config_text(&self, text: &str) {
        write_atomically(&self.config_path, text);
    }

    /// `GET path` on the admin API, from inside the node's network namespace.
    pub fn get(&self, tb: &Testbed, path: &str) -> Option<String> {
        let url = format!("http://{}{path}", self.admin_addr);
        let out = tb.exec_in_netns(&self.node.netns, &["curl", "-sf", "--max-time", "5", &url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `GET path` on the admin API as JSON; panics with the agent's output if
    /// the API does not answer.
    pub fn get_json(&self, tb: &Testbed, path: &str) -> Value {
        let body = self
            .get(tb, path)
            .unwrap_or_else(|| panic!("admin API {path} did not answer\n{}", self.proc.report()));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("admin API {path} sent bad JSON ({e}): {body}"))
    }

    /// The pods the agent knows, as `/pods` shows them.
    pub fn pods(&self, tb: &Testbed) -> Vec<Value> {
        match self.get_json(tb, "/pods") {
            Value::Array(pods) => pods,
            other => panic!("/pods is not a list: {other}"),
        }
    }

    /// One pod's entry in `/pods`.
    pub fn pod(&self, tb: &Testbed, name: &str) -> Option<Value> {
        self.pods(tb).into_iter().find(|p| p["name"] == name)
    }

    /// The connections the agent has closed, from `/connections` (which
    /// lists the open ones too).
    pub fn connections(&self, tb: &Testbed) -> Vec<Value> {
        match self.get_json(tb, "/connections") {
            Value::Array(records) => records
                .into_iter()
                .filter(|r| r["state"] != "open")
                .collect(),
            other => panic!("/connections is not a list: {other}"),
        }
    }

    /// Waits for a closed connection that `pred` accepts and returns it.
    pub fn wait_connection(&self, tb: &Testbed, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        loop {
            if let Some(record) = self.connections(tb).into_iter().find(|r| pred(r)) {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "no such connection on {}: {:?}\n{}",
                self.node.name,
                self.connections(tb),
                self.proc.report()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An eBPF counter from `/counters`.
    pub fn counter(&self, tb: &Testbed, name: &str) -> u64 {
        let counters = self.get_json(tb, "/counters");
        counters[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in {counters}"))
    }

    /// Waits until the pod `name` is in `state` ("enrolled", "failed",
    /// "rejected") and returns its entry.
    pub fn wait_pod_state(
        &self,
        tb: &Testbed,
        name: &str,
        state: &str,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pod) = self.pod(tb, name).filter(|p| p["state"] == state) {
                return pod;
            }
            assert!(
                Instant::now() < deadline,
                "pod {name} never reached state {state} on {}: {:?}\n{}",
                self.node.name,
                self.pod(tb, name),
                self.proc.report()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the agent no longer lists the pod `name`.
    pub fn wait_pod_gone(&self, tb: &Testbed, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.pod(tb, name).is_some() {
            assert!(
                Instant::now() < deadline,
                "pod {name} is still listed\n{}",
                self.proc.report()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Writes `text` to `path` by renaming a complete temporary file over it,
/// so a process polling the file never reads half of it.
pub fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("cannot replace {}: {e}", path.display()));
}
