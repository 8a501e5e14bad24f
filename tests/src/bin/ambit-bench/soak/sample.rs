//! What the soak reads: each agent's and the waypoint's resources and
//! each node's eBPF map entries, [`READINGS_PER_SAMPLE`] times between two
//! samples; and at each sample the certificates the agents rotated, and
//! whether the bad objects are still rejected while everything else
//! stands.
//!
//! A sample's figure is the median of the readings since the previous
//! sample (those of the process running at the sample, after a handoff):
//! the churn's cycle (a minute) moves fds, tasks and map entries up and
//! down by dozens as pods leave and rejoin the mesh, and readings spread
//! over the whole cycle see it whole, where a reading at one instant would
//! see wherever the cycle stood.

use std::collections::{BTreeMap, HashMap};

use ambit_tests::mesh::Agent;
use ambit_tests::waypoint::WaypointMesh;
use ambit_tests::{Pod, Testbed};
use serde_json::Value;

use super::config::{BAD_POLICY, BAD_ROUTE, CANARY_ROUTE, NAMESPACE, TYPO_POD};
use super::judge;
use crate::error::BenchError;
use crate::sustain::{AgentState, read_state};
use crate::usage;

/// Readings between two samples.
pub const READINGS_PER_SAMPLE: u32 = 12;

/// The process figures, with each one's absolute floor for the growth
/// test: what a series may grow by over the run whatever its median.
pub const PROCESS_FIGURES: [(&str, f64); 9] = [
    ("RSS, MiB", 2.0),
    ("RSS anonymous, MiB", 2.0),
    ("RSS file-backed, MiB", 2.0),
    ("heap in use, MiB", 2.0),
    ("heap free, MiB", 2.0),
    ("open fds", 12.0),
    ("tokio tasks", 20.0),
    ("threads", 2.0),
    ("metric series", 50.0),
];

/// The floor of a map's entry count.
pub const MAP_FLOOR: f64 = 32.0;

/// One reading's figures by name.
pub type Figures = BTreeMap<String, f64>;

/// One reading of one process (or of a node's maps).
pub struct Reading {
    /// `n1 agent`, `n1 maps`, `waypoint`.
    pub who: String,
    /// The process it was read from (see [`judge::Point::process`]).
    pub process: u32,
    /// What it read.
    pub figures: Figures,
}

/// An agent's process figures, and its node's map entries, now.
pub fn agent(tb: &Testbed, agent: &Agent) -> Result<(Figures, Figures), BenchError> {
    let state = read_state(tb, agent)?;
    let maps = state
        .map_entries
        .iter()
        .map(|(map, entries)| (format!("{map} entries"), as_f64(*entries)))
        .collect();
    Ok((process_figures(&state, agent.proc.pid()), maps))
}

/// The waypoint's process figures (`pid`), from `/proc`, now.
pub fn waypoint(pid: u32) -> Result<Figures, BenchError> {
    let read = || -> std::io::Result<Figures> {
        Ok(Figures::from([
            ("RSS, MiB".to_owned(), usage::rss_mib(pid)?),
            (
                "RSS anonymous, MiB".to_owned(),
                usage::status_mib(pid, "RssAnon")?,
            ),
            (
                "RSS file-backed, MiB".to_owned(),
                usage::status_mib(pid, "RssFile")?,
            ),
            ("open fds".to_owned(), as_f64(usage::open_fds(pid)?)),
            ("threads".to_owned(), as_f64(usage::threads(pid)?)),
        ]))
    };
    read()
        .map_err(|error| BenchError::failed(format!("cannot read the waypoint's figures: {error}")))
}

/// Each process's figures at a sample: the medians of `readings` of
/// `who`, of the process of its last reading.
#[must_use]
pub fn sampled(readings: &[Reading]) -> Vec<(String, u32, Figures)> {
    let mut last: BTreeMap<&str, u32> = BTreeMap::new();
    for reading in readings {
        last.insert(&reading.who, reading.process);
    }
    last.into_iter()
        .map(|(who, process)| {
            let figures: Vec<Figures> = readings
                .iter()
                .filter(|r| r.who == who && r.process == process)
                .map(|r| r.figures.clone())
                .collect();
            (who.to_owned(), process, medians(&figures))
        })
        .collect()
}

fn process_figures(state: &AgentState, pid: u32) -> Figures {
    let status = |key| usage::status_mib(pid, key).unwrap_or(f64::NAN);
    Figures::from([
        ("RSS, MiB".to_owned(), state.rss_mib),
        ("RSS anonymous, MiB".to_owned(), status("RssAnon")),
        ("RSS file-backed, MiB".to_owned(), status("RssFile")),
        ("heap in use, MiB".to_owned(), state.heap_in_use_mib),
        ("heap free, MiB".to_owned(), state.heap_free_mib),
        ("open fds".to_owned(), as_f64(state.open_fds)),
        ("tokio tasks".to_owned(), as_f64(state.tasks)),
        ("threads".to_owned(), as_f64(state.threads)),
        ("metric series".to_owned(), as_f64(state.metric_series)),
    ])
}

/// Each figure's median over the readings (a figure missing from one
/// reading counts as 0 there).
fn medians(readings: &[Figures]) -> Figures {
    let mut names: Vec<&String> = readings.iter().flat_map(BTreeMap::keys).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let values: Vec<f64> = readings
                .iter()
                .map(|r| r.get(name).copied().unwrap_or(0.0))
                .collect();
            (name.clone(), judge::median(&values))
        })
        .collect()
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts of fds, tasks and entries are far below 2^52"
)]
fn as_f64(count: u64) -> f64 {
    count as f64
}

/// Certificate rotations seen: each agent process's `rotations` per
/// identity (`/certificates`), whose increases are added up; an identity
/// dropped and issued again starts from 0.
#[derive(Default)]
pub struct Rotations {
    last: HashMap<(String, u16, String), u64>,
    /// Rotations seen so far.
    pub seen: u64,
    /// Certificates seen past their end of validity.
    pub expired: Vec<String>,
}

// === impl Rotations ===

impl Rotations {
    /// Reads `agent`'s certificates (`node`, `generation`).
    pub fn observe(&mut self, tb: &Testbed, agent: &Agent, generation: u16) {
        let Some(certificates) = agent
            .get(tb, "/certificates")
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
        else {
            return;
        };
        for certificate in certificates.as_array().into_iter().flatten() {
            let identity = certificate["identity"].as_str().unwrap_or_default();
            let rotations = certificate["rotations"].as_u64().unwrap_or(0);
            let key = (agent.node.name.clone(), generation, identity.to_owned());
            let before = self.last.insert(key, rotations).unwrap_or(0);
            self.seen += if rotations >= before {
                rotations - before
            } else {
                rotations
            };
            if certificate["state"] == "expired" {
                self.expired.push(format!(
                    "{} on {} (generation {generation})",
                    identity, agent.node.name
                ));
            }
        }
    }
}

/// What one look at the bad objects and their neighbours found: the
/// statuses the bad objects carry, and what is wrong.
#[derive(Debug, Default)]
pub struct Statuses {
    /// The invalid policy's status, as an agent reports it.
    pub policy: Option<String>,
    /// The bad route's rejection, as the waypoint reports it.
    pub route: Option<String>,
    /// The typo pod's kernel path, as its agent reports it.
    pub label: Option<String>,
    /// Anything out of place: a bad object accepted, a good one
    /// rejected, a pod that should be enrolled and is not.
    pub problems: Vec<String>,
}

// === impl Statuses ===

impl Statuses {
    /// Checks an agent: the bad policy rejected, every other policy
    /// accepted, `stable` pods of its node enrolled, and the typo pod
    /// enrolled with its label rejected.
    pub fn check_agent(&mut self, tb: &Testbed, agent: &Agent, stable: &[&Pod], typo: &Pod) {
        let node = &agent.node.name;
        let policies = agent
            .get(tb, "/policies")
            .and_then(|body| serde_json::from_str::<Value>(&body).ok());
        let Some(policies) = policies else {
            self.problems
                .push(format!("the agent on {node} does not answer /policies"));
            return;
        };
        let mut bad_listed = false;
        for policy in policies.as_array().into_iter().flatten() {
            let name = policy["key"]["name"].as_str().unwrap_or_default();
            let state = policy["state"].as_str().unwrap_or_default();
            let status = policy["status"].as_str().unwrap_or_default();
            match (name == BAD_POLICY, state) {
                (true, "rejected") => {
                    bad_listed = true;
                    self.policy = Some(status.to_owned());
                }
                (false, "accepted") => {}
                _ => self.problems.push(format!(
                    "policy {NAMESPACE}/{name} is {state} on {node}: {status}"
                )),
            }
        }
        if !bad_listed {
            self.problems.push(format!(
                "the agent on {node} does not list policy {BAD_POLICY}"
            ));
        }
        let pods = agent
            .get(tb, "/pods")
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
            .unwrap_or_default();
        let entry = |name: &str| {
            pods.as_array()
                .into_iter()
                .flatten()
                .find(|pod| pod["name"] == name)
                .cloned()
        };
        for pod in stable.iter().filter(|pod| pod.node == *node) {
            let state = entry(&pod.name).map(|p| p["state"].clone());
            if state.as_ref().and_then(Value::as_str) != Some("enrolled") {
                self.problems.push(format!(
                    "pod {} on {node} is {} instead of enrolled",
                    pod.name,
                    state.unwrap_or(Value::Null)
                ));
            }
        }
        if typo.node != *node {
            return;
        }
        if let Some(typo) = entry(TYPO_POD) {
            let kernel_path = typo["kernel_path"].as_str().unwrap_or_default();
            if typo["state"] == "enrolled" && kernel_path.starts_with("rejected") {
                self.label = Some(kernel_path.to_owned());
            } else {
                self.problems.push(format!(
                    "pod {TYPO_POD} is {} with kernel path {kernel_path:?}: its label typo must be rejected and the pod enrolled",
                    typo["state"]
                ));
            }
        } else {
            self.problems
                .push(format!("the agent on {node} does not list pod {TYPO_POD}"));
        }
    }

    /// Checks the waypoint: the bad route rejected, the canary route not.
    pub fn check_waypoint(&mut self, tb: &Testbed, mesh: &WaypointMesh) {
        let view = mesh
            .try_admin(tb, "/config")
            .and_then(|body| serde_json::from_str::<Value>(&body).ok());
        let Some(view) = view else {
            self.problems
                .push("the waypoint does not answer /config".to_owned());
            return;
        };
        for rejected in view["rejectedRoutes"].as_array().into_iter().flatten() {
            let route = rejected["route"].as_str().unwrap_or_default();
            let message = rejected["message"].as_str().unwrap_or_default();
            if route == format!("{NAMESPACE}/{BAD_ROUTE}") {
                self.route = Some(format!("{}: {message}", rejected["reason"]));
            } else if route == format!("{NAMESPACE}/{CANARY_ROUTE}") {
                self.problems
                    .push(format!("the waypoint rejected the canary route: {message}"));
            }
        }
        if self.route.is_none() {
            self.problems.push(format!(
                "the waypoint does not list route {BAD_ROUTE} as rejected"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_takes_the_readings_of_the_process_running_at_it() {
        let reading = |who: &str, process, rss| Reading {
            who: who.to_owned(),
            process,
            figures: Figures::from([("RSS, MiB".to_owned(), rss)]),
        };
        let readings = [
            reading("n2 agent", 1, 30.0),
            reading("waypoint", 1, 14.0),
            reading("n2 agent", 1, 31.0),
            reading("n2 agent", 2, 12.0),
            reading("n2 agent", 2, 13.0),
            reading("n2 agent", 2, 14.0),
        ];
        let sampled = sampled(&readings);
        assert_eq!(sampled.len(), 2);
        assert_eq!((sampled[0].0.as_str(), sampled[0].1), ("n2 agent", 2));
        assert!(
            (sampled[0].2["RSS, MiB"] - 13.0).abs() < 1e-9,
            "the successor's only"
        );
        assert_eq!(sampled[1].0, "waypoint");
    }

    #[test]
    fn each_figure_is_its_median_over_the_readings() {
        let reading = |rss: f64, fds: Option<f64>| {
            let mut figures = Figures::from([("RSS, MiB".to_owned(), rss)]);
            if let Some(fds) = fds {
                figures.insert("open fds".to_owned(), fds);
            }
            figures
        };
        let readings = [
            reading(10.0, Some(40.0)),
            reading(30.0, Some(41.0)),
            reading(11.0, None),
        ];
        let medians = medians(&readings);
        assert!((medians["RSS, MiB"] - 11.0).abs() < 1e-9);
        assert!(
            (medians["open fds"] - 40.0).abs() < 1e-9,
            "missing counts as 0"
        );
    }
}
