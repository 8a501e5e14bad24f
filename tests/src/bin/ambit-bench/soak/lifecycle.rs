//! The agents' lives during the soak: a handoff every
//! [`super::HANDOFF_EVERY`], the retired agents draining and exiting, and
//! any process that ends when it should not.

use std::time::Instant;

use super::report::HandoffRecord;
use super::{DRAIN_AFTER_END, Soak, agent_args, unix_ms};
use crate::console::progress;
use crate::error::BenchError;

// === impl Soak ===

impl Soak<'_> {
    /// Hands the next node's pods to a successor (`n2` first).
    pub(super) fn hand_off(&mut self) -> Result<(), BenchError> {
        let index = self.handoffs.len();
        let node = (index + 1) % self.agents.len();
        let at_secs = self.started.elapsed().as_secs_f64();
        let at_ms = unix_ms();
        let args = agent_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agents = &mut self.agents[node];
        let takeover_ms = agents.hand_off(self.tb, &self.config, &args, index)?;
        let record = HandoffRecord {
            node: agents.node.name.clone(),
            generation: agents.generation,
            at_secs,
            takeover_ms,
            drained_secs: None,
            exit: None,
            open_at_end: None,
        };
        progress(&format!(
            "soak: {at_secs:.0} s: handoff on {} to generation {} took {takeover_ms:.0} ms",
            record.node, record.generation
        ));
        self.churn.record(
            at_ms,
            format!(
                "handoff on {} (generation {})",
                record.node, record.generation
            ),
        );
        self.handoffs.push(record);
        Ok(())
    }

    /// Collects new failures; notes retired agents that exited and
    /// processes that ended when they should not have. An active agent or
    /// the waypoint gone stops the soak.
    pub(super) fn check_processes(&mut self) -> Result<(), BenchError> {
        for load in &mut self.loads {
            self.reported.extend(load.harvest());
            if let Some(status) = load.exited()
                && !load.done
                && !load.crashed
            {
                load.crashed = true;
                self.crashes
                    .push(format!("{} exited early with {status}", load.describe()));
            }
        }
        for server in self.servers.iter().chain(&self.mesh.servers) {
            if let Some(status) = server.try_wait()
                && self.gone.insert(server.pid())
            {
                self.crashes.push(format!(
                    "{} (pid {}) exited with {status}",
                    server.name(),
                    server.pid()
                ));
            }
        }
        self.note_drained();
        for agents in &self.agents {
            if let Some(status) = agents.active.proc.try_wait() {
                let crash = format!(
                    "the agent on {} (generation {}) exited with {status}",
                    agents.node.name, agents.generation
                );
                self.crashes.push(crash.clone());
                return Err(BenchError::failed(crash));
            }
        }
        if let Some(status) = self.mesh.waypoint().try_wait() {
            let crash = format!("the waypoint exited with {status}");
            self.crashes.push(crash.clone());
            return Err(BenchError::failed(crash));
        }
        Ok(())
    }

    /// Notes how many connections each retired agent still carried when
    /// the clients stopped, then waits [`DRAIN_AFTER_END`] for them to
    /// exit; one that does not is a problem, with what it still carries.
    pub(super) fn wait_retired(&mut self) {
        self.note_drained();
        for agents in &self.agents {
            for retired in &agents.draining {
                let record = &mut self.handoffs[retired.handoff];
                if record.exit.is_none() {
                    record.open_at_end = retired.open_connections(self.tb).map(|c| c.len());
                }
            }
        }
        progress("soak: waiting for the retired agents to drain");
        let deadline = Instant::now() + DRAIN_AFTER_END;
        for agents in &self.agents {
            for retired in &agents.draining {
                let left = deadline.saturating_duration_since(Instant::now());
                if retired.agent.proc.wait_timeout(left).is_none() {
                    let open = retired.open_connections(self.tb).unwrap_or_default();
                    self.problems.push(format!(
                        "the agent retired on {} by handoff {} still runs {} s after the clients stopped, carrying {} connection(s): {}",
                        agents.node.name,
                        retired.handoff + 1,
                        DRAIN_AFTER_END.as_secs(),
                        open.len(),
                        open.iter().take(8).cloned().collect::<Vec<_>>().join("; ")
                    ));
                }
            }
        }
        self.note_drained();
    }

    /// The connects of an agent that timed out, each a problem: an agent
    /// connects to an application in its own pod, or to a peer agent,
    /// and neither goes unanswered in a healthy mesh. A client's failure
    /// that such a timeout caused may fall within an excuse's grace (a pod
    /// enrolled in the same seconds), so the agents' logs are read too.
    pub(super) fn agent_connect_timeouts(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for agents in &self.agents {
            let retired = agents.draining.iter().map(|r| (&r.agent, Some(r.handoff)));
            for (agent, handoff) in std::iter::once((&agents.active, None)).chain(retired) {
                let log = agent.proc.stderr_text();
                let timeouts: Vec<&str> = super::judge::connect_timeouts(&log).collect();
                if let Some(first) = timeouts.first() {
                    let which = handoff.map_or_else(
                        || "the active agent".to_owned(),
                        |h| format!("the agent retired by handoff {}", h + 1),
                    );
                    problems.push(format!(
                        "{which} on {} logged {} connect timeout(s), the first: {first}",
                        agents.node.name,
                        timeouts.len()
                    ));
                }
            }
        }
        problems
    }

    /// Records each retired agent that has exited.
    fn note_drained(&mut self) {
        for agents in &self.agents {
            for retired in &agents.draining {
                let record = &mut self.handoffs[retired.handoff];
                if record.exit.is_some() {
                    continue;
                }
                if let Some(status) = retired.agent.proc.try_wait() {
                    record.drained_secs = Some(retired.released.elapsed().as_secs_f64());
                    record.exit = Some(status.to_string());
                    if !status.success() {
                        self.crashes.push(format!(
                            "the agent retired on {} by handoff {} exited with {status}",
                            agents.node.name,
                            retired.handoff + 1
                        ));
                    }
                }
            }
        }
    }
}
