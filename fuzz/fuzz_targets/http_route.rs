//! Gateway API `HTTPRoute` objects with ambit's `ambit.dev/` annotations,
//! from the local file and from the API server: any YAML compiles or is
//! rejected without a panic; a rejected route never enters the route table
//! (a good version of it stays instead); requests built from a route's own
//! matches select a rule whose match and host names they satisfy, and its
//! redirect, header filters and backend choice work on them; and the object
//! written out as YAML and read back compiles to the same route.

#![no_main]

use ambit_fuzz::text;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use kube::api::DynamicObject;
use libfuzzer_sys::fuzz_target;
use mesh_core::route::{self, PathMatch, RequestView, Route, RouteError, RouteTable, StringMatch};

fuzz_target!(|data: &[u8]| {
    let Some(value) = text::yaml(data) else {
        return;
    };
    let compiled = route::compile(&value, &service_exists);
    if let Some(again) = text::yaml_round_trip(&value) {
        assert_eq!(
            describe(&route::compile(&again, &service_exists)),
            describe(&compiled),
            "the route written out and read back compiles the same"
        );
    }
    check(&value, &compiled);
    if let Ok(json) = serde_json::to_value(&value)
        && let Ok(object) = serde_json::from_value::<DynamicObject>(json)
    {
        let local = mesh_kube::translate::local_object(&object);
        check(&local, &route::compile(&local, &service_exists));
    }
});

/// The Services the routes may name: all but those called `missing...`,
/// so both the found and the not-found paths are reached.
fn service_exists(_namespace: &str, name: &str) -> bool {
    !name.starts_with("missing")
}

/// A compiled route or its error, comparable: a route holds regular
/// expressions, which compare by their text in `Debug`.
fn describe(compiled: &Result<Route, RouteError>) -> String {
    match compiled {
        Ok(route) => format!("{route:?}"),
        Err(error) => format!("{error:?}"),
    }
}

fn check(value: &serde_yaml::Value, compiled: &Result<Route, RouteError>) {
    let mut table = RouteTable::default();
    let errors = table.apply(std::slice::from_ref(value), &service_exists);
    match compiled {
        Err(error) => {
            assert_eq!(
                errors,
                std::slice::from_ref(error),
                "the table reports the route's error"
            );
            assert!(table.is_empty(), "a rejected route entered the table");
            let _ = error.reason();
            keeps_its_good_version(value, error);
        }
        Ok(route) => {
            assert!(
                errors.is_empty(),
                "the table rejects a route that compiles: {errors:?}"
            );
            serde_json::to_string(&route.view()).expect("a route's view serialises");
            for parent in &route.parents {
                assert!(table.has_parent(&parent.namespace, &parent.name));
            }
            requests_select_what_they_match(&table, route);
        }
    }
}

/// A route that was good and turns bad keeps its good version in the table.
fn keeps_its_good_version(value: &serde_yaml::Value, error: &RouteError) {
    let key = &error.route;
    if key.name == "?" || key.namespace == "?" {
        return;
    }
    // Built as a value, not as text: found by this target, a name with a
    // character Rust's `{:?}` escapes (a combining mark, `\u{65b}`) was
    // written as an escape YAML does not have.
    let good = serde_yaml::to_value(serde_json::json!({
        "metadata": {"name": key.name, "namespace": key.namespace},
        "spec": {
            "parentRefs": [{"name": "fuzz-parent"}],
            "rules": [{"backendRefs": [{"name": "fuzz-backend", "port": 80}]}],
        },
    }))
    .expect("the good route is a value");
    let mut table = RouteTable::default();
    if !table.apply(&[good], &service_exists).is_empty() {
        // A name or namespace the good route cannot carry either.
        return;
    }
    let errors = table.apply(std::slice::from_ref(value), &service_exists);
    assert_eq!(errors.len(), 1);
    let kept: Vec<_> = table.routes().map(|r| r.key.clone()).collect();
    if errors[0].route == *key {
        assert_eq!(kept, std::slice::from_ref(key), "the good version stays");
    }
}

/// Requests made from each match of the route select a rule whose match
/// and host names they satisfy; its redirect, filters and backend choice
/// take them.
fn requests_select_what_they_match(table: &RouteTable, route: &Route) {
    let host = route
        .hostnames
        .first()
        .map(|name| name.replace("*.", "any."));
    for rule in &route.rules {
        for matched in &rule.matches {
            let method = matched.method.clone().unwrap_or(Method::GET);
            let path = match &matched.path {
                PathMatch::Exact(path) | PathMatch::Prefix(path) => path.clone(),
                PathMatch::Regex(_) => "/".to_owned(),
            };
            let mut headers = HeaderMap::new();
            for header in &matched.headers {
                if let StringMatch::Exact(value) = &header.value
                    && let Ok(value) = HeaderValue::from_str(value)
                {
                    headers.append(header.name.clone(), value);
                }
            }
            headers.insert(
                HeaderName::from_static("x-fuzz"),
                HeaderValue::from_static("1"),
            );
            let query: Vec<String> = matched
                .query
                .iter()
                .filter_map(|q| match &q.value {
                    StringMatch::Exact(value) => Some(format!("{}={value}", q.name)),
                    StringMatch::Regex(_) => None,
                })
                .collect();
            let query = query.join("&");
            let view = RequestView {
                method: &method,
                path: &path,
                query: (!query.is_empty()).then_some(query.as_str()),
                headers: &headers,
                host: host.as_deref(),
            };
            // Built from exact values only, the request matches this match,
            // so some rule must take it.
            let exact = !matches!(matched.path, PathMatch::Regex(_))
                && matched
                    .headers
                    .iter()
                    .all(|h| matches!(&h.value, StringMatch::Exact(v) if HeaderValue::from_str(v).is_ok()))
                && matched.query.iter().all(|q| {
                    matches!(&q.value, StringMatch::Exact(v) if !v.contains('&'))
                        && !q.name.contains(['&', '='])
                })
                && matched
                    .query
                    .iter()
                    .map(|q| &q.name)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    == matched.query.len();
            for parent in &route.parents {
                let port = parent.port.unwrap_or(80);
                let Some(selected) = table.select(&parent.namespace, &parent.name, port, &view)
                else {
                    assert!(!exact, "no rule takes {view:?}, made from {matched:?}");
                    continue;
                };
                let chosen = selected.rule();
                assert!(
                    selected.matched().matches(&view),
                    "the selected match does not match {view:?}"
                );
                if let Some((status, location)) = chosen.redirect(&view, selected.matched(), "http")
                {
                    assert!(status.is_redirection(), "a redirect answers {status}");
                    assert!(
                        location.starts_with("http://") || location.starts_with("https://"),
                        "a redirect to {location:?}"
                    );
                }
                let mut request_headers = headers.clone();
                let mut response_headers = HeaderMap::new();
                for filter in &chosen.filters {
                    filter.apply_request_headers(&mut request_headers);
                    filter.apply_response_headers(&mut response_headers);
                }
                let total: u64 = chosen.backends.iter().map(|b| u64::from(b.weight)).sum();
                for draw in [0, 1, u64::MAX, total.saturating_sub(1)] {
                    match chosen.pick_backend(draw) {
                        Some(backend) => assert!(backend.weight > 0 && total > 0),
                        None => assert_eq!(total, 0, "a rule with weight picks a backend"),
                    }
                }
            }
        }
    }
}
