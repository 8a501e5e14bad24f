//! `ambit-demo` keeps its promise: on success it tells its story in at most
//! 80 lines (a line per step and per flow, then the tables), runs the same
//! seven flows and L7 checks, and leaves one non-empty log file per process
//! in the directory it names at the end.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_tests::{Skip, Testbed};

/// The most lines the demo may print on success without `--verbose`.
const MAX_LINES: usize = 80;
/// How long the demo may take (it takes seconds; the build is done).
const DEMO_TIMEOUT: Duration = Duration::from_mins(5);
/// The exit code of a demo that cannot build a test bed on this machine.
const CANNOT_HOST: i32 = 2;

/// The processes that run for the whole of their act, by the name the test
/// bed gives them (`<node or pod>-<program>`): each must leave one
/// non-empty log.
const LONG_RUNNING: [&str; 12] = [
    "n1-ambit-node-agent",
    "n2-ambit-node-agent",
    "w1-ambit-node-agent",
    "w2-ambit-node-agent",
    "wp-ambit-waypoint",
    "frontend-pod-tool",
    "batch-pod-tool",
    "backend-pod-tool",
    "cache-pod-tool",
    "v1-pod-tool",
    "v2-pod-tool",
    "v3-pod-tool",
];

/// The L7 table's requests, one row each.
const L7_REQUESTS: [&str; 4] = [
    "client-a 1000 × GET http://",
    "client-a GET http://",
    "client-a DELETE http://",
    "client-b GET http://",
];

#[test]
fn demo_tells_its_story_in_at_most_80_lines_and_logs_every_process() {
    let log_dir = std::env::temp_dir().join(format!("ambit-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&log_dir);
    let (code, stdout, stderr) = run_demo(&log_dir);
    if code == Some(CANNOT_HOST) {
        Skip::new(stderr.trim()).report("demo");
        return;
    }
    let output = format!("{stderr}{stdout}");
    assert_eq!(code, Some(0), "the demo failed:\n{output}");
    let lines = stdout.lines().count() + stderr.lines().count();
    assert!(
        lines <= MAX_LINES,
        "the demo printed {lines} lines, more than {MAX_LINES}:\n{output}"
    );

    for number in 1..=7 {
        let prefix = format!("▸ flow {number}/7: ");
        assert!(
            stderr
                .lines()
                .any(|line| line.starts_with(&prefix) && line.ends_with(": ok")),
            "no line `{prefix}...: ok`:\n{output}"
        );
    }
    assert!(stdout.contains("7/7 flows as expected"), "{output}");
    for request in L7_REQUESTS {
        assert!(
            stdout
                .lines()
                .any(|line| line.starts_with(request) && line.ends_with("  ok")),
            "no L7 row `{request}... ok`:\n{output}"
        );
    }

    let shown = stderr
        .lines()
        .find_map(|line| line.strip_prefix("▸ logs: "))
        .and_then(|rest| rest.strip_suffix(" (one file per process)"))
        .unwrap_or_else(|| panic!("the demo did not say where its logs are:\n{output}"));
    assert_eq!(Path::new(shown), log_dir, "{output}");
    let logs = log_files(&log_dir);
    for process in LONG_RUNNING {
        let prefix = format!("{process}-");
        let found: Vec<&(PathBuf, u64)> = logs
            .iter()
            .filter(|(path, _)| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .and_then(|name| name.strip_prefix(&prefix))
                    .is_some_and(|pid| {
                        pid.strip_suffix(".log")
                            .is_some_and(|pid| pid.parse::<u32>().is_ok())
                    })
            })
            .collect();
        assert!(
            !found.is_empty(),
            "no log of {process} in {}: {logs:?}",
            log_dir.display()
        );
    }
    let empty: Vec<&(PathBuf, u64)> = logs.iter().filter(|(_, size)| *size == 0).collect();
    assert!(empty.is_empty(), "empty logs: {empty:?}");
    let _ = std::fs::remove_dir_all(&log_dir);
}

/// Runs the demo with its logs in `log_dir`: its exit code, stdout, stderr.
/// Kills it and panics after [`DEMO_TIMEOUT`].
fn run_demo(log_dir: &Path) -> (Option<i32>, String, String) {
    let mut child = Command::new(Testbed::bin("ambit-demo"))
        .arg("--log-dir")
        .arg(log_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the demo starts");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("piped")));
    let stderr = read(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + DEMO_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the demo can be waited for") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the demo did not finish within {DEMO_TIMEOUT:?}:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (
        status.code(),
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    )
}

/// Every `.log` file in `dir` and its size.
fn log_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .map(|path| {
            let size = std::fs::metadata(&path).map_or(0, |meta| meta.len());
            (path, size)
        })
        .collect()
}
