//! What an upgrade costs (`upgrade`): a handoff to a new agent process while
//! a client opens meshed connections as fast as it can across two nodes.
//!
//! Each run measures connection churn (`pod-tool crr`, 4 threads, one
//! round trip per connection) twice on the same test bed: steady, and again
//! while the server's node agent hands its pods to a successor a third of
//! the way in. The report sets the connections that failed (refused or
//! reset; the target is 0), the churn's p99 during the handoff against
//! steady state, how long the handoff took (successor started → pods taken
//! over) and how long the old agent drained (released → exited).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ambit_tests::mesh::{Agent, pods_yaml};
use ambit_tests::workload::{self, RR_PORT, WAIT, pod_tool};
use ambit_tests::{Node, Pod, Proc, Testbed};
use serde::Serialize;
use serde_json::Value;

use crate::console::progress;
use crate::error::BenchError;

/// Churn threads, each with one connection at a time.
const CHURN_CONNS: &str = "4";

/// One run's figures.
#[derive(Clone, Debug, Serialize)]
pub struct UpgradeRun {
    /// Steady churn: connections per second.
    pub steady_rate: f64,
    /// Steady churn: p99 of one connection, µs.
    pub steady_p99_us: f64,
    /// Churn across the handoff: connections per second.
    pub during_rate: f64,
    /// Churn across the handoff: p99, µs.
    pub during_p99_us: f64,
    /// Connections that failed (refused, reset, timed out), both phases.
    pub failed: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// From starting the successor to it having taken the pods over, ms.
    pub handoff_ms: f64,
    /// From the old agent letting go to its exit, ms.
    pub drain_ms: f64,
}

/// What the upgrade bench found.
#[derive(Debug, Serialize)]
pub struct UpgradeReport {
    /// Seconds per churn measurement.
    pub load_secs: u64,
    /// Handoffs measured; each figure below is their median, but
    /// `failed` is the sum.
    pub runs: usize,
    /// Every run.
    pub per_run: Vec<UpgradeRun>,
    /// Failed connections over every run (target 0).
    pub failed: u64,
    /// Steady p99, µs.
    pub steady_p99_us: f64,
    /// p99 across the handoff, µs.
    pub during_p99_us: f64,
    /// `during_p99_us / steady_p99_us`.
    pub p99_ratio: f64,
    /// Steady connections per second.
    pub steady_rate: f64,
    /// Connections per second across the handoff.
    pub during_rate: f64,
    /// Handoff time, ms.
    pub handoff_ms: f64,
    /// Drain time of the old agent, ms.
    pub drain_ms: f64,
    /// Whether no connection failed.
    pub target_met: bool,
}

/// Runs the upgrade bench on a test bed of its own.
pub fn measure(quick: bool, runs: usize) -> Result<UpgradeReport, BenchError> {
    let mut tb =
        Testbed::new("bench-upgrade").map_err(|skip| BenchError::CannotRun(skip.reason))?;
    progress("upgrade: starting two nodes, their agents and the server");
    let n1 = tb.add_node("u1");
    let n2 = tb.add_node("u2");
    let client = tb.add_pod(&n1, "client", "shop");
    let server = tb.add_pod(&n2, "server", "shop");
    let config = pods_yaml(&[&client, &server]);
    let _client_agent = Agent::start_with_config(&tb, &n1, &config, &[&client, &server], &[]);
    let mut agent = Agent::start_with_config(&tb, &n2, &config, &[&client, &server], &[]);
    let _rr_server = workload::rr_server(&tb, &server);
    let load_secs = if quick { 3 } else { 9 };
    let mut per_run = Vec::new();
    for run in 1..=runs {
        crate::error::check_interrupted()?;
        progress(&format!("upgrade: run {run} of {runs}, steady churn"));
        let steady = churn_report(&churn(&tb, &client, &server, load_secs))?;
        progress(&format!(
            "upgrade: run {run} of {runs}, churn across a handoff"
        ));
        let during = churn(&tb, &client, &server, load_secs);
        std::thread::sleep(Duration::from_secs(load_secs) / 3);
        let generation = u16::try_from(run).map_err(|_| BenchError::failed("too many runs"))?;
        let HandedOff {
            old,
            took: handoff,
            released,
        } = hand_off(&tb, &n2, &config, generation, &[], &mut agent).map_err(
            |error| match error {
                BenchError::Failed(message) => BenchError::failed(format!("run {run}: {message}")),
                other => other,
            },
        )?;
        let status = old
            .proc
            .wait_timeout(Duration::from_mins(1))
            .ok_or_else(|| {
                BenchError::failed(format!("run {run}: the old agent did not finish draining"))
            })?;
        let drain = released.elapsed();
        if !status.success() {
            return Err(BenchError::failed(format!(
                "run {run}: the old agent exited with {status}"
            )));
        }
        let during = churn_report(&during)?;
        per_run.push(UpgradeRun {
            steady_rate: number(&steady, "rate"),
            steady_p99_us: number(&steady, "p99_us"),
            during_rate: number(&during, "rate"),
            during_p99_us: number(&during, "p99_us"),
            failed: count(&steady, "errors") + count(&during, "errors"),
            last_error: during["last_error"]
                .as_str()
                .or_else(|| steady["last_error"].as_str())
                .map(str::to_owned),
            handoff_ms: handoff.as_secs_f64() * 1e3,
            drain_ms: drain.as_secs_f64() * 1e3,
        });
    }
    drop(agent);
    progress(&format!("removing the test bed ({})", tb.id()));
    drop(tb);
    Ok(UpgradeReport::from_runs(load_secs, per_run))
}

/// What [`hand_off`] leaves: the old agent, draining.
pub struct HandedOff {
    /// The old agent, which stopped accepting and drains.
    pub old: Agent,
    /// From starting the successor to it having taken the pods over.
    pub took: Duration,
    /// When the old agent let go.
    pub released: Instant,
}

/// Hands `node`'s pods from `agent` to a successor of this `generation`
/// started with `config` and `args`, which replaces it in `agent`; waits
/// until the successor has taken the pods over and the old agent has let
/// go.
pub fn hand_off(
    tb: &Testbed,
    node: &Node,
    config: &str,
    generation: u16,
    args: &[&str],
    agent: &mut Agent,
) -> Result<HandedOff, BenchError> {
    let started = Instant::now();
    let next = Agent::spawn_successor_with(tb, node, config, generation, args);
    next.proc
        .wait_for_stderr_line(WAIT, |l| {
            l.contains("took the pods over from the previous agent")
        })
        .ok_or_else(|| {
            BenchError::failed(format!(
                "the handoff on {} did not complete: {}",
                node.name,
                next.proc.report()
            ))
        })?;
    let took = started.elapsed();
    let old = std::mem::replace(agent, next);
    old.proc
        .wait_for_stderr_line(WAIT, |l| l.contains("stopped accepting and drains"))
        .ok_or_else(|| {
            BenchError::failed(format!("the old agent on {} did not let go", node.name))
        })?;
    Ok(HandedOff {
        old,
        took,
        released: Instant::now(),
    })
}

/// `pod-tool crr` from `client` to the server for `secs`.
fn churn(tb: &Testbed, client: &Pod, server: &Pod, secs: u64) -> Proc {
    tb.spawn_in_pod(
        client,
        pod_tool(&[
            "crr",
            "--to",
            &format!("{}:{RR_PORT}", server.ipv4),
            "--conns",
            CHURN_CONNS,
            "--duration-secs",
            &secs.to_string(),
        ]),
    )
}

/// The `crr` report line of a finished churn.
fn churn_report(churn: &Proc) -> Result<Value, BenchError> {
    let (_, lines) = churn.output_json_lines(Duration::from_mins(2));
    lines
        .into_iter()
        .find(|l| l["event"] == "crr")
        .ok_or_else(|| BenchError::failed(format!("crr printed no report\n{}", churn.report())))
}

fn number(report: &Value, field: &str) -> f64 {
    report[field].as_f64().unwrap_or(f64::NAN)
}

fn count(report: &Value, field: &str) -> u64 {
    report[field].as_u64().unwrap_or(0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

// === impl UpgradeReport ===

impl UpgradeReport {
    fn from_runs(load_secs: u64, per_run: Vec<UpgradeRun>) -> Self {
        let of = |field: fn(&UpgradeRun) -> f64| median(per_run.iter().map(field).collect());
        let failed = per_run.iter().map(|r| r.failed).sum();
        let steady_p99_us = of(|r| r.steady_p99_us);
        let during_p99_us = of(|r| r.during_p99_us);
        Self {
            load_secs,
            runs: per_run.len(),
            failed,
            steady_p99_us,
            during_p99_us,
            p99_ratio: during_p99_us / steady_p99_us,
            steady_rate: of(|r| r.steady_rate),
            during_rate: of(|r| r.during_rate),
            handoff_ms: of(|r| r.handoff_ms),
            drain_ms: of(|r| r.drain_ms),
            target_met: failed == 0,
            per_run,
        }
    }
}

/// The Markdown section of `upgrade.md`.
#[must_use]
pub fn render(report: &UpgradeReport) -> String {
    let mut out = format!(
        "## Upgrade: a handoff under connection churn\n\n{} handoff(s) of the server's node agent, each a third of the way into {} s of `crr` (4 threads) across two nodes; medians, failures summed.\n\n",
        report.runs, report.load_secs
    );
    out.push_str("| figure | steady | across the handoff |\n| --- | ---: | ---: |\n");
    let _ = write!(
        out,
        "| connections/s | {:.0} | {:.0} |\n| p99 per connection, µs | {:.0} | {:.0} (×{:.2}) |\n",
        report.steady_rate,
        report.during_rate,
        report.steady_p99_us,
        report.during_p99_us,
        report.p99_ratio
    );
    let _ = write!(
        out,
        "\n- refused or reset connections: **{}** (target 0: {})\n- handoff (successor started → pods taken over): {:.0} ms\n- old agent's drain (released → exited): {:.0} ms\n",
        report.failed,
        if report.target_met { "met" } else { "missed" },
        report.handoff_ms,
        report.drain_ms
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p99: f64, failed: u64) -> UpgradeRun {
        UpgradeRun {
            steady_rate: 1000.0,
            steady_p99_us: 100.0,
            during_rate: 900.0,
            during_p99_us: p99,
            failed,
            last_error: None,
            handoff_ms: 50.0,
            drain_ms: 10.0,
        }
    }

    #[test]
    fn medians_and_the_failure_sum() {
        let report = UpgradeReport::from_runs(3, vec![run(300.0, 0), run(100.0, 2), run(200.0, 0)]);
        assert!((report.during_p99_us - 200.0).abs() < 1e-9);
        assert!((report.p99_ratio - 2.0).abs() < 1e-9);
        assert_eq!(report.failed, 2);
        assert!(!report.target_met);
        let text = render(&report);
        assert!(
            text.contains("refused or reset connections: **2** (target 0: missed)"),
            "{text}"
        );
    }
}
