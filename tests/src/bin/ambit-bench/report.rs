//! The bench's results: the figures of each scenario (medians over the
//! runs, and each run's own), mesh/direct ratios, the targets, and their
//! JSON and Markdown forms.

mod authz;
mod markdown;
mod median;
mod targets;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use authz::{AuthzFigures, AuthzReport, EndToEnd, EndToEndRun, EvalFigures};
pub use markdown::render;
pub use median::median_report;
pub use targets::TargetResult;

/// Everything one run measured, as `report.json` holds it.
#[derive(Serialize)]
pub struct Report {
    /// `--quick` was given: short tests, noisier figures.
    pub quick: bool,
    /// How many times every scenario ran; each figure is the median.
    pub runs: usize,
    /// Connections `pod-tool hold` held idle through the mesh.
    pub idle_conns: u32,
    /// How long each test ran.
    pub durations: Durations,
    /// Every scenario, in the order they ran.
    pub scenarios: Vec<ScenarioReport>,
    /// Pair name (`cross-node`, `cross-node-kernel`, `same-node`,
    /// `same-node-kernel`) → metric
    /// (`rr_1b.p50_us`) → mesh figure / direct figure; `null` when either is
    /// missing.
    pub ratios: BTreeMap<&'static str, BTreeMap<&'static str, Option<f64>>>,
    /// The performance targets, evaluated on the medians.
    pub targets: Vec<TargetResult>,
    /// What authorization costs with 10,000 policies.
    pub authorization: AuthzReport,
    /// Measurements that failed; the run exits non-zero when there are any.
    pub failures: Vec<Failure>,
}

/// Test lengths of the run.
#[derive(Serialize)]
#[expect(clippy::struct_field_names, reason = "the JSON keys name their unit")]
pub struct Durations {
    /// Measured seconds of each `rr_*` and `crr` test.
    pub rr_secs: f64,
    /// Warm-up seconds before each of them.
    pub rr_warmup_secs: f64,
    /// `iperf3 -t`.
    pub tput_secs: u32,
    /// `iperf3 -O` (left out of the result).
    pub tput_omit_secs: u32,
    /// How long the idle connections stay open once all are up.
    pub idle_hold_secs: f64,
    /// When, after they are all up, the agents' memory is read.
    pub idle_read_after_secs: f64,
}

/// One scenario's figures, each the median over the runs where its test
/// succeeded; `null` when it failed in every run.
#[derive(Serialize)]
pub struct ScenarioReport {
    /// `direct-cross-node`, `mesh-cross-node`, `mesh-cross-node-kernel`,
    /// `direct-same-node`, `mesh-same-node`, `mesh-same-node-kernel`.
    pub name: &'static str,
    /// Whether traffic goes through the node agents.
    pub mesh: bool,
    /// The client pod.
    pub client: String,
    /// The server pod.
    pub server: String,
    /// 1-byte round trips on one connection.
    pub rr_1b: Option<RrFigures>,
    /// 1 KiB round trips on one connection.
    pub rr_1k: Option<RrFigures>,
    /// 1-byte round trips on 8 connections at once.
    pub rr_1b_x8: Option<RrFigures>,
    /// Connect, 1-byte round trip, close.
    pub crr: Option<CrrFigures>,
    /// iperf3, one stream.
    pub tput_1: Option<TputFigures>,
    /// iperf3, four streams.
    pub tput_4: Option<TputFigures>,
    /// The client side's agent (`n1`; `n2` in `mesh-same-node-kernel`), mesh
    /// scenarios only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentFigures>,
    /// The server side's agent (`n2`), cross-node mesh scenarios only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_server: Option<AgentFigures>,
    /// `rr_1b`'s round-trip distribution in the run with the median p50:
    /// what `latency.png` draws.
    pub rr_1b_cdf: Option<LatencyCdf>,
    /// Each run's own figures, in run order.
    pub runs: Vec<ScenarioRun>,
}

/// One run of one scenario: its figures as measured, `null` where the test
/// failed.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioRun {
    /// 1 for the first run.
    pub run: usize,
    /// 1-byte round trips on one connection.
    pub rr_1b: Option<RrFigures>,
    /// 1 KiB round trips on one connection.
    pub rr_1k: Option<RrFigures>,
    /// 1-byte round trips on 8 connections at once.
    pub rr_1b_x8: Option<RrFigures>,
    /// Connect, 1-byte round trip, close.
    pub crr: Option<CrrFigures>,
    /// iperf3, one stream.
    pub tput_1: Option<TputFigures>,
    /// iperf3, four streams.
    pub tput_4: Option<TputFigures>,
    /// The client side's agent (`n1`; `n2` in `mesh-same-node-kernel`), mesh
    /// scenarios only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentFigures>,
    /// The server side's agent (`n2`), cross-node mesh scenarios only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_server: Option<AgentFigures>,
    /// `rr_1b`'s distribution in this run (`[fraction, µs]`); kept out of
    /// the JSON but for the plotted run.
    #[serde(skip)]
    pub rr_1b_cdf: Vec<[f64; 2]>,
}

/// A round-trip time distribution.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyCdf {
    /// The run it comes from.
    pub run: usize,
    /// `[fraction, µs]`: the fraction of round trips that took at most that
    /// long, from 0.001 to 1 (the slowest), as `pod-tool rr` reports it.
    pub points: Vec<[f64; 2]>,
}

/// What `pod-tool rr` prints: the figures and the distribution.
#[derive(Debug, Deserialize)]
pub struct RrResult {
    /// The summary figures.
    #[serde(flatten)]
    pub figures: RrFigures,
    /// `[fraction, µs]` points; empty from a `pod-tool` without them.
    #[serde(default)]
    pub cdf: Vec<[f64; 2]>,
}

/// Request/response figures, as `pod-tool rr` reports them.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
pub struct RrFigures {
    /// Median round trip, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Round trips per second, all connections together.
    pub rate: f64,
    /// Round trips measured.
    pub samples: u64,
}

/// Connection-rate figures, as `pod-tool crr` reports them.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
pub struct CrrFigures {
    /// Connections per second (connect, 1-byte round trip, close).
    pub rate: f64,
    /// Median duration of one whole connection, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Connections measured.
    pub samples: u64,
    /// Connections that failed (warm-up included).
    pub errors: u64,
}

/// Bulk throughput.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TputFigures {
    /// What the receiver got, Gbit/s (10^9 bits per second).
    pub gbps: f64,
}

/// A node agent's resource use during a scenario.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct AgentFigures {
    /// CPU seconds per wall-clock second over the scenario (1.0 = one core busy).
    pub cpu_cores: f64,
    /// Resident memory after start-up, before any load, MiB.
    pub rss_mb_idle: f64,
    /// Peak resident memory since start (`VmHWM`) at the scenario's end, MiB.
    pub rss_mb_peak: f64,
    /// Resident memory while `pod-tool hold` kept its idle connections open
    /// through this agent, MiB; `mesh-cross-node` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_mb_1000_idle: Option<f64>,
}

/// A measurement that failed.
#[derive(Serialize)]
pub struct Failure {
    /// The run (1 for the first); absent for a failure outside the runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<usize>,
    /// The scenario, or `authorization` for the authorization cost.
    pub scenario: &'static str,
    /// The test (`rr_1b`, …, `agent`, `idle_conns`, `capture`, `kernel_path`,
    /// `splice`; for
    /// `authorization`, `in_process`, `apply`, `restore`, `crr_with_policies`, …).
    pub test: &'static str,
    /// What went wrong.
    pub error: String,
}

/// A figure the report compares, by its key (the JSON path in a scenario).
pub struct Metric {
    /// `rr_1b.p50_us`.
    pub key: &'static str,
    /// Row label in the Markdown table.
    pub label: &'static str,
    /// Decimals shown.
    pub decimals: usize,
    /// Reads it from a scenario.
    pub get: fn(&ScenarioReport) -> Option<f64>,
}

/// The scenario pairs compared: (pair name, mesh scenario, direct
/// scenario). Both meshed scenarios of a kind (through the agent in user
/// space, and on the kernel path) are compared with the one direct scenario
/// of that kind.
pub const PAIRS: [(&str, &str, &str); 4] = [
    ("cross-node", "mesh-cross-node", "direct-cross-node"),
    (
        "cross-node-kernel",
        "mesh-cross-node-kernel",
        "direct-cross-node",
    ),
    ("same-node", "mesh-same-node", "direct-same-node"),
    (
        "same-node-kernel",
        "mesh-same-node-kernel",
        "direct-same-node",
    ),
];

/// Every figure a direct and a meshed scenario both have, in table order.
pub const METRICS: &[Metric] = &[
    metric("rr_1b.p50_us", "rr_1b p50 (µs)", 1, |s| {
        s.rr_1b.map(|f| f.p50_us)
    }),
    metric("rr_1b.p90_us", "rr_1b p90 (µs)", 1, |s| {
        s.rr_1b.map(|f| f.p90_us)
    }),
    metric("rr_1b.p99_us", "rr_1b p99 (µs)", 1, |s| {
        s.rr_1b.map(|f| f.p99_us)
    }),
    metric("rr_1b.rate", "rr_1b rate (/s)", 0, |s| {
        s.rr_1b.map(|f| f.rate)
    }),
    metric("rr_1k.p50_us", "rr_1k p50 (µs)", 1, |s| {
        s.rr_1k.map(|f| f.p50_us)
    }),
    metric("rr_1k.p90_us", "rr_1k p90 (µs)", 1, |s| {
        s.rr_1k.map(|f| f.p90_us)
    }),
    metric("rr_1k.p99_us", "rr_1k p99 (µs)", 1, |s| {
        s.rr_1k.map(|f| f.p99_us)
    }),
    metric("rr_1k.rate", "rr_1k rate (/s)", 0, |s| {
        s.rr_1k.map(|f| f.rate)
    }),
    metric("rr_1b_x8.p50_us", "rr_1b_x8 p50 (µs)", 1, |s| {
        s.rr_1b_x8.map(|f| f.p50_us)
    }),
    metric("rr_1b_x8.p90_us", "rr_1b_x8 p90 (µs)", 1, |s| {
        s.rr_1b_x8.map(|f| f.p90_us)
    }),
    metric("rr_1b_x8.p99_us", "rr_1b_x8 p99 (µs)", 1, |s| {
        s.rr_1b_x8.map(|f| f.p99_us)
    }),
    metric("rr_1b_x8.rate", "rr_1b_x8 rate (/s)", 0, |s| {
        s.rr_1b_x8.map(|f| f.rate)
    }),
    metric("crr.rate", "crr rate (conn/s)", 0, |s| {
        s.crr.map(|f| f.rate)
    }),
    metric("crr.p50_us", "crr p50 (µs)", 1, |s| {
        s.crr.map(|f| f.p50_us)
    }),
    metric("tput_1.gbps", "tput_1 (Gbit/s)", 2, |s| {
        s.tput_1.map(|f| f.gbps)
    }),
    metric("tput_4.gbps", "tput_4 (Gbit/s)", 2, |s| {
        s.tput_4.map(|f| f.gbps)
    }),
];

const fn metric(
    key: &'static str,
    label: &'static str,
    decimals: usize,
    get: fn(&ScenarioReport) -> Option<f64>,
) -> Metric {
    Metric {
        key,
        label,
        decimals,
        get,
    }
}

/// The agents' figures, shown for mesh scenarios only.
pub const AGENT_METRICS: &[Metric] = &[
    metric("agent.cpu_cores", "agent CPU (cores)", 2, |s| {
        s.agent.map(|a| a.cpu_cores)
    }),
    metric("agent.rss_mb_idle", "agent idle RSS (MiB)", 1, |s| {
        s.agent.map(|a| a.rss_mb_idle)
    }),
    metric("agent.rss_mb_peak", "agent peak RSS (MiB)", 1, |s| {
        s.agent.map(|a| a.rss_mb_peak)
    }),
    metric(
        "agent.rss_mb_1000_idle",
        "agent RSS, idle conns held (MiB)",
        1,
        |s| s.agent.and_then(|a| a.rss_mb_1000_idle),
    ),
    metric(
        "agent_server.cpu_cores",
        "server agent CPU (cores)",
        2,
        |s| s.agent_server.map(|a| a.cpu_cores),
    ),
    metric(
        "agent_server.rss_mb_idle",
        "server agent idle RSS (MiB)",
        1,
        |s| s.agent_server.map(|a| a.rss_mb_idle),
    ),
    metric(
        "agent_server.rss_mb_peak",
        "server agent peak RSS (MiB)",
        1,
        |s| s.agent_server.map(|a| a.rss_mb_peak),
    ),
    metric(
        "agent_server.rss_mb_1000_idle",
        "server agent RSS, idle conns held (MiB)",
        1,
        |s| s.agent_server.and_then(|a| a.rss_mb_1000_idle),
    ),
];

// === impl Durations ===

#[cfg(test)]
impl Durations {
    /// The lengths of a quick run.
    pub fn example() -> Self {
        Self {
            rr_secs: 0.7,
            rr_warmup_secs: 0.2,
            tput_secs: 1,
            tput_omit_secs: 0,
            idle_hold_secs: 2.0,
            idle_read_after_secs: 0.5,
        }
    }
}

// === impl Report ===

impl Report {
    /// Computes the ratios and targets from the scenarios' medians.
    pub fn new(
        quick: bool,
        runs: usize,
        idle_conns: u32,
        durations: Durations,
        scenarios: Vec<ScenarioReport>,
        authorization: AuthzReport,
        failures: Vec<Failure>,
    ) -> Self {
        let ratios = PAIRS
            .iter()
            .map(|&(pair, mesh, direct)| {
                let mesh = scenarios.iter().find(|s| s.name == mesh);
                let direct = scenarios.iter().find(|s| s.name == direct);
                let by_metric = METRICS
                    .iter()
                    .map(|metric| (metric.key, ratio(mesh, direct, metric)))
                    .collect();
                (pair, by_metric)
            })
            .collect();
        let mut report = Self {
            quick,
            runs,
            idle_conns,
            durations,
            scenarios,
            ratios,
            targets: Vec::new(),
            authorization,
            failures,
        };
        report.targets = targets::evaluate(&report);
        report
    }

    /// Whether every measurement succeeded.
    pub fn complete(&self) -> bool {
        self.failures.is_empty()
    }

    /// A scenario by name.
    pub fn scenario(&self, name: &str) -> Option<&ScenarioReport> {
        self.scenarios.iter().find(|s| s.name == name)
    }
}

fn ratio(
    mesh: Option<&ScenarioReport>,
    direct: Option<&ScenarioReport>,
    metric: &Metric,
) -> Option<f64> {
    let mesh = (metric.get)(mesh?)?;
    let direct = (metric.get)(direct?)?;
    (direct > 0.0).then(|| round(mesh / direct, 3))
}

/// `value` rounded to `places` decimals, so the JSON shows what a reader can
/// use rather than the last bits of a division.
pub fn round(value: f64, places: i32) -> f64 {
    let scale = 10_f64.powi(places);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests;
