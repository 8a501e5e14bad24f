//! Compiling ambit's `ambit.dev/` annotations on a route into its
//! [`RoutePolicy`]: faults, rate limits, retry budgets, circuit breaking and
//! outlier detection.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ANNOTATION_PREFIX, Checked, invalid, parse_duration};
use crate::route::{
    CircuitBreakerPolicy, Fault, FaultAbort, FaultDelay, OutlierPolicy, RateLimit,
    RetryBudgetPolicy, RoutePolicy,
};

/// ambit's settings from the annotations.
#[expect(
    clippy::too_many_lines,
    reason = "one check per annotation, in table order"
)]
pub(super) fn policy(all: &BTreeMap<String, serde_yaml::Value>) -> Checked<RoutePolicy> {
    const KEYS: &[&str] = &[
        "fault-delay",
        "fault-delay-percent",
        "fault-abort-status",
        "fault-abort-percent",
        "rate-limit",
        "rate-limit-burst",
        "retry-budget-percent",
        "retry-budget-min-per-second",
        "max-connections",
        "max-pending-requests",
        "max-requests",
        "outlier-consecutive-failures",
        "outlier-base-ejection",
        "outlier-max-ejection-percent",
    ];
    let field = |key: &str| format!("metadata.annotations[\"{ANNOTATION_PREFIX}{key}\"]");
    let mut annotations = BTreeMap::new();
    for (key, value) in all {
        let Some(short) = key.strip_prefix(ANNOTATION_PREFIX) else {
            continue;
        };
        let at = format!("metadata.annotations[\"{key}\"]");
        if !KEYS.contains(&short) {
            return Err(invalid(
                at,
                format!("unknown ambit annotation; known: {}", KEYS.join(", ")),
            ));
        }
        annotations.insert(short, annotation_text(value).map_err(|m| invalid(at, m))?);
    }
    let get = |key: &str| annotations.get(key).map(|v| v.trim());
    let number = |key: &str, max: f64| -> Checked<Option<f64>> {
        get(key)
            .map(|v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && (0.0..=max).contains(n))
                    .ok_or_else(|| invalid(field(key), format!("{v:?} is not a number in 0-{max}")))
            })
            .transpose()
    };
    let integer = |key: &str, min: u32, max: u32| -> Checked<Option<u32>> {
        get(key)
            .map(|v| {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        invalid(
                            field(key),
                            format!("{v:?} is not an integer in {min}-{max}"),
                        )
                    })
            })
            .transpose()
    };
    let duration = |key: &str| -> Checked<Option<Duration>> {
        get(key)
            .map(|v| parse_duration(v).map_err(|m| invalid(field(key), m)))
            .transpose()
    };
    let defaults = RoutePolicy::default();
    let delay = duration("fault-delay")?;
    let delay_percent = number("fault-delay-percent", 100.0)?;
    if delay.is_none() && delay_percent.is_some() {
        return Err(invalid(
            field("fault-delay"),
            "fault-delay-percent needs fault-delay",
        ));
    }
    let abort_status = integer("fault-abort-status", 400, 599)?;
    let abort_percent = number("fault-abort-percent", 100.0)?;
    if abort_status.is_none() && abort_percent.is_some() {
        return Err(invalid(
            field("fault-abort-status"),
            "fault-abort-percent needs fault-abort-status",
        ));
    }
    let rate = number("rate-limit", 1_000_000.0)?;
    if rate == Some(0.0) {
        return Err(invalid(field("rate-limit"), "a rate limit must be above 0"));
    }
    let burst = integer("rate-limit-burst", 1, 10_000_000)?;
    if rate.is_none() && burst.is_some() {
        return Err(invalid(
            field("rate-limit"),
            "rate-limit-burst needs rate-limit",
        ));
    }
    Ok(RoutePolicy {
        fault: Fault {
            delay: delay.map(|duration| FaultDelay {
                duration,
                percent: delay_percent.unwrap_or(100.0),
            }),
            abort: abort_status.map(|status| FaultAbort {
                status: u16::try_from(status).unwrap_or(503),
                percent: abort_percent.unwrap_or(100.0),
            }),
        },
        rate_limit: rate.map(|requests_per_second| RateLimit {
            requests_per_second,
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "bounded above"
            )]
            burst: burst.unwrap_or_else(|| requests_per_second.ceil().max(1.0) as u32),
        }),
        retry_budget: RetryBudgetPolicy {
            percent: number("retry-budget-percent", 1000.0)?
                .unwrap_or(defaults.retry_budget.percent),
            min_per_second: integer("retry-budget-min-per-second", 0, 100_000)?
                .unwrap_or(defaults.retry_budget.min_per_second),
        },
        circuit_breaker: CircuitBreakerPolicy {
            max_connections: integer("max-connections", 1, u32::MAX)?,
            max_pending_requests: integer("max-pending-requests", 0, u32::MAX)?,
            max_requests: integer("max-requests", 1, u32::MAX)?,
        },
        outlier: OutlierPolicy {
            consecutive_failures: integer("outlier-consecutive-failures", 0, 1000)?
                .unwrap_or(defaults.outlier.consecutive_failures),
            base_ejection: duration("outlier-base-ejection")?
                .unwrap_or(defaults.outlier.base_ejection),
            max_ejection_percent: integer("outlier-max-ejection-percent", 0, 100)?
                .unwrap_or(defaults.outlier.max_ejection_percent),
        },
    })
}

/// An annotation's value as text. Kubernetes only has strings, but a
/// hand-written local configuration may leave `"100"` unquoted, which YAML
/// reads as a number: that is taken as its text.
pub(super) fn annotation_text(value: &serde_yaml::Value) -> Result<String, String> {
    match value {
        serde_yaml::Value::String(text) => Ok(text.clone()),
        serde_yaml::Value::Number(number) => Ok(number.to_string()),
        serde_yaml::Value::Bool(flag) => Ok(flag.to_string()),
        _ => Err("an annotation's value must be a string".to_owned()),
    }
}
