use super::*;

fn scenario(name: &'static str, mesh: bool, scale: f64) -> ScenarioReport {
    let runs = (1..=3)
        .map(|run| {
            #[expect(clippy::cast_precision_loss, reason = "1..=3")]
            let jitter = 1.0 + (run as f64 - 2.0) / 10.0;
            scenario_run(run, mesh, scale * jitter)
        })
        .collect();
    median_report(name, mesh, "client".to_owned(), "server".to_owned(), runs)
}

fn scenario_run(run: usize, mesh: bool, scale: f64) -> ScenarioRun {
    let rr = RrFigures {
        p50_us: 20.0 * scale,
        p90_us: 30.0 * scale,
        p99_us: 50.0 * scale,
        rate: 40_000.0 / scale,
        samples: 1000,
    };
    ScenarioRun {
        run,
        rr_1b: Some(rr),
        rr_1k: Some(rr),
        rr_1b_x8: Some(rr),
        crr: Some(CrrFigures {
            rate: 5000.0 / scale,
            p50_us: 200.0 * scale,
            p99_us: 400.0 * scale,
            samples: 1000,
            errors: 0,
        }),
        tput_1: Some(TputFigures { gbps: 20.0 / scale }),
        tput_4: mesh.then_some(TputFigures { gbps: 30.0 / scale }),
        agent: mesh.then_some(AgentFigures {
            cpu_cores: 0.5,
            rss_mb_idle: 12.0,
            rss_mb_peak: 20.0,
            rss_mb_1000_idle: Some(30.0),
        }),
        agent_server: mesh.then_some(AgentFigures {
            cpu_cores: 0.4,
            rss_mb_idle: 17.0,
            rss_mb_peak: 20.0,
            rss_mb_1000_idle: Some(40.0),
        }),
        rr_1b_cdf: vec![[0.5, 20.0 * scale], [1.0, 80.0 * scale]],
    }
}

/// The cross-node scenarios only.
fn report() -> Report {
    report_of(vec![
        scenario("direct-cross-node", false, 1.0),
        scenario("mesh-cross-node", true, 2.0),
    ])
}

fn report_of(scenarios: Vec<ScenarioReport>) -> Report {
    let durations = Durations::example();
    Report::new(
        true,
        3,
        1000,
        durations,
        scenarios,
        AuthzReport::example(),
        Vec::new(),
    )
}

fn target<'a>(report: &'a Report, scenario: &str, name: &str) -> &'a TargetResult {
    report
        .targets
        .iter()
        .find(|t| t.scenario == scenario && t.name == name)
        .expect("target present")
}

#[test]
fn ratios_are_mesh_over_direct_medians() {
    let report = report();
    let cross = &report.ratios["cross-node"];
    assert_eq!(cross["rr_1b.p50_us"], Some(2.0));
    assert_eq!(cross["crr.rate"], Some(0.5));
    assert_eq!(cross["tput_4.gbps"], None, "direct tput_4 failed");
    // No kernel-path or same-node scenarios ran: every ratio is unknown.
    for pair in ["cross-node-kernel", "same-node", "same-node-kernel"] {
        assert!(report.ratios[pair].values().all(Option::is_none), "{pair}");
    }
}

#[test]
fn targets_judge_both_pairs_and_the_larger_agent() {
    let report = report();
    let cross = "mesh-cross-node";
    assert_eq!(target(&report, cross, "rr_1b_p50").met, Some(true));
    assert_eq!(target(&report, cross, "rr_1b_p99").met, Some(true));
    assert_eq!(target(&report, cross, "tput_1").met, Some(true));
    assert_eq!(target(&report, cross, "crr_rate").met, Some(false));
    assert_eq!(target(&report, cross, "tput_4").met, None);
    let above = target(&report, cross, "tput_4_above_tput_1");
    assert_eq!(above.value, Some(1.5));
    assert_eq!(above.met, Some(true));
    assert_eq!(above.comparison, ">");
    let rss = target(&report, cross, "agent_idle_rss");
    assert_eq!(rss.value, Some(17.0));
    assert_eq!(rss.met, Some(false));
    let held = target(&report, cross, "agent_rss_1000_idle");
    assert_eq!(held.value, Some(40.0));
    assert_eq!(held.met, Some(false));
    // The same-node scenarios did not run: their verdicts are unknown.
    let same = target(&report, "mesh-same-node", "rr_1b_p50");
    assert!((same.limit - 1.3).abs() < f64::EPSILON);
    assert_eq!(same.met, None);
    assert_eq!(
        target(&report, "mesh-cross-node-kernel", "tput_1").met,
        None
    );
    assert_eq!(report.targets.len(), 22);
}

#[test]
fn tail_targets_compare_the_p99_ratio_with_the_p50_ratio() {
    let mut report = report();
    let cross = "mesh-cross-node";
    // p50 and p99 scale alike in the fixture: the tail adds nothing.
    let tail = target(&report, cross, "rr_1b_tail");
    assert_eq!(tail.value, Some(1.0));
    assert_eq!(tail.met, Some(true));
    assert_eq!(tail.metric, "rr_1b.p99_us/rr_1b.p50_us");
    assert_eq!(target(&report, cross, "rr_1k_tail").met, Some(true));
    // A tail that grows more than the median misses it.
    let ratios = report
        .ratios
        .get_mut("cross-node")
        .expect("cross-node ratios");
    ratios.insert("rr_1k.p50_us", Some(2.0));
    ratios.insert("rr_1k.p99_us", Some(3.0));
    ratios.remove("rr_1b.p99_us");
    let judged = targets::evaluate(&report);
    let find = |name: &str| {
        judged
            .iter()
            .find(|t| t.scenario == cross && t.name == name)
            .expect("target present")
    };
    assert_eq!(find("rr_1k_tail").value, Some(1.5));
    assert_eq!(find("rr_1k_tail").met, Some(false));
    // A missing figure leaves the verdict unknown.
    assert_eq!(find("rr_1b_tail").met, None);
}

/// All six scenarios, the kernel path faster than the path through the
/// agent, and on one node faster than the direct path.
fn full_report() -> Report {
    report_of(vec![
        scenario("direct-cross-node", false, 1.0),
        scenario("mesh-cross-node", true, 2.0),
        scenario("mesh-cross-node-kernel", true, 1.6),
        scenario("direct-same-node", false, 1.0),
        scenario("mesh-same-node", true, 1.5),
        scenario("mesh-same-node-kernel", true, 0.5),
    ])
}

#[test]
fn the_kernel_paths_are_judged_against_their_direct_scenarios_on_rows_of_their_own() {
    let report = full_report();
    let cross_kernel = &report.ratios["cross-node-kernel"];
    assert_eq!(cross_kernel["rr_1b.p50_us"], Some(1.6));
    assert_eq!(cross_kernel["tput_1.gbps"], Some(0.625));
    assert_eq!(report.ratios["cross-node"]["rr_1b.p50_us"], Some(2.0));
    let same_kernel = &report.ratios["same-node-kernel"];
    assert_eq!(same_kernel["rr_1b.p50_us"], Some(0.5));
    assert_eq!(same_kernel["crr.rate"], Some(2.0));
    assert_eq!(report.ratios["same-node"]["rr_1b.p50_us"], Some(1.5));
    let names = |scenario: &str| -> Vec<&str> {
        report
            .targets
            .iter()
            .filter(|t| t.scenario == scenario)
            .map(|t| t.name)
            .collect()
    };
    assert_eq!(names("mesh-cross-node-kernel"), ["rr_1b_p50", "tput_1"]);
    assert_eq!(
        names("mesh-same-node-kernel"),
        ["rr_1b_p50", "rr_1b_p99", "tput_1", "tput_4", "crr_rate"]
    );
    let cross_p50 = target(&report, "mesh-cross-node-kernel", "rr_1b_p50");
    assert!((cross_p50.limit - 2.0).abs() < f64::EPSILON);
    assert_eq!(cross_p50.met, Some(true));
    assert_eq!(
        target(&report, "mesh-cross-node-kernel", "tput_1").met,
        Some(true)
    );
    let same_p50 = target(&report, "mesh-same-node-kernel", "rr_1b_p50");
    assert!((same_p50.limit - 1.0).abs() < f64::EPSILON);
    assert_eq!(same_p50.met, Some(true));
    let same_tput = target(&report, "mesh-same-node-kernel", "tput_1");
    assert!((same_tput.limit - 1.0).abs() < f64::EPSILON);
    assert_eq!(same_tput.comparison, ">=");
    assert_eq!(same_tput.met, Some(true));
    // The direct tput_4 is missing in this report (see `scenario_run`).
    assert_eq!(target(&report, "mesh-same-node-kernel", "tput_4").met, None);
    assert_eq!(
        target(&report, "mesh-same-node", "rr_1b_p50").met,
        Some(false)
    );
    assert_eq!(report.targets.len(), 22);
    let markdown = render(&report);
    assert!(
        markdown.contains("### mesh-cross-node-kernel"),
        "{markdown}"
    );
    assert!(markdown.contains("### mesh-same-node-kernel"), "{markdown}");
    // Each direct scenario gets one column, which both its meshed
    // scenarios share.
    let header = markdown
        .lines()
        .find(|line| line.starts_with("| figure "))
        .expect("a table");
    assert_eq!(header.matches("direct-cross-node").count(), 1, "{header}");
    assert_eq!(header.matches("direct-same-node").count(), 1, "{header}");
    assert_eq!(header.matches("mesh/direct").count(), 4, "{header}");
    let columns = header.matches('|').count();
    for line in markdown.lines().take_while(|line| !line.starts_with("## ")) {
        if line.starts_with('|') {
            assert_eq!(line.matches('|').count(), columns, "{line}");
        }
    }
}

#[test]
fn json_has_the_documented_shape() {
    let json = serde_json::to_value(report()).expect("serializes");
    assert_eq!(json["quick"], true);
    assert_eq!(json["runs"], 3);
    assert_eq!(json["idle_conns"], 1000);
    let direct = &json["scenarios"][0];
    assert_eq!(direct["name"], "direct-cross-node");
    assert!(direct["rr_1b"]["p99_us"].is_number());
    assert!(direct["tput_4"].is_null());
    assert!(direct.get("agent").is_none());
    assert_eq!(direct["runs"].as_array().map(Vec::len), Some(3));
    assert_eq!(direct["runs"][1]["run"], 2);
    assert!(direct["runs"][1]["rr_1b"]["p50_us"].is_number());
    assert!(direct["runs"][1].get("rr_1b_cdf").is_none());
    assert_eq!(direct["rr_1b_cdf"]["run"], 2);
    assert_eq!(direct["rr_1b_cdf"]["points"][1][0], 1.0);
    let mesh = &json["scenarios"][1];
    assert!(mesh["agent"]["rss_mb_idle"].is_number());
    assert_eq!(mesh["agent"]["rss_mb_1000_idle"], 30.0);
    assert!(mesh["agent_server"]["cpu_cores"].is_number());
    assert_eq!(json["ratios"]["cross-node"]["rr_1b.p50_us"], 2.0);
    let first = &json["targets"][0];
    assert_eq!(first["name"], "rr_1b_p50");
    assert_eq!(first["scenario"], "mesh-cross-node");
    assert!(first["met"].is_boolean());
    assert!(first["value"].is_number());
    assert!(first["limit"].is_number());
}

#[test]
fn markdown_shows_medians_ratios_verdicts_and_runs() {
    let markdown = render(&report());
    assert!(markdown.contains("median of 3 runs"), "{markdown}");
    assert!(markdown.contains("| rr_1b p50 (µs)"), "{markdown}");
    assert!(markdown.contains("2.00×"), "{markdown}");
    assert!(markdown.contains("### mesh-cross-node"), "{markdown}");
    assert!(markdown.contains("### mesh-same-node"), "{markdown}");
    assert!(
        markdown.contains("### agent memory (mesh-cross-node)"),
        "{markdown}"
    );
    assert_eq!(markdown.matches("### mesh-cross-node\n").count(), 1);
    assert!(
        markdown.contains("- NOT MET: crr rate ≥ 0.9× direct: 0.50×"),
        "{markdown}"
    );
    assert!(markdown.contains("- unknown: tput_4 ≥ 0.5×"), "{markdown}");
    assert!(
        markdown.contains("- NOT MET: agent RSS with 1,000 idle meshed connections open ≤ 32 MiB (larger of the two agents): 40.0 MiB"),
        "{markdown}"
    );
    assert!(
        markdown.contains("server agent idle RSS (MiB)"),
        "{markdown}"
    );
    assert!(
        markdown.contains("server agent RSS, idle conns held (MiB)"),
        "{markdown}"
    );
    // Direct rr_1b p50 in runs 1, 2, 3: 18, 20, 22 µs.
    assert!(markdown.contains("18.0 / 20.0 / 22.0"), "{markdown}");
}

#[test]
fn authorization_cost_in_json_and_markdown() {
    let report = report();
    let json = serde_json::to_value(&report).expect("serializes");
    let authz = &json["authorization"];
    assert_eq!(authz["policies"], 10_004);
    assert_eq!(authz["in_process"]["ns_per_evaluation"], 300.0);
    let e2e = &authz["end_to_end"];
    assert_eq!(e2e["scenario"], "mesh-cross-node");
    assert_eq!(e2e["policies_in_force"], 10_004);
    assert_eq!(e2e["apply_ms"], 420.0);
    assert_eq!(e2e["crr_p50_added_us"], 6.0);
    assert_eq!(e2e["crr_rate_ratio"], 0.99);
    assert_eq!(e2e["rr_1b_p50_added_us"], 0.0);
    assert!(e2e["with_policies"]["crr"]["p50_us"].is_number());
    assert_eq!(e2e["runs"][1]["apply_ms"], serde_json::Value::Null);
    let markdown = render(&report);
    assert!(markdown.contains("## Authorization cost"), "{markdown}");
    assert!(
        markdown.contains("10004 policies: 1000 namespaces × 10"),
        "{markdown}"
    );
    assert!(markdown.contains("| evaluations/s "), "{markdown}");
    assert!(markdown.contains("| ns per evaluation "), "{markdown}");
    assert!(markdown.contains("6.2 / 8"), "{markdown}");
    assert!(markdown.contains("+6.0 |"), "{markdown}");
    assert!(markdown.contains("0.99× |"), "{markdown}");
    assert!(markdown.contains("600.0 / 600.0"), "{markdown}");
}
