use super::*;

/// 30 minutes sampled once a minute (31 samples), one process that
/// started a minute before the first sample, values from `value(minute)`.
fn series(value: impl Fn(u32) -> f64) -> Vec<Point> {
    (0..=30)
        .map(|minute| Point {
            t_secs: f64::from(minute) * 60.0,
            value: value(minute),
            process: 1,
            age_secs: f64::from(minute) * 60.0 + 60.0,
        })
        .collect()
}

/// [`series`] with the process replaced every `every` minutes at
/// `handoff_offset` s before a sample, as the soak's handoffs do.
fn handed_off(every: u32, value: impl Fn(u32, u32) -> f64) -> Vec<Point> {
    (0..=30)
        .map(|minute| {
            let generation = minute / every;
            let started = f64::from(generation * every) * 60.0 - 30.0;
            let t_secs = f64::from(minute) * 60.0;
            Point {
                t_secs,
                value: value(minute, generation),
                process: generation,
                age_secs: t_secs - started,
            }
        })
        .collect()
}

/// Noise in ±`amplitude`, the same every run.
fn noise(minute: u32, amplitude: f64) -> f64 {
    let hashed = (minute.wrapping_mul(2_654_435_761) >> 7) % 1000;
    (f64::from(hashed) / 500.0 - 1.0) * amplitude
}

const RUN: f64 = 1800.0;

#[test]
fn a_flat_series_passes() {
    let verdict = growth(&series(|_| 14.0), RUN, 2.0);
    assert_eq!(verdict.slope_per_min, Some(0.0));
    assert!(!verdict.grows, "{verdict:?}");
    assert!(
        (verdict.allowed - 2.0).abs() < 1e-9,
        "the floor wins over 10 % of 14"
    );
}

#[test]
fn noise_around_a_level_passes() {
    // fds around 60, ±4 from minute to minute.
    let verdict = growth(&series(|m| 60.0 + noise(m, 4.0)), RUN, 12.0);
    assert!(!verdict.grows, "{verdict:?}");
    assert_eq!(verdict.samples_used, 16);
}

#[test]
fn steady_growth_fails_however_noisy() {
    // Half a MiB a minute on top of 14 MiB: +15 MiB over the run.
    let verdict = growth(
        &series(|m| 14.0 + 0.5 * f64::from(m) + noise(m, 0.3)),
        RUN,
        2.0,
    );
    assert!(verdict.grows, "{verdict:?}");
    let slope = verdict.slope_per_min.expect("judged");
    assert!((slope - 0.5).abs() < 0.1, "{slope}");
    // One fd a minute: 30 over the run, more than 10 % of ~75 and the floor.
    let verdict = growth(&series(|m| 60.0 + f64::from(m)), RUN, 12.0);
    assert!(verdict.grows, "{verdict:?}");
}

#[test]
fn growth_within_the_floor_or_the_tolerance_passes() {
    // 5 fds over the run: under a floor of 12.
    let verdict = growth(&series(|m| 60.0 + f64::from(m) / 6.0), RUN, 12.0);
    assert!(!verdict.grows, "{verdict:?}");
    // 40 entries over the run on a median of 1,000: under 10 %.
    let verdict = growth(&series(|m| 1000.0 + f64::from(m) * 40.0 / 30.0), RUN, 32.0);
    assert!(!verdict.grows, "{verdict:?}");
}

#[test]
fn growth_only_in_the_first_half_passes() {
    // Warming up for 10 minutes, then flat.
    let verdict = growth(&series(|m| 10.0 + f64::from(m.min(10))), RUN, 2.0);
    assert!(!verdict.grows, "{verdict:?}");
}

#[test]
fn handoffs_reset_a_series_without_hiding_growth_inside_processes() {
    // Each process flat, at its own level: no growth.
    let levels = handed_off(5, |_, generation| 12.0 + f64::from(generation % 2) * 3.0);
    assert!(!growth(&levels, RUN, 2.0).grows);
    // Each process leaking 0.5 MiB a minute from 12 MiB: the sawtooth's
    // overall slope is about 0, but each tooth rises.
    let leaking = handed_off(5, |minute, generation| {
        12.0 + 0.5 * f64::from(minute - generation * 5)
    });
    let verdict = growth(&leaking, RUN, 2.0);
    assert!(verdict.grows, "{verdict:?}");
    // A naive slope over the same samples would have missed it.
    let one_process: Vec<Point> = leaking.iter().map(|p| Point { process: 1, ..*p }).collect();
    assert!(!growth(&one_process, RUN, 2.0).grows);
}

#[test]
fn a_new_process_s_warm_up_is_left_out() {
    // Each successor's first sample (30 s old) is 3 MiB low.
    let warming = handed_off(5, |minute, generation| {
        if generation > 0 && minute == generation * 5 {
            9.0
        } else {
            12.0
        }
    });
    let verdict = growth(&warming, RUN, 2.0);
    assert_eq!(verdict.slope_per_min, Some(0.0), "{verdict:?}");
    assert!(!verdict.grows);
}

#[test]
fn too_few_samples_are_not_judged() {
    let short: Vec<Point> = series(|m| f64::from(m) * 100.0)
        .into_iter()
        .take(3)
        .collect();
    let verdict = growth(&short, 120.0, 1.0);
    assert_eq!(verdict.slope_per_min, None);
    assert!(!verdict.grows);
    assert_eq!((verdict.start, verdict.end), (0.0, 200.0));
}

#[test]
fn medians() {
    assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
    assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
    assert!(median(&[]).is_nan());
}

fn failure<'a>(client: &'a str, target: &'a str, started_ms: u64, at_ms: u64) -> FailureAt<'a> {
    FailureAt {
        client,
        target,
        started_ms,
        at_ms,
    }
}

#[test]
fn a_deny_explains_its_pair_while_in_force_and_within_the_grace() {
    let deny = Excuse {
        what: "DENY cli-1 -> srv-6".to_owned(),
        pods: ExcusedPods::Pair {
            client: "cli-1".to_owned(),
            target: "srv-6".to_owned(),
        },
        from_ms: 100_000,
        to_ms: 110_000,
    };
    let excuses = [deny];
    let explained = |f: &FailureAt<'_>| explain(f, &excuses).is_some();
    assert!(explained(&failure("cli-1", "srv-6", 100_500, 100_600)));
    // Started just before it was written, failed as it applied.
    assert!(explained(&failure("cli-1", "srv-6", 98_500, 98_600)));
    // Reconnect attempts up to the grace after its removal.
    assert!(explained(&failure("cli-1", "srv-6", 111_900, 111_950)));
    // Too early, too late, another pair, the reverse direction.
    assert!(!explained(&failure("cli-1", "srv-6", 97_000, 97_900)));
    assert!(!explained(&failure("cli-1", "srv-6", 112_100, 112_200)));
    assert!(!explained(&failure("cli-2", "srv-6", 105_000, 105_100)));
    assert!(!explained(&failure("srv-6", "cli-1", 105_000, 105_100)));
    // An operation that ran across the whole window: it overlaps.
    assert!(explained(&failure("cli-1", "srv-6", 90_000, 120_000)));
}

#[test]
fn an_enrolment_change_explains_its_pod_s_failures_both_ways() {
    let flip = Excuse {
        what: "un-enrolled flip-3".to_owned(),
        pods: ExcusedPods::Pod {
            pod: "flip-3".to_owned(),
        },
        from_ms: 50_000,
        to_ms: 50_000,
    };
    let excuses = [flip];
    assert!(explain(&failure("flip-3", "srv-1", 50_100, 50_200), &excuses).is_some());
    assert!(explain(&failure("cli-2", "flip-3", 49_000, 49_100), &excuses).is_some());
    assert!(explain(&failure("cli-2", "flip-3", 52_500, 52_600), &excuses).is_none());
    assert!(explain(&failure("cli-2", "srv-1", 50_000, 50_100), &excuses).is_none());
}

#[test]
fn without_an_excuse_nothing_is_explained() {
    assert!(explain(&failure("cli-1", "srv-6", 1, 2), &[]).is_none());
}

#[test]
fn an_agent_s_connect_timeouts_are_found_in_its_log_and_nothing_else() {
    let log = "\
2026-12-07T18:34:01Z INFO node_agent::enrollment: pod enrolled pod=shop/srv-8
2026-12-07T18:34:12Z WARN inbound{pod=shop/srv-8 client=10.10.1.25:42870}: node_agent::proxy: connection failed error=connecting to 10.10.2.17:7001 timed out
2026-12-07T18:34:13Z WARN inbound{pod=shop/srv-8}: node_agent::proxy: connection failed error=Connection refused (os error 111)
2026-12-07T18:34:14Z WARN outbound{pod=shop/flip-3}: node_agent::proxy: connection failed error=connecting to 10.10.2.15:15008 timed out
";
    let found: Vec<&str> = connect_timeouts(log).collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("10.10.2.17:7001") && found[1].contains("10.10.2.15:15008"));
    assert_eq!(connect_timeouts("").count(), 0);
}
