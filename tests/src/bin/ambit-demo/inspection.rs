//! Act three, inspection: what the agents counted in their eBPF maps, and
//! what an operator sees with `ambit` on each node while a connection is
//! open (`ambit connections` with both ends' identities and the verdicts,
//! `ambit bpf prog list` with the programs attached to the pods' cgroup and
//! network namespaces; with `--every-command`, every listing).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ambit_tests::Testbed;
use ambit_tests::mesh::Agent;
use serde::Serialize;

use crate::cluster::{NodeAgents, Workload, admin_json, find_workload};
use crate::steps::{DemoError, check_interrupted, progress};

/// The file in the log directory that holds every listing.
pub const FILE_NAME: &str = "inspection.txt";
/// Node name → eBPF counter name → value.
pub type NodeCounters = BTreeMap<String, BTreeMap<String, u64>>;

/// The eBPF counters the summary shows, per node.
pub const SHOWN_COUNTERS: [&str; 3] = [
    "connect_redirected",
    "inbound_steered",
    "connect_skipped_not_enrolled",
];
/// The backend service's cluster IP and port, which the inspection's open
/// connection dials.
pub const BACKEND_SERVICE: &str = "10.96.0.10:80";

/// One `ambit` command run on a node, and what it printed.
#[derive(Serialize)]
pub struct Inspection {
    pub node: String,
    pub command: String,
    pub output: String,
}

/// Reads every agent's counters, then runs the `ambit` listings on every
/// node with a frontend -> backend connection open.
pub fn run(
    testbed: &Testbed,
    agents: &NodeAgents,
    workloads: &[Workload],
    pod_tool: &Path,
    every_command: bool,
) -> Result<(NodeCounters, Vec<Inspection>), DemoError> {
    check_interrupted()?;
    progress("reading the agents' eBPF counters");
    let mut counters = BTreeMap::new();
    for agent in &agents.0 {
        counters.insert(agent.node.name.clone(), ebpf_counters(testbed, agent)?);
    }
    progress(&format!(
        "asking `ambit` what each node sees, with frontend -> backend open (dialled as the service's cluster IP {BACKEND_SERVICE})"
    ));
    let frontend = find_workload(workloads, "frontend");
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
    Ok((counters, inspections))
}

/// Writes every listing to `path` as the terminal would show it; a failure
/// to write is reported, not fatal (the listings are in the report too).
pub fn save(inspections: &[Inspection], path: &Path) {
    let mut text = String::new();
    for inspection in inspections {
        let _ = write!(text, "{}", inspection.render());
    }
    if let Err(error) = std::fs::write(path, text) {
        eprintln!("ambit-demo: cannot write {}: {error}", path.display());
    }
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

// === impl Inspection ===

impl Inspection {
    /// `$ command   # on node`, then the output, after a blank line.
    pub fn render(&self) -> String {
        format!("\n$ {}   # on {}\n{}", self.command, self.node, self.output)
    }

    /// Whether the default terminal output shows it (the rest is in
    /// [`FILE_NAME`]).
    pub fn shown_by_default(&self) -> bool {
        self.command == "ambit connections"
    }
}
