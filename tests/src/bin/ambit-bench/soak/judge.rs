//! The soak's two verdicts, pure functions of what it recorded, so they
//! are unit-tested on made-up data:
//!
//! - **Growth.** A series (one figure of one process, sampled once a
//!   minute) fails when it grows without bound: the least-squares slope
//!   over the second half of the run, extrapolated over the whole run,
//!   exceeds both [`RELATIVE_TOLERANCE`] of the series' median and the
//!   series' absolute floor. A node's agent is replaced at every handoff,
//!   so its series restart; the slope is the pooled slope within
//!   processes (each process's samples about their own mean), so neither
//!   the drop at a handoff nor the successor's level counts as growth,
//!   while growth inside each process does. A process's samples taken
//!   less than [`WARM_UP_SECS`] after it started are left out.
//! - **Failures.** A client's failed operation is explained when a change
//!   the soak made could cause it: a DENY policy on that client and
//!   target in force (from [`GRACE_MS`] before it was written to
//!   [`GRACE_MS`] after it was removed), or the client or the target
//!   enrolled or un-enrolled within [`GRACE_MS`]. Anything else is
//!   unexplained, failures during a handoff included: a handoff promises
//!   that no connection fails. An agent's own connect that timed out
//!   ([`connect_timeouts`]) counts against the soak whether or not a
//!   client's failure shows it.

use serde::Serialize;

/// Growth beyond this share of a series' median (and beyond its floor)
/// over the whole run fails it.
pub const RELATIVE_TOLERANCE: f64 = 0.10;

/// A process's samples this young are its warm-up, not its trend: an
/// agent's RSS rises for its first two minutes or so as it takes its share
/// of the traffic (pools, buffers, the allocator's arenas), by 1.5 to 2 MiB.
pub const WARM_UP_SECS: f64 = 150.0;

/// How far before and after a change its excuse reaches: the agents and
/// the waypoint read their configuration every 100 to 200 ms, and a
/// client notices a cut connection at its next exchange.
pub const GRACE_MS: u64 = 2_000;

/// The lines of an agent's log that report one of its connects timing out
/// (`connecting to <addr> timed out`).
pub fn connect_timeouts(log: &str) -> impl Iterator<Item = &str> {
    log.lines()
        .filter(|line| line.contains("connecting to ") && line.contains(" timed out"))
}

/// One sample of a series.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the soak started.
    pub t_secs: f64,
    /// The value.
    pub value: f64,
    /// Which process it was read from (a node's agents are numbered by
    /// generation); 0 for state that outlives processes (eBPF maps).
    pub process: u32,
    /// How long that process had been running, seconds.
    pub age_secs: f64,
}

/// What the growth test found for one series.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Growth {
    /// First and last values.
    pub start: f64,
    /// The last value.
    pub end: f64,
    /// Median of every sample.
    pub median: f64,
    /// Pooled within-process slope over the second half, per minute;
    /// `None` when fewer than 3 samples (2 from one process) could be used.
    pub slope_per_min: Option<f64>,
    /// The slope extrapolated over the whole run.
    pub projected: Option<f64>,
    /// What the projection may reach: the larger of the relative
    /// tolerance times the median and the floor.
    pub allowed: f64,
    /// Samples the slope used.
    pub samples_used: usize,
    /// The projection exceeds what is allowed.
    pub grows: bool,
}

/// A change that may explain failures while it lasts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Excuse {
    /// What it was, for the failure log (`DENY cli-1 -> srv-6`,
    /// `un-enrolled flip-3`).
    pub what: String,
    /// The pods it affects: a failure from `clients` to `targets`.
    pub pods: ExcusedPods,
    /// When it began, ms since the epoch.
    pub from_ms: u64,
    /// When it ended (`u64::MAX` while it lasts).
    pub to_ms: u64,
}

/// Whose failures an [`Excuse`] explains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExcusedPods {
    /// A policy on this client and this target.
    Pair {
        /// The client pod.
        client: String,
        /// The target pod.
        target: String,
    },
    /// Any failure to or from this pod.
    Pod {
        /// The pod.
        pod: String,
    },
}

/// A failed operation as the judge sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureAt<'a> {
    /// The client pod.
    pub client: &'a str,
    /// The target pod (for a Service, the name its traffic is judged by).
    pub target: &'a str,
    /// When the operation started, ms since the epoch.
    pub started_ms: u64,
    /// When it failed.
    pub at_ms: u64,
}

/// Judges one series of a run of `run_secs`.
#[must_use]
pub fn growth(points: &[Point], run_secs: f64, floor: f64) -> Growth {
    let values: Vec<f64> = points.iter().map(|p| p.value).collect();
    let median = median(&values);
    let allowed = (RELATIVE_TOLERANCE * median.abs()).max(floor);
    let used: Vec<&Point> = points
        .iter()
        .filter(|p| p.t_secs >= run_secs / 2.0 && p.age_secs >= WARM_UP_SECS)
        .collect();
    let slope = pooled_slope(&used);
    let projected = slope.map(|slope| slope * run_secs);
    Growth {
        start: values.first().copied().unwrap_or(f64::NAN),
        end: values.last().copied().unwrap_or(f64::NAN),
        median,
        slope_per_min: slope.map(|slope| slope * 60.0),
        projected,
        allowed,
        samples_used: used.len(),
        grows: projected.is_some_and(|projected| projected > allowed),
    }
}

/// The least-squares slope per second with one intercept per process:
/// `Σ (t − t̄ₚ)(y − ȳₚ) / Σ (t − t̄ₚ)²` over the processes' samples.
/// `None` below 3 samples or without two from one process.
fn pooled_slope(points: &[&Point]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let mut processes: Vec<u32> = points.iter().map(|p| p.process).collect();
    processes.sort_unstable();
    processes.dedup();
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for process in processes {
        let own: Vec<&&Point> = points.iter().filter(|p| p.process == process).collect();
        #[expect(
            clippy::cast_precision_loss,
            reason = "a handful of samples per process"
        )]
        let n = own.len() as f64;
        let mean_t = own.iter().map(|p| p.t_secs).sum::<f64>() / n;
        let mean_y = own.iter().map(|p| p.value).sum::<f64>() / n;
        for p in own {
            sxy += (p.t_secs - mean_t) * (p.value - mean_y);
            sxx += (p.t_secs - mean_t).powi(2);
        }
    }
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The median; NaN for none.
#[must_use]
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]),
    }
}

/// The first excuse that covers `failure`, if any.
#[must_use]
pub fn explain<'e>(failure: &FailureAt<'_>, excuses: &'e [Excuse]) -> Option<&'e Excuse> {
    excuses.iter().find(|excuse| {
        let covers = match &excuse.pods {
            ExcusedPods::Pair { client, target } => {
                client == failure.client && target == failure.target
            }
            ExcusedPods::Pod { pod } => pod == failure.client || pod == failure.target,
        };
        // The operation overlaps the excuse widened by the grace on both
        // sides.
        covers
            && failure.at_ms.saturating_add(GRACE_MS) >= excuse.from_ms
            && failure.started_ms <= excuse.to_ms.saturating_add(GRACE_MS)
    })
}

#[cfg(test)]
mod tests;
