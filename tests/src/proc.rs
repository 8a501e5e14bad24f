//! Processes a test bed started: their output, their exit, and making sure
//! they are gone when the test ends.
//!
//! Every process is killed through its [`std::process::Child`] while it is
//! still unreaped, so a PID is never signalled after the kernel could have
//! handed it to someone else.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// How long a process gets to exit after SIGTERM when a [`Proc`] is dropped.
pub const DROP_GRACE: Duration = Duration::from_secs(2);

/// How long [`Proc::terminate`] waits after SIGTERM before using SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_millis(5);

/// A process started by a [`Testbed`](crate::Testbed), with stdout collected
/// line by line and stderr saved to `<run_dir>/<name>-<pid>.stderr` (and,
/// unless [`ProcessLogs::echo`] is off, echoed, prefixed, to the test's
/// stderr). Dropping it stops the process: SIGTERM, then SIGKILL after
/// [`DROP_GRACE`].
pub struct Proc {
    name: String,
    pid: u32,
    child: Arc<Mutex<ChildSlot>>,
    stdout: Arc<LineLog>,
    stderr: Arc<LineLog>,
    stderr_path: PathBuf,
    log_path: Option<PathBuf>,
}

/// Where a test bed's processes' output goes besides the [`Proc`] itself.
#[derive(Clone, Debug)]
pub struct ProcessLogs {
    /// When set, each process's stdout and stderr lines also go to
    /// `<dir>/<name>-<pid>.log`, which outlives the test bed.
    pub dir: Option<PathBuf>,
    /// Whether stderr lines are echoed, prefixed, to this process's stderr.
    pub echo: bool,
}

impl Default for ProcessLogs {
    fn default() -> Self {
        Self {
            dir: None,
            echo: true,
        }
    }
}

/// A child and, once reaped, its exit status. Shared between a [`Proc`] and
/// its test bed so whichever is dropped last still finds it unreaped or knows
/// it is gone.
pub(crate) struct ChildSlot {
    child: Child,
    status: Option<ExitStatus>,
}

/// Lines a process printed on one stream, and whether the stream has ended.
struct LineLog {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    closed: bool,
}

// === impl Proc ===

impl Proc {
    /// Spawns `cmd` (whose pre-exec hooks the caller has set) with stdin
    /// closed and stdout and stderr captured, saved and echoed as `logs` says.
    pub(crate) fn spawn(
        name: &str,
        mut cmd: Command,
        stderr_dir: &Path,
        logs: &ProcessLogs,
    ) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name} ({cmd:?}): {error}"));
        let pid = child.id();
        let stderr_path = stderr_dir.join(format!("{name}-{pid}.stderr"));
        let stderr_file = create_file(&stderr_path);
        let log_path = logs
            .dir
            .as_ref()
            .map(|dir| dir.join(format!("{name}-{pid}.log")));
        // Both streams' reader threads write to it, a line at a time.
        let log_file = log_path
            .as_deref()
            .and_then(create_file)
            .map(|file| Arc::new(Mutex::new(file)));
        let stdout = LineLog::new();
        let stderr = LineLog::new();
        if let Some(pipe) = child.stdout.take() {
            let log = Arc::clone(&stdout);
            let log_file = log_file.clone();
            std::thread::spawn(move || {
                log.collect(pipe, |line| {
                    if let Some(file) = &log_file {
                        let _ = writeln!(lock(file), "{line}");
                    }
                });
            });
        }
        if let Some(pipe) = child.stderr.take() {
            let log = Arc::clone(&stderr);
            let prefix = format!("[{name} {pid}]");
            let mut file = stderr_file;
            let echo = logs.echo;
            std::thread::spawn(move || {
                log.collect(pipe, |line| {
                    if let Some(file) = file.as_mut() {
                        let _ = writeln!(file, "{line}");
                    }
                    if let Some(file) = &log_file {
                        let _ = writeln!(lock(file), "{line}");
                    }
                    if echo {
                        eprintln!("{prefix} {line}");
                    }
                });
            });
        }
        Self {
            name: name.to_owned(),
            pid,
            child: Arc::new(Mutex::new(ChildSlot {
                child,
                status: None,
            })),
            stdout,
            stderr,
            stderr_path,
            log_path,
        }
    }

    /// The handle the test bed keeps to stop the process if the test does not.
    pub(crate) fn slot(&self) -> Arc<Mutex<ChildSlot>> {
        Arc::clone(&self.child)
    }

    /// The process ID.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name used in logs and in the stderr file name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exit status if the process has exited.
    #[must_use]
    pub fn try_wait(&self) -> Option<ExitStatus> {
        lock(&self.child).poll()
    }

    /// Waits up to `timeout` for the process to exit.
    #[must_use]
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(&self.child, Instant::now() + timeout)
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) unless the process has exited.
    pub fn send_signal(&self, signal: i32) {
        let signal =
            Signal::try_from(signal).unwrap_or_else(|error| panic!("bad signal {signal}: {error}"));
        lock(&self.child).signal(signal);
    }

    /// Stops the process politely: SIGTERM, then SIGKILL if it is still
    /// running after [`TERMINATE_GRACE`]. Returns how it ended.
    #[expect(
        clippy::must_use_candidate,
        reason = "stopping is the point; the status is for tests that care"
    )]
    pub fn terminate(&self) -> ExitStatus {
        stop_all(std::slice::from_ref(&self.child), TERMINATE_GRACE);
        self.try_wait().expect("stop_all reaps the child")
    }

    /// Kills the process with SIGKILL and reaps it.
    #[expect(
        clippy::must_use_candidate,
        reason = "stopping is the point; the status is for tests that care"
    )]
    pub fn kill(&self) -> ExitStatus {
        stop_all(std::slice::from_ref(&self.child), Duration::ZERO);
        self.try_wait().expect("stop_all reaps the child")
    }

    /// Every line printed on stdout so far.
    #[must_use]
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.snapshot()
    }

    /// The stdout lines so far that are JSON values; other lines are skipped.
    #[must_use]
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout_lines()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits up to `timeout` for a stdout line matching `pred`. Returns `None`
    /// on timeout or when stdout ends without one.
    pub fn wait_for_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.stdout.wait_for(timeout, |lines| {
            lines.iter().find(|line| pred(line)).cloned()
        })
    }

    /// Waits up to `timeout` for a stderr line matching `pred`, for programs
    /// that log their readiness there.
    pub fn wait_for_stderr_line(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.stderr.wait_for(timeout, |lines| {
            lines.iter().find(|line| pred(line)).cloned()
        })
    }

    /// Waits up to `timeout` for a JSON stdout line matching `pred`. Returns
    /// `None` on timeout or when stdout ends without one.
    pub fn poll_json(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.stdout.wait_for(timeout, |lines| {
            lines
                .iter()
                .filter_map(|line| serde_json::from_str(line).ok())
                .find(|value| pred(value))
        })
    }

    /// Like [`poll_json`](Self::poll_json), but panics with the process's
    /// output when no line matches.
    pub fn wait_for_json(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.poll_json(timeout, pred).unwrap_or_else(|| {
            panic!(
                "no matching JSON line within {timeout:?}\n{}",
                self.report()
            )
        })
    }

    /// Waits for the first line `{"event": EVENT, ...}`, panicking with the
    /// process's output if it does not come within `timeout`.
    #[expect(
        clippy::must_use_candidate,
        reason = "waiting is often the point; the line is for tests that care"
    )]
    pub fn wait_for_event(&self, event: &str, timeout: Duration) -> Value {
        self.poll_json(timeout, |value| value["event"] == event)
            .unwrap_or_else(|| {
                panic!(
                    "no {{\"event\":\"{event}\"}} line within {timeout:?}\n{}",
                    self.report()
                )
            })
    }

    /// Waits until at least `count` lines `{"event": EVENT, ...}` were printed
    /// and returns all of them, panicking after `timeout`.
    #[expect(
        clippy::must_use_candidate,
        reason = "waiting is often the point; the lines are for tests that care"
    )]
    pub fn wait_for_events(&self, event: &str, count: usize, timeout: Duration) -> Vec<Value> {
        let matching = |lines: &[String]| -> Vec<Value> {
            lines
                .iter()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter(|value| value["event"] == event)
                .collect()
        };
        self.stdout
            .wait_for(timeout, |lines| {
                Some(matching(lines)).filter(|found| found.len() >= count)
            })
            .unwrap_or_else(|| {
                let seen = matching(&self.stdout_lines()).len();
                panic!(
                    "saw {seen} of {count} {{\"event\":\"{event}\"}} lines within {timeout:?}\n{}",
                    self.report()
                )
            })
    }

    /// Waits for the process to exit and its stdout to end, then returns its
    /// status and its JSON stdout lines. Kills it and panics after `timeout`.
    #[must_use]
    pub fn output_json_lines(&self, timeout: Duration) -> (ExitStatus, Vec<Value>) {
        let status = self.wait_for_output(timeout);
        (status, self.json_lines())
    }

    /// Waits for the process to exit and its stdout to end, then returns its
    /// status and its stdout lines. Kills it and panics after `timeout`.
    #[must_use]
    pub fn output_lines(&self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let status = self.wait_for_output(timeout);
        (status, self.stdout_lines())
    }

    fn wait_for_output(&self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let Some(status) = wait_until(&self.child, deadline) else {
            self.kill();
            panic!("did not exit within {timeout:?}, killed\n{}", self.report());
        };
        // The pipe ends a moment after the exit; a grandchild may hold it longer.
        let _ = self.stdout.wait_for(Duration::from_secs(2), |_| None::<()>);
        status
    }

    /// Everything printed on stderr so far (complete once the process exited).
    #[must_use]
    pub fn stderr_text(&self) -> String {
        if self.try_wait().is_some() {
            // Give the reader thread a moment to reach the end of the pipe.
            let _ = self.stderr.wait_for(Duration::from_secs(1), |_| None::<()>);
        }
        let mut text = self.stderr.snapshot().join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        text
    }

    /// Where stderr is saved.
    #[must_use]
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The file holding both streams, when the test bed keeps
    /// [`ProcessLogs`] in a directory.
    #[must_use]
    pub fn log_path(&self) -> Option<&Path> {
        self.log_path.as_deref()
    }

    /// A summary for failure messages: name, PID, status, stdout and stderr.
    #[must_use]
    pub fn report(&self) -> String {
        let status = self
            .try_wait()
            .map_or_else(|| "running".to_owned(), |status| status.to_string());
        format!(
            "--- {} (pid {}, {status}) stdout:\n{}\n--- stderr ({}):\n{}",
            self.name,
            self.pid,
            self.stdout_lines().join("\n"),
            self.stderr_path.display(),
            self.stderr_text()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        stop_all(std::slice::from_ref(&self.child), DROP_GRACE);
    }
}

// === impl ChildSlot ===

impl ChildSlot {
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = match self.child.try_wait() {
                Ok(status) => status,
                // ECHILD: someone else reaped it; it is gone either way.
                Err(_) => Some(ExitStatus::from_raw(0)),
            };
        }
        self.status
    }

    fn signal(&mut self, signal: Signal) {
        if self.poll().is_none() {
            let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("PIDs fit in i32"));
            let _ = kill(pid, signal);
        }
    }

    fn force_kill(&mut self) {
        if self.poll().is_none() {
            let _ = self.child.kill();
            self.status = Some(
                self.child
                    .wait()
                    .unwrap_or_else(|_| ExitStatus::from_raw(libc::SIGKILL)),
            );
        }
    }
}

/// Stops the given processes together: SIGTERM to all, then SIGKILL to those
/// still running after `grace`, and reaps them all.
pub(crate) fn stop_all(slots: &[Arc<Mutex<ChildSlot>>], grace: Duration) {
    let signal = if grace.is_zero() {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    for slot in slots {
        lock(slot).signal(signal);
    }
    let deadline = Instant::now() + grace;
    for slot in slots {
        if wait_until(slot, deadline).is_none() {
            lock(slot).force_kill();
        }
    }
}

fn wait_until(slot: &Mutex<ChildSlot>, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = lock(slot).poll() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Creates `path`, or says why not and goes on without it: a test should
/// not fail for want of a copy of its output.
fn create_file(path: &Path) -> Option<File> {
    File::create(path)
        .inspect_err(|error| {
            eprintln!("ambit-tests: cannot create {}: {error}", path.display());
        })
        .ok()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test must still be able to clean up.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl LineLog ===

impl LineLog {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(LogState::default()),
            changed: Condvar::new(),
        })
    }

    /// Reads `pipe` line by line until it ends, calling `each` on every line.
    fn collect(&self, pipe: impl Read, mut each: impl FnMut(&str)) {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).to_owned();
                    each(&line);
                    lock(&self.state).lines.push(line);
                    self.changed.notify_all();
                }
            }
        }
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    fn snapshot(&self) -> Vec<String> {
        lock(&self.state).lines.clone()
    }

    /// Calls `check` on the lines whenever they change until it returns
    /// `Some`, the stream ends, or `timeout` passes.
    fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&[String]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        loop {
            if let Some(found) = check(&state.lines) {
                return Some(found);
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
