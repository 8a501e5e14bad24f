//! Latency samples, their percentiles and their distribution, shared by
//! `rr` and `crr`.

use std::time::{Duration, Instant};

/// The window a load generator measures in: everything before `measure_from`
/// is warm-up, nothing starts at or after `until`.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    pub(crate) measure_from: Instant,
    pub(crate) until: Instant,
}

/// Percentiles of a set of samples, in microseconds.
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
}

// === impl Window ===

impl Window {
    /// A window that opens after `warmup` from now and lasts `duration`.
    pub(crate) fn after_warmup(warmup: Duration, duration: Duration) -> Self {
        let measure_from = Instant::now() + warmup;
        Self {
            measure_from,
            until: measure_from + duration,
        }
    }
}

// === impl Percentiles ===

impl Percentiles {
    /// Sorts `nanos` (they stay sorted, for [`cdf`]) and picks the
    /// nearest-rank percentiles; all zero when there are no samples.
    pub(crate) fn of(nanos: &mut [u64]) -> Self {
        nanos.sort_unstable();
        Self {
            p50: nearest_rank(nanos, 500),
            p90: nearest_rank(nanos, 900),
            p99: nearest_rank(nanos, 990),
        }
    }
}

/// The distribution of sorted samples as `[fraction, µs]` points, the
/// nearest-rank quantile at each fraction of [`cdf_permille`]: enough points
/// (104) to draw a smooth CDF, dense in both tails. Empty without samples.
pub(crate) fn cdf(sorted: &[u64]) -> Vec<[f64; 2]> {
    if sorted.is_empty() {
        return Vec::new();
    }
    cdf_permille()
        .map(|permille| [f64::from(permille) / 1000.0, nearest_rank(sorted, permille)])
        .collect()
}

/// The fractions [`cdf`] reports, in thousandths: 0.1 %, 0.5 %, every
/// percent from 1 to 99, 99.5 %, 99.9 % and the largest sample.
fn cdf_permille() -> impl Iterator<Item = u16> {
    [1, 5]
        .into_iter()
        .chain((1..=99).map(|percent| percent * 10))
        .chain([995, 999, 1000])
}

/// The smallest sample with at least `permille`‰ of the samples at or
/// below it.
fn nearest_rank(sorted: &[u64], permille: u16) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (sorted.len() * usize::from(permille)).div_ceil(1000).max(1);
    nanos_to_us(sorted[rank - 1])
}

/// Whole nanoseconds to microseconds with a thousandth's precision.
#[expect(
    clippy::cast_precision_loss,
    reason = "latencies are far below 2^52 ns"
)]
fn nanos_to_us(nanos: u64) -> f64 {
    nanos as f64 / 1000.0
}

/// A duration in nanoseconds, saturating (no sample lasts 584 years).
pub(crate) fn as_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Events per second over `seconds`.
#[expect(
    clippy::cast_precision_loss,
    reason = "sample counts are far below 2^52"
)]
pub(crate) fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Parses a duration in seconds for `--duration-secs` and `--warmup-secs`:
/// a finite number from 0 to 600.
pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|error| format!("{text:?} is not a number of seconds: {error}"))?;
    if !(0.0..=600.0).contains(&seconds) {
        return Err(format!("{text} s is outside 0..=600 s"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u64> = (1..=100).rev().map(|us| us * 1000).collect();
        let p = Percentiles::of(&mut samples);
        assert!((p.p50 - 50.0).abs() < f64::EPSILON);
        assert!((p.p90 - 90.0).abs() < f64::EPSILON);
        assert!((p.p99 - 99.0).abs() < f64::EPSILON);
        let mut one = vec![7_000];
        assert!((Percentiles::of(&mut one).p99 - 7.0).abs() < f64::EPSILON);
        assert!(Percentiles::of(&mut []).p50.abs() < f64::EPSILON);
    }

    #[test]
    #[expect(
        clippy::float_cmp,
        reason = "n/1000 divides to the same double as the literal; samples are whole µs"
    )]
    fn cdf_covers_both_tails() {
        let mut samples: Vec<u64> = (1..=1000).rev().map(|us| us * 1000).collect();
        let _ = Percentiles::of(&mut samples);
        let points = cdf(&samples);
        assert_eq!(points.len(), 104);
        assert_eq!(points[0], [0.001, 1.0]);
        assert_eq!(points[2], [0.01, 10.0]);
        assert_eq!(points[51], [0.5, 500.0]);
        assert_eq!(points[102], [0.999, 999.0]);
        assert_eq!(points[103], [1.0, 1000.0]);
        assert!(
            points
                .windows(2)
                .all(|pair| pair[0][0] < pair[1][0] && pair[0][1] <= pair[1][1])
        );
        assert!(cdf(&[]).is_empty());
    }

    #[test]
    fn seconds_are_bounded() {
        assert_eq!(parse_seconds("0.3"), Ok(Duration::from_millis(300)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("601").is_err());
        assert!(parse_seconds("NaN").is_err());
    }
}
