//! The guest runner's bookkeeping, with `sh` standing in for the guest.

use super::*;

const SET: &[GuestTest] = &[
    GuestTest {
        binary: "capture",
        name: "one",
        shows: "",
    },
    GuestTest {
        binary: "capture",
        name: "two",
        shows: "",
    },
    GuestTest {
        binary: "splice",
        name: "three",
        shows: "",
    },
    GuestTest {
        binary: "splice",
        name: "four",
        shows: "",
    },
];

const SHORT: Limits = Limits {
    test: Duration::from_secs(1),
    grace: Duration::from_secs(1),
};

fn run_dir(name: &str) -> RunFiles {
    let dir = std::env::temp_dir().join(format!("xtask-guest-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the run directory");
    RunFiles::new(&dir)
}

/// A stand-in guest: `sh -c script`, with `$R` the results file, `$D`
/// the run directory.
fn fake_guest(files: &RunFiles, script: &str) -> Command {
    let mut guest = Command::new("sh");
    guest
        .args(["-c", script])
        .env("R", &files.results)
        .env("D", &files.dir)
        .stdin(Stdio::null());
    guest
}

#[test]
fn each_done_line_becomes_an_outcome_and_a_test_the_guest_never_started_is_not_run() {
    let files = run_dir("done");
    let mut guest = fake_guest(
        &files,
        "echo 6.1.0-57-amd64 > $D/release; \
         printf 'ktls\\tyes: AES-GCM-128\\n' > $D/findings; \
         echo 'start capture::one' >> $R; echo 'done capture::one 0 1500' >> $R; \
         echo 'start capture::two' >> $R; echo 'done capture::two 124 300000' >> $R; \
         echo 'start splice::three' >> $R; echo 'done splice::three 101 2000' >> $R",
    );
    let run = run_guest(&mut guest, &files, "6.1", SET, SHORT).expect("run");
    let outcomes: Vec<_> = run.results.iter().map(|r| r.outcome.clone()).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Passed,
            Outcome::TimedOut(1),
            Outcome::Failed(101),
            Outcome::NotRun
        ]
    );
    assert_eq!(run.results[0].time, Some(Duration::from_millis(1500)));
    assert_eq!(run.results[3].time, None);
    assert_eq!(run.release.as_deref(), Some("6.1.0-57-amd64"));
    assert_eq!(run.findings["ktls"], "yes: AES-GCM-128");
    let table = table(&run.results.iter().collect::<Vec<_>>());
    assert!(
        table.contains("| 6.1 | capture::two | TIMED OUT (1 s) | 300 s |"),
        "{table}"
    );
    assert!(
        table.contains("| 6.1 | splice::four | not run | - |"),
        "{table}"
    );
    let _ = fs::remove_dir_all(&files.dir);
}

#[test]
fn a_guest_that_hangs_in_a_test_is_killed_with_its_process_group_and_the_test_is_named() {
    let files = run_dir("hang");
    // The guest's own child stands for qemu: it must die with the group.
    let mut guest = fake_guest(
        &files,
        "echo 'start capture::one' >> $R; echo 'done capture::one 0 10' >> $R; \
         sleep 600 & echo $! > $D/qemu.pid; \
         echo 'start capture::two' >> $R; wait",
    );
    let started = Instant::now();
    let run = run_guest(&mut guest, &files, "6.12", SET, SHORT).expect("run");
    // Killed once the test's limit and the grace had passed, not later.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let outcomes: Vec<_> = run.results.iter().map(|r| r.outcome.clone()).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Passed,
            Outcome::Hung,
            Outcome::NotRun,
            Outcome::NotRun
        ]
    );
    let qemu: u32 = fs::read_to_string(files.dir.join("qemu.pid"))
        .expect("the stand-in wrote its pid")
        .trim()
        .parse()
        .expect("a pid");
    let gone = (0..50).any(|_| {
        let state = fs::read_to_string(format!("/proc/{qemu}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for init.
        let dead = state.is_empty() || state.split_whitespace().nth(2) == Some("Z");
        if !dead {
            std::thread::sleep(Duration::from_millis(100));
        }
        dead
    });
    assert!(gone, "the guest's child {qemu} outlived the kill");
    let _ = fs::remove_dir_all(&files.dir);
}

#[test]
fn the_findings_table_shows_each_kernels_release_and_values() {
    let run = KernelRun {
        results: Vec::new(),
        release: Some("6.12.118+deb12-amd64".to_owned()),
        findings: BTreeMap::from([("ktls".to_owned(), "yes: AES-GCM-128".to_owned())]),
    };
    let table = findings_table(
        &[("6.12".to_owned(), &run)],
        &[("spurious_eagain", "EAGAIN"), ("ktls", "kTLS")],
    );
    assert!(
        table.contains("| 6.12 (6.12.118+deb12-amd64) | not recorded | yes: AES-GCM-128 |"),
        "{table}"
    );
}
