use super::*;
use crate::soak::judge::{self, Excuse, ExcusedPods};

fn series(name: &str, slope: f64) -> SeriesReport {
    let points: Vec<Point> = (0..=10)
        .map(|minute| Point {
            t_secs: f64::from(minute) * 60.0,
            value: 20.0 + slope * f64::from(minute),
            process: 1,
            age_secs: 600.0,
        })
        .collect();
    SeriesReport {
        name: name.to_owned(),
        floor: 2.0,
        growth: judge::growth(&points, 600.0, 2.0),
        points,
    }
}

fn failure(explained_by: Option<&str>) -> FailureRecord {
    FailureRecord {
        client: "cli-1".to_owned(),
        target: "srv-6".to_owned(),
        mode: "rr".to_owned(),
        phase: "exchange".to_owned(),
        kind: "reset".to_owned(),
        error: "Connection reset by peer".to_owned(),
        started_secs: 10.0,
        at_secs: 10.2,
        explained_by: explained_by.map(str::to_owned),
        nearby: vec!["handoff on n2 (generation 1)".to_owned()],
    }
}

fn report() -> SoakReport {
    SoakReport {
        minutes: 10,
        sample_secs: 60,
        pods: 41,
        run_secs: 600.0,
        series: vec![series("n1 agent: RSS, MiB", 0.0)],
        traffic: Vec::new(),
        failure_counts: BTreeMap::new(),
        failures: vec![failure(Some("DENY cli-1 -> srv-6"))],
        handoffs: Vec::new(),
        rotations: RotationReport::default(),
        churn: ChurnCounts::default(),
        bad_objects: BadObjects::default(),
        problems: Vec::new(),
        crashes: Vec::new(),
        aborted: None,
        changes: Vec::new(),
        verdict: Verdict::default(),
    }
}

#[test]
fn explained_failures_and_bounded_series_pass() {
    let mut report = report();
    report.conclude();
    assert!(report.verdict.pass, "{:?}", report.verdict);
    assert_eq!(report.failure_counts["explained: DENY"], 1);
    let text = render(&report);
    assert!(text.contains("**PASS**"), "{text}");
    assert!(
        text.contains("| n1 agent: RSS, MiB | 20 | 20 | 20 | +0.00 | +0.0 | 2.0 | bounded |"),
        "{text}"
    );
}

#[test]
fn each_kind_of_trouble_fails_the_soak_and_is_named() {
    let mut report = report();
    report.series.push(series("waypoint: open fds", 1.0));
    report.failures.push(failure(None));
    report
        .crashes
        .push("srv-3-pod-tool exited with 101".to_owned());
    report
        .problems
        .push("the waypoint does not list route bad-regex as rejected".to_owned());
    report.conclude();
    assert!(!report.verdict.pass);
    let reasons = report.verdict.reasons.join("\n");
    assert_eq!(report.verdict.reasons.len(), 4, "{reasons}");
    assert!(
        reasons.contains("waypoint: open fds grows: +10.0"),
        "{reasons}"
    );
    assert!(
        reasons.contains("1 unexplained failure(s), the first cli-1 → srv-6"),
        "{reasons}"
    );
    assert!(reasons.contains("crash: srv-3-pod-tool"), "{reasons}");
    assert_eq!(report.failure_counts["unexplained: rr exchange reset"], 1);
    let text = render(&report);
    assert!(
        text.starts_with("## Churn soak: 10 minutes, 41 pods"),
        "{text}"
    );
    assert!(text.contains("**FAIL**"), "{text}");
    assert!(text.contains("| **grows** |"), "{text}");
    assert!(
        text.contains("nearby: handoff on n2 (generation 1)"),
        "{text}"
    );
}

#[test]
fn a_deny_that_cut_nothing_is_named() {
    let deny = |from_ms, to_ms| Excuse {
        what: "DENY cli-1 -> srv-6".to_owned(),
        pods: ExcusedPods::Pair {
            client: "cli-1".to_owned(),
            target: "srv-6".to_owned(),
        },
        from_ms,
        to_ms,
    };
    // Started at 1,000 ms: the failure at 10.2 s falls in the first one.
    let excuses = [
        deny(10_000, 20_000),
        deny(40_000, 50_000),
        deny(60_000, u64::MAX),
    ];
    let mut crr = failure(Some("DENY cli-1 -> srv-6"));
    crr.mode = "crr".to_owned();
    crr.at_secs = 40.0;
    let failures = [failure(Some("DENY cli-1 -> srv-6")), crr];
    let uncut = uncut_denies(&excuses, &failures, 1_000);
    assert_eq!(
        uncut,
        [
            "DENY cli-1 -> srv-6 (in force 39.0 to 49.0 s) cut or refused none of the pair's long-lived connections"
        ],
        "a crr refusal is no cut, and the DENY still in force is not judged"
    );
}
