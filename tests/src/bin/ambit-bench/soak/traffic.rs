//! The soak's traffic: servers in the pods, and `pod-tool load` clients
//! that run for the whole soak and report each failure as it happens.
//!
//! | client | what | targets |
//! | --- | --- | --- |
//! | `cli-N` (10) | `crr`, one connection a second per target | its node's `srv-N`, the other node's `srv-N±5`, `flip-N` |
//! | `cli-N` | `rr`, a round trip every 200 ms, connections replaced every minute | its node's and the other node's server |
//! | `flip-N` (12) | `crr`, one a second | a server on the other node |
//! | `streamer-1`, `-2` | `stream`, 16 KiB each way every 20 ms, replaced every 120 s | an echo server on each node |
//! | `typo-1` | `crr`, one a second | `srv-6`, `flip-11` |
//! | `client-a`, `client-b` | `http`, a GET every 250 ms (`/`, `/api/items`) | the Service `backend` through the waypoint |
//!
//! `cli-7` also sends `crr` to `typo-1`. Long-lived connections are
//! replaced well within a few minutes so that an agent retired by a
//! handoff finishes draining and exits.

use std::collections::HashMap;
use std::time::Duration;

use ambit_tests::waypoint::{VIP, WaypointMesh};
use ambit_tests::workload::{ECHO_PORT, RR_PORT, pod_tool, serve};
use ambit_tests::{Pod, Proc, Testbed};
use serde_json::Value;

use super::bed::SoakPods;
use super::config::Deny;

/// What one failure event said, with the pods it was between.
#[derive(Clone, Debug)]
pub struct Reported {
    /// The client pod.
    pub client: String,
    /// The target pod, or `backend` for the Service.
    pub target: String,
    /// The `load_failure` line.
    pub line: Value,
}

/// One `pod-tool load` process.
pub struct Load {
    /// The client pod.
    pub client: String,
    /// `crr`, `rr`, `stream` or `http`.
    pub mode: &'static str,
    proc: Proc,
    targets: HashMap<String, String>,
    read: usize,
    /// Operations that succeeded and failed, as last reported.
    pub ok: u64,
    /// Failed operations, as last reported.
    pub failed: u64,
    /// `load_done` was printed.
    pub done: bool,
    /// It ended early, and that was reported.
    pub crashed: bool,
}

/// Starts the servers of the soak's own pods (the waypoint's backends are
/// the caller's).
pub fn start_servers(tb: &Testbed, pods: &SoakPods) -> Vec<Proc> {
    let mut servers = Vec::new();
    for pod in pods.servers.iter().chain(&pods.flips).chain([&pods.typo]) {
        servers.push(ambit_tests::workload::rr_server(tb, pod));
    }
    for pod in pods.echo_servers() {
        servers.push(serve(tb, pod));
    }
    servers
}

/// Starts every client for `secs`.
pub fn start_clients(tb: &Testbed, pods: &SoakPods, mesh: &WaypointMesh, secs: u64) -> Vec<Load> {
    let rr = |pod: &Pod| (format!("{}:{RR_PORT}", pod.ipv4), pod.name.clone());
    let echo = |pod: &Pod| (format!("{}:{ECHO_PORT}", pod.ipv4), pod.name.clone());
    let mut loads = Vec::new();
    let mut start =
        |client: &Pod, mode: &'static str, targets: Vec<(String, String)>, args: &[&str]| {
            loads.push(Load::start(tb, client, mode, targets, args, secs));
        };
    for (index, client) in pods.clients.iter().enumerate() {
        let [same, cross] = pods.servers_of(index);
        let mut crr = vec![rr(same), rr(cross), rr(&pods.flips[index])];
        if client.name == "cli-7" {
            crr.push(rr(&pods.typo));
        }
        start(client, "crr", crr, &["--interval-ms", "1000"]);
        start(
            client,
            "rr",
            vec![rr(same), rr(cross)],
            &["--interval-ms", "200", "--conn-lifetime-secs", "60"],
        );
    }
    for (index, flip) in pods.flips.iter().enumerate() {
        let target = pods.cross_node_server(index);
        start(flip, "crr", vec![rr(target)], &["--interval-ms", "1000"]);
    }
    for (streamer, targets) in pods.streams() {
        start(
            streamer,
            "stream",
            targets.iter().map(|pod| echo(pod)).collect(),
            &["--interval-ms", "20", "--conn-lifetime-secs", "120"],
        );
    }
    let typo_targets = vec![rr(&pods.servers[5]), rr(&pods.flips[10])];
    start(&pods.typo, "crr", typo_targets, &["--interval-ms", "1000"]);
    for (client, path) in [(&mesh.client_a, "/"), (&mesh.client_b, "/api/items")] {
        let service = vec![(format!("{VIP}:80"), "backend".to_owned())];
        start(
            client,
            "http",
            service,
            &["--interval-ms", "250", "--path", path],
        );
    }
    loads
}

/// The pairs the DENY policies take in turn: each client with one of its
/// `rr` servers (alternately the other node's and its own), and the
/// streamers with each of their echo servers, interleaved.
#[must_use]
pub fn deny_pairs(pods: &SoakPods) -> Vec<Deny> {
    let mut pairs = Vec::new();
    for round in 0..2 {
        for (index, client) in pods.clients.iter().enumerate() {
            let [same, cross] = pods.servers_of(index);
            let target = if (index + round) % 2 == 0 {
                cross
            } else {
                same
            };
            pairs.push(Deny {
                client: client.name.clone(),
                target: target.name.clone(),
            });
        }
    }
    let mut streams = pods.streams().into_iter().flat_map(|(streamer, targets)| {
        targets.map(|target| Deny {
            client: streamer.name.clone(),
            target: target.name.clone(),
        })
    });
    let mut interleaved = Vec::new();
    for (index, pair) in pairs.into_iter().enumerate() {
        interleaved.push(pair);
        if index % 5 == 4
            && let Some(stream) = streams.next()
        {
            interleaved.push(stream);
        }
    }
    interleaved
}

// === impl Load ===

impl Load {
    fn start(
        tb: &Testbed,
        client: &Pod,
        mode: &'static str,
        targets: Vec<(String, String)>,
        args: &[&str],
        secs: u64,
    ) -> Self {
        let to = targets
            .iter()
            .map(|(addr, _)| addr.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let secs = secs.to_string();
        let mut command = vec![
            "load",
            "--mode",
            mode,
            "--to",
            &to,
            "--duration-secs",
            &secs,
        ];
        command.extend_from_slice(args);
        Self {
            client: client.name.clone(),
            mode,
            proc: tb.spawn_in_pod(client, pod_tool(&command)),
            targets: targets.into_iter().collect(),
            read: 0,
            ok: 0,
            failed: 0,
            done: false,
            crashed: false,
        }
    }

    /// The failures reported since the last call; updates the counts.
    pub fn harvest(&mut self) -> Vec<Reported> {
        let lines = self.proc.stdout_lines();
        let mut reported = Vec::new();
        for line in lines.iter().skip(self.read) {
            let Ok(value) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            match value["event"].as_str() {
                Some("load_failure") => {
                    let to = value["to"].as_str().unwrap_or_default();
                    reported.push(Reported {
                        client: self.client.clone(),
                        target: self
                            .targets
                            .get(to)
                            .cloned()
                            .unwrap_or_else(|| to.to_owned()),
                        line: value,
                    });
                }
                Some(event @ ("load_progress" | "load_done")) => {
                    self.ok = value["ok"].as_u64().unwrap_or(self.ok);
                    self.failed = value["failed"].as_u64().unwrap_or(self.failed);
                    self.done |= event == "load_done";
                }
                _ => {}
            }
        }
        self.read = lines.len();
        reported
    }

    /// How the process ended, if it has.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.proc.try_wait()
    }

    /// Waits up to `timeout` for the process to end; says how it did not
    /// end well.
    pub fn wait(&self, timeout: Duration) -> Result<(), String> {
        match self.proc.wait_timeout(timeout) {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(format!(
                "{} ended with {status}: {}",
                self.describe(),
                self.proc.report()
            )),
            None => Err(format!("{} did not end", self.describe())),
        }
    }

    /// Stops the process (when the soak stops early).
    pub fn stop(&self) {
        let _ = self.proc.terminate();
    }

    /// The process's name and PID, for a crash report.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} load, pid {})",
            self.proc.name(),
            self.mode,
            self.proc.pid()
        )
    }
}
