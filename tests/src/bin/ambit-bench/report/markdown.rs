//! The report as Markdown: one table with every scenario side by side and
//! the mesh/direct ratios (medians of the runs), the targets, each run's
//! key figures, and any failures.

use std::fmt::Write as _;

use super::{
    AGENT_METRICS, AuthzFigures, AuthzReport, EndToEndRun, METRICS, Metric, PAIRS, Report,
    ScenarioReport, ScenarioRun,
};

/// What the table shows for a figure that is missing.
const MISSING: &str = "n/a";

/// Figures whose every run the "Runs" table shows: (label, decimals, getter).
type RunFigure = (&'static str, usize, fn(&ScenarioRun) -> Option<f64>);

/// The figures the targets judge, run by run, to show how much they move.
const RUN_FIGURES: [RunFigure; 5] = [
    ("rr_1b p50 (µs)", 1, |r| r.rr_1b.map(|f| f.p50_us)),
    ("rr_1b p99 (µs)", 1, |r| r.rr_1b.map(|f| f.p99_us)),
    ("crr rate (conn/s)", 0, |r| r.crr.map(|f| f.rate)),
    ("tput_1 (Gbit/s)", 2, |r| r.tput_1.map(|f| f.gbps)),
    ("tput_4 (Gbit/s)", 2, |r| r.tput_4.map(|f| f.gbps)),
];

/// The whole report.
pub fn render(report: &Report) -> String {
    let mut out = String::from("# ambit benchmark\n\n");
    let d = &report.durations;
    let _ = writeln!(
        out,
        "{}: every figure is the median of {} run{} (interleaved: each run goes through every scenario); \
         request/response and connection tests {} s each after {} s of warm-up; iperf3 {} s{}; \
         {} idle connections held in mesh-cross-node.\n",
        if report.quick {
            "Quick run (`--quick`, noisier)"
        } else {
            "Full run"
        },
        report.runs,
        if report.runs == 1 { "" } else { "s" },
        d.rr_secs,
        d.rr_warmup_secs,
        d.tput_secs,
        if d.tput_omit_secs > 0 {
            format!(" after {} s left out", d.tput_omit_secs)
        } else {
            String::new()
        },
        report.idle_conns
    );
    out.push_str(&table(report));
    out.push_str("\nmesh/direct: the meshed median divided by the direct one of its kind, `mesh-cross-node`'s and `mesh-cross-node-kernel`'s by `direct-cross-node`'s, `mesh-same-node`'s and `mesh-same-node-kernel`'s by `direct-same-node`'s (latency: lower is better; rates and throughput: higher is better). The kernel-path scenarios' rr tests use `pod-tool rr --epoll`, the others the blocking `pod-tool rr`. Latency CDFs of rr_1b: `latency.png`.\n");

    let _ = writeln!(
        out,
        "\n## Targets (medians of {} run{})",
        report.runs,
        if report.runs == 1 { "" } else { "s" }
    );
    let mut section = String::new();
    for target in &report.targets {
        let heading = if target.unit == "ratio" {
            target.scenario.to_owned()
        } else {
            format!("agent memory ({})", target.scenario)
        };
        if heading != section {
            let _ = writeln!(out, "\n### {heading}\n");
            section = heading;
        }
        let verdict = match target.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "unknown",
        };
        let value = target.value.map_or_else(
            || "measurement failed".to_owned(),
            |value| {
                if target.unit == "ratio" {
                    format!("{value:.2}×")
                } else {
                    format!("{value:.1} {}", target.unit)
                }
            },
        );
        let _ = writeln!(out, "- {verdict}: {}: {value}", target.target);
    }

    if report.runs > 1 {
        let _ = writeln!(out, "\n## Runs\n");
        out.push_str(&runs_table(report));
    }

    out.push_str(&authorization(&report.authorization));

    if !report.failures.is_empty() {
        out.push_str("\n## Failures\n\n");
        for failure in &report.failures {
            let run = failure
                .run
                .map_or_else(String::new, |run| format!("run {run}, "));
            let _ = writeln!(
                out,
                "- {run}{} {}: {}",
                failure.scenario,
                failure.test,
                first_line(&failure.error)
            );
        }
    }
    out
}

/// A figure of the end-to-end comparison: (label, decimals, whether the
/// sides are compared as a ratio rather than a difference, the figure).
type AuthzFigure = (&'static str, usize, bool, fn(&AuthzFigures) -> Option<f64>);

/// The end-to-end figures compared with and without the policies.
const AUTHZ_FIGURES: [AuthzFigure; 4] = [
    ("crr rate (conn/s)", 0, true, |f| f.crr.map(|c| c.rate)),
    ("crr p50 (µs)", 1, false, |f| f.crr.map(|c| c.p50_us)),
    ("crr p99 (µs)", 1, false, |f| f.crr.map(|c| c.p99_us)),
    ("rr_1b p50 (µs)", 1, false, |f| f.rr_1b.map(|r| r.p50_us)),
];

/// The "Authorization cost" section: in process, then through the mesh.
fn authorization(authz: &AuthzReport) -> String {
    let mut out = format!(
        "\n## Authorization cost\n\n{} policies: {} namespaces × {} (ALLOW, DENY and AUDIT on `app` selectors; \
         exact, prefix and suffix principals, namespaces, IP blocks, ports) and {} mesh-wide in the root namespace.\n",
        authz.policies,
        authz.namespaces,
        authz.policies.saturating_sub(authz.mesh_wide) / authz.namespaces.max(1),
        authz.mesh_wide
    );
    out.push_str("\n### In process (`PolicySet::evaluate`, one thread)\n\n");
    match &authz.in_process {
        Some(f) => {
            let rows = [
                ("evaluations/s", format!("{:.0}", f.evaluations_per_sec)),
                ("ns per evaluation", format!("{:.1}", f.ns_per_evaluation)),
                (
                    "policies applicable per evaluation (mean / max)",
                    format!("{:.1} / {}", f.applicable_mean, f.applicable_max),
                ),
                (
                    "workload/request pairs in turn (allowed)",
                    format!("{} ({})", f.cases, f.allowed_cases),
                ),
                (
                    "parse / compile / index (ms)",
                    format!(
                        "{:.1} / {:.1} / {:.1}",
                        f.parse_ms, f.compile_ms, f.index_ms
                    ),
                ),
            ];
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|(label, value)| vec![label.to_owned(), value])
                .collect();
            out.push_str(&render_table(
                &["figure".to_owned(), "value".to_owned()],
                &rows,
            ));
        }
        None => out.push_str("Measurement failed.\n"),
    }
    out.push_str(&end_to_end(authz));
    out
}

/// The comparison through the mesh, with and without the policies.
fn end_to_end(authz: &AuthzReport) -> String {
    let e2e = &authz.end_to_end;
    let runs = e2e.runs.len();
    let mut out = format!(
        "\n### Through the mesh ({}, medians of {runs} run{})\n\n",
        e2e.scenario,
        if runs == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "{} policies in force on the server's agent (its `/policies` listed them {} after the configuration was written), \
         {} of them apply to the server; `{}` allows the client. Each run measures both sides, one right after the other.\n",
        e2e.policies_in_force
            .map_or_else(|| MISSING.to_owned(), |n| n.to_string()),
        e2e.apply_ms
            .map_or_else(|| MISSING.to_owned(), |ms| format!("{ms:.0} ms")),
        e2e.server_policies
            .map_or_else(|| MISSING.to_owned(), |n| n.to_string()),
        e2e.deciding_policy
    );
    let header = ["figure", "without policies", "with policies", "added"].map(str::to_owned);
    let mut rows = Vec::new();
    for (label, decimals, as_ratio, get) in AUTHZ_FIGURES {
        let without = get(&e2e.without_policies);
        let with = get(&e2e.with_policies);
        let added = with.zip(without).map_or_else(
            || MISSING.to_owned(),
            |(with, without)| {
                if as_ratio {
                    if without > 0.0 {
                        format!("{:.2}×", with / without)
                    } else {
                        MISSING.to_owned()
                    }
                } else {
                    format!("{:+.decimals$}", with - without)
                }
            },
        );
        let value =
            |v: Option<f64>| v.map_or_else(|| MISSING.to_owned(), |v| format!("{v:.decimals$}"));
        rows.push(vec![label.to_owned(), value(without), value(with), added]);
    }
    let by_run = |get: fn(&EndToEndRun) -> AuthzFigures| {
        e2e.runs
            .iter()
            .map(|run| {
                get(run)
                    .crr
                    .map_or_else(|| MISSING.to_owned(), |crr| format!("{:.1}", crr.p50_us))
            })
            .collect::<Vec<_>>()
            .join(" / ")
    };
    rows.push(vec![
        "crr p50 run by run (µs)".to_owned(),
        by_run(|run| run.without_policies),
        by_run(|run| run.with_policies),
        String::new(),
    ]);
    out.push_str(&render_table(&header, &rows));
    out
}

/// Each run's value of the targets' figures, `a / b / c`, per scenario.
fn runs_table(report: &Report) -> String {
    let mut header = vec!["figure, run by run".to_owned()];
    header.extend(report.scenarios.iter().map(|s| s.name.to_owned()));
    let rows: Vec<Vec<String>> = RUN_FIGURES
        .iter()
        .map(|&(label, decimals, get)| {
            let mut row = vec![label.to_owned()];
            for scenario in &report.scenarios {
                let values: Vec<String> = scenario
                    .runs
                    .iter()
                    .map(|run| {
                        get(run).map_or_else(|| MISSING.to_owned(), |v| format!("{v:.decimals$}"))
                    })
                    .collect();
                row.push(values.join(" / "));
            }
            row
        })
        .collect();
    render_table(&header, &rows)
}

/// Whether the table gives pair `index` a column of its direct scenario:
/// not when an earlier pair has the same one (both meshed scenarios of a
/// kind are compared with its one direct scenario).
fn shows_direct(index: usize) -> bool {
    let direct = PAIRS[index].2;
    !PAIRS[..index]
        .iter()
        .any(|(_, _, earlier)| *earlier == direct)
}

/// Columns: the figure, then per pair its direct figure (unless an earlier
/// pair shows it), its mesh figure and their ratio.
fn table(report: &Report) -> String {
    let find = |name: &str| report.scenarios.iter().find(|s| s.name == name);
    let mut header = vec!["figure".to_owned()];
    for (index, (_, mesh, direct)) in PAIRS.into_iter().enumerate() {
        if shows_direct(index) {
            header.push(direct.to_owned());
        }
        header.extend([mesh.to_owned(), "mesh/direct".to_owned()]);
    }
    let mut rows = Vec::new();
    for metric in METRICS {
        let mut row = vec![metric.label.to_owned()];
        for (index, (_, mesh, direct)) in PAIRS.into_iter().enumerate() {
            let mesh_value = find(mesh).and_then(|s| (metric.get)(s));
            let direct_value = find(direct).and_then(|s| (metric.get)(s));
            let ratio = mesh_value
                .zip(direct_value)
                .filter(|(_, direct)| *direct > 0.0)
                .map_or_else(
                    || MISSING.to_owned(),
                    |(mesh, direct)| format!("{:.2}×", mesh / direct),
                );
            if shows_direct(index) {
                row.push(cell(direct_value, metric));
            }
            row.extend([cell(mesh_value, metric), ratio]);
        }
        rows.push(row);
    }
    for metric in AGENT_METRICS {
        // Server-side rows only where a scenario has a server agent.
        if !PAIRS
            .iter()
            .any(|(_, mesh, _)| find(mesh).and_then(|s| (metric.get)(s)).is_some())
        {
            continue;
        }
        let mut row = vec![metric.label.to_owned()];
        for (index, (_, mesh, _)) in PAIRS.into_iter().enumerate() {
            let mesh_value = find(mesh).and_then(|s: &ScenarioReport| (metric.get)(s));
            if shows_direct(index) {
                row.push("–".to_owned());
            }
            row.extend([cell(mesh_value, metric), String::new()]);
        }
        rows.push(row);
    }
    render_table(&header, &rows)
}

fn cell(value: Option<f64>, metric: &Metric) -> String {
    value.map_or_else(
        || MISSING.to_owned(),
        |value| format!("{value:.*}", metric.decimals),
    )
}

/// A Markdown table with padded columns, the first left-aligned and the
/// others right-aligned, so it reads well as plain text too.
fn render_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::from("|");
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(text, " {cell:<width$} |");
            } else {
                let _ = write!(text, " {cell:>width$} |");
            }
        }
        text.push('\n');
        text
    };
    let mut out = line(header);
    out.push('|');
    for (i, width) in widths.iter().enumerate() {
        let dashes = "-".repeat(*width);
        if i == 0 {
            let _ = write!(out, " {dashes} |");
        } else {
            let _ = write!(out, " {}: |", &dashes[1..]);
        }
    }
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}
