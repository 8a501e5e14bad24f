//! The bench's results: the figures of each scenario, mesh/direct ratios,
//! the targets, and their JSON and Markdown forms.

mod markdown;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use markdown::render;

/// Everything one run measured, as `report.json` holds it.
#[derive(Serialize)]
pub struct Report {
    /// `--quick` was given: short tests, noisier figures.
    pub quick: bool,
    /// How long each test ran.
    pub durations: Durations,
    /// Every scenario, in the order they ran.
    pub scenarios: Vec<ScenarioReport>,
    /// Pair name (`cross-node`, `same-node`) → metric (`rr_1b.p50_us`) →
    /// mesh figure / direct figure; `null` when either is missing.
    pub ratios: BTreeMap<&'static str, BTreeMap<&'static str, Option<f64>>>,
    /// The performance targets, evaluated on `mesh-cross-node`.
    pub targets: Vec<TargetResult>,
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
}

/// One scenario's figures; a test that failed is `null`.
#[derive(Serialize)]
pub struct ScenarioReport {
    /// `direct-cross-node`, `mesh-cross-node`, `direct-same-node`, `mesh-same-node`.
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
    /// The client side's agent (`n1`), mesh scenarios only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentFigures>,
    /// The server side's agent (`n2`), `mesh-cross-node` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_server: Option<AgentFigures>,
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
}

/// A target and whether the run met it.
#[derive(Serialize)]
pub struct TargetResult {
    /// What the target says, e.g. `rr_1b p50 ≤ 2.5× direct`.
    pub target: String,
    /// The scenario it is evaluated on.
    pub scenario: &'static str,
    /// The figure: a metric key such as `rr_1b.p50_us`, or `agent.rss_mb_idle`.
    pub metric: &'static str,
    /// `ratio` (mesh / direct) or `MiB`.
    pub unit: &'static str,
    /// `<=` or `>=`.
    pub comparison: &'static str,
    /// The bound.
    pub limit: f64,
    /// The measured value; `null` when its measurement failed.
    pub value: Option<f64>,
    /// Whether the value is within the bound; `null` when unknown.
    pub met: Option<bool>,
}

/// A measurement that failed.
#[derive(Serialize)]
pub struct Failure {
    /// The scenario.
    pub scenario: &'static str,
    /// The test (`rr_1b`, …, `agent`, `capture`).
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

/// The scenario pairs compared: (pair name, mesh scenario, direct scenario).
pub const PAIRS: [(&str, &str, &str); 2] = [
    ("cross-node", "mesh-cross-node", "direct-cross-node"),
    ("same-node", "mesh-same-node", "direct-same-node"),
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
];

/// The scenario the targets judge.
const TARGET_SCENARIO: &str = "mesh-cross-node";

/// The idle memory budget of one agent, MiB.
const AGENT_IDLE_RSS_LIMIT_MIB: f64 = 16.0;

/// The ratio targets: (text, metric key, comparison, limit).
const RATIO_TARGETS: [(&str, &str, &str, f64); 4] = [
    ("rr_1b p50 ≤ 2.5× direct", "rr_1b.p50_us", "<=", 2.5),
    ("tput_1 ≥ 0.5× direct", "tput_1.gbps", ">=", 0.5),
    ("tput_4 ≥ 0.5× direct", "tput_4.gbps", ">=", 0.5),
    ("crr rate ≥ 0.9× direct", "crr.rate", ">=", 0.9),
];

// === impl Report ===

impl Report {
    /// Computes the ratios and targets from the scenarios.
    pub fn new(
        quick: bool,
        durations: Durations,
        scenarios: Vec<ScenarioReport>,
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
            durations,
            scenarios,
            ratios,
            targets: Vec::new(),
            failures,
        };
        report.targets = report.evaluate_targets();
        report
    }

    /// Whether every measurement succeeded.
    pub fn complete(&self) -> bool {
        self.failures.is_empty()
    }

    fn evaluate_targets(&self) -> Vec<TargetResult> {
        let pair = PAIRS
            .iter()
            .find(|(_, mesh, _)| *mesh == TARGET_SCENARIO)
            .map_or("cross-node", |(pair, _, _)| *pair);
        let mut targets: Vec<TargetResult> = RATIO_TARGETS
            .iter()
            .map(|&(target, metric, comparison, limit)| {
                let value = self
                    .ratios
                    .get(pair)
                    .and_then(|ratios| ratios.get(metric).copied().flatten());
                TargetResult::new(target, metric, "ratio", comparison, limit, value)
            })
            .collect();
        // Both agents of the cross-node scenario must fit the budget.
        let scenario = self.scenarios.iter().find(|s| s.name == TARGET_SCENARIO);
        let idle = scenario.and_then(|s| {
            let client = s.agent?.rss_mb_idle;
            Some(
                s.agent_server
                    .map_or(client, |server| client.max(server.rss_mb_idle)),
            )
        });
        targets.push(TargetResult::new(
            "agent idle RSS ≤ 16 MiB (larger of the two agents)",
            "agent.rss_mb_idle",
            "MiB",
            "<=",
            AGENT_IDLE_RSS_LIMIT_MIB,
            idle,
        ));
        targets
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

// === impl TargetResult ===

impl TargetResult {
    fn new(
        target: &str,
        metric: &'static str,
        unit: &'static str,
        comparison: &'static str,
        limit: f64,
        value: Option<f64>,
    ) -> Self {
        let met = value.map(|value| {
            if comparison == "<=" {
                value <= limit
            } else {
                value >= limit
            }
        });
        Self {
            target: target.to_owned(),
            scenario: TARGET_SCENARIO,
            metric,
            unit,
            comparison,
            limit,
            value,
            met,
        }
    }
}

#[cfg(test)]
mod tests;
