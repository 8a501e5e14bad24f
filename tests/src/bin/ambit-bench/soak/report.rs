//! `soak.json` and `soak.md`: what the soak ran, every series with its
//! growth verdict, every failure with its excuse or none, the handoffs,
//! rotations and bad objects, and the verdict with its reasons.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::churn::{Change, ChurnCounts};
use super::judge::{self, Excuse, ExcusedPods, FailureAt, Growth, Point};
use super::traffic::Reported;

/// The plot of the processes' series.
pub const PROCESS_PLOT: &str = "soak-processes.png";
/// The plot of the maps' series.
pub const MAP_PLOT: &str = "soak-maps.png";
/// At most this many unexplained failures are listed in `soak.md`
/// (`soak.json` has them all).
const LISTED: usize = 40;

/// What the soak found.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    /// The planned length, minutes.
    pub minutes: u32,
    /// Seconds between samples.
    pub sample_secs: u64,
    /// Pods on the test bed.
    pub pods: usize,
    /// How long the churn ran, seconds.
    pub run_secs: f64,
    /// Every series, with its verdict.
    pub series: Vec<SeriesReport>,
    /// Each client's operations.
    pub traffic: Vec<TrafficReport>,
    /// Failures by kind: `explained: ...` and `unexplained: ...`.
    pub failure_counts: BTreeMap<String, u64>,
    /// Every failure.
    pub failures: Vec<FailureRecord>,
    /// Every handoff.
    pub handoffs: Vec<HandoffRecord>,
    /// Certificate rotations seen.
    pub rotations: RotationReport,
    /// The churn's changes, by kind.
    pub churn: ChurnCounts,
    /// The bad objects' statuses, as last seen.
    pub bad_objects: BadObjects,
    /// Problems other than failures and growth: a bad object accepted, a
    /// good object or pod disturbed, an expired certificate.
    pub problems: Vec<String>,
    /// Processes that ended when they should not have.
    pub crashes: Vec<String>,
    /// Why the soak stopped early, if it did.
    pub aborted: Option<String>,
    /// Every change the soak made, in order.
    pub changes: Vec<Change>,
    /// Whether it passed, and if not why.
    pub verdict: Verdict,
}

/// A series and its verdict.
#[derive(Debug, Serialize)]
pub struct SeriesReport {
    /// `<process>: <figure>`, e.g. `n1 agent: RSS, MiB`.
    pub name: String,
    /// What it may grow by over the run whatever its median.
    pub floor: f64,
    /// The samples.
    pub points: Vec<Point>,
    /// The verdict.
    pub growth: Growth,
}

/// One `pod-tool load` process's operations.
#[derive(Debug, Serialize)]
pub struct TrafficReport {
    /// The client pod.
    pub client: String,
    /// `crr`, `rr`, `stream` or `http`.
    pub mode: String,
    /// Operations that succeeded.
    pub ok: u64,
    /// Operations that failed.
    pub failed: u64,
}

/// One failed operation.
#[derive(Clone, Debug, Serialize)]
pub struct FailureRecord {
    /// The client pod.
    pub client: String,
    /// The target pod, or `backend` (the Service through the waypoint).
    pub target: String,
    /// `crr`, `rr`, `stream` or `http`.
    pub mode: String,
    /// `connect`, `exchange`, `status` or `close`.
    pub phase: String,
    /// `refused`, `reset`, `eof`, `timeout`, `status`, `corrupt`, `other`.
    pub kind: String,
    /// The error.
    pub error: String,
    /// When the operation started, seconds into the soak.
    pub started_secs: f64,
    /// When it failed, seconds into the soak.
    pub at_secs: f64,
    /// The change that explains it; `None`: unexplained.
    pub explained_by: Option<String>,
    /// For an unexplained failure, the soak's changes within 5 s of it.
    pub nearby: Vec<String>,
}

/// One handoff.
#[derive(Clone, Debug, Serialize)]
pub struct HandoffRecord {
    /// The node.
    pub node: String,
    /// The successor's generation.
    pub generation: u16,
    /// When it started, seconds into the soak.
    pub at_secs: f64,
    /// Successor started → pods taken over, ms.
    pub takeover_ms: f64,
    /// Old agent released → exited, seconds; `None` while draining.
    pub drained_secs: Option<f64>,
    /// How the old agent ended.
    pub exit: Option<String>,
    /// The connections the old agent still carried when the clients
    /// stopped, if it had not exited by then.
    pub open_at_end: Option<usize>,
}

/// Certificate rotations.
#[derive(Debug, Default, Serialize)]
pub struct RotationReport {
    /// The lifetime the agents and the waypoint issued, seconds.
    pub lifetime_secs: u64,
    /// Workload certificates the agents rotated.
    pub agents: u64,
    /// Times the waypoint renewed its own.
    pub waypoint: u64,
}

/// The bad objects' statuses.
#[derive(Debug, Default, Serialize)]
pub struct BadObjects {
    /// Samples that checked them.
    pub checks: u64,
    /// The invalid policy's status.
    pub policy: Option<String>,
    /// The bad route's rejection.
    pub route: Option<String>,
    /// The typo pod's kernel path.
    pub label: Option<String>,
}

/// Pass or fail.
#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    /// Nothing below happened.
    pub pass: bool,
    /// Each reason it failed.
    pub reasons: Vec<String>,
}

// === impl SoakReport ===

impl SoakReport {
    /// Fills in the failure counts and the verdict from the rest.
    pub fn conclude(&mut self) {
        self.failure_counts.clear();
        for failure in &self.failures {
            let key = match &failure.explained_by {
                Some(excuse) => format!("explained: {}", excuse_kind(excuse)),
                None => format!(
                    "unexplained: {} {} {}",
                    failure.mode, failure.phase, failure.kind
                ),
            };
            *self.failure_counts.entry(key).or_default() += 1;
        }
        let mut reasons = Vec::new();
        if let Some(aborted) = &self.aborted {
            reasons.push(format!("stopped early: {aborted}"));
        }
        for series in self.series.iter().filter(|s| s.growth.grows) {
            reasons.push(format!(
                "{} grows: {:+.1} over the run at the second half's slope, more than {:.1} allowed",
                series.name,
                series.growth.projected.unwrap_or(f64::NAN),
                series.growth.allowed
            ));
        }
        let unexplained: Vec<&FailureRecord> = self.unexplained().collect();
        if let Some(first) = unexplained.first() {
            reasons.push(format!(
                "{} unexplained failure(s), the first {} → {} ({} {}: {}) at {:.1} s",
                unexplained.len(),
                first.client,
                first.target,
                first.mode,
                first.phase,
                first.error,
                first.at_secs
            ));
        }
        reasons.extend(self.crashes.iter().map(|crash| format!("crash: {crash}")));
        reasons.extend(self.problems.iter().cloned());
        self.verdict = Verdict {
            pass: reasons.is_empty(),
            reasons,
        };
    }

    /// The failures nothing explains.
    pub fn unexplained(&self) -> impl Iterator<Item = &FailureRecord> {
        self.failures.iter().filter(|f| f.explained_by.is_none())
    }
}

/// Every failure reported, with its excuse (judged once every excuse is
/// known) and, for those without, the changes within 5 s of it; times in
/// seconds from `started_ms`.
#[expect(
    clippy::cast_precision_loss,
    reason = "milliseconds since the epoch are below 2^52"
)]
#[must_use]
pub fn failure_records(
    reported: &[Reported],
    excuses: &[Excuse],
    changes: &[Change],
    started_ms: u64,
) -> Vec<FailureRecord> {
    let secs = |ms: u64| ms.saturating_sub(started_ms) as f64 / 1e3;
    reported
        .iter()
        .map(|reported| {
            let line = &reported.line;
            let started_ms = line["started_ms"].as_u64().unwrap_or(0);
            let at_ms = line["at_ms"].as_u64().unwrap_or(0);
            let failure = FailureAt {
                client: &reported.client,
                target: &reported.target,
                started_ms,
                at_ms,
            };
            let excuse = judge::explain(&failure, excuses);
            let nearby = if excuse.is_some() {
                Vec::new()
            } else {
                changes
                    .iter()
                    .filter(|c| c.at_ms.abs_diff(at_ms) <= 5_000)
                    .map(|c| {
                        let offset = (c.at_ms as f64 - at_ms as f64) / 1e3;
                        format!("{} ({offset:+.1} s)", c.what)
                    })
                    .collect()
            };
            let text = |field: &str| line[field].as_str().unwrap_or_default().to_owned();
            FailureRecord {
                client: reported.client.clone(),
                target: reported.target.clone(),
                mode: text("mode"),
                phase: text("phase"),
                kind: text("kind"),
                error: text("error"),
                started_secs: secs(started_ms),
                at_secs: secs(at_ms),
                explained_by: excuse.map(|e| e.what.clone()),
                nearby,
            }
        })
        .collect()
}

/// The DENY policies, in force and removed again during the soak, that
/// explain no failure of their pair's long-lived connection (`rr` or
/// `stream`): each must cut the one open when it came (or refuse the next
/// one), so one that did not was not enforced.
#[expect(
    clippy::cast_precision_loss,
    reason = "milliseconds since the epoch are below 2^52"
)]
#[must_use]
pub fn uncut_denies(
    excuses: &[Excuse],
    failures: &[FailureRecord],
    started_ms: u64,
) -> Vec<String> {
    let secs = |ms: u64| ms.saturating_sub(started_ms) as f64 / 1e3;
    let grace = judge::GRACE_MS as f64 / 1e3;
    excuses
        .iter()
        .filter(|e| matches!(e.pods, ExcusedPods::Pair { .. }) && e.to_ms != u64::MAX)
        .filter(|e| {
            let (from, to) = (secs(e.from_ms) - grace, secs(e.to_ms) + grace);
            !failures.iter().any(|f| {
                f.explained_by.as_deref() == Some(e.what.as_str())
                    && matches!(f.mode.as_str(), "rr" | "stream")
                    && (from..=to).contains(&f.at_secs)
            })
        })
        .map(|e| {
            format!(
                "{} (in force {:.1} to {:.1} s) cut or refused none of the pair's long-lived connections",
                e.what,
                secs(e.from_ms),
                secs(e.to_ms)
            )
        })
        .collect()
}

/// An excuse's kind, for the counts: `DENY` or the enrolment change.
fn excuse_kind(excuse: &str) -> &str {
    excuse.split(' ').next().unwrap_or(excuse)
}

/// The Markdown of `soak.md`.
#[must_use]
pub fn render(report: &SoakReport) -> String {
    let mut out = format!(
        "## Churn soak: {} minutes, {} pods on two nodes\n\n**{}**{}\n\n",
        report.minutes,
        report.pods,
        if report.verdict.pass { "PASS" } else { "FAIL" },
        if report.verdict.pass {
            String::new()
        } else {
            format!(": {}", report.verdict.reasons.join("; "))
        }
    );
    let ops: u64 = report.traffic.iter().map(|t| t.ok).sum();
    let failed: u64 = report.traffic.iter().map(|t| t.failed).sum();
    let churn = &report.churn;
    let _ = write!(
        out,
        "{:.0} s of churn, sampled every {} s. Operations: {ops} succeeded, {failed} failed. \
         Churn: {} un-enrolments and {} enrolments, {} DENY and {} ALLOW policies added and removed, \
         {} route changes, {} configuration writes. Handoffs: {}. Certificates ({} s lifetime) rotated: \
         {} by the agents, {} by the waypoint. The agents drop a metric series {} s after it \
         stopped changing.\n\n",
        report.run_secs,
        report.sample_secs,
        churn.unenrolled,
        churn.enrolled,
        churn.denies,
        churn.allows,
        churn.route_changes,
        churn.config_writes,
        report.handoffs.len(),
        report.rotations.lifetime_secs,
        report.rotations.agents,
        report.rotations.waypoint,
        super::METRICS_RETAIN_IDLE_SECS
    );
    render_series(&mut out, report);
    render_failures(&mut out, report);
    out.push_str("### Bad objects\n\n| object | status |\n| --- | --- |\n");
    let bad = &report.bad_objects;
    for (object, status) in [
        ("policy `bad-cidr` (invalid CIDR)", &bad.policy),
        ("route `bad-regex` (bad regular expression)", &bad.route),
        (
            "label `ambit.dev/kernel-path: enabeld` on `typo-1`",
            &bad.label,
        ),
    ] {
        let _ = writeln!(
            out,
            "| {object} | {} |",
            status.as_deref().unwrap_or("**not rejected**")
        );
    }
    let _ = writeln!(out, "\nChecked in {} samples.\n", bad.checks);
    out.push_str(
        "### Handoffs\n\n| node | generation | at, s | takeover, ms | old agent drained after, s | its exit | it carried when the clients stopped |\n\
         | --- | ---: | ---: | ---: | ---: | --- | ---: |\n",
    );
    for handoff in &report.handoffs {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {} | {} | {} |",
            handoff.node,
            handoff.generation,
            handoff.at_secs,
            handoff.takeover_ms,
            handoff
                .drained_secs
                .map_or_else(|| "still draining".to_owned(), |s| format!("{s:.0}")),
            handoff.exit.as_deref().unwrap_or("-"),
            handoff
                .open_at_end
                .map_or_else(|| "-".to_owned(), |open| format!("{open} connections"))
        );
    }
    for (title, list) in [("Problems", &report.problems), ("Crashes", &report.crashes)] {
        if !list.is_empty() {
            let _ = writeln!(out, "\n### {title}\n");
            for item in list {
                let _ = writeln!(out, "- {item}");
            }
        }
    }
    let _ = writeln!(out, "\n![processes]({PROCESS_PLOT})\n\n![maps]({MAP_PLOT})");
    out
}

fn render_series(out: &mut String, report: &SoakReport) {
    out.push_str(
        "### Series\n\n| series | start | end | median | slope /min (2nd half) | over the run | allowed | verdict |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for series in &report.series {
        let g = &series.growth;
        let verdict = match (g.grows, g.slope_per_min) {
            (true, _) => "**grows**",
            (false, None) => "too few samples",
            (false, Some(_)) => "bounded",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {verdict} |",
            series.name,
            figure(g.start),
            figure(g.end),
            figure(g.median),
            g.slope_per_min
                .map_or_else(|| "-".to_owned(), |s| format!("{s:+.2}")),
            g.projected
                .map_or_else(|| "-".to_owned(), |p| format!("{p:+.1}")),
            g.allowed
        );
    }
    out.push('\n');
}

fn render_failures(out: &mut String, report: &SoakReport) {
    out.push_str("### Failures\n\n| kind | count |\n| --- | ---: |\n");
    if report.failure_counts.is_empty() {
        out.push_str("| none | 0 |\n");
    }
    for (kind, count) in &report.failure_counts {
        let _ = writeln!(out, "| {kind} | {count} |");
    }
    let unexplained: Vec<&FailureRecord> = report.unexplained().collect();
    if !unexplained.is_empty() {
        let _ = writeln!(
            out,
            "\nUnexplained failures{}:\n",
            if unexplained.len() > LISTED {
                format!(
                    " (the first {LISTED} of {}; soak.json has all)",
                    unexplained.len()
                )
            } else {
                String::new()
            }
        );
        for failure in unexplained.iter().take(LISTED) {
            let _ = writeln!(
                out,
                "- {:.1} s: {} → {} ({} {} {}): {}{}",
                failure.at_secs,
                failure.client,
                failure.target,
                failure.mode,
                failure.phase,
                failure.kind,
                failure.error,
                if failure.nearby.is_empty() {
                    String::new()
                } else {
                    format!("; nearby: {}", failure.nearby.join(", "))
                }
            );
        }
    }
    out.push('\n');
}

/// A figure with as many decimals as it needs.
fn figure(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

#[cfg(test)]
mod tests;
