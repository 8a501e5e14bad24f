//! The performance targets (issue 4) and their verdicts on a report's
//! medians: mesh/direct ratios of the same run, cross-node and same-node
//! (each through the agent in user space, and on the kernel path), and the
//! agents' memory.

use serde::Serialize;

use super::{AgentFigures, PAIRS, Report, round};

/// Where the agents' memory targets are judged: the scenario with both
/// agents and the idle connections.
const AGENT_SCENARIO: &str = "mesh-cross-node";

/// The idle memory budget of one agent, MiB (issue 19).
const AGENT_IDLE_RSS_LIMIT_MIB: f64 = 10.0;

/// One agent's memory budget with the idle connections open, MiB (issue 19).
const AGENT_HELD_RSS_LIMIT_MIB: f64 = 32.0;

/// A target and whether the run met it.
#[derive(Serialize)]
pub struct TargetResult {
    /// A stable identifier, unique per scenario: `rr_1b_p50`, `tput_4`,
    /// `tput_4_above_tput_1`, `agent_rss_1000_idle`, ….
    pub name: &'static str,
    /// What the target says, e.g. `rr_1b p50 ≤ 2.5× direct`.
    pub target: String,
    /// The scenario it is evaluated on.
    pub scenario: &'static str,
    /// The figure: a metric key such as `rr_1b.p50_us` (as a mesh/direct
    /// ratio), `tput_4.gbps/tput_1.gbps` (within the scenario) or
    /// `agent.rss_mb_idle`.
    pub metric: &'static str,
    /// `ratio` or `MiB`.
    pub unit: &'static str,
    /// `<=`, `>=` or `>`.
    pub comparison: &'static str,
    /// The bound.
    pub limit: f64,
    /// The measured value; `null` when its measurement failed.
    pub value: Option<f64>,
    /// Whether the value is within the bound; `null` when unknown.
    pub met: Option<bool>,
}

/// A target before it is judged.
struct Target {
    name: &'static str,
    scenario: &'static str,
    text: &'static str,
    measure: Measure,
    comparison: &'static str,
    limit: f64,
}

/// How a target's value comes out of the report.
enum Measure {
    /// The mesh/direct ratio of a metric (`ratios.<pair>.<key>`).
    Ratio(&'static str),
    /// Meshed `tput_4` over meshed `tput_1`.
    Tput4OverTput1,
    /// A latency test's p99 mesh/direct ratio over its p50 one (`rr_1b`,
    /// `rr_1k`): above 1 the mesh adds more to the tail than to the median.
    TailOverMedian(&'static str),
    /// The larger of the scenario's agents' figure (MiB).
    AgentRss(&'static str, fn(&AgentFigures) -> Option<f64>),
}

/// Every target, in the order the report lists them.
const TARGETS: [Target; 22] = [
    ratio(
        "rr_1b_p50",
        CROSS,
        "rr_1b p50 ≤ 2.5× direct",
        "rr_1b.p50_us",
        "<=",
        2.5,
    ),
    ratio(
        "rr_1b_p99",
        CROSS,
        "rr_1b p99 ≤ 3× direct",
        "rr_1b.p99_us",
        "<=",
        3.0,
    ),
    ratio(
        "tput_1",
        CROSS,
        "tput_1 ≥ 0.5× direct",
        "tput_1.gbps",
        ">=",
        0.5,
    ),
    ratio(
        "tput_4",
        CROSS,
        "tput_4 ≥ 0.5× direct",
        "tput_4.gbps",
        ">=",
        0.5,
    ),
    tail(
        "rr_1b_tail",
        "rr_1b",
        "rr_1b p99 ratio ≤ its p50 ratio (p99 ÷ direct p99 over p50 ÷ direct p50 ≤ 1)",
    ),
    tail(
        "rr_1k_tail",
        "rr_1k",
        "rr_1k p99 ratio ≤ its p50 ratio (p99 ÷ direct p99 over p50 ÷ direct p50 ≤ 1)",
    ),
    Target {
        name: "tput_4_above_tput_1",
        scenario: CROSS,
        text: "tput_4 above tput_1 (meshed tput_4 / tput_1 > 1)",
        measure: Measure::Tput4OverTput1,
        comparison: ">",
        limit: 1.0,
    },
    ratio(
        "crr_rate",
        CROSS,
        "crr rate ≥ 0.9× direct",
        "crr.rate",
        ">=",
        0.9,
    ),
    ratio(
        "rr_1b_p50",
        CROSS_KERNEL,
        "rr_1b p50 ≤ 2× direct",
        "rr_1b.p50_us",
        "<=",
        2.0,
    ),
    ratio(
        "tput_1",
        CROSS_KERNEL,
        "tput_1 ≥ 0.5× direct",
        "tput_1.gbps",
        ">=",
        0.5,
    ),
    ratio(
        "rr_1b_p50",
        SAME,
        "rr_1b p50 ≤ 1.3× direct",
        "rr_1b.p50_us",
        "<=",
        1.3,
    ),
    ratio(
        "rr_1b_p99",
        SAME,
        "rr_1b p99 ≤ 1.5× direct",
        "rr_1b.p99_us",
        "<=",
        1.5,
    ),
    ratio(
        "tput_1",
        SAME,
        "tput_1 ≥ 0.8× direct",
        "tput_1.gbps",
        ">=",
        0.8,
    ),
    ratio(
        "tput_4",
        SAME,
        "tput_4 ≥ 0.8× direct",
        "tput_4.gbps",
        ">=",
        0.8,
    ),
    ratio(
        "crr_rate",
        SAME,
        "crr rate ≥ 0.9× direct",
        "crr.rate",
        ">=",
        0.9,
    ),
    ratio(
        "rr_1b_p50",
        SAME_KERNEL,
        "rr_1b p50 ≤ 1× direct",
        "rr_1b.p50_us",
        "<=",
        1.0,
    ),
    ratio(
        "rr_1b_p99",
        SAME_KERNEL,
        "rr_1b p99 ≤ 1.5× direct",
        "rr_1b.p99_us",
        "<=",
        1.5,
    ),
    ratio(
        "tput_1",
        SAME_KERNEL,
        "tput_1 ≥ 1× direct",
        "tput_1.gbps",
        ">=",
        1.0,
    ),
    ratio(
        "tput_4",
        SAME_KERNEL,
        "tput_4 ≥ 1× direct",
        "tput_4.gbps",
        ">=",
        1.0,
    ),
    ratio(
        "crr_rate",
        SAME_KERNEL,
        "crr rate ≥ 0.9× direct",
        "crr.rate",
        ">=",
        0.9,
    ),
    Target {
        name: "agent_idle_rss",
        scenario: AGENT_SCENARIO,
        text: "agent idle RSS ≤ 10 MiB (larger of the two agents)",
        measure: Measure::AgentRss("agent.rss_mb_idle", |a| Some(a.rss_mb_idle)),
        comparison: "<=",
        limit: AGENT_IDLE_RSS_LIMIT_MIB,
    },
    Target {
        name: "agent_rss_1000_idle",
        scenario: AGENT_SCENARIO,
        text: "agent RSS with 1,000 idle meshed connections open ≤ 32 MiB (larger of the two agents)",
        measure: Measure::AgentRss("agent.rss_mb_1000_idle", |a| a.rss_mb_1000_idle),
        comparison: "<=",
        limit: AGENT_HELD_RSS_LIMIT_MIB,
    },
];

const CROSS: &str = "mesh-cross-node";
const CROSS_KERNEL: &str = "mesh-cross-node-kernel";
const SAME: &str = "mesh-same-node";
const SAME_KERNEL: &str = "mesh-same-node-kernel";

const fn ratio(
    name: &'static str,
    scenario: &'static str,
    text: &'static str,
    key: &'static str,
    comparison: &'static str,
    limit: f64,
) -> Target {
    Target {
        name,
        scenario,
        text,
        measure: Measure::Ratio(key),
        comparison,
        limit,
    }
}

/// A cross-node tail target: `latency_test`'s p99 ratio to direct at most its p50
/// ratio.
const fn tail(name: &'static str, latency_test: &'static str, text: &'static str) -> Target {
    Target {
        name,
        scenario: CROSS,
        text,
        measure: Measure::TailOverMedian(latency_test),
        comparison: "<=",
        limit: 1.0,
    }
}

/// Judges every target on the report's medians and ratios.
pub fn evaluate(report: &Report) -> Vec<TargetResult> {
    TARGETS
        .iter()
        .map(|target| {
            let value = target.value(report);
            let mut text = target.text.to_owned();
            if report.idle_conns != 1000 {
                // The target is for 1,000; say what was measured instead.
                text = text.replace("1,000", &report.idle_conns.to_string());
            }
            TargetResult {
                name: target.name,
                target: text,
                scenario: target.scenario,
                metric: target.metric(),
                unit: target.unit(),
                comparison: target.comparison,
                limit: target.limit,
                value,
                met: value.map(|value| match target.comparison {
                    "<=" => value <= target.limit,
                    ">=" => value >= target.limit,
                    _ => value > target.limit,
                }),
            }
        })
        .collect()
}

// === impl Target ===

impl Target {
    fn value(&self, report: &Report) -> Option<f64> {
        match self.measure {
            Measure::Ratio(key) => {
                let (pair, _, _) = PAIRS.iter().find(|(_, mesh, _)| *mesh == self.scenario)?;
                report.ratios.get(pair)?.get(key).copied().flatten()
            }
            Measure::TailOverMedian(test) => {
                let (pair, _, _) = PAIRS.iter().find(|(_, mesh, _)| *mesh == self.scenario)?;
                let ratios = report.ratios.get(pair)?;
                let p99 = ratios
                    .get(format!("{test}.p99_us").as_str())
                    .copied()
                    .flatten()?;
                let p50 = ratios
                    .get(format!("{test}.p50_us").as_str())
                    .copied()
                    .flatten()?;
                (p50 > 0.0).then(|| round(p99 / p50, 3))
            }
            Measure::Tput4OverTput1 => {
                let scenario = report.scenario(self.scenario)?;
                let tput_1 = scenario.tput_1?.gbps;
                let tput_4 = scenario.tput_4?.gbps;
                (tput_1 > 0.0).then(|| round(tput_4 / tput_1, 3))
            }
            Measure::AgentRss(_, get) => {
                // Both agents must fit the budget: judge the larger.
                let scenario = report.scenario(self.scenario)?;
                let client = get(scenario.agent.as_ref()?)?;
                match scenario.agent_server.as_ref() {
                    Some(server) => Some(client.max(get(server)?)),
                    None => Some(client),
                }
            }
        }
    }

    fn metric(&self) -> &'static str {
        match self.measure {
            Measure::Ratio(key) | Measure::AgentRss(key, _) => key,
            Measure::Tput4OverTput1 => "tput_4.gbps/tput_1.gbps",
            Measure::TailOverMedian("rr_1b") => "rr_1b.p99_us/rr_1b.p50_us",
            Measure::TailOverMedian(_) => "rr_1k.p99_us/rr_1k.p50_us",
        }
    }

    fn unit(&self) -> &'static str {
        match self.measure {
            Measure::Ratio(_) | Measure::Tput4OverTput1 | Measure::TailOverMedian(_) => "ratio",
            Measure::AgentRss(..) => "MiB",
        }
    }
}
