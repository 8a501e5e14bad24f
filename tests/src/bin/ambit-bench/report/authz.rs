//! What authorization costs with 10,000 policies: evaluations per second in
//! process, and the connection latency they add through the mesh.

use serde::Serialize;

use super::median::{median, median_crr, median_rr};
use super::{CrrFigures, RrFigures, round};

/// The authorization figures, as `report.json` holds them.
#[derive(Serialize)]
pub struct AuthzReport {
    /// Policies in the set.
    pub policies: usize,
    /// Namespaces with policies of their own (the root namespace aside).
    pub namespaces: usize,
    /// Of the policies, those in the root namespace, which apply mesh-wide.
    pub mesh_wide: usize,
    /// `PolicySet::evaluate` in the bench's own process; `null` when it
    /// failed.
    pub in_process: Option<EvalFigures>,
    /// `crr` and `rr_1b` through the mesh with and without the policies in
    /// force on the server's agent.
    pub end_to_end: EndToEnd,
}

/// Evaluation in process, one thread.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct EvalFigures {
    /// Parsing the policies' YAML, ms.
    pub parse_ms: f64,
    /// `compile_all`, ms.
    pub compile_ms: f64,
    /// `PolicySet::new`: indexing them by namespace and selector, ms.
    pub index_ms: f64,
    /// Workload/request pairs evaluated in turn.
    pub cases: usize,
    /// Of those, the ones the policies allow.
    pub allowed_cases: usize,
    /// Policies that apply to a case's workload (the ones an evaluation
    /// looks at), mean over the cases.
    pub applicable_mean: f64,
    /// The most that apply to one of them.
    pub applicable_max: usize,
    /// Evaluations measured.
    pub evaluations: u64,
    /// Over how long, s.
    pub seconds: f64,
    /// Evaluations per second.
    pub evaluations_per_sec: f64,
    /// Mean time of one evaluation, ns.
    pub ns_per_evaluation: f64,
}

/// The mesh with and without the policies: medians of the runs.
#[derive(Serialize)]
pub struct EndToEnd {
    /// Where the tests run: `mesh-cross-node`'s client and server.
    pub scenario: &'static str,
    /// Policies in force on the server's agent while the tests ran with
    /// them, as its `/policies` listed them.
    pub policies_in_force: Option<usize>,
    /// Of those, the ones that apply to the server pod; `null` when the
    /// in-process part failed.
    pub server_policies: Option<usize>,
    /// The policy that allowed the client's connections.
    pub deciding_policy: String,
    /// From writing the configuration with the policies to the agent's
    /// `/policies` listing them all, ms (median of the runs that switched).
    pub apply_ms: Option<f64>,
    /// With the policies in force.
    pub with_policies: AuthzFigures,
    /// Without any policy.
    pub without_policies: AuthzFigures,
    /// `crr` p50 with the policies minus without, µs.
    pub crr_p50_added_us: Option<f64>,
    /// `crr` rate with the policies / without.
    pub crr_rate_ratio: Option<f64>,
    /// `rr_1b` p50 with the policies minus without, µs: established
    /// connections are checked once, so this stays within the noise.
    pub rr_1b_p50_added_us: Option<f64>,
    /// Each run's own figures.
    pub runs: Vec<EndToEndRun>,
}

/// The tests of one side of the comparison.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct AuthzFigures {
    /// Connect, 1-byte round trip, close.
    pub crr: Option<CrrFigures>,
    /// 1-byte round trips on one connection.
    pub rr_1b: Option<RrFigures>,
}

/// One run: both sides, measured one right after the other.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EndToEndRun {
    /// 1 for the first.
    pub run: usize,
    /// How long the policies took to be in force, when this run put them
    /// in force.
    pub apply_ms: Option<f64>,
    /// Policies `/policies` listed, when this run put them in force.
    pub policies_in_force: Option<usize>,
    /// With the policies in force.
    pub with_policies: AuthzFigures,
    /// Without any policy.
    pub without_policies: AuthzFigures,
}

// === impl EndToEnd ===

impl EndToEnd {
    /// The medians of `runs`, and the differences between them.
    pub fn new(
        server_policies: Option<usize>,
        deciding_policy: String,
        runs: Vec<EndToEndRun>,
    ) -> Self {
        let side = |get: fn(&EndToEndRun) -> AuthzFigures| AuthzFigures {
            crr: median_crr(runs.iter().filter_map(|run| get(run).crr)),
            rr_1b: median_rr(runs.iter().filter_map(|run| get(run).rr_1b)),
        };
        let with_policies = side(|run| run.with_policies);
        let without_policies = side(|run| run.without_policies);
        let crr = with_policies.crr.zip(without_policies.crr);
        let rr_1b = with_policies.rr_1b.zip(without_policies.rr_1b);
        Self {
            scenario: "mesh-cross-node",
            policies_in_force: runs.iter().filter_map(|run| run.policies_in_force).min(),
            server_policies,
            deciding_policy,
            apply_ms: median(runs.iter().filter_map(|run| run.apply_ms)).map(|ms| round(ms, 1)),
            crr_p50_added_us: crr.map(|(with, without)| round(with.p50_us - without.p50_us, 1)),
            crr_rate_ratio: crr
                .filter(|(_, without)| without.rate > 0.0)
                .map(|(with, without)| round(with.rate / without.rate, 3)),
            rr_1b_p50_added_us: rr_1b.map(|(with, without)| round(with.p50_us - without.p50_us, 1)),
            with_policies,
            without_policies,
            runs,
        }
    }
}

#[cfg(test)]
impl AuthzReport {
    /// A report as a quick run would give it, with two runs.
    pub fn example() -> Self {
        let side = |scale: f64| AuthzFigures {
            crr: Some(CrrFigures {
                rate: 1500.0 / scale,
                p50_us: 600.0 * scale,
                p99_us: 900.0 * scale,
                samples: 1000,
                errors: 0,
            }),
            rr_1b: Some(RrFigures {
                p50_us: 100.0,
                p90_us: 120.0,
                p99_us: 150.0,
                rate: 9000.0,
                samples: 6000,
            }),
        };
        let runs = (1..=2)
            .map(|run| EndToEndRun {
                run,
                apply_ms: (run == 1).then_some(420.0),
                policies_in_force: (run == 1).then_some(10_004),
                with_policies: side(1.01),
                without_policies: side(1.0),
            })
            .collect();
        Self {
            policies: 10_004,
            namespaces: 1000,
            mesh_wide: 4,
            in_process: Some(EvalFigures {
                parse_ms: 150.0,
                compile_ms: 90.0,
                index_ms: 4.5,
                cases: 256,
                allowed_cases: 90,
                applicable_mean: 6.2,
                applicable_max: 8,
                evaluations: 1_000_000,
                seconds: 0.3,
                evaluations_per_sec: 3_333_333.0,
                ns_per_evaluation: 300.0,
            }),
            end_to_end: EndToEnd::new(Some(7), "bench/allow-server-from-client".to_owned(), runs),
        }
    }
}
