//! The churn soak (`--soak-minutes N`): everything changes at once, for
//! the whole time, on a test bed of two nodes and 41 pods, and nothing
//! may grow, fail without an excuse or crash.
//!
//! At once and throughout: meshed traffic (new connections,
//! request/response on long-lived connections, four long streams, HTTP
//! through the waypoint; [`traffic`]); flip pods leaving and rejoining the
//! mesh, DENY policies that cut open connections, ALLOW policies, routes
//! changing under the waypoint ([`churn`]); certificates of
//! [`CERT_LIFETIME_SECS`] s, so rotated every 30 s; an agent handoff every
//! [`HANDOFF_EVERY`] (alternating nodes; halfway for runs under 10
//! minutes); and three bad objects that must stay rejected with a status
//! ([`config`]). Every `--sample-secs` (default 60) it samples each
//! agent's and the waypoint's RSS, fds, tasks and threads and each node's
//! eBPF map entries ([`sample`]). [`judge`] decides: a series that grows
//! (slope test over the second half), a failure no change explains, a
//! crash, or a bad object that is not rejected (or a good one disturbed)
//! fails the soak. docs/soak.md explains all of it.

mod bed;
mod churn;
mod config;
mod judge;
mod lifecycle;
mod plots;
mod report;
mod sample;
mod traffic;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use ambit_tests::mesh::write_atomically;
use ambit_tests::waypoint::WaypointMesh;
use ambit_tests::{Pod, Proc, Testbed};

use self::bed::{NodeAgents, SoakPods};
use self::churn::Churn;
use self::judge::Point;
use self::report::{BadObjects, HandoffRecord, RotationReport, SeriesReport, TrafficReport};
use self::sample::{Figures, Reading, Rotations, Statuses};
use self::traffic::{Load, Reported};
use crate::console::progress;
use crate::error::{BenchError, check_interrupted};

pub use self::plots::draw as plot;
pub use self::report::{SoakReport, render};

/// The shortest soak: two samples in the second half need two minutes.
pub const MIN_MINUTES: u32 = 2;

/// Workload certificates' lifetime (agents and waypoint): rotated at
/// half-life, every 30 s.
pub const CERT_LIFETIME_SECS: u64 = 60;

/// How long the agents keep a metric series that stopped changing
/// (`--metrics-retain-idle-secs`; 10 minutes by default): well under an
/// agent's warm-up ([`judge::WARM_UP_SECS`]), so that the series of the
/// DENY pairs, pods and policies the churn left behind have gone by the
/// time growth is judged, and the judged level is what the churn keeps in
/// use. An agent lives 10 minutes here (a handoff every 5, alternating
/// nodes), shorter than the default retention, which would show growth
/// that eviction ends only later.
pub const METRICS_RETAIN_IDLE_SECS: u64 = 60;

/// Time between handoffs.
pub const HANDOFF_EVERY: Duration = Duration::from_mins(5);

/// Traffic before the first sample, so that pools and certificates are
/// in place.
const WARM_UP: Duration = Duration::from_secs(10);

/// The clients run this much past the last sample.
const LOAD_SLACK: Duration = Duration::from_secs(15);

/// How often the loop looks at the clock.
const TICK: Duration = Duration::from_millis(100);

/// How long a retired agent may take to exit once the clients stopped:
/// the waypoint closes its idle backend connections, the last thing a
/// retired agent may carry, within a minute and a quarter.
const DRAIN_AFTER_END: Duration = Duration::from_secs(90);

/// The soak's length and sampling.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Minutes of churn.
    pub minutes: u32,
    /// Seconds between samples.
    pub sample_secs: u64,
}

/// Everything the running soak holds.
struct Soak<'a> {
    tb: &'a Testbed,
    mesh: &'a WaypointMesh,
    pods: &'a SoakPods,
    plan: Plan,
    agents: Vec<NodeAgents>,
    servers: Vec<Proc>,
    loads: Vec<Load>,
    churn: Churn,
    config: String,
    started: Instant,
    started_ms: u64,
    readings: Vec<Reading>,
    series: BTreeMap<String, (f64, Vec<Point>)>,
    reported: Vec<Reported>,
    rotations: Rotations,
    bad_objects: BadObjects,
    problems: Vec<String>,
    crashes: Vec<String>,
    /// Servers whose exit is already among the crashes, by PID.
    gone: HashSet<u32>,
    handoffs: Vec<HandoffRecord>,
}

/// Runs the soak on a test bed of its own and judges it.
pub fn run(plan: Plan) -> Result<SoakReport, BenchError> {
    let mut tb = Testbed::new("soak").map_err(|skip| BenchError::CannotRun(skip.reason))?;
    progress("soak: creating two nodes and 41 pods");
    let n1 = tb.add_node("n1");
    let n2 = tb.add_node("n2");
    let mut mesh = WaypointMesh::without_agents(&mut tb, n1.clone(), n2.clone());
    let pods = SoakPods::add(&mut tb, &n1, &n2);
    for pod in pods.all().chain(mesh.enrolled()) {
        crate::cluster::set_sysctls(pod)?;
    }
    crate::cluster::raise_open_file_limit();
    check_interrupted()?;
    let mut soak = Soak::start(&tb, &mut mesh, &pods, plan)?;
    let outcome = soak.churn_and_sample();
    if matches!(outcome, Err(BenchError::Interrupted)) {
        return Err(BenchError::Interrupted);
    }
    let report = soak.finish(outcome.err());
    drop(soak);
    progress(&format!("removing the test bed ({})", tb.id()));
    drop(mesh);
    drop(tb);
    Ok(report)
}

/// Milliseconds since the epoch.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The agents' arguments besides their configuration.
fn agent_args() -> [String; 4] {
    [
        "--cert-lifetime-secs".to_owned(),
        CERT_LIFETIME_SECS.to_string(),
        "--metrics-retain-idle-secs".to_owned(),
        METRICS_RETAIN_IDLE_SECS.to_string(),
    ]
}

// === impl Soak ===

impl<'a> Soak<'a> {
    /// Starts the agents, the waypoint and its backends, the servers and
    /// the clients, and lets the traffic warm up.
    fn start(
        tb: &'a Testbed,
        mesh: &'a mut WaypointMesh,
        pods: &'a SoakPods,
        plan: Plan,
    ) -> Result<Self, BenchError> {
        let mut churn = Churn::new(
            pods.flips.clone(),
            traffic::deny_pairs(pods),
            Instant::now(),
        );
        let config = churn.config_text(mesh, pods);
        write_atomically(&mesh.config_path, &config);
        let args = agent_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut enrolled: Vec<&Pod> = mesh.enrolled();
        enrolled.extend(pods.all());
        let mut agents = Vec::new();
        for node in [&mesh.n1, &mesh.n2] {
            progress(&format!("soak: starting the agent on {}", node.name));
            agents.push(NodeAgents::start(tb, node, &config, &enrolled, &args));
        }
        progress("soak: starting the backends, the waypoint and the servers");
        for pod in [mesh.v1.clone(), mesh.v2.clone(), mesh.v3.clone()] {
            mesh.serve_http(tb, &pod, &[]);
        }
        let lifetime = format!("{CERT_LIFETIME_SECS}s");
        mesh.start_waypoint(tb, &["--cert-lifetime", &lifetime]);
        let servers = traffic::start_servers(tb, pods);
        check_interrupted()?;
        let secs = (WARM_UP + LOAD_SLACK).as_secs() + u64::from(plan.minutes) * 60;
        let loads = traffic::start_clients(tb, pods, mesh, secs);
        progress(&format!(
            "soak: {} clients started; {} s of warm-up",
            loads.len(),
            WARM_UP.as_secs()
        ));
        std::thread::sleep(WARM_UP);
        churn.begin(Instant::now());
        let mesh: &'a WaypointMesh = mesh;
        Ok(Self {
            tb,
            mesh,
            pods,
            plan,
            agents,
            servers,
            loads,
            churn,
            config,
            started: Instant::now(),
            started_ms: unix_ms(),
            readings: Vec::new(),
            series: BTreeMap::new(),
            reported: Vec::new(),
            rotations: Rotations::default(),
            bad_objects: BadObjects::default(),
            problems: Vec::new(),
            crashes: Vec::new(),
            gone: HashSet::new(),
            handoffs: Vec::new(),
        })
    }

    /// The soak's loop: churn, samples and handoffs until the end.
    fn churn_and_sample(&mut self) -> Result<(), BenchError> {
        let length = Duration::from_secs(u64::from(self.plan.minutes) * 60);
        let end = self.started + length;
        let gap = Duration::from_secs(self.plan.sample_secs);
        let every = if self.plan.minutes >= 10 {
            HANDOFF_EVERY
        } else {
            length / 2
        };
        // Halfway between two samples, so that no sample reads an agent
        // in the middle of one.
        let mut next_handoff = self.started + every.saturating_sub(gap / 2);
        // The first sample once a whole gap of readings is in.
        let mut next_sample = self.started + gap;
        let every_reading = (gap / sample::READINGS_PER_SAMPLE).max(Duration::from_secs(1));
        let mut next_reading = self.started;
        let mut next_check = self.started;
        progress(&format!(
            "soak: {} minutes of churn, a sample every {} s, a handoff every {} s",
            self.plan.minutes,
            gap.as_secs(),
            every.as_secs()
        ));
        loop {
            check_interrupted()?;
            let now = Instant::now();
            if now >= next_reading {
                next_reading += every_reading;
                self.read()?;
            }
            if now >= next_sample {
                let last = next_sample >= end;
                self.sample();
                if last {
                    return Ok(());
                }
                next_sample = (next_sample + gap).min(end);
            }
            if self.churn.tick(now, unix_ms()) {
                self.write_config();
            }
            if now >= next_handoff && now < end {
                next_handoff += every;
                self.hand_off()?;
            }
            if now >= next_check {
                next_check = now + Duration::from_secs(1);
                self.check_processes()?;
            }
            std::thread::sleep(TICK);
        }
    }

    /// Rewrites the configuration of both agents and the waypoint.
    fn write_config(&mut self) {
        self.config = self.churn.config_text(self.mesh, self.pods);
        write_atomically(&self.mesh.config_path, &self.config);
        for agents in &self.agents {
            agents.active.set_config_text(&self.config);
        }
    }

    /// One sample: every process's figures, the maps, rotations, statuses.
    fn sample(&mut self) {
        let t_secs = self.started.elapsed().as_secs_f64();
        let mut statuses = Statuses::default();
        let stable: Vec<&Pod> = self
            .mesh
            .enrolled()
            .into_iter()
            .chain(self.pods.always())
            .collect();
        for agents in &self.agents {
            self.rotations
                .observe(self.tb, &agents.active, agents.generation);
            statuses.check_agent(self.tb, &agents.active, &stable, &self.pods.typo);
        }
        statuses.check_waypoint(self.tb, self.mesh);
        let readings = std::mem::take(&mut self.readings);
        for (who, process, figures) in sample::sampled(&readings) {
            // The maps and the waypoint live as long as the soak.
            let age_secs = self
                .agents
                .iter()
                .find(|agents| who == format!("{} agent", agents.node.name))
                .map_or(t_secs + WARM_UP.as_secs_f64(), |agents| {
                    agents.started.elapsed().as_secs_f64()
                });
            self.record(&who, &figures, process, t_secs, age_secs);
        }
        self.bad_objects.checks += 1;
        for (last, now) in [
            (&mut self.bad_objects.policy, statuses.policy),
            (&mut self.bad_objects.route, statuses.route),
            (&mut self.bad_objects.label, statuses.label),
        ] {
            if now.is_some() {
                *last = now;
            }
        }
        for problem in statuses.problems {
            self.problems.push(format!("{t_secs:.0} s: {problem}"));
        }
        for expired in self.rotations.expired.drain(..) {
            self.problems
                .push(format!("{t_secs:.0} s: an expired certificate: {expired}"));
        }
        let ops: u64 = self.loads.iter().map(|l| l.ok).sum();
        progress(&format!(
            "soak: {t_secs:.0} s: sampled; {ops} operations, {} failures reported, {} rotations, {} problem(s)",
            self.reported.len(),
            self.rotations.seen,
            self.problems.len()
        ));
    }

    /// One reading of every agent, its node's maps and the waypoint.
    fn read(&mut self) -> Result<(), BenchError> {
        for agents in &self.agents {
            let (process, maps) = sample::agent(self.tb, &agents.active)?;
            let node = &agents.node.name;
            self.readings.push(Reading {
                who: format!("{node} agent"),
                process: u32::from(agents.generation) + 1,
                figures: process,
            });
            self.readings.push(Reading {
                who: format!("{node} maps"),
                process: 0,
                figures: maps,
            });
        }
        self.readings.push(Reading {
            who: "waypoint".to_owned(),
            process: 1,
            figures: sample::waypoint(self.mesh.waypoint().pid())?,
        });
        Ok(())
    }

    /// Adds one sample of `who`'s figures to their series.
    fn record(&mut self, who: &str, figures: &Figures, process: u32, t_secs: f64, age_secs: f64) {
        for (figure, value) in figures {
            let floor = sample::PROCESS_FIGURES
                .iter()
                .find(|(name, _)| name == figure)
                .map_or(sample::MAP_FLOOR, |(_, floor)| *floor);
            self.series
                .entry(format!("{who}: {figure}"))
                .or_insert_with(|| (floor, Vec::new()))
                .1
                .push(Point {
                    t_secs,
                    value: *value,
                    process,
                    age_secs,
                });
        }
    }

    /// Stops the clients (at once when the soak stopped early), waits for
    /// the retired agents, judges and reports.
    fn finish(&mut self, aborted: Option<BenchError>) -> SoakReport {
        let run_secs = self.started.elapsed().as_secs_f64();
        // The planned length, or what ran of it when the soak stopped early.
        let judged_secs = run_secs.min(f64::from(self.plan.minutes) * 60.0);
        let aborted = aborted.map(|error| match error {
            BenchError::Failed(message) | BenchError::CannotRun(message) => message,
            BenchError::Interrupted => "interrupted".to_owned(),
        });
        progress("soak: waiting for the clients to finish");
        for load in &mut self.loads {
            if aborted.is_some() {
                load.stop();
            } else if !load.crashed
                && let Err(error) = load.wait(LOAD_SLACK + Duration::from_mins(1))
            {
                self.crashes.push(error);
            }
            self.reported.extend(load.harvest());
        }
        self.wait_retired();
        let failures = report::failure_records(
            &self.reported,
            &self.churn.excuses,
            &self.churn.changes,
            self.started_ms,
        );
        self.problems.extend(report::uncut_denies(
            &self.churn.excuses,
            &failures,
            self.started_ms,
        ));
        let timeouts = self.agent_connect_timeouts();
        self.problems.extend(timeouts);
        let series = std::mem::take(&mut self.series)
            .into_iter()
            .map(|(name, (floor, points))| SeriesReport {
                growth: judge::growth(&points, judged_secs, floor),
                name,
                floor,
                points,
            })
            .collect();
        let waypoint_renewals = self
            .mesh
            .waypoint()
            .stderr_text()
            .lines()
            .filter(|line| line.contains("certificate renewed"))
            .count();
        let mut report = SoakReport {
            minutes: self.plan.minutes,
            sample_secs: self.plan.sample_secs,
            pods: self.pods.all().count() + self.mesh.enrolled().len() + 1,
            run_secs,
            series,
            traffic: self
                .loads
                .iter()
                .map(|load| TrafficReport {
                    client: load.client.clone(),
                    mode: load.mode.to_owned(),
                    ok: load.ok,
                    failed: load.failed,
                })
                .collect(),
            failure_counts: BTreeMap::new(),
            failures,
            handoffs: self.handoffs.clone(),
            rotations: RotationReport {
                lifetime_secs: CERT_LIFETIME_SECS,
                agents: self.rotations.seen,
                waypoint: u64::try_from(waypoint_renewals).unwrap_or(u64::MAX),
            },
            churn: self.churn.counts.clone(),
            bad_objects: std::mem::take(&mut self.bad_objects),
            problems: std::mem::take(&mut self.problems),
            crashes: std::mem::take(&mut self.crashes),
            aborted,
            changes: std::mem::take(&mut self.churn.changes),
            verdict: report::Verdict::default(),
        };
        report.conclude();
        report
    }
}
