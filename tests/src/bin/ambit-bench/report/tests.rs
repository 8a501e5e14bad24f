use super::*;

fn scenario(name: &'static str, mesh: bool, scale: f64) -> ScenarioReport {
    let rr = RrFigures {
        p50_us: 20.0 * scale,
        p90_us: 30.0 * scale,
        p99_us: 50.0 * scale,
        rate: 40_000.0 / scale,
        samples: 1000,
    };
    ScenarioReport {
        name,
        mesh,
        client: "client".to_owned(),
        server: "server".to_owned(),
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
        tput_4: None,
        agent: mesh.then_some(AgentFigures {
            cpu_cores: 0.5,
            rss_mb_idle: 12.0,
            rss_mb_peak: 20.0,
        }),
        agent_server: mesh.then_some(AgentFigures {
            cpu_cores: 0.4,
            rss_mb_idle: 17.0,
            rss_mb_peak: 20.0,
        }),
    }
}

fn report() -> Report {
    let durations = Durations {
        rr_secs: 1.0,
        rr_warmup_secs: 0.3,
        tput_secs: 1,
        tput_omit_secs: 0,
    };
    Report::new(
        true,
        durations,
        vec![
            scenario("direct-cross-node", false, 1.0),
            scenario("mesh-cross-node", true, 2.0),
        ],
        Vec::new(),
    )
}

fn target<'a>(report: &'a Report, metric: &str) -> &'a TargetResult {
    report
        .targets
        .iter()
        .find(|t| t.metric == metric)
        .expect("target present")
}

#[test]
fn ratios_are_mesh_over_direct() {
    let report = report();
    let cross = &report.ratios["cross-node"];
    assert_eq!(cross["rr_1b.p50_us"], Some(2.0));
    assert_eq!(cross["crr.rate"], Some(0.5));
    assert_eq!(cross["tput_4.gbps"], None);
    // No same-node scenarios ran: every ratio is unknown.
    assert!(report.ratios["same-node"].values().all(Option::is_none));
}

#[test]
fn targets_judge_the_cross_node_ratios_and_the_larger_idle_rss() {
    let report = report();
    assert_eq!(target(&report, "rr_1b.p50_us").met, Some(true));
    assert_eq!(target(&report, "tput_1.gbps").met, Some(true));
    assert_eq!(target(&report, "crr.rate").met, Some(false));
    assert_eq!(target(&report, "tput_4.gbps").met, None);
    let rss = target(&report, "agent.rss_mb_idle");
    assert_eq!(rss.value, Some(17.0));
    assert_eq!(rss.met, Some(false));
}

#[test]
fn json_has_the_documented_shape() {
    let json = serde_json::to_value(report()).expect("serializes");
    assert_eq!(json["quick"], true);
    let direct = &json["scenarios"][0];
    assert_eq!(direct["name"], "direct-cross-node");
    assert!(direct["rr_1b"]["p99_us"].is_number());
    assert!(direct["tput_4"].is_null());
    assert!(direct.get("agent").is_none());
    let mesh = &json["scenarios"][1];
    assert!(mesh["agent"]["rss_mb_idle"].is_number());
    assert!(mesh["agent_server"]["cpu_cores"].is_number());
    assert_eq!(json["ratios"]["cross-node"]["rr_1b.p50_us"], 2.0);
    assert!(json["targets"][0]["met"].is_boolean());
}

#[test]
fn markdown_shows_ratios_and_verdicts() {
    let markdown = render(&report());
    assert!(markdown.contains("| rr_1b p50 (µs)"), "{markdown}");
    assert!(markdown.contains("2.00×"), "{markdown}");
    assert!(
        markdown.contains("- NOT MET: crr rate ≥ 0.9× direct: 0.50×"),
        "{markdown}"
    );
    assert!(markdown.contains("- unknown: tput_4"), "{markdown}");
    assert!(
        markdown.contains("server agent idle RSS (MiB)"),
        "{markdown}"
    );
}
