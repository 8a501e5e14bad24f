//! `ambit-demo`: a two-node meshed cluster on this host, seven TCP flows
//! through it, a table of what the mesh did with each, then L7 checks
//! through a waypoint on two more nodes.
//!
//! The demo builds a test bed of simulated nodes and pods (network namespaces
//! and cgroups), runs the real node agent on each node, and sends 1 MiB echo
//! exchanges between pods. It tells its story in acts, one module each:
//!
//! - `cluster`: the nodes, the pods, the node agents that enroll the meshed
//!   ones, an echo server in every pod;
//! - `l4_flows`: seven flows between the pods, each checked for capture,
//!   delivery, security (mutual TLS, same-node fast path, plaintext) and the
//!   authorization verdict;
//! - `inspection`: the agents' eBPF counters, and what `ambit` shows on each
//!   node with a connection open;
//! - `l7`: a 90/10 canary split and HTTP authorization through a waypoint,
//!   on two more nodes;
//! - `report`: the tables at the end;
//! - `steps`: what every act uses (progress lines, waits, errors).
//!
//! Modules import only downward, bottom first: `steps`, `cluster`,
//! `inspection`, `l4_flows`, `l7`, `report`.
//!
//! The terminal gets one line per step and per flow, then the tables; every
//! process's output (agents, waypoint, servers, clients, `ambit`) goes to a
//! file of its own under the log directory, which the demo names at the end
//! (`--verbose` also streams it to the terminal, prefixed).
//!
//! `cargo xtask demo` builds the release binaries and runs this as root.
//! Exit status: 0 when every flow behaved as expected, 1 when one did not or
//! the demo could not finish, 2 when this machine cannot host a test bed, 130
//! when interrupted. Everything the demo made is removed before it exits,
//! also after Ctrl-C or SIGTERM; the logs stay.

mod cluster;
mod inspection;
mod l4_flows;
mod l7;
mod report;
mod steps;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ambit_tests::mesh::AGENT_BIN;
use ambit_tests::{ProcessLogs, Testbed, interrupt};
use clap::{Parser, ValueEnum};

use crate::cluster::NodeAgents;
use crate::report::DemoReport;
use crate::steps::{DemoError, check_interrupted, progress};

/// The test bed's name, part of every namespace and cgroup it creates.
const TESTBED_NAME: &str = "demo";

#[derive(Parser)]
#[command(
    about = "Runs a two-node ambit mesh on this host (as root) and shows which flows it captured"
)]
struct Cli {
    /// How to print the results.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    /// Show every `ambit` listing at the end (workloads, services, certs,
    /// policies, check, the pinned eBPF state), not only `connections`
    /// (`bpf prog list` and the rest go to `inspection.txt` in the log
    /// directory otherwise): the output docs/operations.md shows.
    #[arg(long)]
    every_command: bool,
    /// Also stream every process's output (agents, waypoint, servers) to
    /// the terminal, each line prefixed with the process's name and PID.
    #[arg(long, short)]
    verbose: bool,
    /// Where each process's output goes, one `<name>-<pid>.log` file per
    /// process; default: `ambit-demo/<test bed id>` in the temporary
    /// directory. It is kept after the demo.
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON document for scripts.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = interrupt::install() {
        eprintln!("ambit-demo: cannot install the Ctrl-C handler: {error}");
        return ExitCode::FAILURE;
    }
    // Both lookups panic with a hint to build when a binary is missing; do
    // them before anything needs cleaning up.
    let pod_tool = Testbed::bin("pod-tool");
    let _ = Testbed::bin(AGENT_BIN);

    let mut testbed = match Testbed::new(TESTBED_NAME) {
        Ok(testbed) => testbed,
        Err(skip) => {
            eprintln!("ambit-demo: cannot build a test bed here: {skip}");
            eprintln!("hint: run as root: sudo cargo xtask demo");
            return ExitCode::from(2);
        }
    };
    let log_dir = cli
        .log_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("ambit-demo").join(testbed.id()));
    if let Err(error) = std::fs::create_dir_all(&log_dir) {
        eprintln!(
            "ambit-demo: cannot create the log directory {}: {error}",
            log_dir.display()
        );
        return ExitCode::FAILURE;
    }
    testbed.set_process_logs(ProcessLogs {
        dir: Some(log_dir.clone()),
        echo: cli.verbose,
    });
    let mut agents = NodeAgents::default();
    let outcome = run_demo(&mut testbed, &mut agents, &pod_tool, &cli, &log_dir);
    let code = finish(outcome, &cli, &agents);
    drop(agents);
    progress(&format!(
        "removing the test bed ({}: namespaces, cgroups, bpffs)",
        testbed.id()
    ));
    drop(testbed);
    progress(&format!(
        "logs: {} (one file per process)",
        log_dir.display()
    ));
    code
}

/// Builds the cluster, runs the flows and collects the report. The agents go
/// into `agents` as they start so the caller can show their output and stop
/// them, whatever happens here.
fn run_demo(
    testbed: &mut Testbed,
    agents: &mut NodeAgents,
    pod_tool: &Path,
    cli: &Cli,
    log_dir: &Path,
) -> Result<DemoReport, DemoError> {
    let workloads = cluster::build(testbed, agents, pod_tool)?;
    let flows = l4_flows::run(testbed, agents, &workloads, pod_tool)?;
    let (counters, inspections) =
        inspection::run(testbed, agents, &workloads, pod_tool, cli.every_command)?;
    if !cli.every_command {
        inspection::save(&inspections, &log_dir.join(inspection::FILE_NAME));
    }
    check_interrupted()?;
    let l7 = l7::run(testbed, progress)
        .map_err(|detail| DemoError::step("the waypoint part could not run".to_owned(), detail))?;
    Ok(DemoReport {
        l7,
        flows_as_expected: flows.iter().filter(|flow| flow.as_expected).count(),
        flows_total: flows.len(),
        flows,
        counters,
        inspections,
    })
}

/// Prints the results (or why there are none) and picks the exit code.
fn finish(outcome: Result<DemoReport, DemoError>, cli: &Cli, agents: &NodeAgents) -> ExitCode {
    let report = match outcome {
        Ok(report) => report,
        // A Ctrl-C from the terminal reaches the agents and workloads too, so
        // a step may have failed because of it: the interruption is the news.
        Err(DemoError::Interrupted) => return interrupted(),
        Err(_) if interrupt::requested() => return interrupted(),
        Err(DemoError::Step { what, detail }) => {
            eprintln!("ambit-demo: {what}");
            if !detail.is_empty() {
                eprintln!("{detail}");
            }
            agents.print_reports();
            return ExitCode::FAILURE;
        }
    };
    match cli.output {
        OutputFormat::Table => print!("{}", report::render(&report, cli.every_command)),
        OutputFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("ambit-demo: cannot encode the report as JSON: {error}");
                return ExitCode::FAILURE;
            }
        },
    }
    let l7_ok = report.l7.iter().all(|check| check.ok);
    if report.flows_as_expected == report.flows_total && l7_ok {
        return ExitCode::SUCCESS;
    }
    if !l7_ok {
        eprintln!("\nambit-demo: some waypoint checks did not behave as expected");
    }
    eprintln!("\nambit-demo: some flows did not behave as expected; the processes involved said:");
    for flow in report.flows.iter().filter(|flow| !flow.as_expected) {
        eprintln!("{}", flow.client_report);
    }
    agents.print_reports();
    ExitCode::FAILURE
}

fn interrupted() -> ExitCode {
    eprintln!("ambit-demo: interrupted; cleaning up");
    ExitCode::from(130)
}
