//! Reading an `HTTPRoute` object into a [`Route`], checking every field.

use std::time::Duration;

mod annotations;
mod filters;
mod matches;

use self::annotations::policy;
use self::filters::compile_filter;
use self::matches::compile_match;
use super::raw::{RawBackendRef, RawParentRef, RawRetry, RawRoute, RawRule};
use super::{
    API_VERSIONS, Backend, DEFAULT_RETRY_CODES, Filter, ParentRef, PathMatch, PathRewrite, Reason,
    Redirect, Retry, Route, RouteError, RouteKey, RouteMatch, RouteRule, Timeouts,
};
use crate::object::HeaderMismatch;

/// Prefix of ambit's annotations.
pub(super) const ANNOTATION_PREFIX: &str = "ambit.dev/";

/// A field's problem, before the route's key is attached.
pub(super) struct Problem {
    field: String,
    message: String,
    kind: Reason,
}

pub(super) type Checked<T> = Result<T, Problem>;

pub(super) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
        kind: Reason::Invalid,
    }
}

pub(super) fn unsupported(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        kind: Reason::UnsupportedValue,
        ..invalid(field, message)
    }
}

/// Reads one `HTTPRoute`; `services(namespace, name)` says whether a
/// Service exists.
pub fn compile(
    value: &serde_yaml::Value,
    services: &dyn Fn(&str, &str) -> bool,
) -> Result<Route, RouteError> {
    let key = key_of(value);
    let raw: RawRoute = serde_path_to_error::deserialize(value.clone()).map_err(|error| {
        let path = error.path().to_string();
        RouteError {
            route: key.clone(),
            field: if path == "." {
                "(object)".to_owned()
            } else {
                path
            },
            message: error.into_inner().to_string(),
            kind: Reason::Invalid,
        }
    })?;
    let key = RouteKey {
        namespace: raw.metadata.namespace.clone(),
        name: raw.metadata.name.clone(),
    };
    compile_raw(raw, services).map_err(|problem| RouteError {
        route: key,
        field: problem.field,
        message: problem.message,
        kind: problem.kind,
    })
}

/// The namespace/name of an object, as far as it can be read.
fn key_of(value: &serde_yaml::Value) -> RouteKey {
    let text = |field: &str| {
        value
            .get("metadata")
            .and_then(|m| m.get(field))
            .and_then(serde_yaml::Value::as_str)
            .map(str::to_owned)
    };
    RouteKey {
        namespace: text("namespace")
            .or_else(|| text("name").map(|_| crate::workload::default_namespace()))
            .unwrap_or_else(|| "?".to_owned()),
        name: text("name").unwrap_or_else(|| "?".to_owned()),
    }
}

fn compile_raw(raw: RawRoute, services: &dyn Fn(&str, &str) -> bool) -> Checked<Route> {
    raw.check_header(API_VERSIONS, "HTTPRoute")
        .map_err(|mismatch| {
            // Gateway API's terser wording, without the field's name.
            let message = match &mismatch {
                HeaderMismatch::ApiVersion { found, expected } => {
                    format!("{found:?} is not one of {expected:?}")
                }
                HeaderMismatch::Kind { found, expected } => format!("{found:?} is not {expected}"),
            };
            unsupported(mismatch.field(), message)
        })?;
    let namespace = raw.metadata.namespace.clone();
    let parents = parents(&raw.spec.parent_refs, &namespace, services)?;
    let hostnames = raw
        .spec
        .hostnames
        .iter()
        .enumerate()
        .map(|(i, name)| hostname(name).map_err(|m| invalid(format!("spec.hostnames[{i}]"), m)))
        .collect::<Checked<Vec<_>>>()?;
    let mut rules = Vec::new();
    for (index, rule) in raw.spec.rules.into_iter().enumerate() {
        rules.push(compile_rule(
            rule,
            &format!("spec.rules[{index}]"),
            &namespace,
            services,
        )?);
    }
    if rules.is_empty() {
        return Err(invalid("spec.rules", "a route needs at least one rule"));
    }
    Ok(Route {
        key: RouteKey {
            namespace,
            name: raw.metadata.name,
        },
        creation: raw.metadata.creation_timestamp,
        parents,
        hostnames,
        rules,
        policy: policy(&raw.metadata.annotations)?,
    })
}

/// The Services a route attaches to: each must exist and be in the
/// route's namespace.
fn parents(
    refs: &[RawParentRef],
    namespace: &str,
    services: &dyn Fn(&str, &str) -> bool,
) -> Checked<Vec<ParentRef>> {
    if refs.is_empty() {
        return Err(Problem {
            kind: Reason::NoMatchingParent,
            ..invalid("spec.parentRefs", "a route needs a Service as parentRef")
        });
    }
    refs.iter()
        .enumerate()
        .map(|(i, parent)| {
            let field = format!("spec.parentRefs[{i}]");
            check_service_kind(
                parent.group.as_deref(),
                parent.kind.as_deref(),
                &field,
                true,
            )?;
            if parent.section_name.is_some() {
                return Err(unsupported(
                    format!("{field}.sectionName"),
                    "sectionName does not apply to a Service parent; use port",
                ));
            }
            // GAMMA's consumer routes (a route attached to another
            // namespace's Service) apply only to that namespace's clients;
            // the waypoint serves every client alike, so it would apply
            // such a route to all of them.
            if let Some(other) = parent.namespace.as_deref().filter(|ns| *ns != namespace) {
                return Err(unsupported(
                    format!("{field}.namespace"),
                    format!(
                        "Service {other}/{} is in another namespace: consumer routes are not supported; put the route in namespace {other}",
                        parent.name
                    ),
                ));
            }
            if !services(namespace, &parent.name) {
                return Err(Problem {
                    kind: Reason::NoMatchingParent,
                    ..invalid(
                        format!("{field}.name"),
                        format!("Service {namespace}/{} does not exist", parent.name),
                    )
                });
            }
            Ok(ParentRef {
                namespace: namespace.to_owned(),
                name: parent.name.clone(),
                port: parent
                    .port
                    .map(|p| port(p).map_err(|m| invalid(format!("{field}.port"), m)))
                    .transpose()?,
            })
        })
        .collect()
}

/// A Service reference: group `""` or `core`; kind `Service` (the default
/// for backends; required for parents, whose default is `Gateway`).
fn check_service_kind(
    group: Option<&str>,
    kind: Option<&str>,
    field: &str,
    parent: bool,
) -> Checked<()> {
    let group = group.unwrap_or(if parent {
        "gateway.networking.k8s.io"
    } else {
        ""
    });
    let kind = kind.unwrap_or(if parent { "Gateway" } else { "Service" });
    if matches!(group, "" | "core") && kind == "Service" {
        Ok(())
    } else {
        Err(unsupported(
            field,
            format!(
                "{kind} (group {group:?}) is not supported; ambit's waypoints route Services (group \"\", kind Service)"
            ),
        ))
    }
}

fn compile_rule(
    raw: RawRule,
    path: &str,
    namespace: &str,
    services: &dyn Fn(&str, &str) -> bool,
) -> Checked<RouteRule> {
    let mut matches = raw
        .matches
        .into_iter()
        .enumerate()
        .map(|(i, m)| compile_match(m, &format!("{path}.matches[{i}]")))
        .collect::<Checked<Vec<_>>>()?;
    if matches.is_empty() {
        matches.push(RouteMatch {
            path: PathMatch::Prefix("/".to_owned()),
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
        });
    }
    let filters = raw
        .filters
        .into_iter()
        .enumerate()
        .map(|(i, f)| compile_filter(&f, &format!("{path}.filters[{i}]")))
        .collect::<Checked<Vec<_>>>()?;
    let redirects = filters
        .iter()
        .filter(|f| matches!(f, Filter::Redirect(_)))
        .count();
    if redirects > 1 {
        return Err(invalid(
            format!("{path}.filters"),
            "at most one RequestRedirect per rule",
        ));
    }
    if let Some(Filter::Redirect(Redirect {
        path: Some(PathRewrite::Prefix(_)),
        ..
    })) = filters.iter().find(|f| matches!(f, Filter::Redirect(_)))
        && !matches
            .iter()
            .all(|m| matches!(m.path, PathMatch::Prefix(_)))
    {
        return Err(invalid(
            format!("{path}.filters"),
            "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
        ));
    }
    let backends = raw
        .backend_refs
        .iter()
        .enumerate()
        .map(|(i, b)| compile_backend(b, &format!("{path}.backendRefs[{i}]"), namespace, services))
        .collect::<Checked<Vec<_>>>()?;
    if backends.is_empty() && redirects == 0 {
        return Err(invalid(
            format!("{path}.backendRefs"),
            "a rule needs backendRefs (or a RequestRedirect filter)",
        ));
    }
    if !backends.is_empty() && backends.iter().all(|b| b.weight == 0) {
        return Err(invalid(
            format!("{path}.backendRefs"),
            "the weights sum to 0, so no request could be routed",
        ));
    }
    let timeouts = match raw.timeouts {
        None => Timeouts::default(),
        Some(t) => {
            let read = |value: Option<String>, field: &str| {
                value
                    .map(|v| {
                        parse_duration(&v)
                            .map_err(|m| invalid(format!("{path}.timeouts.{field}"), m))
                    })
                    .transpose()
                    .map(|d| d.filter(|d| !d.is_zero()))
            };
            let timeouts = Timeouts {
                request: read(t.request, "request")?,
                backend_request: read(t.backend_request, "backendRequest")?,
            };
            if let (Some(request), Some(backend)) = (timeouts.request, timeouts.backend_request)
                && backend > request
            {
                return Err(invalid(
                    format!("{path}.timeouts.backendRequest"),
                    "backendRequest must not be longer than request",
                ));
            }
            timeouts
        }
    };
    let retry = raw
        .retry
        .map(|r| compile_retry(r, &format!("{path}.retry")))
        .transpose()?;
    Ok(RouteRule {
        name: raw.name,
        matches,
        filters,
        backends,
        timeouts,
        retry,
    })
}

fn compile_backend(
    raw: &RawBackendRef,
    path: &str,
    namespace: &str,
    services: &dyn Fn(&str, &str) -> bool,
) -> Checked<Backend> {
    check_service_kind(raw.group.as_deref(), raw.kind.as_deref(), path, false)?;
    if let Some(other) = raw.namespace.as_deref().filter(|ns| *ns != namespace) {
        return Err(Problem {
            kind: Reason::RefNotPermitted,
            ..invalid(
                format!("{path}.namespace"),
                format!(
                    "backend {other}/{} is in another namespace; ambit does not support ReferenceGrant, so backends must be in the route's namespace",
                    raw.name
                ),
            )
        });
    }
    if !raw.filters.is_empty() {
        return Err(unsupported(
            format!("{path}.filters"),
            "filters on a backendRef are not supported",
        ));
    }
    let port = raw
        .port
        .ok_or_else(|| invalid(format!("{path}.port"), "a Service backendRef needs a port"))
        .and_then(|p| port(p).map_err(|m| invalid(format!("{path}.port"), m)))?;
    let weight = match raw.weight.unwrap_or(1) {
        w @ 0..=1_000_000 => u32::try_from(w).unwrap_or(1),
        w => {
            return Err(invalid(
                format!("{path}.weight"),
                format!("{w} is not in 0..=1000000"),
            ));
        }
    };
    if !services(namespace, &raw.name) {
        return Err(Problem {
            kind: Reason::BackendNotFound,
            ..invalid(
                format!("{path}.name"),
                format!("Service {namespace}/{} does not exist", raw.name),
            )
        });
    }
    Ok(Backend {
        namespace: namespace.to_owned(),
        name: raw.name.clone(),
        port,
        weight,
    })
}

fn compile_retry(raw: RawRetry, path: &str) -> Checked<Retry> {
    let codes = match raw.codes {
        None => DEFAULT_RETRY_CODES.to_vec(),
        Some(codes) => codes
            .iter()
            .enumerate()
            .map(|(i, &code)| {
                u16::try_from(code)
                    .ok()
                    .filter(|c| (400..=599).contains(c))
                    .ok_or_else(|| {
                        invalid(
                            format!("{path}.codes[{i}]"),
                            format!("{code} is not a status in 400-599"),
                        )
                    })
            })
            .collect::<Checked<Vec<_>>>()?,
    };
    let attempts = match raw.attempts.unwrap_or(1) {
        n @ 0..=10 => u32::try_from(n).unwrap_or(1),
        n => {
            return Err(invalid(
                format!("{path}.attempts"),
                format!("{n} is not in 0..=10"),
            ));
        }
    };
    let backoff = raw
        .backoff
        .map(|b| parse_duration(&b).map_err(|m| invalid(format!("{path}.backoff"), m)))
        .transpose()?;
    Ok(Retry {
        codes,
        attempts,
        backoff,
    })
}

/// A Gateway API duration (GEP-2257): one to four `<number><unit>` parts,
/// numbers of at most 5 digits, units `h`, `m`, `s`, `ms`; e.g. `1h`,
/// `500ms`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 500ms, 30s, 1m30s or 1h");
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_hours(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_mins(1), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += unit * u32::try_from(number).map_err(|_| bad())?;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad());
    }
    Ok(total)
}

pub(super) fn port(value: i64) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{value} is not a port (1-65535)"))
}

/// A host name: lowercase, DNS characters, optionally `*.` first.
pub(super) fn hostname(name: &str) -> Result<String, String> {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not a host name (lowercase, optionally *. first)"
        ))
    }
}
