//! What the waypoint costs: HTTP request latency (p50/p99, one request at a
//! time with wrk) and requests per second (wrk over HTTP/1.1 with 16
//! connections, h2load over HTTP/2 with 16 streams on 4 connections), on
//! three paths between the same two nodes, in the same run:
//!
//! - `direct`: an unmeshed client to an unmeshed server, the baseline;
//! - `mesh-l4`: meshed client to meshed server by pod address (HBONE
//!   between the node agents, no waypoint);
//! - `waypoint`: meshed client to the Service's cluster IP, whose traffic
//!   goes through the waypoint (HBONE in, HTTP routing, HBONE out).
//!
//! The added latency is the waypoint path's minus the direct path's; the
//! target is an added p50 of at most 150 µs.

use std::process::Command;

use ambit_tests::waypoint::{VIP, WaypointMesh};
use ambit_tests::workload::{ECHO_PORT, WAIT, pod_tool};
use ambit_tests::{Pod, Proc, Testbed};
use serde::Serialize;

use crate::BenchError;
use crate::console::progress;

/// Target for the waypoint's added p50 latency, in microseconds.
pub const TARGET_ADDED_P50_US: f64 = 150.0;

/// One path's figures (medians of the runs).
#[derive(Clone, Debug, Serialize)]
pub struct PathFigures {
    /// `direct`, `mesh-l4` or `waypoint`.
    pub path: String,
    /// Latency percentiles of sequential requests, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Requests per second, HTTP/1.1, 16 connections.
    pub rps_http1: f64,
    /// Requests per second, HTTP/2, 4 connections × 4 streams.
    pub rps_http2: f64,
}

/// What the waypoint bench found.
#[derive(Debug, Serialize)]
pub struct WaypointReport {
    /// Seconds per latency test.
    pub latency_secs: u64,
    /// Seconds per throughput test.
    pub load_secs: u64,
    /// Runs per path; each figure is the median.
    pub runs: usize,
    /// Figures per path.
    pub paths: Vec<PathFigures>,
    /// Waypoint p50 minus direct p50, µs.
    pub added_p50_us: f64,
    /// Waypoint p99 minus direct p99, µs.
    pub added_p99_us: f64,
    /// Waypoint RPS / direct RPS, HTTP/1.1.
    pub rps_ratio_http1: f64,
    /// The target for `added_p50_us`.
    pub target_added_p50_us: f64,
    /// Whether the target was met.
    pub target_met: bool,
}

/// Runs the waypoint bench on a test bed of its own.
pub fn measure(quick: bool, runs: usize) -> Result<WaypointReport, BenchError> {
    for tool in ["wrk", "h2load"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|out| out.status.success());
        if !found {
            return Err(BenchError::CannotRun(format!(
                "{tool} is not installed (`cargo xtask setup` installs it)"
            )));
        }
    }
    let mut tb = Testbed::new("bench-wp").map_err(|skip| BenchError::CannotRun(skip.reason))?;
    progress("waypoint: starting two nodes, their agents, the backends and the waypoint");
    let n1 = tb.add_node("w1");
    let n2 = tb.add_node("w2");
    let plain_client = tb.add_pod(&n1, "plain-client", "shop");
    let plain_server = tb.add_pod(&n2, "plain-server", "shop");
    let mut mesh = WaypointMesh::on_nodes(&mut tb, n1, n2, "");
    let (v1, v2, v3) = (mesh.v1.clone(), mesh.v2.clone(), mesh.v3.clone());
    for pod in [&v1, &v2, &v3] {
        mesh.serve_http(&tb, pod, &[]);
    }
    let _plain = serve_plain(&tb, &plain_server);
    mesh.start_waypoint(&tb, &["--access-log", "false"]);
    let (latency_secs, load_secs) = if quick { (2, 2) } else { (8, 8) };
    let targets = [
        (
            "direct",
            plain_client.clone(),
            format!("http://{}:{ECHO_PORT}/", plain_server.ipv4),
        ),
        (
            "mesh-l4",
            mesh.client_a.clone(),
            format!("http://{}:{ECHO_PORT}/", v1.ipv4),
        ),
        ("waypoint", mesh.client_a.clone(), format!("http://{VIP}/")),
    ];
    let mut samples: Vec<Vec<PathFigures>> = targets.iter().map(|_| Vec::new()).collect();
    for run in 1..=runs {
        for ((path, client, url), figures) in targets.iter().zip(&mut samples) {
            crate::check_interrupted()?;
            progress(&format!("waypoint: run {run} of {runs}, {path}"));
            figures.push(measure_path(
                &tb,
                path,
                client,
                url,
                latency_secs,
                load_secs,
            )?);
        }
    }
    drop(mesh);
    let paths: Vec<PathFigures> = samples.iter().map(|s| median_figures(s)).collect();
    let added_p50_us = paths[2].p50_us - paths[0].p50_us;
    let added_p99_us = paths[2].p99_us - paths[0].p99_us;
    Ok(WaypointReport {
        latency_secs,
        load_secs,
        runs,
        rps_ratio_http1: paths[2].rps_http1 / paths[0].rps_http1.max(f64::MIN_POSITIVE),
        added_p50_us,
        added_p99_us,
        target_added_p50_us: TARGET_ADDED_P50_US,
        target_met: added_p50_us <= TARGET_ADDED_P50_US,
        paths,
    })
}

/// An HTTP server in an unmeshed pod.
fn serve_plain(tb: &Testbed, pod: &Pod) -> Proc {
    let listen = format!("0.0.0.0:{ECHO_PORT}");
    let server = tb.spawn_in_pod(
        pod,
        pod_tool(&["http-serve", "--listen", &listen, "--name", &pod.name]),
    );
    server.wait_for_event("listening", WAIT);
    server
}

fn measure_path(
    tb: &Testbed,
    path: &str,
    client: &Pod,
    url: &str,
    latency_secs: u64,
    load_secs: u64,
) -> Result<PathFigures, BenchError> {
    let latency = run_tool(
        tb,
        client,
        "wrk",
        &[
            "-t1",
            "-c1",
            &format!("-d{latency_secs}s"),
            "--latency",
            url,
        ],
    )?;
    let (p50_us, p99_us) = wrk_percentiles(&latency).ok_or_else(|| {
        BenchError::failed(format!("{path}: no latency in wrk's report:\n{latency}"))
    })?;
    let load = run_tool(
        tb,
        client,
        "wrk",
        &["-t2", "-c16", &format!("-d{load_secs}s"), url],
    )?;
    let rps_http1 = wrk_rps(&load)
        .ok_or_else(|| BenchError::failed(format!("{path}: no rate in wrk's report:\n{load}")))?;
    let h2 = run_tool(
        tb,
        client,
        "h2load",
        &["-c4", "-m4", "-t2", "-D", &load_secs.to_string(), url],
    )?;
    let rps_http2 = h2load_rps(&h2)
        .ok_or_else(|| BenchError::failed(format!("{path}: no rate in h2load's report:\n{h2}")))?;
    Ok(PathFigures {
        path: path.to_owned(),
        p50_us,
        p99_us,
        rps_http1,
        rps_http2,
    })
}

fn run_tool(tb: &Testbed, client: &Pod, tool: &str, args: &[&str]) -> Result<String, BenchError> {
    let mut command = Command::new(tool);
    command.args(args);
    let out = tb.run_in_pod(client, command);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(BenchError::failed(format!(
            "{tool} {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// wrk's `--latency` distribution: the 50% and 99% lines, in µs.
fn wrk_percentiles(report: &str) -> Option<(f64, f64)> {
    let at = |percent: &str| {
        report.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == percent)
                .then(|| words.next().and_then(micros))
                .flatten()
        })
    };
    Some((at("50%")?, at("99%")?))
}

/// `123.45us`, `1.20ms`, `2.00s` in µs.
fn micros(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(number),
        "ms" => Some(number * 1000.0),
        "s" => Some(number * 1_000_000.0),
        _ => None,
    }
}

/// wrk's `Requests/sec:` line.
fn wrk_rps(report: &str) -> Option<f64> {
    report.lines().find_map(|line| {
        line.trim()
            .strip_prefix("Requests/sec:")?
            .trim()
            .parse()
            .ok()
    })
}

/// h2load's `finished in 8.00s, 12345.67 req/s, ...` line; only when every
/// request succeeded.
fn h2load_rps(report: &str) -> Option<f64> {
    let failed = report
        .lines()
        .find(|l| l.starts_with("requests:"))?
        .split(", ")
        .find_map(|part| part.strip_suffix(" failed")?.trim().parse::<u64>().ok())?;
    if failed > 0 {
        return None;
    }
    report.lines().find_map(|line| {
        let rest = line.strip_prefix("finished in ")?;
        let rate = rest.split(", ").nth(1)?.strip_suffix(" req/s")?;
        rate.trim().parse().ok()
    })
}

/// The median of each figure over the runs.
fn median_figures(runs: &[PathFigures]) -> PathFigures {
    let median = |pick: fn(&PathFigures) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    PathFigures {
        path: runs.first().map(|r| r.path.clone()).unwrap_or_default(),
        p50_us: median(|f| f.p50_us),
        p99_us: median(|f| f.p99_us),
        rps_http1: median(|f| f.rps_http1),
        rps_http2: median(|f| f.rps_http2),
    }
}

/// The report as Markdown.
#[must_use]
pub fn render(report: &WaypointReport) -> String {
    use std::fmt::Write as _;
    let mut text = String::from("## Waypoint (L7) overhead\n\n");
    let _ = writeln!(
        text,
        "Median of {} run(s); latency: wrk, 1 connection, {} s; rate: wrk (HTTP/1.1, 16 connections) and h2load (HTTP/2, 4 connections × 4 streams), {} s each.\n",
        report.runs, report.latency_secs, report.load_secs
    );
    text.push_str(
        "| path | p50 µs | p99 µs | req/s HTTP/1.1 | req/s HTTP/2 |\n|---|---:|---:|---:|---:|\n",
    );
    for path in &report.paths {
        let _ = writeln!(
            text,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            path.path, path.p50_us, path.p99_us, path.rps_http1, path.rps_http2
        );
    }
    let _ = writeln!(
        text,
        "\nAdded by the waypoint path: p50 **{:.0} µs**, p99 {:.0} µs; HTTP/1.1 rate {:.2}× direct. Target: added p50 ≤ {:.0} µs: **{}**.",
        report.added_p50_us,
        report.added_p99_us,
        report.rps_ratio_http1,
        report.target_added_p50_us,
        if report.target_met { "met" } else { "missed" }
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_and_h2load_reports() {
        let wrk = "Running 2s test @ http://x/\n  Latency Distribution\n     50%  112.00us\n     75%  130.00us\n     90%  150.00us\n     99%    1.20ms\n  2000 requests in 2.00s\nRequests/sec:   9876.54\n";
        assert_eq!(wrk_percentiles(wrk), Some((112.0, 1200.0)));
        assert_eq!(wrk_rps(wrk), Some(9876.54));
        let h2 = "finished in 2.00s, 4321.50 req/s, 1.00MB/s\nrequests: 8643 total, 8643 started, 8643 done, 8643 succeeded, 0 failed, 0 errored, 0 timeout\n";
        assert_eq!(h2load_rps(h2), Some(4321.5));
        assert_eq!(h2load_rps(&h2.replace(" 0 failed", " 3 failed")), None);
        assert_eq!(micros("2.5s"), Some(2_500_000.0));
    }
}
