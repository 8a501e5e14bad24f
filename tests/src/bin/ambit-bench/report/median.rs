//! A scenario's figures over several runs: each one the median of the runs
//! where its test succeeded, so one disturbed run moves nothing.

use super::{
    AgentFigures, CrrFigures, LatencyCdf, RrFigures, ScenarioReport, ScenarioRun, TputFigures,
    round,
};

/// The scenario's report: the medians of `runs`, which it keeps.
pub fn median_report(
    name: &'static str,
    mesh: bool,
    client: String,
    server: String,
    runs: Vec<ScenarioRun>,
) -> ScenarioReport {
    ScenarioReport {
        name,
        mesh,
        client,
        server,
        rr_1b: median_rr(runs.iter().filter_map(|run| run.rr_1b)),
        rr_1k: median_rr(runs.iter().filter_map(|run| run.rr_1k)),
        rr_1b_x8: median_rr(runs.iter().filter_map(|run| run.rr_1b_x8)),
        crr: median_crr(runs.iter().filter_map(|run| run.crr)),
        tput_1: median_tput(runs.iter().filter_map(|run| run.tput_1)),
        tput_4: median_tput(runs.iter().filter_map(|run| run.tput_4)),
        agent: median_agent(runs.iter().filter_map(|run| run.agent)),
        agent_server: median_agent(runs.iter().filter_map(|run| run.agent_server)),
        rr_1b_cdf: median_cdf(&runs),
        runs,
    }
}

/// The median of `values`: the middle one, or the mean of the middle two;
/// `None` without values.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        f64::midpoint(values[middle - 1], values[middle])
    })
}

/// The median of counts, to the nearest whole one.
#[expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "counts are far below 2^52 and the median of counts is not negative"
)]
fn median_count(values: impl IntoIterator<Item = u64>) -> Option<u64> {
    median(values.into_iter().map(|value| value as f64)).map(|value| value.round() as u64)
}

/// The medians of request/response figures, field by field.
pub fn median_rr(runs: impl Iterator<Item = RrFigures> + Clone) -> Option<RrFigures> {
    let field = |get: fn(&RrFigures) -> f64| median(runs.clone().map(|f| get(&f)));
    Some(RrFigures {
        p50_us: round(field(|f| f.p50_us)?, 3),
        p90_us: round(field(|f| f.p90_us)?, 3),
        p99_us: round(field(|f| f.p99_us)?, 3),
        rate: round(field(|f| f.rate)?, 1),
        samples: median_count(runs.map(|f| f.samples))?,
    })
}

/// The medians of connection-rate figures, field by field.
pub fn median_crr(runs: impl Iterator<Item = CrrFigures> + Clone) -> Option<CrrFigures> {
    let field = |get: fn(&CrrFigures) -> f64| median(runs.clone().map(|f| get(&f)));
    Some(CrrFigures {
        rate: round(field(|f| f.rate)?, 1),
        p50_us: round(field(|f| f.p50_us)?, 3),
        p99_us: round(field(|f| f.p99_us)?, 3),
        samples: median_count(runs.clone().map(|f| f.samples))?,
        errors: median_count(runs.map(|f| f.errors))?,
    })
}

fn median_tput(runs: impl Iterator<Item = TputFigures>) -> Option<TputFigures> {
    Some(TputFigures {
        gbps: round(median(runs.map(|f| f.gbps))?, 3),
    })
}

/// Medians, but the peak is the largest: `VmHWM` only grows, so that is the
/// reading after the last run.
fn median_agent(runs: impl Iterator<Item = AgentFigures> + Clone) -> Option<AgentFigures> {
    let field = |get: fn(&AgentFigures) -> f64| median(runs.clone().map(|f| get(&f)));
    Some(AgentFigures {
        cpu_cores: round(field(|f| f.cpu_cores)?, 3),
        rss_mb_idle: round(field(|f| f.rss_mb_idle)?, 2),
        rss_mb_peak: runs.clone().map(|f| f.rss_mb_peak).reduce(f64::max)?,
        rss_mb_1000_idle: median(runs.filter_map(|f| f.rss_mb_1000_idle)).map(|v| round(v, 2)),
    })
}

/// The `rr_1b` distribution of the run whose p50 is the median (the lower
/// of the middle two for an even count): a real run's curve, not a blend.
fn median_cdf(runs: &[ScenarioRun]) -> Option<LatencyCdf> {
    let mut measured: Vec<(f64, &ScenarioRun)> = runs
        .iter()
        .filter(|run| !run.rr_1b_cdf.is_empty())
        .filter_map(|run| Some((run.rr_1b?.p50_us, run)))
        .collect();
    if measured.is_empty() {
        return None;
    }
    measured.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (_, run) = measured[(measured.len() - 1) / 2];
    Some(LatencyCdf {
        run: run.run,
        points: run.rr_1b_cdf.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(number: usize, p50: Option<f64>, gbps: f64) -> ScenarioRun {
        ScenarioRun {
            run: number,
            rr_1b: p50.map(|p50_us| RrFigures {
                p50_us,
                p90_us: p50_us * 2.0,
                p99_us: p50_us * 3.0,
                rate: 1e6 / p50_us,
                samples: 100,
            }),
            rr_1k: None,
            rr_1b_x8: None,
            crr: None,
            tput_1: Some(TputFigures { gbps }),
            tput_4: None,
            agent: Some(AgentFigures {
                cpu_cores: gbps,
                rss_mb_idle: 10.0,
                rss_mb_peak: 20.0 + gbps,
                rss_mb_1000_idle: Some(30.0 + gbps),
            }),
            agent_server: None,
            rr_1b_cdf: p50.map_or_else(Vec::new, |p50| vec![[0.5, p50], [1.0, p50 * 4.0]]),
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median([]), None);
    }

    #[test]
    fn figures_are_medians_of_the_runs_that_measured_them() {
        let runs = vec![
            run(1, Some(30.0), 5.0),
            run(2, None, 1.0),
            run(3, Some(10.0), 3.0),
            run(4, Some(20.0), 4.0),
        ];
        let report = median_report("s", true, "c".into(), "s".into(), runs);
        let rr = report.rr_1b.expect("three runs measured rr_1b");
        assert!((rr.p50_us - 20.0).abs() < 1e-9);
        assert!((rr.p99_us - 60.0).abs() < 1e-9);
        assert!((report.tput_1.expect("tput").gbps - 3.5).abs() < 1e-9);
        assert!(report.tput_4.is_none());
        let agent = report.agent.expect("agent");
        assert!((agent.rss_mb_peak - 25.0).abs() < 1e-9, "the largest peak");
        assert_eq!(agent.rss_mb_1000_idle, Some(33.5));
        let cdf = report.rr_1b_cdf.expect("cdf");
        assert_eq!(cdf.run, 4, "the run with the median p50");
        assert_eq!(report.runs.len(), 4);
    }
}
