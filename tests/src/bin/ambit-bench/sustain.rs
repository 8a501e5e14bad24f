//! Sustained churn (`sustain`): does anything accumulate? The
//! connection-rate test (`pod-tool crr`, one connection at a time, one round
//! trip each) runs [`ROUNDS`] times back to back across two nodes, through
//! the mesh and then directly, on a test bed of its own. The report gives
//! each round's rate and the last round ÷ the first (target ≥
//! [`TARGET_RATIO`] through the mesh), and each agent's state before and
//! after: eBPF map entries (as `ambit bpf map list` counts them), open fds
//! and live tokio tasks (the agent's `/metrics`), threads and RSS. Map
//! entries, fds and tasks must return to their idle values once the
//! connections are gone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_tests::mesh::{Agent, pods_yaml};
use ambit_tests::workload::{self, RR_PORT, pod_tool};
use ambit_tests::{Pod, Testbed};
use serde::Serialize;
use serde_json::Value;

use crate::console::progress;
use crate::error::BenchError;

/// Back-to-back rounds of the connection-rate test.
pub const ROUNDS: usize = 5;

/// The least last-round ÷ first-round rate through the mesh.
pub const TARGET_RATIO: f64 = 0.95;

/// How long the agents may take after the last round to return to idle:
/// the last connections' closes and the `TIME_WAIT` timers of the
/// agent's own sockets are the kernel's, not the agent's.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// Maps whose entry count is not state: the counters array has every slot,
/// a ring buffer has no count.
const NOT_STATE: [&str; 2] = ["AMBIT_COUNTERS", "AMBIT_SPLICE_EV"];

/// One agent's state at an instant.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AgentState {
    /// Entries of each of ambit's maps that hold per-connection or
    /// per-pod state.
    pub map_entries: BTreeMap<String, u64>,
    /// `process_open_fds`.
    pub open_fds: u64,
    /// `ambit_agent_tasks`, summed over the runtimes.
    pub tasks: u64,
    /// Threads (`/proc/<pid>/status`).
    pub threads: u64,
    /// RSS, MiB.
    pub rss_mib: f64,
    /// Samples in `/metrics`: one per metric and label set, so it grows
    /// with every new combination of labels (a workload, a policy name).
    pub metric_series: u64,
    /// `ambit_agent_heap_bytes{state="in_use"}`, MiB.
    pub heap_in_use_mib: f64,
    /// `ambit_agent_heap_bytes{state="free"}`, MiB.
    pub heap_free_mib: f64,
}

/// One agent before and after the rounds.
#[derive(Debug, Serialize)]
pub struct AgentBeforeAfter {
    /// The node.
    pub node: String,
    /// After a warm-up, before the rounds.
    pub idle: AgentState,
    /// Once the rounds' connections are gone.
    pub after: AgentState,
    /// What stayed above its idle value (empty when it all returned).
    pub grown: Vec<String>,
}

/// What the sustained-churn bench found.
#[derive(Debug, Serialize)]
pub struct SustainReport {
    /// Seconds per round.
    pub round_secs: u64,
    /// Connections per second of each round through the mesh.
    pub mesh_rates: Vec<f64>,
    /// The same, direct (unmeshed pods on the same nodes).
    pub direct_rates: Vec<f64>,
    /// Last mesh round ÷ first.
    pub mesh_ratio: f64,
    /// Last direct round ÷ first.
    pub direct_ratio: f64,
    /// Connections that failed in the mesh rounds.
    pub mesh_errors: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Both agents.
    pub agents: Vec<AgentBeforeAfter>,
    /// Whether the mesh ratio reached [`TARGET_RATIO`], nothing failed and
    /// every agent returned to idle.
    pub target_met: bool,
}

/// Runs the sustained-churn bench on a test bed of its own.
pub fn measure(quick: bool) -> Result<SustainReport, BenchError> {
    let mut tb =
        Testbed::new("bench-sustain").map_err(|skip| BenchError::CannotRun(skip.reason))?;
    progress("sustain: starting two nodes, their agents and the servers");
    let n1 = tb.add_node("s1");
    let n2 = tb.add_node("s2");
    let client = tb.add_pod(&n1, "client", "shop");
    let client_direct = tb.add_pod(&n1, "client-direct", "shop");
    let server = tb.add_pod(&n2, "server", "shop");
    let server_direct = tb.add_pod(&n2, "server-direct", "shop");
    for pod in [&client, &client_direct, &server, &server_direct] {
        crate::cluster::set_sysctls(pod)?;
    }
    let config = pods_yaml(&[&client, &server]);
    let agents = [
        Agent::start_with_config(&tb, &n1, &config, &[&client, &server], &[]),
        Agent::start_with_config(&tb, &n2, &config, &[&client, &server], &[]),
    ];
    let _servers = [
        workload::rr_server(&tb, &server),
        workload::rr_server(&tb, &server_direct),
    ];
    let round_secs = if quick { 2 } else { 10 };

    // The first connection sets up what every later one reuses (the HBONE
    // connection between the agents, certificates); idle is read after it.
    crr(&tb, &client, &server, 1)?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = agents
        .iter()
        .map(|agent| read_state(&tb, agent))
        .collect::<Result<Vec<_>, _>>()?;

    let mesh = rounds(&tb, "mesh", &client, &server, round_secs)?;
    progress("sustain: waiting for the agents to return to idle");
    let after = settle(&tb, &agents, &idle)?;
    let direct = rounds(&tb, "direct", &client_direct, &server_direct, round_secs)?;
    let agents_report = agents
        .iter()
        .zip(idle)
        .zip(after)
        .map(|((agent, idle), after)| AgentBeforeAfter {
            node: agent.node.name.clone(),
            grown: grown(&idle, &after),
            idle,
            after,
        })
        .collect();
    drop(agents);
    progress(&format!("removing the test bed ({})", tb.id()));
    drop(tb);
    Ok(SustainReport::new(
        round_secs,
        &mesh,
        &direct,
        agents_report,
    ))
}

/// One round's figures.
struct Round {
    rate: f64,
    errors: u64,
    last_error: Option<String>,
}

/// [`ROUNDS`] rounds of [`crr`], back to back.
fn rounds(
    tb: &Testbed,
    path: &str,
    client: &Pod,
    server: &Pod,
    secs: u64,
) -> Result<Vec<Round>, BenchError> {
    (1..=ROUNDS)
        .map(|round| {
            crate::error::check_interrupted()?;
            progress(&format!(
                "sustain: {path} round {round} of {ROUNDS} ({secs} s of crr)"
            ));
            crr(tb, client, server, secs)
        })
        .collect()
}

/// `pod-tool crr` from `client` to `server`'s rr-server for `secs`.
fn crr(tb: &Testbed, client: &Pod, server: &Pod, secs: u64) -> Result<Round, BenchError> {
    let churn = tb.spawn_in_pod(
        client,
        pod_tool(&[
            "crr",
            "--to",
            &format!("{}:{RR_PORT}", server.ipv4),
            "--duration-secs",
            &secs.to_string(),
        ]),
    );
    let (_, lines) = churn.output_json_lines(Duration::from_secs(secs) + Duration::from_mins(1));
    let report = lines
        .into_iter()
        .find(|l| l["event"] == "crr")
        .ok_or_else(|| BenchError::failed(format!("crr printed no report\n{}", churn.report())))?;
    Ok(Round {
        rate: report["rate"].as_f64().unwrap_or(f64::NAN),
        errors: report["errors"].as_u64().unwrap_or(0),
        last_error: report["last_error"].as_str().map(str::to_owned),
    })
}

/// Reads each agent's state until none holds more than at idle, or
/// [`SETTLE_LIMIT`] has passed; returns the last reading.
fn settle(
    tb: &Testbed,
    agents: &[Agent; 2],
    idle: &[AgentState],
) -> Result<Vec<AgentState>, BenchError> {
    let started = Instant::now();
    loop {
        let now = agents
            .iter()
            .map(|agent| read_state(tb, agent))
            .collect::<Result<Vec<_>, _>>()?;
        let settled = idle
            .iter()
            .zip(&now)
            .all(|(idle, now)| grown(idle, now).is_empty());
        if settled || started.elapsed() > SETTLE_LIMIT {
            return Ok(now);
        }
        crate::error::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What in `after` stayed above its value in `idle`.
fn grown(idle: &AgentState, after: &AgentState) -> Vec<String> {
    let mut grown = Vec::new();
    for (map, entries) in &after.map_entries {
        let before = idle.map_entries.get(map).copied().unwrap_or(0);
        if *entries > before {
            grown.push(format!("{map}: {before} → {entries} entries"));
        }
    }
    if after.open_fds > idle.open_fds {
        grown.push(format!("open fds: {} → {}", idle.open_fds, after.open_fds));
    }
    if after.tasks > idle.tasks {
        grown.push(format!("tasks: {} → {}", idle.tasks, after.tasks));
    }
    grown
}

/// One agent's state: its maps through `ambit bpf map list`, its fds and
/// tasks through its `/metrics`, threads and RSS from `/proc`.
pub fn read_state(tb: &Testbed, agent: &Agent) -> Result<AgentState, BenchError> {
    let output = Command::new(Testbed::bin("ambit"))
        .arg("bpf")
        .arg("--bpffs-dir")
        .arg(agent.node.bpffs.join("ambit"))
        .args(["map", "list", "-o", "json"])
        .output()
        .map_err(|error| BenchError::failed(format!("cannot run ambit bpf map list: {error}")))?;
    let maps: Value = serde_json::from_slice(&output.stdout).map_err(|error| {
        BenchError::failed(format!(
            "ambit bpf map list printed no JSON ({error}): {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    })?;
    let map_entries = maps
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|map| Some((map["name"].as_str()?, map["entries"].as_u64()?)))
        .filter(|(name, _)| !NOT_STATE.contains(name))
        .map(|(name, entries)| (name.to_owned(), entries))
        .collect();
    let metrics = agent.get(tb, "/metrics").ok_or_else(|| {
        BenchError::failed(format!(
            "the agent on {} serves no /metrics",
            agent.node.name
        ))
    })?;
    let pid = agent.proc.pid();
    Ok(AgentState {
        map_entries,
        open_fds: metric_sum(&metrics, "process_open_fds"),
        tasks: metric_sum(&metrics, "ambit_agent_tasks"),
        threads: crate::usage::threads(pid).unwrap_or(0),
        rss_mib: crate::usage::rss_mib(pid).unwrap_or(f64::NAN),
        metric_series: metrics
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .count() as u64,
        heap_in_use_mib: mib(metric_sum(
            &metrics,
            "ambit_agent_heap_bytes{state=\"in_use\"}",
        )),
        heap_free_mib: mib(metric_sum(
            &metrics,
            "ambit_agent_heap_bytes{state=\"free\"}",
        )),
    })
}

#[expect(
    clippy::cast_precision_loss,
    reason = "heap sizes are far below 2^52 bytes"
)]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// The sum of every sample of `name` in `OpenMetrics` text.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

// === impl SustainReport ===

impl SustainReport {
    /// Whether every agent's maps, fds and tasks were back at idle.
    #[must_use]
    pub fn returned_to_idle(&self) -> bool {
        self.agents.iter().all(|agent| agent.grown.is_empty())
    }

    fn new(
        round_secs: u64,
        mesh: &[Round],
        direct: &[Round],
        agents: Vec<AgentBeforeAfter>,
    ) -> Self {
        let rates = |rounds: &[Round]| rounds.iter().map(|r| r.rate).collect::<Vec<_>>();
        let ratio = |rates: &[f64]| match (rates.first(), rates.last()) {
            (Some(first), Some(last)) if *first > 0.0 => last / first,
            _ => f64::NAN,
        };
        let mesh_rates = rates(mesh);
        let direct_rates = rates(direct);
        let mesh_errors = mesh.iter().map(|r| r.errors).sum();
        let mesh_ratio = ratio(&mesh_rates);
        let target_met = mesh_ratio >= TARGET_RATIO
            && mesh_errors == 0
            && agents.iter().all(|agent| agent.grown.is_empty());
        Self {
            round_secs,
            direct_ratio: ratio(&direct_rates),
            mesh_ratio,
            mesh_rates,
            direct_rates,
            mesh_errors,
            last_error: mesh.iter().rev().find_map(|r| r.last_error.clone()),
            agents,
            target_met,
        }
    }
}

/// A figure of an agent's state in the report: its name, and its value.
type Figure = (&'static str, fn(&AgentState) -> String);

/// The process figures of the report, after the maps.
const PROCESS_FIGURES: [Figure; 4] = [
    ("open fds", |s| s.open_fds.to_string()),
    ("tokio tasks", |s| s.tasks.to_string()),
    ("threads", |s| s.threads.to_string()),
    ("RSS, MiB", |s| format!("{:.1}", s.rss_mib)),
];

/// The Markdown of `sustain.md`.
#[must_use]
pub fn render(report: &SustainReport) -> String {
    let mut out = format!(
        "## Sustained churn: {ROUNDS} connection-rate rounds back to back\n\n\
         `crr` (one connection at a time) across two nodes, {} s a round, through the mesh and then direct.\n\n\
         | round | mesh conn/s | direct conn/s |\n| ---: | ---: | ---: |\n",
        report.round_secs
    );
    for (round, (mesh, direct)) in report
        .mesh_rates
        .iter()
        .zip(&report.direct_rates)
        .enumerate()
    {
        let _ = writeln!(out, "| {} | {mesh:.0} | {direct:.0} |", round + 1);
    }
    let _ = writeln!(
        out,
        "| last ÷ first | **{:.2}** (target ≥ {TARGET_RATIO}) | {:.2} |",
        report.mesh_ratio, report.direct_ratio
    );
    let _ = writeln!(
        out,
        "\nFailed connections through the mesh: {}{}.\n",
        report.mesh_errors,
        report
            .last_error
            .as_ref()
            .map_or_else(String::new, |error| format!(" (last: {error})"))
    );
    out.push_str("| agent | figure | idle | after the rounds |\n| --- | --- | ---: | ---: |\n");
    for agent in &report.agents {
        let mut row = |figure: &str, idle: String, after: String| {
            let _ = writeln!(out, "| {} | {figure} | {idle} | {after} |", agent.node);
        };
        for (map, entries) in &agent.idle.map_entries {
            let after = agent.after.map_entries.get(map).copied().unwrap_or(0);
            row(
                &format!("{map} entries"),
                entries.to_string(),
                after.to_string(),
            );
        }
        for (figure, value) in PROCESS_FIGURES {
            row(figure, value(&agent.idle), value(&agent.after));
        }
    }
    let _ = writeln!(
        out,
        "\nReturned to idle: {}. Target: {}.",
        if report.returned_to_idle() {
            "every map, fd and task count".to_owned()
        } else {
            report
                .agents
                .iter()
                .flat_map(|a| a.grown.iter().map(move |g| format!("{}: {g}", a.node)))
                .collect::<Vec<_>>()
                .join("; ")
        },
        if report.target_met { "met" } else { "missed" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(odst: u64, fds: u64, tasks: u64) -> AgentState {
        AgentState {
            map_entries: BTreeMap::from([("AMBIT_ODST_SOCK".to_owned(), odst)]),
            open_fds: fds,
            tasks,
            threads: 4,
            rss_mib: 10.0,
            metric_series: 100,
            ..AgentState::default()
        }
    }

    #[test]
    fn what_stays_above_idle_is_named() {
        assert!(grown(&state(0, 30, 20), &state(0, 29, 20)).is_empty());
        let grown = grown(&state(0, 30, 20), &state(7, 31, 25));
        assert_eq!(
            grown,
            [
                "AMBIT_ODST_SOCK: 0 → 7 entries",
                "open fds: 30 → 31",
                "tasks: 20 → 25"
            ]
        );
    }

    #[test]
    fn metric_samples_are_summed_by_exact_name() {
        let text = "# TYPE ambit_agent_tasks gauge\nambit_agent_tasks{runtime=\"data-path\"} 12\nambit_agent_tasks{runtime=\"control\"} 5\nambit_agent_tasks_other 100\nprocess_open_fds 31\n";
        assert_eq!(metric_sum(text, "ambit_agent_tasks"), 17);
        assert_eq!(metric_sum(text, "process_open_fds"), 31);
    }

    #[test]
    fn the_ratio_is_last_over_first_and_the_target_needs_all_three() {
        let round = |rate| Round {
            rate,
            errors: 0,
            last_error: None,
        };
        let agent = |grown: Vec<String>| AgentBeforeAfter {
            node: "s1".to_owned(),
            idle: state(0, 30, 20),
            after: state(0, 30, 20),
            grown,
        };
        let rounds = [round(1000.0), round(990.0), round(960.0)];
        let report = SustainReport::new(10, &rounds, &rounds, vec![agent(Vec::new())]);
        assert!((report.mesh_ratio - 0.96).abs() < 1e-9);
        assert!(report.target_met);
        let report = SustainReport::new(10, &rounds, &rounds, vec![agent(vec!["tasks".into()])]);
        assert!(!report.target_met);
        let sagging = [round(1000.0), round(700.0)];
        let report = SustainReport::new(10, &sagging, &rounds, vec![agent(Vec::new())]);
        assert!(!report.target_met);
        assert!(render(&report).contains("| last ÷ first | **0.70** (target ≥ 0.95) | 0.96 |"));
    }
}
