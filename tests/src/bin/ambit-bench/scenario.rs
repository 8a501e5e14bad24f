//! The six scenarios and the six tests each runs, with the agents'
//! resource use around the meshed ones, the check that their traffic went
//! the way the scenario says and, in `mesh-cross-node`, the agents' memory
//! with many idle connections open.

use std::fmt::Write as _;
use std::net::SocketAddr;

use ambit_tests::mesh::Agent;
use ambit_tests::{Pod, Testbed};

use self::route::{Route, Snapshot};
use crate::cluster::{Cluster, RR_1B_PORT, RR_1K_PORT};
use crate::console::{finish_line, progress, start_line};
use crate::error::BenchError;
use crate::measure::Runner;
use crate::report::{
    AgentFigures, CrrFigures, Failure, RrFigures, RrResult, ScenarioReport, ScenarioRun,
    TputFigures, median_report, round,
};
use crate::usage::{self, CpuSample};

mod idle_conns;
mod route;

/// Parallel connections of `rr_1b_x8`.
const X8_CONNS: u16 = 8;

/// One client/server pair and, when meshed, the agents on its path.
pub struct Scenario<'a> {
    /// `direct-cross-node`, ….
    pub name: &'static str,
    client: &'a Pod,
    server: &'a Pod,
    /// Whether the request/response clients read with epoll (`pod-tool rr
    /// --epoll`), as the kernel path's contract asks of its applications.
    epoll: bool,
    mesh: Option<MeshPath<'a>>,
}

/// The agents a meshed scenario's traffic crosses.
struct MeshPath<'a> {
    /// The client pod's agent.
    client_agent: &'a Agent,
    /// The server pod's agent: the same as the client's on one node.
    server_agent: &'a Agent,
    /// Which way the connections go, checked after the tests.
    route: Route,
    /// Whether this scenario holds the idle connections while the agents'
    /// memory is read.
    holds_idle_conns: bool,
}

/// One run's position, for progress lines and failures.
#[derive(Clone, Copy)]
pub struct RunNumber {
    /// 1 for the first.
    pub run: usize,
    /// How many there are.
    pub of: usize,
}

/// Each agent's resident memory after start-up, before any load.
pub struct IdleRss {
    /// (node name, MiB), one per agent.
    by_node: Vec<(String, f64)>,
}

#[derive(Clone, Copy)]
enum Test {
    Rr1b,
    Rr1k,
    Rr1bX8,
    Crr,
    Tput1,
    Tput4,
}

const TESTS: [Test; 6] = [
    Test::Rr1b,
    Test::Rr1k,
    Test::Rr1bX8,
    Test::Crr,
    Test::Tput1,
    Test::Tput4,
];

/// The scenarios, in the order they run: each direct one just before the
/// meshed ones compared with it, the user-space path first, then the
/// kernel path.
pub fn all(cluster: &Cluster) -> [Scenario<'_>; 6] {
    let pods = &cluster.pods;
    [
        Scenario {
            name: "direct-cross-node",
            client: &pods.client_direct,
            server: &pods.server_direct,
            epoll: false,
            mesh: None,
        },
        Scenario {
            name: "mesh-cross-node",
            client: &pods.client,
            server: &pods.server,
            epoll: false,
            mesh: Some(MeshPath {
                client_agent: &cluster.client_agent,
                server_agent: &cluster.server_agent,
                route: Route::BothProxies,
                holds_idle_conns: true,
            }),
        },
        Scenario {
            name: "mesh-cross-node-kernel",
            client: &pods.kernel_client,
            server: &pods.kernel_server,
            epoll: true,
            mesh: Some(MeshPath {
                client_agent: &cluster.client_agent,
                server_agent: &cluster.server_agent,
                route: Route::KernelPathProxies,
                holds_idle_conns: false,
            }),
        },
        Scenario {
            name: "direct-same-node",
            client: &pods.client_direct,
            server: &pods.local_server_direct,
            epoll: false,
            mesh: None,
        },
        Scenario {
            name: "mesh-same-node",
            client: &pods.client,
            server: &pods.local_server,
            epoll: false,
            mesh: Some(MeshPath {
                client_agent: &cluster.client_agent,
                server_agent: &cluster.client_agent,
                route: Route::OutboundProxy,
                holds_idle_conns: false,
            }),
        },
        Scenario {
            name: "mesh-same-node-kernel",
            client: &pods.local_kernel_client,
            server: &pods.kernel_server,
            epoll: true,
            mesh: Some(MeshPath {
                client_agent: &cluster.server_agent,
                server_agent: &cluster.server_agent,
                route: Route::SameNodeKernel,
                holds_idle_conns: false,
            }),
        },
    ]
}

// === impl IdleRss ===

impl IdleRss {
    /// Reads both agents' `VmRSS` now.
    pub fn read(cluster: &Cluster) -> Result<Self, BenchError> {
        let by_node = [&cluster.client_agent, &cluster.server_agent]
            .into_iter()
            .map(|agent| Ok((agent.node.name.clone(), agent_rss(agent)?)))
            .collect::<Result<_, BenchError>>()?;
        Ok(Self { by_node })
    }

    /// The reading of `agent`.
    fn of(&self, agent: &Agent) -> Option<f64> {
        self.by_node
            .iter()
            .find(|(node, _)| *node == agent.node.name)
            .map(|&(_, mib)| mib)
    }
}

/// An agent's `VmRSS` now, MiB.
fn agent_rss(agent: &Agent) -> Result<f64, BenchError> {
    usage::rss_mib(agent.proc.pid()).map_err(|error| {
        BenchError::failed(format!(
            "cannot read the memory of the agent on {}: {error}",
            agent.node.name
        ))
    })
}

// === impl Scenario ===

impl Scenario<'_> {
    /// Runs every test once; a failed test is recorded in `failures` and
    /// leaves its figure empty. Only an interruption ends the run early.
    pub fn run(
        &self,
        runner: &Runner<'_>,
        tb: &Testbed,
        idle: &IdleRss,
        number: RunNumber,
        failures: &mut Vec<Failure>,
    ) -> Result<ScenarioRun, BenchError> {
        let mut report = ScenarioRun {
            run: number.run,
            rr_1b: None,
            rr_1k: None,
            rr_1b_x8: None,
            crr: None,
            tput_1: None,
            tput_4: None,
            agent: None,
            agent_server: None,
            rr_1b_cdf: Vec::new(),
        };
        let route_before = self.snapshot(tb);
        let cpu_before = self.cpu_samples();
        for test in TESTS {
            crate::error::check_interrupted()?;
            start_line(&self.label(number, test.name()));
            match self.run_test(runner, test, &mut report) {
                Ok(summary) => finish_line(&summary),
                Err(BenchError::Failed(error)) => {
                    finish_line("FAILED");
                    self.record_failure(number, test.name(), error, failures);
                }
                Err(other) => {
                    finish_line("interrupted");
                    return Err(other);
                }
            }
        }
        let Some(mesh) = &self.mesh else {
            return Ok(report);
        };
        // The CPU figure covers the six tests, not the idle hold after them.
        let cpu_after = self.cpu_samples();
        let held = if mesh.holds_idle_conns {
            self.hold_idle_conns(runner, mesh, number, failures)?
        } else {
            None
        };
        let cpu = [(cpu_before.0, cpu_after.0), (cpu_before.1, cpu_after.1)];
        (report.agent, report.agent_server) =
            self.agents(mesh, cpu, idle, held.as_ref(), number, failures);
        if let Some(before) = route_before {
            let after = Snapshot::take(tb, mesh, self.client, self.server);
            match before.check(&after, mesh, self.client, self.server) {
                Ok(notes) => {
                    for note in notes {
                        progress(&self.label(number, &note));
                    }
                }
                Err(error) => {
                    self.record_failure(number, mesh.route.check_name(), error, failures);
                }
            }
        }
        Ok(report)
    }

    /// `[run/of] scenario: what`, for progress lines.
    fn label(&self, number: RunNumber, what: &str) -> String {
        format!("[{}/{}] {}: {what}", number.run, number.of, self.name)
    }

    /// Holds the idle connections and reads the agents' memory meanwhile;
    /// `None` when that failed (recorded in `failures`).
    fn hold_idle_conns(
        &self,
        runner: &Runner<'_>,
        mesh: &MeshPath<'_>,
        number: RunNumber,
        failures: &mut Vec<Failure>,
    ) -> Result<Option<idle_conns::HeldRss>, BenchError> {
        crate::error::check_interrupted()?;
        start_line(&self.label(
            number,
            &format!("{} idle connections", runner.plan().idle_conns),
        ));
        match idle_conns::hold(runner, self.client, self.server, mesh) {
            Ok((rss, summary)) => {
                finish_line(&summary);
                Ok(Some(rss))
            }
            Err(BenchError::Failed(error)) => {
                finish_line("FAILED");
                self.record_failure(number, "idle_conns", error, failures);
                Ok(None)
            }
            Err(other) => {
                finish_line("interrupted");
                Err(other)
            }
        }
    }

    /// The agents' figures of this run: the client side's agent, and the
    /// server side's when it is another one. `cpu` holds (before, after)
    /// per side; a figure that cannot be had is recorded in `failures`.
    fn agents(
        &self,
        mesh: &MeshPath<'_>,
        cpu: [(Option<CpuSample>, Option<CpuSample>); 2],
        idle: &IdleRss,
        held: Option<&idle_conns::HeldRss>,
        number: RunNumber,
        failures: &mut Vec<Failure>,
    ) -> (Option<AgentFigures>, Option<AgentFigures>) {
        let two_agents = !std::ptr::eq(mesh.client_agent, mesh.server_agent);
        let sides = [
            (
                mesh.client_agent,
                cpu[0],
                held.map(|held| held.client_agent),
            ),
            (
                mesh.server_agent,
                cpu[1],
                held.map(|held| held.server_agent),
            ),
        ];
        let mut figures = [None, None];
        for (side, (agent, (before, after), held)) in sides.into_iter().enumerate() {
            if side == 1 && !two_agents {
                break;
            }
            match agent_figures(agent, before, after, idle.of(agent), held) {
                Ok(agent_figures) => figures[side] = Some(agent_figures),
                Err(error) => self.record_failure(number, "agent", error, failures),
            }
        }
        for (agent, figures) in [mesh.client_agent, mesh.server_agent]
            .into_iter()
            .zip(figures)
        {
            if let Some(figures) = figures {
                progress(&self.label(
                    number,
                    &format!(
                        "agent on {}: {:.2} cores, RSS {:.1} MiB idle, {:.1} MiB peak",
                        agent.node.name,
                        figures.cpu_cores,
                        figures.rss_mb_idle,
                        figures.rss_mb_peak
                    ),
                ));
            }
        }
        let [client, server] = figures;
        (client, server)
    }

    /// The scenario's report: the medians of its runs.
    pub fn report(&self, runs: Vec<ScenarioRun>) -> ScenarioReport {
        median_report(
            self.name,
            self.mesh.is_some(),
            self.client.name.clone(),
            self.server.name.clone(),
            runs,
        )
    }

    fn run_test(
        &self,
        runner: &Runner<'_>,
        test: Test,
        report: &mut ScenarioRun,
    ) -> Result<String, BenchError> {
        let one_byte_server = SocketAddr::from((self.server.ipv4, RR_1B_PORT));
        let kilobyte_server = SocketAddr::from((self.server.ipv4, RR_1K_PORT));
        match test {
            Test::Rr1b => runner
                .rr(self.client, one_byte_server, 1, 1, self.epoll)
                .map(|RrResult { figures, cdf }| {
                    report.rr_1b = Some(figures);
                    report.rr_1b_cdf = cdf;
                    rr_summary(&figures)
                }),
            Test::Rr1k => runner
                .rr(self.client, kilobyte_server, 1024, 1, self.epoll)
                .map(|result| {
                    report.rr_1k = Some(result.figures);
                    rr_summary(&result.figures)
                }),
            Test::Rr1bX8 => runner
                .rr(self.client, one_byte_server, 1, X8_CONNS, self.epoll)
                .map(|result| {
                    report.rr_1b_x8 = Some(result.figures);
                    rr_summary(&result.figures)
                }),
            Test::Crr => runner.crr(self.client, one_byte_server).map(|figures| {
                report.crr = Some(figures);
                crr_summary(&figures)
            }),
            Test::Tput1 => runner.tput(self.client, self.server, 1).map(|figures| {
                report.tput_1 = Some(figures);
                tput_summary(figures)
            }),
            Test::Tput4 => runner.tput(self.client, self.server, 4).map(|figures| {
                report.tput_4 = Some(figures);
                tput_summary(figures)
            }),
        }
    }

    /// CPU samples of the client-side and server-side agents; `None` per
    /// agent that could not be read (and for direct scenarios).
    fn cpu_samples(&self) -> (Option<CpuSample>, Option<CpuSample>) {
        let Some(mesh) = &self.mesh else {
            return (None, None);
        };
        let take = |agent: &Agent| CpuSample::take(agent.proc.pid()).ok();
        (take(mesh.client_agent), take(mesh.server_agent))
    }

    /// What the route check compares the scenario's end with; `None` for
    /// direct scenarios.
    fn snapshot(&self, tb: &Testbed) -> Option<Snapshot> {
        let mesh = self.mesh.as_ref()?;
        Some(Snapshot::take(tb, mesh, self.client, self.server))
    }

    fn record_failure(
        &self,
        number: RunNumber,
        test: &'static str,
        error: String,
        failures: &mut Vec<Failure>,
    ) {
        record_failure(failures, number, self.name, test, error);
    }
}

/// Records a failed test of run `number` of `scenario`: a progress line,
/// the whole error in the log, and an entry in `failures`.
pub fn record_failure(
    failures: &mut Vec<Failure>,
    number: RunNumber,
    scenario: &'static str,
    test: &'static str,
    error: String,
) {
    progress(&format!(
        "[{}/{}] {scenario}: {test} failed: {}",
        number.run,
        number.of,
        error.lines().next().unwrap_or("")
    ));
    eprintln!(
        "ambit-bench: run {}: {scenario}: {test} failed: {error}",
        number.run
    );
    failures.push(Failure {
        run: Some(number.run),
        scenario,
        test,
        error,
    });
}

/// An agent's figures for one run of a scenario.
fn agent_figures(
    agent: &Agent,
    before: Option<CpuSample>,
    after: Option<CpuSample>,
    idle: Option<f64>,
    held: Option<f64>,
) -> Result<AgentFigures, String> {
    let (Some(before), Some(after)) = (before, after) else {
        return Err(format!(
            "cannot read the CPU time of the agent on {}",
            agent.node.name
        ));
    };
    let Some(idle) = idle else {
        return Err(format!(
            "no idle memory reading of the agent on {}",
            agent.node.name
        ));
    };
    let peak = usage::peak_rss_mib(agent.proc.pid()).map_err(|error| {
        format!(
            "cannot read the memory of the agent on {}: {error}",
            agent.node.name
        )
    })?;
    Ok(AgentFigures {
        cpu_cores: round(before.cores_until(&after), 3),
        rss_mb_idle: round(idle, 2),
        rss_mb_peak: round(peak, 2),
        rss_mb_1000_idle: held.map(rss_figure),
    })
}

/// MiB as the report shows them.
fn rss_figure(mib: f64) -> f64 {
    round(mib, 2)
}

// === impl Test ===

impl Test {
    /// The key in the report.
    fn name(self) -> &'static str {
        match self {
            Self::Rr1b => "rr_1b",
            Self::Rr1k => "rr_1k",
            Self::Rr1bX8 => "rr_1b_x8",
            Self::Crr => "crr",
            Self::Tput1 => "tput_1",
            Self::Tput4 => "tput_4",
        }
    }
}

/// A progress line's summary of request/response figures.
pub fn rr_summary(figures: &RrFigures) -> String {
    format!(
        "p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, {:.0} round trips/s",
        figures.p50_us, figures.p90_us, figures.p99_us, figures.rate
    )
}

/// A progress line's summary of connection-rate figures.
pub fn crr_summary(figures: &CrrFigures) -> String {
    let mut summary = format!(
        "{:.0} connections/s, p50 {:.1} µs, p99 {:.1} µs",
        figures.rate, figures.p50_us, figures.p99_us
    );
    if figures.errors > 0 {
        let _ = write!(summary, " ({} failed connections)", figures.errors);
    }
    summary
}

fn tput_summary(figures: TputFigures) -> String {
    format!("{:.2} Gbit/s", figures.gbps)
}
