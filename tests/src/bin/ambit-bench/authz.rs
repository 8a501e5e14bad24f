//! What L4 authorization costs with 10,000 policies, after the scenarios:
//!
//! - in process: the policies compiled and indexed as the agent does it,
//!   then evaluations per second over a rotating set of workloads and
//!   requests, and how many policies each evaluation looks at;
//! - end to end: `crr` and `rr_1b` through the mesh, cross-node, with the
//!   policies in force on the server's agent and without, run by run.
//!
//! It runs after every scenario so that the policies' memory stays out of
//! the agents' memory figures.

mod end_to_end;
mod evaluate;
mod policies;

use std::collections::BTreeMap;
use std::time::Duration;

use ambit_tests::{Pod, Testbed};
use mesh_core::policy::Workload;

use crate::cluster::{Cluster, RR_1B_PORT, RR_1K_PORT};
use crate::console::{finish_line, progress, start_line};
use crate::error::BenchError;
use crate::measure::{Plan, Runner};
use crate::report::{AuthzReport, EndToEnd, EvalFigures, Failure};

/// The name failures and progress lines give this part of the bench.
pub const SCENARIO: &str = "authorization";

/// How long the in-process evaluation runs.
const EVAL_TIME: Duration = Duration::from_secs(1);

/// How long it runs with `--quick`.
const EVAL_TIME_QUICK: Duration = Duration::from_millis(300);

/// Generates the policies, measures their evaluation in process, then the
/// latency they add through the mesh. A failed step is recorded in
/// `failures`; only an interruption ends it early.
pub fn measure(
    cluster: &Cluster,
    runner: &Runner<'_>,
    tb: &Testbed,
    failures: &mut Vec<Failure>,
) -> Result<AuthzReport, BenchError> {
    crate::error::check_interrupted()?;
    let pods = &cluster.pods;
    // `pods_yaml` labels each pod `app: <its name>` and names its service
    // account after it.
    let corpus = policies::generate(&policies::BenchPods {
        namespace: &pods.server.namespace,
        server_app: &pods.server.name,
        client_account: &pods.client.name,
        server_ports: &[RR_1B_PORT, RR_1K_PORT],
    });
    progress(&format!(
        "authorization: {} policies ({} namespaces × {}, {} mesh-wide); {} allows {} → {}",
        corpus.count,
        policies::NAMESPACES,
        policies::PER_NAMESPACE,
        policies::MESH_WIDE,
        corpus.server_allow,
        pods.client.name,
        pods.server.name
    ));
    let (in_process, server_policies) = in_process(&corpus, &pods.server, runner.plan(), failures);
    crate::error::check_interrupted()?;
    let setup = end_to_end::Setup {
        cluster,
        runner,
        tb,
        config: format!("{}policies:\n{}", cluster.config, corpus.yaml),
        policies: corpus.count,
        deciding_policy: &corpus.server_allow,
    };
    let runs = end_to_end::run(setup, failures)?;
    Ok(AuthzReport {
        policies: corpus.count,
        namespaces: policies::NAMESPACES,
        mesh_wide: policies::MESH_WIDE,
        in_process,
        end_to_end: EndToEnd::new(server_policies, corpus.server_allow.clone(), runs),
    })
}

/// Compiles, indexes and evaluates the policies in this process; also
/// returns how many apply to `server`. A failure is recorded and gives
/// `None`.
fn in_process(
    corpus: &policies::Corpus,
    server: &Pod,
    plan: Plan,
    failures: &mut Vec<Failure>,
) -> (Option<EvalFigures>, Option<usize>) {
    let limit = if plan.quick {
        EVAL_TIME_QUICK
    } else {
        EVAL_TIME
    };
    start_line(&format!(
        "{SCENARIO}: in process, one thread, {} s",
        limit.as_secs_f64()
    ));
    let measured = evaluate::compile(corpus).and_then(|compiled| {
        let cases = evaluate::cases(&corpus.tenants)?;
        let figures = evaluate::measure(&compiled, &cases, limit);
        let labels = BTreeMap::from([("app".to_owned(), server.name.clone())]);
        let workload = Workload {
            namespace: &server.namespace,
            labels: &labels,
        };
        Ok((figures, compiled.set.applicable(workload).count()))
    });
    match measured {
        Ok((figures, server_policies)) => {
            finish_line(&format!(
                "{:.0} evaluations/s, {:.0} ns each, {:.1} policies applicable on average; compiled in {:.0} ms, indexed in {:.1} ms",
                figures.evaluations_per_sec,
                figures.ns_per_evaluation,
                figures.applicable_mean,
                figures.parse_ms + figures.compile_ms,
                figures.index_ms
            ));
            (Some(figures), Some(server_policies))
        }
        Err(error) => {
            finish_line("FAILED");
            progress(&format!("{SCENARIO}: in_process failed: {error}"));
            eprintln!("ambit-bench: {SCENARIO}: in_process failed: {error}");
            failures.push(Failure {
                run: None,
                scenario: SCENARIO,
                test: "in_process",
                error,
            });
            (None, None)
        }
    }
}

#[cfg(test)]
mod tests;
