//! The connection latency the policies add: `crr` and `rr_1b` from the
//! meshed client to the meshed cross-node server, with the policies in force
//! on the server's agent (which checks every connection to the server) and
//! without any, one right after the other in each run.
//!
//! Each switch rewrites the agent's configuration file (the same pods, with
//! or without the policies) and waits until its `/policies` lists them all,
//! or none. The side measured first alternates from run to run, so neither
//! always follows a switch.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit_tests::Testbed;
use ambit_tests::mesh::Agent;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::SCENARIO;
use crate::cluster::{Cluster, RR_1B_PORT};
use crate::console::{finish_line, start_line};
use crate::error::BenchError;
use crate::measure::{Runner, wait_for};
use crate::report::{AuthzFigures, CrrFigures, EndToEndRun, Failure, round};
use crate::scenario::{RunNumber, crr_summary, record_failure, rr_summary};

/// How long the agent may take to put a new configuration in force.
const APPLY_TIMEOUT: Duration = Duration::from_mins(1);

/// The server agent's configuration with the policies, and what to check.
pub struct Setup<'a> {
    /// The cluster.
    pub cluster: &'a Cluster,
    /// Runs the tests.
    pub runner: &'a Runner<'a>,
    /// The test bed, for the admin API.
    pub tb: &'a Testbed,
    /// The configuration text: the same pods, and the policies.
    pub config: String,
    /// How many policies it holds.
    pub policies: usize,
    /// The policy that must allow the client's connections (namespace/name).
    pub deciding_policy: &'a str,
}

/// The comparison under way.
struct Phase<'a> {
    setup: Setup<'a>,
    /// Whether the policies are in force now; `None` after a switch that
    /// failed, which may still happen.
    in_force: Option<bool>,
}

/// A switch that happened: how long it took and what `/policies` listed.
struct Switched {
    ms: f64,
    listed: usize,
}

/// Runs the comparison [`Plan::runs`](crate::measure::Plan) times and
/// leaves the agent as it found it. A failed step is recorded in
/// `failures`; only an interruption ends it early.
pub fn run(setup: Setup<'_>, failures: &mut Vec<Failure>) -> Result<Vec<EndToEndRun>, BenchError> {
    let of = setup.runner.plan().runs;
    let mut phase = Phase {
        setup,
        in_force: Some(false),
    };
    let mut runs = Vec::with_capacity(of);
    for run in 1..=of {
        let number = RunNumber { run, of };
        let mut result = EndToEndRun {
            run,
            ..EndToEndRun::default()
        };
        let order = if run % 2 == 1 {
            [true, false]
        } else {
            [false, true]
        };
        for with in order {
            let (test, what) = if with {
                ("apply", "putting the policies in force")
            } else {
                ("restore", "taking the policies out")
            };
            let Some(switched) = step((number, what), test, failures, || phase.switch(with))?
            else {
                continue;
            };
            if let Some(switched) = switched
                && with
            {
                result.apply_ms = Some(switched.ms);
                result.policies_in_force = Some(switched.listed);
            }
            let figures = phase.measure(number, with, failures)?;
            if with {
                result.with_policies = figures;
            } else {
                result.without_policies = figures;
            }
        }
        runs.push(result);
    }
    if phase.in_force != Some(false) {
        let number = RunNumber { run: of, of };
        let what = "taking the policies out";
        step((number, what), "restore", failures, || phase.switch(false))?;
    }
    Ok(runs)
}

/// Runs one step with a progress line; a failure is recorded and gives
/// `None`.
fn step<T>(
    (number, what): (RunNumber, &str),
    test: &'static str,
    failures: &mut Vec<Failure>,
    body: impl FnOnce() -> Result<(T, String), BenchError>,
) -> Result<Option<T>, BenchError> {
    crate::error::check_interrupted()?;
    start_line(&format!(
        "[{}/{}] {SCENARIO}: {what}",
        number.run, number.of
    ));
    match body() {
        Ok((value, summary)) => {
            finish_line(&summary);
            Ok(Some(value))
        }
        Err(BenchError::Failed(error)) => {
            finish_line("FAILED");
            record_failure(failures, number, SCENARIO, test, error);
            Ok(None)
        }
        Err(other) => {
            finish_line("interrupted");
            Err(other)
        }
    }
}

// === impl Phase ===

impl Phase<'_> {
    /// Puts the policies in force (`with`) or takes them all out, unless
    /// that is known to be so already (`None`).
    fn switch(&mut self, with: bool) -> Result<(Option<Switched>, String), BenchError> {
        if self.in_force == Some(with) {
            let already = if with {
                "already in force"
            } else {
                "none in force"
            };
            return Ok((None, already.to_owned()));
        }
        let setup = &self.setup;
        let agent = &setup.cluster.server_agent;
        let expected = if with { setup.policies } else { 0 };
        let started = Instant::now();
        if with {
            agent.set_config_text(&setup.config);
        } else {
            agent.set_config_text(&setup.cluster.config);
        }
        self.in_force = None;
        let mut last = None;
        let listed = wait_for(APPLY_TIMEOUT, || {
            last = listed_policies(setup.tb, agent);
            Ok(last.filter(|&count| count == expected))
        })?;
        let Some(listed) = listed else {
            return Err(BenchError::failed(format!(
                "the agent on {} did not list {expected} policies within {APPLY_TIMEOUT:?} (last: {})",
                agent.node.name,
                last.map_or_else(|| "no answer".to_owned(), |n| n.to_string())
            )));
        };
        let ms = round(started.elapsed().as_secs_f64() * 1e3, 1);
        self.in_force = Some(with);
        let summary = format!(
            "{listed} policies in force on {} after {ms:.0} ms",
            agent.node.name
        );
        Ok((Some(Switched { ms, listed }), summary))
    }

    /// `crr` then `rr_1b`, client to server; with the policies, checks that
    /// every connection was allowed, and by the expected policy.
    fn measure(
        &self,
        number: RunNumber,
        with: bool,
        failures: &mut Vec<Failure>,
    ) -> Result<AuthzFigures, BenchError> {
        let setup = &self.setup;
        let pods = &setup.cluster.pods;
        let to = SocketAddr::from((pods.server.ipv4, RR_1B_PORT));
        let (crr_test, rr_test, side) = if with {
            (
                "crr_with_policies",
                "rr_1b_with_policies",
                "with the policies",
            )
        } else {
            (
                "crr_without_policies",
                "rr_1b_without_policies",
                "without policies",
            )
        };
        let crr = step(
            (number, &format!("crr, {side}")),
            crr_test,
            failures,
            || {
                let figures = setup.runner.crr(&pods.client, to)?;
                if with {
                    self.check_allowed(&figures)?;
                }
                Ok((figures, crr_summary(&figures)))
            },
        )?;
        let rr_1b = step(
            (number, &format!("rr_1b, {side}")),
            rr_test,
            failures,
            || {
                let figures = setup.runner.rr(&pods.client, to, 1, 1, false)?.figures;
                Ok((figures, rr_summary(&figures)))
            },
        )?;
        Ok(AuthzFigures { crr, rr_1b })
    }

    /// Every connection completed, and the last one the server's agent
    /// closed was allowed by the expected policy.
    fn check_allowed(&self, figures: &CrrFigures) -> Result<(), BenchError> {
        let setup = &self.setup;
        if figures.errors > 0 {
            return Err(BenchError::failed(format!(
                "{} connections failed with the policies in force: the figures are not those of allowed connections",
                figures.errors
            )));
        }
        let agent = &setup.cluster.server_agent;
        let server = &setup.cluster.pods.server;
        let pod = format!("{}/{}", server.namespace, server.name);
        let connections: Option<Value> = agent
            .get(setup.tb, "/connections")
            .and_then(|body| serde_json::from_str(&body).ok());
        let decided_by = connections
            .as_ref()
            .and_then(Value::as_array)
            .and_then(|records| records.iter().rev().find(|r| r["pod"] == pod.as_str()))
            .and_then(|record| record["authorization"]["policy"].as_str());
        match decided_by {
            Some(policy) if policy == setup.deciding_policy => Ok(()),
            Some(policy) => Err(BenchError::failed(format!(
                "the last connection to {pod} was decided by {policy:?}, not {}: the policies did not select the server as meant",
                setup.deciding_policy
            ))),
            None => Err(BenchError::failed(format!(
                "the agent on {} lists no connection to {pod} with a verdict in /connections",
                agent.node.name
            ))),
        }
    }
}

/// How many policies the agent's `/policies` lists; `None` when it does not
/// answer with a list.
fn listed_policies(tb: &Testbed, agent: &Agent) -> Option<usize> {
    let body = agent.get(tb, "/policies")?;
    serde_json::from_str::<Vec<IgnoredAny>>(&body)
        .ok()
        .map(|policies| policies.len())
}
