//! Evaluation throughput in the bench's own process: the generated policies
//! compiled and indexed as the agent does it, then `PolicySet::evaluate` on
//! one thread over a rotating set of workloads and requests, for a bounded
//! time.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use mesh_core::identity::{DEFAULT_TRUST_DOMAIN, SpiffeId};
use mesh_core::policy::{
    DEFAULT_ROOT_NAMESPACE, Decision, PolicySet, Request, Workload, compile_all,
};

use super::policies::{
    BANNED_ACCOUNT, Corpus, DB_PORT, GATEWAY_PORT, METRICS_PORT, MONITORING_NAMESPACE, Tenant,
};
use crate::report::{EvalFigures, round};

/// Workload/request pairs evaluated in turn.
const CASES: usize = 256;

/// Step between the namespaces of consecutive cases: prime to the number of
/// namespaces, so that the cases spread over them.
const NAMESPACE_STRIDE: usize = 389;

/// Kinds of request, in turn: the service's client, the monitoring
/// system, another namespace's client, plaintext from the blocked range, an
/// ingress gateway, a banned account.
const REQUEST_KINDS: usize = 6;

/// Most evaluations one measurement makes, whatever the time limit.
const MAX_EVALUATIONS: u64 = 200_000_000;

/// The policies, compiled and indexed.
pub struct Compiled {
    /// Indexed by namespace and selector.
    pub set: PolicySet,
    parse: Duration,
    compile: Duration,
    index: Duration,
}

/// A workload and a connection to it.
pub struct Case {
    namespace: String,
    labels: BTreeMap<String, String>,
    request: Request,
}

/// Parses, compiles and indexes `corpus`, timing each step; fails when a
/// generated policy is not accepted as written (a bug in the generator).
pub fn compile(corpus: &Corpus) -> Result<Compiled, String> {
    let started = Instant::now();
    let values: Vec<serde_yaml::Value> = serde_yaml::from_str(&corpus.yaml)
        .map_err(|error| format!("the generated policies are not valid YAML: {error}"))?;
    let parse = started.elapsed();
    let started = Instant::now();
    let policies = compile_all(&values);
    let compile = started.elapsed();
    if let Some(policy) = policies
        .iter()
        .find(|policy| policy.rejected.is_some() || !policy.waypoint_fields.is_empty())
    {
        return Err(format!(
            "generated policy {} is not in force as written: {}",
            policy.key,
            policy.status()
        ));
    }
    if policies.len() != corpus.count {
        return Err(format!(
            "{} policies were generated, {} compiled",
            corpus.count,
            policies.len()
        ));
    }
    let started = Instant::now();
    let set = PolicySet::new(policies, DEFAULT_ROOT_NAMESPACE);
    let index = started.elapsed();
    Ok(Compiled {
        set,
        parse,
        compile,
        index,
    })
}

/// The rotating set: [`CASES`] workloads of every role spread over the
/// namespaces, each with a request of one of [`REQUEST_KINDS`] kinds.
pub fn cases(tenants: &[Tenant]) -> Result<Vec<Case>, String> {
    (0..CASES).map(|k| case(k, tenants)).collect()
}

fn case(k: usize, tenants: &[Tenant]) -> Result<Case, String> {
    let tenant = &tenants[(k * NAMESPACE_STRIDE) % tenants.len()];
    let other = &tenants[(k * NAMESPACE_STRIDE + 1) % tenants.len()];
    let role = k % tenant.apps.len();
    let labels = [
        ("app", tenant.apps[role].clone()),
        (
            "version",
            if k.is_multiple_of(2) { "v2" } else { "v1" }.to_owned(),
        ),
        ("pod-template-hash", format!("{:x}", 0x5f3b_9c00 + k)),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect();
    let [high, low] = u16::try_from(k).unwrap_or(u16::MAX).to_be_bytes();
    let pod_ip = IpAddr::V4(Ipv4Addr::new(10, 20, high, low));
    let service_port = tenant.service_ports.first().copied().unwrap_or(80);
    let (peer, source_ip, port) = match (k / tenant.apps.len()) % REQUEST_KINDS {
        0 => (
            Some((&*tenant.namespace, &*tenant.apps[1])),
            pod_ip,
            service_port,
        ),
        1 => (
            Some((MONITORING_NAMESPACE, "prometheus")),
            pod_ip,
            METRICS_PORT,
        ),
        2 => (Some((&*other.namespace, &*other.apps[1])), pod_ip, DB_PORT),
        3 => (None, IpAddr::V4(tenant.blocked_address(7)), service_port),
        4 => (Some(("ingress-public", "gateway")), pod_ip, GATEWAY_PORT),
        _ => (
            Some((&*tenant.namespace, BANNED_ACCOUNT)),
            pod_ip,
            service_port,
        ),
    };
    let peer = peer
        .map(|(namespace, account)| SpiffeId::new(DEFAULT_TRUST_DOMAIN, namespace, account))
        .transpose()
        .map_err(|error| format!("a generated identity is invalid: {error}"))?;
    Ok(Case {
        namespace: tenant.namespace.clone(),
        labels,
        request: Request::new(peer.as_ref(), source_ip, port),
    })
}

/// Evaluates `cases` in turn for about `limit` (at most
/// [`MAX_EVALUATIONS`]), after one untimed pass that also counts what
/// applies to each.
#[expect(
    clippy::cast_precision_loss,
    reason = "counts far below 2^52, turned into rates"
)]
pub fn measure(compiled: &Compiled, cases: &[Case], limit: Duration) -> EvalFigures {
    let set = &compiled.set;
    let mut allowed_cases = 0;
    let mut applicable = Vec::with_capacity(cases.len());
    for case in cases {
        if set.evaluate(case.workload(), &case.request).decision == Decision::Allow {
            allowed_cases += 1;
        }
        applicable.push(set.applicable(case.workload()).count());
    }
    let batch = u64::try_from(cases.len()).unwrap_or(u64::MAX);
    let mut evaluations = 0;
    let started = Instant::now();
    while evaluations < MAX_EVALUATIONS {
        for case in cases {
            black_box(set.evaluate(black_box(case.workload()), black_box(&case.request)));
        }
        evaluations += batch;
        if started.elapsed() >= limit {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let ms = |elapsed: Duration| round(elapsed.as_secs_f64() * 1e3, 2);
    EvalFigures {
        parse_ms: ms(compiled.parse),
        compile_ms: ms(compiled.compile),
        index_ms: ms(compiled.index),
        cases: cases.len(),
        allowed_cases,
        applicable_mean: round(
            applicable.iter().sum::<usize>() as f64 / applicable.len().max(1) as f64,
            2,
        ),
        applicable_max: applicable.iter().copied().max().unwrap_or(0),
        evaluations,
        seconds: round(seconds, 3),
        evaluations_per_sec: round(evaluations as f64 / seconds, 0),
        ns_per_evaluation: round(seconds * 1e9 / evaluations as f64, 1),
    }
}

// === impl Case ===

impl Case {
    fn workload(&self) -> Workload<'_> {
        Workload {
            namespace: &self.namespace,
            labels: &self.labels,
        }
    }
}
