//! What the waypoint costs: HTTP request latency (p50/p99, one request at a
//! time with wrk) and requests per second (wrk over HTTP/1.1 with 16
//! connections, h2load over HTTP/2 with 16 streams on 4 connections), on
//! four paths between the same two nodes, in the same run:
//!
//! - `direct`: an unmeshed client to an unmeshed server, the baseline;
//! - `mesh-l4`: meshed client to meshed server by pod address (HBONE
//!   between the node agents, no waypoint);
//! - `waypoint-tcp`: meshed client to a Service using the waypoint whose
//!   port is declared `appProtocol: tcp`: the waypoint relays the bytes
//!   HBONE to HBONE with no HTTP work. The waypoint path can cost no less
//!   than this, whatever its L7 work: it is the floor under it;
//! - `waypoint`: meshed client to the Service's cluster IP, whose traffic
//!   goes through the waypoint (HBONE in, HTTP routing, HBONE out).
//!
//! The added latency is the waypoint path's minus the direct path's; the
//! target is an added p50 of at most 150 µs.
//!
//! The latency is measured a second time with every process of the test
//! bed (agents, waypoint, servers, wrk) on one CPU. On a virtual machine a
//! wake-up on another vCPU costs an inter-processor interrupt through the
//! hypervisor (tens of µs here), and the waypoint path has six more
//! process-to-process hops than the direct one, each of which may land on
//! the other vCPU; on one CPU the figures show the work the mesh adds
//! without that cost. The target is judged on the first, normal figures.

use std::process::Command;

use ambit_tests::waypoint::{TCP_VIP, VIP, WaypointMesh};
use ambit_tests::workload::{ECHO_PORT, WAIT, pod_tool};
use ambit_tests::{Pod, Proc, Testbed};
use serde::Serialize;

use crate::console::progress;
use crate::error::BenchError;

/// Target for the waypoint's added p50 latency, in microseconds.
pub const TARGET_ADDED_P50_US: f64 = 150.0;

/// Where the paths stand in the bench's list of targets, and so in its
/// figures: `direct`, (`mesh-l4`), `waypoint-tcp`, `waypoint`.
const DIRECT: usize = 0;
const FLOOR: usize = 2;
const WAYPOINT: usize = 3;

/// One path's figures (medians of the runs).
#[derive(Clone, Debug, Serialize)]
pub struct PathFigures {
    /// `direct`, `mesh-l4`, `waypoint-tcp` or `waypoint`.
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
    /// `waypoint-tcp` p50 minus direct p50, µs: what the waypoint path adds
    /// before any HTTP work.
    pub floor_added_p50_us: f64,
    /// Waypoint RPS / direct RPS, HTTP/1.1.
    pub rps_ratio_http1: f64,
    /// The target for `added_p50_us`.
    pub target_added_p50_us: f64,
    /// Whether the target was met.
    pub target_met: bool,
    /// The latency again with every process on one CPU; `None` on a
    /// one-CPU machine.
    pub one_cpu: Option<OneCpuLatency>,
}

/// Latency with every process of the test bed pinned to one CPU.
#[derive(Debug, Serialize)]
pub struct OneCpuLatency {
    /// The CPU used.
    pub cpu: usize,
    /// Per path: (path, p50 µs, p99 µs), medians of the runs.
    pub paths: Vec<(String, f64, f64)>,
    /// Waypoint p50 minus direct p50, µs.
    pub added_p50_us: f64,
    /// Waypoint p99 minus direct p99, µs.
    pub added_p99_us: f64,
    /// `waypoint-tcp` p50 minus direct p50, µs.
    pub floor_added_p50_us: f64,
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
    let plain = serve_plain(&tb, &plain_server);
    mesh.start_waypoint(&tb, &["--access-log", "false"]);
    let (latency_secs, load_secs) = if quick { (2, 2) } else { (8, 8) };
    // In the order of DIRECT, FLOOR and WAYPOINT.
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
        (
            "waypoint-tcp",
            mesh.client_a.clone(),
            format!("http://{TCP_VIP}/"),
        ),
        ("waypoint", mesh.client_a.clone(), format!("http://{VIP}/")),
    ];
    let mut samples: Vec<Vec<PathFigures>> = targets.iter().map(|_| Vec::new()).collect();
    for run in 1..=runs {
        for ((path, client, url), figures) in targets.iter().zip(&mut samples) {
            crate::error::check_interrupted()?;
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
    let mut pids: Vec<u32> = mesh.agents.iter().map(|a| a.proc.pid()).collect();
    pids.extend(mesh.servers.iter().map(Proc::pid));
    pids.extend([mesh.waypoint().pid(), plain.pid()]);
    let one_cpu = one_cpu_latency(&tb, &targets, &pids, latency_secs, runs)?;
    drop(mesh);
    let paths: Vec<PathFigures> = samples.iter().map(|s| median_figures(s)).collect();
    let (direct, floor, waypoint) = (&paths[DIRECT], &paths[FLOOR], &paths[WAYPOINT]);
    let added_p50_us = waypoint.p50_us - direct.p50_us;
    Ok(WaypointReport {
        latency_secs,
        load_secs,
        runs,
        rps_ratio_http1: waypoint.rps_http1 / direct.rps_http1.max(f64::MIN_POSITIVE),
        added_p50_us,
        added_p99_us: waypoint.p99_us - direct.p99_us,
        floor_added_p50_us: floor.p50_us - direct.p50_us,
        target_added_p50_us: TARGET_ADDED_P50_US,
        target_met: added_p50_us <= TARGET_ADDED_P50_US,
        paths,
        one_cpu,
    })
}

/// Pins `pids` (every thread) and wrk to the last CPU and measures each
/// path's latency again, `runs` times; `None` with a single CPU.
fn one_cpu_latency(
    tb: &Testbed,
    targets: &[(&str, Pod, String)],
    pids: &[u32],
    latency_secs: u64,
    runs: usize,
) -> Result<Option<OneCpuLatency>, BenchError> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if cpus < 2 {
        return Ok(None);
    }
    let cpu = cpus - 1;
    for pid in pids {
        let pinned = Command::new("taskset")
            .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
            .output()
            .map_err(|e| BenchError::CannotRun(format!("taskset: {e}")))?;
        if !pinned.status.success() {
            return Err(BenchError::failed(format!(
                "taskset could not pin process {pid}: {}",
                String::from_utf8_lossy(&pinned.stderr)
            )));
        }
    }
    let mut samples: Vec<Vec<(f64, f64)>> = targets.iter().map(|_| Vec::new()).collect();
    for run in 1..=runs {
        for ((path, client, url), figures) in targets.iter().zip(&mut samples) {
            crate::error::check_interrupted()?;
            progress(&format!("waypoint on one CPU: run {run} of {runs}, {path}"));
            figures.push(latency(tb, path, client, url, latency_secs, Some(cpu))?);
        }
    }
    let paths: Vec<(String, f64, f64)> = targets
        .iter()
        .zip(&samples)
        .map(|((path, _, _), runs)| {
            let p50 = median(runs.iter().map(|r| r.0).collect());
            let p99 = median(runs.iter().map(|r| r.1).collect());
            ((*path).to_owned(), p50, p99)
        })
        .collect();
    Ok(Some(OneCpuLatency {
        cpu,
        added_p50_us: paths[WAYPOINT].1 - paths[DIRECT].1,
        added_p99_us: paths[WAYPOINT].2 - paths[DIRECT].2,
        floor_added_p50_us: paths[FLOOR].1 - paths[DIRECT].1,
        paths,
    }))
}

/// The median of `values` (NaN when empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
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
    let (p50_us, p99_us) = latency(tb, path, client, url, latency_secs, None)?;
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

/// Latency of one request at a time on one connection for `secs` (wrk):
/// (p50, p99) in µs. With `cpu`, wrk runs pinned to that CPU.
fn latency(
    tb: &Testbed,
    path: &str,
    client: &Pod,
    url: &str,
    secs: u64,
    cpu: Option<usize>,
) -> Result<(f64, f64), BenchError> {
    let duration = format!("-d{secs}s");
    let wrk = ["wrk", "-t1", "-c1", duration.as_str(), "--latency", url];
    let report = match cpu {
        Some(cpu) => {
            let cpu = cpu.to_string();
            let args: Vec<&str> = ["-c", cpu.as_str()].into_iter().chain(wrk).collect();
            run_tool(tb, client, "taskset", &args)?
        }
        None => run_tool(tb, client, wrk[0], &wrk[1..])?,
    };
    wrk_percentiles(&report)
        .ok_or_else(|| BenchError::failed(format!("{path}: no latency in wrk's report:\n{report}")))
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
    let of = |pick: fn(&PathFigures) -> f64| median(runs.iter().map(pick).collect());
    PathFigures {
        path: runs.first().map(|r| r.path.clone()).unwrap_or_default(),
        p50_us: of(|f| f.p50_us),
        p99_us: of(|f| f.p99_us),
        rps_http1: of(|f| f.rps_http1),
        rps_http2: of(|f| f.rps_http2),
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
    let _ = writeln!(
        text,
        "\nThe floor: `waypoint-tcp` (the same waypoint, the port declared `appProtocol: tcp`, bytes relayed HBONE to HBONE with no HTTP work) adds p50 {:.0} µs, so the waypoint's HTTP work adds {:.0} µs on top of it.",
        report.floor_added_p50_us,
        report.added_p50_us - report.floor_added_p50_us
    );
    if let Some(one) = &report.one_cpu {
        let _ = writeln!(
            text,
            "\nThe same latency with every process of the test bed on CPU {} (no wake-up on another CPU; judged above, not here):\n\n| path | p50 µs | p99 µs |\n|---|---:|---:|",
            one.cpu
        );
        for (path, p50, p99) in &one.paths {
            let _ = writeln!(text, "| {path} | {p50:.0} | {p99:.0} |");
        }
        let _ = writeln!(
            text,
            "\nAdded on one CPU: p50 {:.0} µs (floor, `waypoint-tcp`: {:.0} µs), p99 {:.0} µs.",
            one.added_p50_us, one.floor_added_p50_us, one.added_p99_us
        );
    }
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
