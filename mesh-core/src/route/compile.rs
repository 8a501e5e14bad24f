//! Reading an `HTTPRoute` object into a [`Route`], checking every field.

use std::{collections::BTreeMap, time::Duration};

use http::{HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;
use serde::Deserialize;

use super::{
    API_VERSIONS, Backend, CircuitBreakerPolicy, DEFAULT_RETRY_CODES, Fault, FaultAbort,
    FaultDelay, Filter, HeaderMatch, HeaderModifier, OutlierPolicy, ParentRef, PathMatch,
    PathRewrite, QueryMatch, RateLimit, Reason, Redirect, Retry, RetryBudgetPolicy, Route,
    RouteError, RouteKey, RouteMatch, RoutePolicy, RouteRule, StringMatch, Timeouts,
};

/// Prefix of ambit's annotations.
const ANNOTATION_PREFIX: &str = "ambit.dev/";

// --- The object as written; unknown fields are errors.

type RawRoute = crate::object::RawObject<RawMetadata, RawSpec>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMetadata {
    name: String,
    #[serde(default = "crate::workload::default_namespace")]
    namespace: String,
    /// Values are read as text only for ambit's keys (see [`policy`]).
    #[serde(default)]
    annotations: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    creation_timestamp: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    parent_refs: Vec<RawParentRef>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawParentRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    section_name: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    matches: Vec<RawMatch>,
    #[serde(default)]
    filters: Vec<RawFilter>,
    #[serde(default)]
    backend_refs: Vec<RawBackendRef>,
    #[serde(default)]
    timeouts: Option<RawTimeouts>,
    #[serde(default)]
    retry: Option<RawRetry>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    path: Option<RawTyped>,
    #[serde(default)]
    headers: Vec<RawNamedMatch>,
    #[serde(default)]
    query_params: Vec<RawNamedMatch>,
    #[serde(default)]
    method: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTyped {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawNamedMatch {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawFilter {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    request_header_modifier: Option<RawHeaderModifier>,
    #[serde(default)]
    response_header_modifier: Option<RawHeaderModifier>,
    #[serde(default)]
    request_redirect: Option<RawRedirect>,
    // Known to Gateway API, not implemented: the type is refused by name.
    #[serde(default, rename = "urlRewrite")]
    _url_rewrite: Option<serde_yaml::Value>,
    #[serde(default, rename = "requestMirror")]
    _request_mirror: Option<serde_yaml::Value>,
    #[serde(default, rename = "extensionRef")]
    _extension_ref: Option<serde_yaml::Value>,
    #[serde(default, rename = "cors")]
    _cors: Option<serde_yaml::Value>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawHeaderModifier {
    #[serde(default)]
    set: Vec<RawHeader>,
    #[serde(default)]
    add: Vec<RawHeader>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRedirect {
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<RawRedirectPath>,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    status_code: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRedirectPath {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    replace_full_path: Option<String>,
    #[serde(default)]
    replace_prefix_match: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawBackendRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    filters: Vec<serde_yaml::Value>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTimeouts {
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    backend_request: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRetry {
    #[serde(default)]
    codes: Option<Vec<i64>>,
    #[serde(default)]
    attempts: Option<i64>,
    #[serde(default)]
    backoff: Option<String>,
}

/// A field's problem, before the route's key is attached.
struct Problem {
    field: String,
    message: String,
    kind: Reason,
}

type Checked<T> = Result<T, Problem>;

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
        kind: Reason::Invalid,
    }
}

fn unsupported(field: impl Into<String>, message: impl Into<String>) -> Problem {
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
    if let Some(version) = &raw.api_version
        && !API_VERSIONS.contains(&version.as_str())
    {
        return Err(unsupported(
            "apiVersion",
            format!("{version:?} is not one of {API_VERSIONS:?}"),
        ));
    }
    if let Some(kind) = &raw.kind
        && kind != "HTTPRoute"
    {
        return Err(unsupported("kind", format!("{kind:?} is not HTTPRoute")));
    }
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

fn compile_match(raw: RawMatch, path: &str) -> Checked<RouteMatch> {
    let path_match = match raw.path {
        None => PathMatch::Prefix("/".to_owned()),
        Some(p) => {
            let value = p.value.unwrap_or_else(|| "/".to_owned());
            let field = format!("{path}.path.value");
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" | "PathPrefix" if !value.starts_with('/') => {
                    return Err(invalid(field, format!("{value:?} does not start with /")));
                }
                "Exact" => PathMatch::Exact(value),
                "PathPrefix" => PathMatch::Prefix(value),
                "RegularExpression" => PathMatch::Regex(anchored(&value, &field)?),
                other => {
                    return Err(unsupported(
                        format!("{path}.path.type"),
                        format!("{other:?} is not Exact, PathPrefix or RegularExpression"),
                    ));
                }
            }
        }
    };
    let headers = raw
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let field = format!("{path}.headers[{i}]");
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                invalid(
                    format!("{field}.name"),
                    format!("{:?} is not a header name", h.name),
                )
            })?;
            Ok(HeaderMatch {
                name,
                value: string_match(h, &field)?,
            })
        })
        .collect::<Checked<Vec<_>>>()?;
    let query = raw
        .query_params
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let field = format!("{path}.queryParams[{i}]");
            Ok(QueryMatch {
                name: q.name.clone(),
                value: string_match(q, &field)?,
            })
        })
        .collect::<Checked<Vec<_>>>()?;
    let method = raw
        .method
        .map(|m| {
            const METHODS: &[&str] = &[
                "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
            ];
            if METHODS.contains(&m.as_str()) {
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| invalid(format!("{path}.method"), "bad method"))
            } else {
                Err(invalid(
                    format!("{path}.method"),
                    format!("{m:?} is not one of {METHODS:?}"),
                ))
            }
        })
        .transpose()?;
    Ok(RouteMatch {
        path: path_match,
        headers,
        query,
        method,
    })
}

fn string_match(raw: &RawNamedMatch, field: &str) -> Checked<StringMatch> {
    match raw.kind.as_deref().unwrap_or("Exact") {
        "Exact" => Ok(StringMatch::Exact(raw.value.clone())),
        "RegularExpression" => Ok(StringMatch::Regex(anchored(
            &raw.value,
            &format!("{field}.value"),
        )?)),
        other => Err(unsupported(
            format!("{field}.type"),
            format!("{other:?} is not Exact or RegularExpression"),
        )),
    }
}

/// A regular expression that must match the whole value.
fn anchored(pattern: &str, field: &str) -> Checked<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        invalid(
            field,
            format!("{pattern:?} is not a valid regular expression: {e}"),
        )
    })
}

fn compile_filter(raw: &RawFilter, path: &str) -> Checked<Filter> {
    let missing = |field: &str| {
        invalid(
            format!("{path}.{field}"),
            format!("type {} needs {field}", raw.kind),
        )
    };
    match raw.kind.as_str() {
        "RequestHeaderModifier" => Ok(Filter::RequestHeaders(header_modifier(
            raw.request_header_modifier
                .as_ref()
                .ok_or_else(|| missing("requestHeaderModifier"))?,
            &format!("{path}.requestHeaderModifier"),
        )?)),
        "ResponseHeaderModifier" => Ok(Filter::ResponseHeaders(header_modifier(
            raw.response_header_modifier
                .as_ref()
                .ok_or_else(|| missing("responseHeaderModifier"))?,
            &format!("{path}.responseHeaderModifier"),
        )?)),
        "RequestRedirect" => Ok(Filter::Redirect(redirect(
            raw.request_redirect
                .as_ref()
                .ok_or_else(|| missing("requestRedirect"))?,
            &format!("{path}.requestRedirect"),
        )?)),
        other => Err(unsupported(
            format!("{path}.type"),
            format!(
                "filter {other} is not supported (supported: RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect)"
            ),
        )),
    }
}

fn header_modifier(raw: &RawHeaderModifier, path: &str) -> Checked<HeaderModifier> {
    let pairs = |list: &[RawHeader], field: &str| {
        list.iter()
            .enumerate()
            .map(|(i, h)| {
                let at = format!("{path}.{field}[{i}]");
                let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    invalid(
                        format!("{at}.name"),
                        format!("{:?} is not a header name", h.name),
                    )
                })?;
                let value = HeaderValue::from_str(&h.value).map_err(|_| {
                    invalid(
                        format!("{at}.value"),
                        format!("{:?} is not a header value", h.value),
                    )
                })?;
                Ok((name, value))
            })
            .collect::<Checked<Vec<_>>>()
    };
    Ok(HeaderModifier {
        set: pairs(&raw.set, "set")?,
        add: pairs(&raw.add, "add")?,
        remove: raw
            .remove
            .iter()
            .enumerate()
            .map(|(i, name)| {
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid(
                        format!("{path}.remove[{i}]"),
                        format!("{name:?} is not a header name"),
                    )
                })
            })
            .collect::<Checked<Vec<_>>>()?,
    })
}

fn redirect(raw: &RawRedirect, path: &str) -> Checked<Redirect> {
    if let Some(scheme) = &raw.scheme
        && !matches!(scheme.as_str(), "http" | "https")
    {
        return Err(invalid(
            format!("{path}.scheme"),
            format!("{scheme:?} is not http or https"),
        ));
    }
    let status = match raw.status_code.unwrap_or(302) {
        code @ (301 | 302 | 303 | 307 | 308) => {
            StatusCode::from_u16(u16::try_from(code).unwrap_or(302)).unwrap_or(StatusCode::FOUND)
        }
        code => {
            return Err(invalid(
                format!("{path}.statusCode"),
                format!("{code} is not 301, 302, 303, 307 or 308"),
            ));
        }
    };
    let rewrite = raw
        .path
        .as_ref()
        .map(|p| {
            let at = format!("{path}.path");
            let value = |v: &Option<String>, field: &str| {
                v.clone()
                    .filter(|v| v.starts_with('/'))
                    .ok_or_else(|| invalid(format!("{at}.{field}"), "needs a path starting with /"))
            };
            match p.kind.as_str() {
                "ReplaceFullPath" => Ok(PathRewrite::Full(value(
                    &p.replace_full_path,
                    "replaceFullPath",
                )?)),
                "ReplacePrefixMatch" => Ok(PathRewrite::Prefix(value(
                    &p.replace_prefix_match,
                    "replacePrefixMatch",
                )?)),
                other => Err(invalid(
                    format!("{at}.type"),
                    format!("{other:?} is not ReplaceFullPath or ReplacePrefixMatch"),
                )),
            }
        })
        .transpose()?;
    Ok(Redirect {
        scheme: raw.scheme.clone(),
        hostname: raw
            .hostname
            .as_ref()
            .map(|h| hostname(h).map_err(|m| invalid(format!("{path}.hostname"), m)))
            .transpose()?,
        path: rewrite,
        port: raw
            .port
            .map(|p| port(p).map_err(|m| invalid(format!("{path}.port"), m)))
            .transpose()?,
        status,
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

/// ambit's settings from the annotations.
#[expect(
    clippy::too_many_lines,
    reason = "one check per annotation, in table order"
)]
fn policy(all: &BTreeMap<String, serde_yaml::Value>) -> Checked<RoutePolicy> {
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
fn annotation_text(value: &serde_yaml::Value) -> Result<String, String> {
    match value {
        serde_yaml::Value::String(text) => Ok(text.clone()),
        serde_yaml::Value::Number(number) => Ok(number.to_string()),
        serde_yaml::Value::Bool(flag) => Ok(flag.to_string()),
        _ => Err("an annotation's value must be a string".to_owned()),
    }
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

fn port(value: i64) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{value} is not a port (1-65535)"))
}

/// A host name: lowercase, DNS characters, optionally `*.` first.
fn hostname(name: &str) -> Result<String, String> {
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
