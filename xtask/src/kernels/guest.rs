//! One guest per kernel: a shell script, written to the run's directory,
//! runs each test binary of the set with its own time limit and appends
//! `start` and `done` lines to a results file that the host reads while the
//! guest runs. The host prints each result as it comes, and kills the guest
//! (its whole process group) when a test has neither finished nor been
//! stopped by its own limit well after it: that test is reported as hung
//! and the run goes on with the next kernel.
//!
//! The guest also writes its kernel release, and the tests that record a
//! kernel behaviour append `key<TAB>value` lines to a findings file
//! (`AMBIT_FINDINGS`), which the host reads when the guest is done.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::GuestTest;
use super::fetch::{GuestTools, Kernel};
use crate::cmd;

/// The exit status of `timeout` for a command it stopped.
const TIMED_OUT: i32 = 124;

/// How long a guest's tests may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long one test may run inside the guest before `timeout` stops it.
    pub test: Duration,
    /// How long after that the host waits for the guest to say so before
    /// it calls the test hung and kills the guest; also the limit for
    /// booting and for the time between two tests.
    pub grace: Duration,
}

impl Limits {
    /// The limits of a real run: 5 minutes a test under software
    /// emulation, and 90 s of grace.
    pub const GUEST: Self = Self {
        test: Duration::from_mins(5),
        grace: Duration::from_secs(90),
    };
}

/// How one test ended on one kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Passed,
    /// It failed, with this exit status.
    Failed(i32),
    /// Its own time limit stopped it (after this many seconds).
    TimedOut(u64),
    /// The guest stopped answering while it ran; the guest was killed.
    Hung,
    /// The guest ended (or was killed) before it.
    NotRun,
}

impl Outcome {
    /// Whether this counts as a pass.
    #[must_use]
    pub fn passed(&self) -> bool {
        *self == Self::Passed
    }

    fn describe(&self) -> String {
        match self {
            Self::Passed => "ok".to_owned(),
            Self::Failed(code) => format!("FAILED (exit {code})"),
            Self::TimedOut(limit) => format!("TIMED OUT ({limit} s)"),
            Self::Hung => "HUNG (guest killed)".to_owned(),
            Self::NotRun => "not run".to_owned(),
        }
    }
}

/// What one guest (or the host) showed.
#[derive(Debug, Default)]
pub struct KernelRun {
    /// Each test of the set, in order.
    pub results: Vec<TestResult>,
    /// The kernel's release (`uname -r`), when the guest got to say it.
    pub release: Option<String>,
    /// What the behaviour-recording tests found: key, then value.
    pub findings: BTreeMap<String, String>,
}

/// One row of the final table.
#[derive(Debug)]
pub struct TestResult {
    /// The kernel series.
    pub kernel: String,
    /// `binary::test`.
    pub test: String,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it ran.
    pub time: Option<Duration>,
}

/// Builds the binaries the guests run (the agent, the CLI, pod-tool) and the
/// set's test binaries, and returns each test target's executable.
pub fn build_test_binaries(root: &Path, tests: &[GuestTest]) -> Result<BTreeMap<String, PathBuf>> {
    // Through `cmd::cargo` and for the whole workspace, like `cargo xtask
    // test`'s build: the same features and settings, so nothing it built is
    // built again.
    cmd::run(cmd::cargo(root).args(["build", "--workspace", "--bins", "--quiet"]))?;
    let mut build = cmd::cargo(root);
    build
        .args(["build", "--quiet", "--workspace"])
        .args(["--message-format", "json-render-diagnostics"]);
    for test in tests {
        build.args(["--test", test.binary]);
    }
    let output = build
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo build for the guest tests")?;
    if !output.status.success() {
        bail!("building the guest tests failed");
    }
    let mut executables = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(name), Some(executable)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) && tests.iter().any(|test| test.binary == name)
        {
            executables.insert(name.to_owned(), PathBuf::from(executable));
        }
    }
    for test in tests {
        if !executables.contains_key(test.binary) {
            bail!(
                "cargo built no executable for the test target {}",
                test.binary
            );
        }
    }
    Ok(executables)
}

/// Boots `kernel`, runs `tests` in it and returns what it showed.
pub fn run_kernel(
    root: &Path,
    tools: &GuestTools,
    kernel: &Kernel,
    tests: &[GuestTest],
    executables: &BTreeMap<String, PathBuf>,
) -> Result<KernelRun> {
    let name = kernel.series.name;
    let (files, script) = prepare_run(root, name, tests, executables)?;
    let run_dir = &files.dir;
    let console = File::create(run_dir.join("console.log"))
        .with_context(|| format!("cannot create {}", run_dir.display()))?;

    println!(
        "▸ kernel {name} ({}): booting under qemu (software emulation)",
        kernel.package
    );
    let mut guest = Command::new(&tools.vng);
    guest
        .arg("--run")
        .arg(&kernel.vmlinuz)
        .args([
            "--disable-kvm",
            "--force-9p",
            "--cpus",
            "2",
            "--memory",
            "2G",
        ])
        .args(["--verbose", "--rwdir"])
        .arg(run_dir)
        .arg("--exec")
        .arg(format!("sh {}", script.display()))
        .env("PATH", &tools.path)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console);
    let run = run_guest(&mut guest, &files, name, tests, Limits::GUEST)?;
    if run.results.iter().any(|result| !result.outcome.passed()) {
        println!(
            "  {name}: each test's output is in {}, the guest's console in console.log",
            run_dir.display()
        );
    }
    Ok(run)
}

/// How this machine's own kernel is named in the tables.
pub const HOST: &str = "this machine";

/// Runs the tests that record kernel behaviours on this machine's own
/// kernel, as the guests do, and returns what they found.
pub fn run_on_host(
    root: &Path,
    tests: &[GuestTest],
    executables: &BTreeMap<String, PathBuf>,
) -> Result<KernelRun> {
    let (files, script) = prepare_run(root, "host", tests, executables)?;
    println!("▸ this machine's kernel: the kernel-behaviour tests");
    let mut host = Command::new("sh");
    host.arg(&script)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    run_guest(&mut host, &files, HOST, tests, Limits::GUEST)
}

/// A run's directory under `target/kernels`, emptied, with the script
/// that runs `tests` written into it; returns its files and the script.
fn prepare_run(
    root: &Path,
    name: &str,
    tests: &[GuestTest],
    executables: &BTreeMap<String, PathBuf>,
) -> Result<(RunFiles, PathBuf)> {
    let run_dir = root.join("target/kernels").join(format!("run-{name}"));
    if run_dir.exists() {
        fs::remove_dir_all(&run_dir)
            .with_context(|| format!("cannot clear {}", run_dir.display()))?;
    }
    fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    let files = RunFiles::new(&run_dir);
    let script = run_dir.join("run.sh");
    fs::write(
        &script,
        guest_script(root, &files, tests, executables, Limits::GUEST),
    )
    .with_context(|| format!("cannot write {}", script.display()))?;
    Ok((files, script))
}

/// The files through which a guest reports, all in its run directory.
#[derive(Debug)]
struct RunFiles {
    /// Where each test's log goes.
    dir: PathBuf,
    /// `start` and `done` lines, one per test event.
    results: PathBuf,
    /// The kernel release.
    release: PathBuf,
    /// `key<TAB>value` lines from the behaviour-recording tests.
    findings: PathBuf,
}

impl RunFiles {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            results: dir.join("results"),
            release: dir.join("release"),
            findings: dir.join("findings"),
        }
    }
}

/// Starts `guest` (in its own process group, so that a hung guest's qemu
/// goes with it), follows it to its end and collects a result per test.
fn run_guest(
    guest: &mut Command,
    files: &RunFiles,
    name: &str,
    tests: &[GuestTest],
    limits: Limits,
) -> Result<KernelRun> {
    let mut child = guest
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", guest.get_program().to_string_lossy()))?;
    let (mut finished, hung) = watch(&mut child, &files.results, name, limits)?;
    let results = tests
        .iter()
        .map(GuestTest::id)
        .map(|test| {
            let (outcome, time) = match (finished.remove(&test), &hung) {
                (Some((outcome, time)), _) => (outcome, Some(time)),
                (None, Some((hung_test, time))) if *hung_test == test => {
                    (Outcome::Hung, Some(*time))
                }
                (None, _) => (Outcome::NotRun, None),
            };
            TestResult {
                kernel: name.to_owned(),
                test,
                outcome,
                time,
            }
        })
        .collect();
    let release = fs::read_to_string(&files.release)
        .ok()
        .map(|release| release.trim().to_owned())
        .filter(|release| !release.is_empty());
    let findings = fs::read_to_string(&files.findings)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    Ok(KernelRun {
        results,
        release,
        findings,
    })
}

/// What the host learned from one guest: each finished test's outcome and
/// time, and the test that hung, if the guest had to be killed.
type Watched = (
    BTreeMap<String, (Outcome, Duration)>,
    Option<(String, Duration)>,
);

/// Follows the guest's results file until the guest exits, printing each
/// result; kills the guest's process group when it stops answering.
fn watch(child: &mut Child, results_path: &Path, name: &str, limits: Limits) -> Result<Watched> {
    let pid = child.id();
    let mut seen = 0;
    let mut running: Option<(String, Instant)> = None;
    let mut finished: BTreeMap<String, (Outcome, Duration)> = BTreeMap::new();
    let mut last_event = Instant::now();
    let mut hung = None;
    loop {
        let exited = child.try_wait()?.is_some();
        let lines: Vec<String> = fs::read_to_string(results_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        for line in lines.iter().skip(seen) {
            last_event = Instant::now();
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("start"), Some(test), ..) => {
                    running = Some((test.to_owned(), Instant::now()));
                }
                (Some("done"), Some(test), Some(code), Some(millis)) => {
                    let code: i32 = code.parse().unwrap_or(-1);
                    let time = Duration::from_millis(millis.parse().unwrap_or(0));
                    let outcome = match code {
                        0 => Outcome::Passed,
                        TIMED_OUT => Outcome::TimedOut(limits.test.as_secs()),
                        code => Outcome::Failed(code),
                    };
                    println!(
                        "  {name}  {test}: {} ({:.0} s)",
                        outcome.describe(),
                        time.as_secs_f64()
                    );
                    finished.insert(test.to_owned(), (outcome, time));
                    running = None;
                }
                _ => {}
            }
        }
        seen = lines.len();
        if exited {
            break;
        }
        let limit = if running.is_some() {
            limits.test + limits.grace
        } else {
            limits.grace
        };
        if last_event.elapsed() > limit {
            // Ours: the group of the vng process this run started.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            let _ = child.wait();
            hung = running
                .take()
                .map(|(test, started)| (test, started.elapsed()));
            match &hung {
                Some((test, _)) => println!("  {name}  {test}: HUNG; the guest was killed"),
                None => println!("  {name}: the guest stopped answering outside a test; killed"),
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    Ok((finished, hung))
}

/// The script the guest runs from the shared tree.
fn guest_script(
    root: &Path,
    files: &RunFiles,
    tests: &[GuestTest],
    executables: &BTreeMap<String, PathBuf>,
    limits: Limits,
) -> String {
    let mut script = format!(
        "#!/bin/sh\n\
         # Written by cargo xtask test-kernels; runs inside the guest.\n\
         cd '{root}'\n\
         export AMBIT_BIN_DIR='{root}/target/debug' AMBIT_FINDINGS='{findings}' CI=true\n\
         uname -r > '{release}'\n\
         run() {{\n  \
           echo \"start $1::$2\" >> '{results}'\n  \
           start=$(date +%s%N)\n  \
           timeout {limit} \"$3\" --exact \"$2\" --test-threads 1 > '{run_dir}'/\"$1-$2.log\" 2>&1\n  \
           code=$?\n  \
           end=$(date +%s%N)\n  \
           echo \"done $1::$2 $code $(( (end - start) / 1000000 ))\" >> '{results}'\n\
         }}\n",
        root = root.display(),
        findings = files.findings.display(),
        release = files.release.display(),
        results = files.results.display(),
        run_dir = files.dir.display(),
        limit = limits.test.as_secs(),
    );
    for test in tests {
        if let Some(executable) = executables.get(test.binary) {
            let _ = writeln!(
                script,
                "run {} {} '{}'",
                test.binary,
                test.name,
                executable.display()
            );
        }
    }
    script
}

/// The final table: kernel, test, result, time.
#[must_use]
pub fn table(results: &[&TestResult]) -> String {
    let mut out = String::from("\n| kernel | test | result | time |\n| --- | --- | --- | --- |\n");
    for result in results {
        let time = result.time.map_or_else(
            || "-".to_owned(),
            |time| format!("{:.0} s", time.as_secs_f64()),
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {time} |",
            result.kernel,
            result.test,
            result.outcome.describe()
        );
    }
    out
}

/// The findings table: per kernel, what each behaviour-recording test found.
#[must_use]
pub fn findings_table(runs: &[(String, &KernelRun)], keys: &[(&str, &str)]) -> String {
    let mut out = String::from("\n| kernel |");
    for (_, title) in keys {
        let _ = write!(out, " {title} |");
    }
    out.push_str("\n| --- |");
    for _ in keys {
        out.push_str(" --- |");
    }
    out.push('\n');
    for (kernel, run) in runs {
        let release = run.release.as_deref().unwrap_or("release unknown");
        let _ = write!(out, "| {kernel} ({release}) |");
        for (key, _) in keys {
            let value = run
                .findings
                .get(*key)
                .map_or("not recorded", String::as_str);
            let _ = write!(out, " {value} |");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
