//! Running one measurement: a load generator in the client pod against a
//! server in the server pod, and its result.
//!
//! Request/response and connection-rate tests use `pod-tool rr` (with
//! `--epoll` in the kernel-path scenarios) and `pod-tool crr` against the
//! `rr-server`s the cluster started; throughput
//! tests start `iperf3 -s -1` in the server pod and `iperf3 -c` in the client
//! pod, per test; `pod-tool hold` keeps idle connections open while the
//! agents' memory is read.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_tests::{Pod, Proc, Testbed};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::BenchError;
use crate::report::{CrrFigures, RrResult, TputFigures, round};

/// Where `iperf3 -s` listens in the server pod.
const IPERF_PORT: u16 = 5201;

/// What a client may take beyond its planned run time (start-up, connecting,
/// reporting) before it is killed.
const CLIENT_SLACK: Duration = Duration::from_secs(30);

/// How long `iperf3 -s` may take to listen, and to exit after its one test.
const IPERF_SERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often waits look again (and notice Ctrl-C).
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long `pod-tool hold` may take to open all its connections.
const HOLD_SETUP_LIMIT: Duration = Duration::from_mins(1);

/// How long the idle connections stay open once all are up: the agents'
/// memory is read [`IDLE_READ_AFTER`] into it.
const IDLE_HOLD: Duration = Duration::from_secs(2);

/// When, after all idle connections are up, the agents' memory is read:
/// long enough for the agents to finish with the last connection's setup.
pub const IDLE_READ_AFTER: Duration = Duration::from_millis(500);

/// How long each test runs.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// `--quick` was given.
    pub quick: bool,
    /// Measured time of each request/response and connection-rate test.
    pub rr: Duration,
    /// Exchanges before measuring, in those tests.
    pub warmup: Duration,
    /// `iperf3 -t`.
    pub iperf_secs: u32,
    /// `iperf3 -O`: seconds of slow start left out of the result.
    pub iperf_omit_secs: u32,
    /// Times every scenario runs; each figure is the median.
    pub runs: usize,
    /// Idle connections held through the mesh while the agents' memory is read.
    pub idle_conns: u32,
    /// How long they stay open once all are up.
    pub idle_hold: Duration,
}

/// `pod-tool hold`'s connections, open and idle until [`Self::release`].
pub struct HeldConnections {
    proc: Proc,
    conns: u32,
    hold: Duration,
    /// When `held` was printed.
    pub held_at: Instant,
    /// How long opening them took, ms.
    pub setup_ms: u64,
}

/// What `pod-tool hold` found when it let go.
pub struct Released {
    /// Connections that still carried a round trip after the hold.
    pub still_open: u64,
}

/// Starts load generators in pods and reads their results.
pub struct Runner<'a> {
    tb: &'a Testbed,
    plan: Plan,
    pod_tool: &'a Path,
}

// === impl Plan ===

impl Plan {
    /// 5 s per test after 1 s of warm-up; `quick`: 0.7 s after 0.2 s, so
    /// three runs fit in well under 2 minutes.
    pub fn new(quick: bool, runs: usize, idle_conns: u32) -> Self {
        let (rr, warmup, iperf_secs, iperf_omit_secs) = if quick {
            (Duration::from_millis(700), Duration::from_millis(200), 1, 0)
        } else {
            (Duration::from_secs(5), Duration::from_secs(1), 5, 1)
        };
        Self {
            quick,
            rr,
            warmup,
            iperf_secs,
            iperf_omit_secs,
            runs,
            idle_conns,
            idle_hold: IDLE_HOLD,
        }
    }
}

// === impl Runner ===

impl<'a> Runner<'a> {
    pub fn new(tb: &'a Testbed, plan: Plan, pod_tool: &'a Path) -> Self {
        Self { tb, plan, pod_tool }
    }

    /// What the tests run for.
    pub fn plan(&self) -> Plan {
        self.plan
    }

    /// `pod-tool rr` from `client` to `to`: `size`-byte round trips on
    /// `conns` connections; `epoll`: on an event loop (`--epoll`), for the
    /// kernel path.
    pub fn rr(
        &self,
        client: &Pod,
        to: SocketAddr,
        size: usize,
        conns: u16,
        epoll: bool,
    ) -> Result<RrResult, BenchError> {
        let mut cmd = Command::new(self.pod_tool);
        cmd.args(["rr", "--to", &to.to_string()])
            .args(["--size", &size.to_string()])
            .args(["--conns", &conns.to_string()])
            .args(self.durations());
        if epoll {
            cmd.arg("--epoll");
        }
        let mut result: RrResult = self.pod_tool_result(client, cmd, "rr")?;
        result.figures.rate = round(result.figures.rate, 1);
        Ok(result)
    }

    /// `pod-tool crr` from `client` to `to`, one connection at a time.
    pub fn crr(&self, client: &Pod, to: SocketAddr) -> Result<CrrFigures, BenchError> {
        let mut cmd = Command::new(self.pod_tool);
        cmd.args(["crr", "--to", &to.to_string()])
            .args(self.durations());
        let mut figures: CrrFigures = self.pod_tool_result(client, cmd, "crr")?;
        figures.rate = round(figures.rate, 1);
        Ok(figures)
    }

    /// iperf3 from `client` to `server` with `streams` parallel streams.
    pub fn tput(
        &self,
        client: &Pod,
        server: &Pod,
        streams: u16,
    ) -> Result<TputFigures, BenchError> {
        let mut serve = Command::new("iperf3");
        serve.args(["-s", "-1", "--forceflush", "-p", &IPERF_PORT.to_string()]);
        let iperf_server = self.tb.spawn_in_pod(server, serve);
        let listening = wait_for(IPERF_SERVER_TIMEOUT, || {
            if iperf_server
                .wait_for_line(Duration::ZERO, |line| line.contains("Server listening"))
                .is_some()
            {
                return Ok(Some(()));
            }
            match iperf_server.try_wait() {
                Some(status) => Err(BenchError::failed(format!(
                    "iperf3 -s in {} exited ({status}) before listening: {}",
                    server.name,
                    iperf_server.report()
                ))),
                None => Ok(None),
            }
        })?;
        if listening.is_none() {
            return Err(BenchError::failed(format!(
                "iperf3 -s in {} did not listen within {IPERF_SERVER_TIMEOUT:?}: {}",
                server.name,
                iperf_server.report()
            )));
        }

        let mut cmd = Command::new("iperf3");
        cmd.args([
            "-c",
            &server.ipv4.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
        ])
        .args(["-t", &self.plan.iperf_secs.to_string()])
        .args(["-P", &streams.to_string()])
        .args(["--connect-timeout", "5000", "-J"]);
        if self.plan.iperf_omit_secs > 0 {
            cmd.args(["-O", &self.plan.iperf_omit_secs.to_string()]);
        }
        let planned =
            Duration::from_secs(u64::from(self.plan.iperf_secs + self.plan.iperf_omit_secs));
        let client_proc = self.tb.spawn_in_pod(client, cmd);
        let outcome = Self::finish(&client_proc, planned);
        // `-1` makes it exit after the test; a failed test may leave it waiting.
        if iperf_server.wait_timeout(IPERF_SERVER_TIMEOUT).is_none() {
            iperf_server.kill();
        }
        let status = outcome?;
        // It has exited; wait for the end of its stdout, which the reader
        // thread may not have reached yet.
        let _ = client_proc.output_json_lines(Duration::from_secs(5));
        let text = client_proc.stdout_lines().join("\n");
        let json: Value = serde_json::from_str(&text).map_err(|error| {
            BenchError::failed(format!(
                "iperf3 -c ({status}) printed no JSON ({error}): {}",
                client_proc.report()
            ))
        })?;
        if let Some(error) = json["error"].as_str() {
            return Err(BenchError::failed(format!("iperf3 -c: {error}")));
        }
        let bits_per_second = json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .ok_or_else(|| {
                BenchError::failed(format!(
                    "iperf3 -c ({status}) reported no end.sum_received.bits_per_second: {}",
                    client_proc.report()
                ))
            })?;
        Ok(TputFigures {
            gbps: round(bits_per_second / 1e9, 3),
        })
    }

    /// `pod-tool hold` from `client` to `to`: returns once its connections
    /// are all up, each having carried a round trip.
    pub fn hold(&self, client: &Pod, to: SocketAddr) -> Result<HeldConnections, BenchError> {
        let conns = self.plan.idle_conns;
        let mut cmd = Command::new(self.pod_tool);
        cmd.args(["hold", "--to", &to.to_string()])
            .args(["--conns", &conns.to_string()])
            .args([
                "--hold-secs",
                &self.plan.idle_hold.as_secs_f64().to_string(),
            ])
            .args(["--setup-secs", &HOLD_SETUP_LIMIT.as_secs_f64().to_string()]);
        let proc = self.tb.spawn_in_pod(client, cmd);
        let held = wait_for(HOLD_SETUP_LIMIT + CLIENT_SLACK, || {
            if let Some(line) = proc.poll_json(Duration::ZERO, |line| line["event"] == "held") {
                return Ok(Some(line));
            }
            match proc.try_wait() {
                Some(status) => Err(BenchError::failed(format!(
                    "pod-tool hold in {} exited ({status}) before its {conns} connections were up: {}",
                    client.name,
                    pod_tool_error(&proc)
                ))),
                None => Ok(None),
            }
        });
        let held = match held {
            Ok(Some(held)) => held,
            Ok(None) => {
                proc.kill();
                return Err(BenchError::failed(format!(
                    "pod-tool hold in {} did not open {conns} connections within {:?}; killed: {}",
                    client.name,
                    HOLD_SETUP_LIMIT + CLIENT_SLACK,
                    proc.report()
                )));
            }
            Err(error) => {
                proc.kill();
                return Err(error);
            }
        };
        Ok(HeldConnections {
            proc,
            conns,
            hold: self.plan.idle_hold,
            held_at: Instant::now(),
            setup_ms: held["setup_ms"].as_u64().unwrap_or(0),
        })
    }

    fn durations(&self) -> [String; 4] {
        [
            "--duration-secs".to_owned(),
            format!("{}", self.plan.rr.as_secs_f64()),
            "--warmup-secs".to_owned(),
            format!("{}", self.plan.warmup.as_secs_f64()),
        ]
    }

    /// Runs a `pod-tool` load generator in `client` and parses its `event`
    /// line into `T`.
    fn pod_tool_result<T: DeserializeOwned>(
        &self,
        client: &Pod,
        cmd: Command,
        event: &str,
    ) -> Result<T, BenchError> {
        let proc = self.tb.spawn_in_pod(client, cmd);
        let status = Self::finish(&proc, self.plan.rr + self.plan.warmup)?;
        let (_, lines) = proc.output_json_lines(Duration::from_secs(5));
        if let Some(error) = lines.iter().find(|line| line["event"] == "error") {
            return Err(BenchError::failed(format!(
                "pod-tool {event} in {}: {}",
                client.name,
                error["error"].as_str().unwrap_or("(no message)")
            )));
        }
        let line = lines
            .into_iter()
            .find(|line| line["event"] == event)
            .ok_or_else(|| {
                BenchError::failed(format!(
                    "pod-tool {event} in {} ({status}) printed no result: {}",
                    client.name,
                    proc.report()
                ))
            })?;
        if !status.success() {
            return Err(BenchError::failed(format!(
                "pod-tool {event} in {} failed ({status}): {line}",
                client.name
            )));
        }
        serde_json::from_value(line.clone()).map_err(|error| {
            BenchError::failed(format!("pod-tool {event} printed {line}: {error}"))
        })
    }

    /// Waits for a client planned to run `planned`, killing it when it takes
    /// [`CLIENT_SLACK`] longer or the bench is interrupted.
    fn finish(proc: &Proc, planned: Duration) -> Result<std::process::ExitStatus, BenchError> {
        let limit = planned + CLIENT_SLACK;
        let waited = wait_for(limit, || Ok(proc.try_wait()));
        match waited {
            Ok(Some(status)) => Ok(status),
            Ok(None) => {
                proc.kill();
                Err(BenchError::failed(format!(
                    "{} did not finish within {limit:?}; killed: {}",
                    proc.name(),
                    proc.report()
                )))
            }
            Err(error) => {
                proc.kill();
                Err(error)
            }
        }
    }
}

// === impl HeldConnections ===

impl HeldConnections {
    /// Whether the connections are still held: `pod-tool hold` has not
    /// exited (it exits only after the hold or on a failure).
    pub fn still_held(&self) -> bool {
        self.proc.try_wait().is_none()
    }

    /// Waits for the hold to end; fails unless every connection still
    /// carried a round trip after it.
    pub fn release(self) -> Result<Released, BenchError> {
        let status = Runner::finish(&self.proc, self.hold)?;
        // Exited: this only waits for the end of its stdout.
        let (_, lines) = self.proc.output_json_lines(Duration::from_secs(5));
        let released = lines
            .into_iter()
            .find(|line| line["event"] == "released")
            .ok_or_else(|| {
                BenchError::failed(format!(
                    "pod-tool hold ({status}) printed no result: {}",
                    pod_tool_error(&self.proc)
                ))
            })?;
        let still_open = released["still_open"].as_u64().unwrap_or(0);
        if still_open < u64::from(self.conns) {
            return Err(BenchError::failed(format!(
                "only {still_open} of {} idle connections still carried a round trip after {:.1} s (last error: {})",
                self.conns,
                released["held_secs"].as_f64().unwrap_or(0.0),
                released["last_error"].as_str().unwrap_or("none")
            )));
        }
        Ok(Released { still_open })
    }
}

/// An exited `pod-tool`'s `error` line, or its whole output when it
/// printed none.
fn pod_tool_error(proc: &Proc) -> String {
    let (_, lines) = proc.output_json_lines(Duration::from_secs(5));
    lines
        .into_iter()
        .find(|line| line["event"] == "error")
        .and_then(|line| line["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| proc.report())
}

/// Calls `probe` until it returns `Some`, `timeout` passes (`Ok(None)`), it
/// fails, or the bench is interrupted.
pub fn wait_for<T>(
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>, BenchError>,
) -> Result<Option<T>, BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        crate::error::check_interrupted()?;
        if let Some(found) = probe()? {
            return Ok(Some(found));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
