use super::*;
use crate::soak::judge;

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
