//! `ambit-bench`: what the mesh costs. One test bed with two nodes, meshed
//! and unmeshed pods side by side, one node agent per node; the same tests
//! run pod to pod directly and through the mesh, across nodes and on one
//! node, and the report sets them side by side.
//!
//! Tests per scenario: request/response latency (`rr_1b`, `rr_1k`,
//! `rr_1b_x8`, `pod-tool rr`), connection rate (`crr`, `pod-tool crr`) and
//! bulk throughput (`tput_1`, `tput_4`, iperf3); for meshed scenarios also
//! the agents' CPU and memory, and in `mesh-cross-node` their memory with
//! 1,000 idle connections open (`pod-tool hold`). The meshed traffic is
//! measured twice across nodes and twice on one node: through the agents in
//! user space (`mesh-cross-node`, `mesh-same-node`), and between pods
//! labelled `ambit.dev/kernel-path: enabled` (`mesh-cross-node-kernel`:
//! through both agents, each pod's leg to its agent spliced by `sk_msg`;
//! `mesh-same-node-kernel`: spliced socket to socket past the agent), whose
//! rr tests read with epoll as the kernel path's contract asks. Every
//! scenario runs `--runs` times, interleaved, and each figure is the
//! median. Then what
//! authorization costs with 10,000 policies: evaluations per second in
//! process, and the connection latency they add through the mesh. Last,
//! Kubernetes mode at scale (`kube_scale`): one agent watching 10,000
//! pods, 2,000 services and 1,000 policies on the fake API server. Then
//! the waypoint (`waypoint`): HTTP latency and request rate direct, through
//! the mesh at L4, and through the waypoint, on a test bed of its own.
//! Then an upgrade (`upgrade`): connection churn across a handoff to a new
//! agent process, on a test bed of its own. Last, sustained churn
//! (`sustain`): the connection-rate test five times back to back, and
//! whether the agents' maps, fds and tasks return to idle after it.
//! docs/benchmark.md explains every figure.
//!
//! With `--soak-minutes N` it runs the churn soak instead (`soak`, on a
//! test bed of its own; `cargo xtask soak`): traffic, enrolment, policy and
//! route churn, certificate rotation and handoffs all at once for N
//! minutes, sampled every `--sample-secs`; it writes `soak.json`,
//! `soak.md`, `soak-processes.png` and `soak-maps.png` (default
//! `<target>/soak`, the processes' output in `soak.log`) and fails when a
//! series grows, a failure has no excuse, a process crashes or a bad
//! object is not rejected (docs/soak.md).
//!
//! `cargo xtask bench` builds the release binaries and runs this as root.
//! Output: `report.json`, `report.md` and `latency.png` (the `rr_1b`
//! latency CDFs), `kube-scale.json`, `kube-scale.md`, `waypoint.json`,
//! `waypoint.md`, `upgrade.json`, `upgrade.md`, `sustain.json` and
//! `sustain.md` in the output directory (default `<target>/bench`), the
//! Markdown also on stdout, progress on stderr, and the agents' and
//! workloads' own output in `bench.log`.
//!
//! Exit status: 0 when every measurement succeeded (whether or not the
//! targets were met: that is the report's news, not a failure), 1 when one
//! failed, an agent did not return to idle after sustained churn (maps, fds,
//! tasks: a leak) or the bench could not finish, 2 when this machine cannot host a
//! test bed, 130 when interrupted. The test bed is removed in every case.

mod authz;
mod cluster;
mod console;
mod error;
mod kube_scale;
mod measure;
mod plot;
mod report;
mod scenario;
mod soak;
mod sustain;
mod upgrade;
mod usage;
mod waypoint;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use ambit_tests::mesh::AGENT_BIN;
use ambit_tests::{Testbed, interrupt};
use clap::Parser;

use crate::cluster::Cluster;
use crate::console::progress;
use crate::error::BenchError;
use crate::measure::{IDLE_READ_AFTER, Plan, Runner};
use crate::report::{Durations, Report};
use crate::scenario::{IdleRss, RunNumber};

/// Names the output directory, overriding `<target>/bench`.
const OUT_ENV: &str = "AMBIT_BENCH_OUT";

/// The test bed's name, part of every namespace and cgroup it creates.
const TESTBED_NAME: &str = "bench";

/// The latency plot's file name in the output directory.
const LATENCY_PLOT: &str = "latency.png";

#[derive(Parser)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent command-line switches"
)]
#[command(
    about = "Measures ambit's overhead: latency, connection rate, throughput and agent resources, meshed vs direct (as root)"
)]
struct Cli {
    /// Short tests (0.7 s each after 0.2 s of warm-up; the whole bench
    /// about 2 minutes); the figures are noisier.
    #[arg(long)]
    quick: bool,
    /// Runs of every scenario, interleaved (run 1 of all scenarios, then
    /// run 2, …); each figure is the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=20))]
    runs: u16,
    /// Idle connections held through the mesh (`mesh-cross-node`) while the
    /// agents' memory is read.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    idle_conns: u32,
    /// Directory for report.json, report.md and bench.log [default: <target>/bench]
    #[arg(long, env = OUT_ENV)]
    out: Option<PathBuf>,
    /// Runs only the Kubernetes-mode scale bench.
    #[arg(long, conflicts_with_all = ["skip_kube_scale", "waypoint_only", "upgrade_only"])]
    kube_scale_only: bool,
    /// Leaves the Kubernetes-mode scale bench out.
    #[arg(long)]
    skip_kube_scale: bool,
    /// The cluster sizes (pods) the scale bench measures; repeat for more
    /// than one [default: both].
    #[arg(long, value_enum, value_name = "PODS")]
    kube_scale_pods: Vec<kube_scale::Size>,
    /// Runs only the waypoint bench.
    #[arg(long, conflicts_with = "skip_waypoint")]
    waypoint_only: bool,
    /// Leaves the waypoint bench out.
    #[arg(long)]
    skip_waypoint: bool,
    /// Runs only the upgrade (handoff) bench.
    #[arg(long, conflicts_with_all = ["skip_upgrade", "waypoint_only"])]
    upgrade_only: bool,
    /// Leaves the upgrade bench out.
    #[arg(long)]
    skip_upgrade: bool,
    /// Runs only the sustained-churn bench.
    #[arg(long, conflicts_with_all = ["skip_sustain", "waypoint_only", "upgrade_only", "kube_scale_only"])]
    sustain_only: bool,
    /// Leaves the sustained-churn bench out.
    #[arg(long)]
    skip_sustain: bool,
    /// Runs the churn soak for this many minutes instead of the bench
    /// (at least 2; see docs/soak.md).
    #[arg(long, value_name = "MINUTES",
          value_parser = clap::value_parser!(u32).range(i64::from(soak::MIN_MINUTES)..=1440),
          conflicts_with_all = ["quick", "kube_scale_only", "waypoint_only", "upgrade_only", "sustain_only"])]
    soak_minutes: Option<u32>,
    /// With --soak-minutes: seconds between samples.
    #[arg(long, default_value_t = 60, requires = "soak_minutes",
          value_parser = clap::value_parser!(u64).range(5..=600))]
    sample_secs: u64,
}

/// Which parts of the bench run.
#[derive(Clone, Copy)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one independent switch per part of the bench"
)]
struct Parts {
    /// The scenarios and authorization.
    main: bool,
    /// Kubernetes mode at scale, with this many timed changes of each kind,
    /// at these sizes.
    kube_scale: Option<(usize, kube_scale::Sizes)>,
    /// The waypoint.
    waypoint: bool,
    /// The upgrade (handoff).
    upgrade: bool,
    /// Sustained churn.
    sustain: bool,
}

/// What the parts that ran found.
struct Outcome {
    main: Option<Report>,
    kube_scale: Option<kube_scale::KubeScaleReport>,
    waypoint: Option<waypoint::WaypointReport>,
    upgrade: Option<upgrade::UpgradeReport>,
    sustain: Option<sustain::SustainReport>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let task = if cli.soak_minutes.is_some() {
        "soak"
    } else {
        "bench"
    };
    let Some(out_dir) = cli.out.clone().or_else(|| default_out_dir(task)) else {
        eprintln!("ambit-bench: cannot tell where the target directory is; pass --out DIR");
        return ExitCode::FAILURE;
    };
    if let Err(error) = std::fs::create_dir_all(&out_dir) {
        eprintln!("ambit-bench: cannot create {}: {error}", out_dir.display());
        return ExitCode::FAILURE;
    }
    let log = out_dir.join(format!("{task}.log"));
    if let Err(error) = console::redirect_stderr(&log) {
        eprintln!("ambit-bench: cannot log to {}: {error}", log.display());
        return ExitCode::FAILURE;
    }
    if let Err(error) = interrupt::install() {
        console::say(&format!(
            "ambit-bench: cannot install the Ctrl-C handler: {error}"
        ));
        return ExitCode::FAILURE;
    }
    if let Some(minutes) = cli.soak_minutes {
        let plan = soak::Plan {
            minutes,
            sample_secs: cli.sample_secs,
        };
        progress(&format!(
            "churn soak: {minutes} minutes, a sample every {} s; log: {}",
            plan.sample_secs,
            log.display()
        ));
        let outcome = std::panic::catch_unwind(|| {
            plot::load_font().map_err(BenchError::CannotRun)?;
            soak::run(plan)
        });
        return match settle(outcome, task, &log) {
            Ok(report) => publish_soak(&report, &out_dir),
            Err(code) => code,
        };
    }
    let plan = Plan::new(cli.quick, usize::from(cli.runs), cli.idle_conns);
    let only = cli.kube_scale_only || cli.waypoint_only || cli.upgrade_only || cli.sustain_only;
    let parts = Parts {
        main: !only,
        kube_scale: (!cli.skip_kube_scale && (!only || cli.kube_scale_only)).then_some((
            if cli.quick { 20 } else { 50 },
            kube_scale::Sizes::of(&cli.kube_scale_pods),
        )),
        waypoint: !cli.skip_waypoint && (!only || cli.waypoint_only),
        upgrade: !cli.skip_upgrade && (!only || cli.upgrade_only),
        sustain: !cli.skip_sustain && (!only || cli.sustain_only),
    };
    progress(&format!(
        "{} bench, {} run(s), interleaved: {} s per latency and connection test after {} s of warm-up, iperf3 {} s, {} idle connections; log: {}",
        if plan.quick { "quick" } else { "full" },
        plan.runs,
        plan.rr.as_secs_f64(),
        plan.warmup.as_secs_f64(),
        plan.iperf_secs,
        plan.idle_conns,
        log.display()
    ));

    // A panic (a test-bed helper that gives up) unwinds through the cluster
    // and the test bed, which clean up on drop; the hook has shown it.
    let (quick, runs) = (plan.quick, plan.runs);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut outcome = run(plan, parts)?;
        if parts.waypoint {
            outcome.waypoint = Some(waypoint::measure(quick, runs)?);
        }
        if parts.upgrade {
            outcome.upgrade = Some(upgrade::measure(quick, runs)?);
        }
        if parts.sustain {
            outcome.sustain = Some(sustain::measure(quick)?);
        }
        Ok(outcome)
    }));
    match settle(outcome, task, &log) {
        Ok(outcome) => publish_all(&outcome, &out_dir),
        Err(code) => code,
    }
}

/// What came of a run that may have panicked: its result, or the exit
/// code after saying why there is none (`task`: `bench` or `soak`).
fn settle<T>(
    outcome: std::thread::Result<Result<T, BenchError>>,
    task: &str,
    log: &Path,
) -> Result<T, ExitCode> {
    match outcome {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(BenchError::Interrupted)) => {
            console::say("ambit-bench: interrupted; the test bed is removed");
            Err(ExitCode::from(130))
        }
        Ok(Err(BenchError::CannotRun(reason))) => {
            console::say(&format!("ambit-bench: cannot run here: {reason}"));
            console::say(&format!(
                "hint: run as root: sudo -E env \"PATH=$PATH\" cargo xtask {task}"
            ));
            Err(ExitCode::from(2))
        }
        Ok(Err(BenchError::Failed(error))) => {
            console::say(&format!("ambit-bench: {error}"));
            console::say(&format!(
                "the agents' and workloads' output: {}",
                log.display()
            ));
            Err(ExitCode::FAILURE)
        }
        Err(_) => {
            console::say(&format!(
                "ambit-bench: stopped (see above); the agents' and workloads' output: {}",
                log.display()
            ));
            Err(ExitCode::FAILURE)
        }
    }
}

/// Writes `soak.json`, `soak.md` and the plots; fails unless the soak passed.
fn publish_soak(report: &soak::SoakReport, out_dir: &Path) -> ExitCode {
    if let Err(code) = publish_part(out_dir, "soak", report, soak::render) {
        return code;
    }
    if let Err(error) = soak::plot(report, out_dir) {
        console::say(&format!(
            "ambit-bench: cannot draw the soak's plots: {error}"
        ));
        return ExitCode::FAILURE;
    }
    if report.verdict.pass {
        progress("the soak passed");
        return ExitCode::SUCCESS;
    }
    console::say("ambit-bench: the soak failed:");
    for reason in &report.verdict.reasons {
        console::say(&format!("  - {reason}"));
    }
    ExitCode::FAILURE
}

/// Builds the test bed, measures, and removes the test bed.
fn run(plan: Plan, parts: Parts) -> Result<Outcome, BenchError> {
    // Both lookups panic with a hint to build when a binary is missing; do
    // them before anything needs cleaning up.
    let pod_tool = Testbed::bin("pod-tool");
    let _ = Testbed::bin(AGENT_BIN);
    // The plot's font: without it the bench would measure for minutes and
    // then have nothing to label its plot with.
    plot::load_font().map_err(BenchError::CannotRun)?;
    let iperf3 = Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !iperf3.is_ok_and(|status| status.success()) {
        return Err(BenchError::CannotRun(
            "iperf3 is not installed (`cargo xtask setup` installs it)".to_owned(),
        ));
    }
    let mut testbed =
        Testbed::new(TESTBED_NAME).map_err(|skip| BenchError::CannotRun(skip.reason))?;
    let result = (|| {
        let main = if parts.main {
            Some(measure(&mut testbed, plan, &pod_tool)?)
        } else {
            None
        };
        let kube_scale = match parts.kube_scale {
            Some((iterations, sizes)) => {
                Some(kube_scale::measure(&mut testbed, iterations, sizes)?)
            }
            None => None,
        };
        Ok(Outcome {
            main,
            kube_scale,
            waypoint: None,
            upgrade: None,
            sustain: None,
        })
    })();
    progress(&format!(
        "removing the test bed ({}: namespaces, cgroups, bpffs)",
        testbed.id()
    ));
    drop(testbed);
    result
}

/// Starts the cluster and runs every scenario; the cluster (agents first)
/// is stopped on return.
fn measure(testbed: &mut Testbed, plan: Plan, pod_tool: &Path) -> Result<Report, BenchError> {
    let cluster = Cluster::start(testbed, pod_tool)?;
    let testbed: &Testbed = testbed;
    let idle = IdleRss::read(&cluster)?;
    let runner = Runner::new(testbed, plan, pod_tool);
    let mut failures = Vec::new();
    let scenarios = scenario::all(&cluster);
    // Run by run, every scenario in each, so whatever drifts over the
    // minutes (CPU frequency, caches, the host's other work) touches every
    // scenario alike.
    let mut runs: Vec<Vec<_>> = scenarios.iter().map(|_| Vec::new()).collect();
    for run in 1..=plan.runs {
        progress(&format!("run {run} of {}", plan.runs));
        let number = RunNumber { run, of: plan.runs };
        for (scenario, scenario_runs) in scenarios.iter().zip(&mut runs) {
            scenario_runs.push(scenario.run(&runner, testbed, &idle, number, &mut failures)?);
        }
    }
    let authorization = authz::measure(&cluster, &runner, testbed, &mut failures)?;
    let reports = scenarios
        .iter()
        .zip(runs)
        .map(|(scenario, runs)| scenario.report(runs))
        .collect();
    let durations = Durations {
        rr_secs: plan.rr.as_secs_f64(),
        rr_warmup_secs: plan.warmup.as_secs_f64(),
        tput_secs: plan.iperf_secs,
        tput_omit_secs: plan.iperf_omit_secs,
        idle_hold_secs: plan.idle_hold.as_secs_f64(),
        idle_read_after_secs: IDLE_READ_AFTER.as_secs_f64(),
    };
    Ok(Report::new(
        plan.quick,
        plan.runs,
        plan.idle_conns,
        durations,
        reports,
        authorization,
        failures,
    ))
}

/// Publishes what ran: the main report, then `waypoint.*`, `upgrade.*`,
/// `sustain.*` and `kube-scale.*`; fails when an agent did not return to
/// idle after sustained churn.
fn publish_all(outcome: &Outcome, out_dir: &Path) -> ExitCode {
    let code = publish_parts(outcome, out_dir);
    // A missed speed target is the report's news; state that does not go
    // away after its connections did is a defect.
    if let Some(report) = &outcome.sustain
        && !report.returned_to_idle()
    {
        console::say(
            "ambit-bench: an agent did not return to idle after sustained churn (see sustain.md)",
        );
        return ExitCode::FAILURE;
    }
    code
}

/// Writes each part's outputs; the exit code of the first that failed.
fn publish_parts(outcome: &Outcome, out_dir: &Path) -> ExitCode {
    let main = outcome
        .main
        .as_ref()
        .map_or(ExitCode::SUCCESS, |report| publish(report, out_dir));
    let parts = (|| {
        if let Some(report) = &outcome.waypoint {
            publish_part(out_dir, "waypoint", report, waypoint::render)?;
        }
        if let Some(report) = &outcome.upgrade {
            publish_part(out_dir, "upgrade", report, upgrade::render)?;
        }
        if let Some(report) = &outcome.sustain {
            publish_part(out_dir, "sustain", report, sustain::render)?;
        }
        Ok(())
    })();
    if let Err(code) = parts {
        return code;
    }
    let Some(scale) = &outcome.kube_scale else {
        return main;
    };
    let markdown = kube_scale::render(scale);
    print!("\n{markdown}");
    let json = serde_json::to_string_pretty(scale).map(|json| json + "\n");
    let json = json.unwrap_or_default();
    if let Err(code) = write_outputs(
        out_dir,
        &[("kube-scale.json", &json), ("kube-scale.md", &markdown)],
    ) {
        return code;
    }
    progress(&format!(
        "wrote {}",
        out_dir.join("kube-scale.json").display()
    ));
    main
}

/// Prints a part's Markdown and writes `<name>.json` and `<name>.md`.
fn publish_part<T: serde::Serialize>(
    out_dir: &Path,
    name: &str,
    report: &T,
    render: fn(&T) -> String,
) -> Result<(), ExitCode> {
    let markdown = render(report);
    print!("\n{markdown}");
    let json = serde_json::to_string_pretty(report)
        .map(|json| json + "\n")
        .unwrap_or_default();
    let json_name = format!("{name}.json");
    write_outputs(
        out_dir,
        &[(&json_name, &json), (&format!("{name}.md"), &markdown)],
    )?;
    progress(&format!("wrote {}", out_dir.join(&json_name).display()));
    Ok(())
}

/// Writes each (file name, text) into `out_dir`; says which one failed.
fn write_outputs(out_dir: &Path, files: &[(&str, &str)]) -> Result<(), ExitCode> {
    for (name, text) in files {
        let path = out_dir.join(name);
        if let Err(error) = std::fs::write(&path, text) {
            console::say(&format!(
                "ambit-bench: cannot write {}: {error}",
                path.display()
            ));
            return Err(ExitCode::FAILURE);
        }
    }
    Ok(())
}

/// Writes report.json and report.md, prints the Markdown, picks the exit code.
fn publish(report: &Report, out_dir: &Path) -> ExitCode {
    let markdown = report::render(report);
    print!("\n{markdown}");
    let json = match serde_json::to_string_pretty(report) {
        Ok(json) => json + "\n",
        Err(error) => {
            console::say(&format!(
                "ambit-bench: cannot encode the report as JSON: {error}"
            ));
            return ExitCode::FAILURE;
        }
    };
    if let Err(code) = write_outputs(out_dir, &[("report.json", &json), ("report.md", &markdown)]) {
        return code;
    }
    let plot_path = out_dir.join(LATENCY_PLOT);
    match plot::latency_cdf(report, &plot_path) {
        Ok(()) => progress(&format!(
            "wrote {}, report.md and {LATENCY_PLOT}",
            out_dir.join("report.json").display()
        )),
        Err(error) => {
            console::say(&format!(
                "ambit-bench: cannot draw {}: {error}",
                plot_path.display()
            ));
            return ExitCode::FAILURE;
        }
    }
    if report.complete() {
        ExitCode::SUCCESS
    } else {
        console::say(&format!(
            "ambit-bench: {} measurement(s) failed; the agents' and workloads' output: {}",
            report.failures.len(),
            out_dir.join("bench.log").display()
        ));
        ExitCode::FAILURE
    }
}

/// `<target>/<task>`, from this binary's place in `<target>/<profile>/`.
fn default_out_dir(task: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join(task))
}
