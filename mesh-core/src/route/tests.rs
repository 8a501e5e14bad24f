use http::{HeaderMap, HeaderValue, Method};

use super::*;

/// Services that exist in the tests.
fn services(namespace: &str, name: &str) -> bool {
    namespace == "shop" && ["web", "web-v1", "web-v2", "api"].contains(&name)
}

fn route(yaml: &str) -> Result<Route, RouteError> {
    let value: serde_yaml::Value = serde_yaml::from_str(yaml).expect("test YAML");
    compile(&value, &services)
}

fn with_rules(name: &str, rules: &str) -> String {
    format!(
        "metadata: {{name: {name}, namespace: shop}}
spec:
  parentRefs: [{{group: '', kind: Service, name: web, port: 80}}]
  rules:
{rules}"
    )
}

fn request<'a>(
    method: &'a Method,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
) -> RequestView<'a> {
    RequestView {
        method,
        path,
        query,
        headers,
        host: Some("web.shop:80"),
    }
}

fn table(yamls: &[String]) -> RouteTable {
    let values: Vec<serde_yaml::Value> = yamls
        .iter()
        .map(|y| serde_yaml::from_str(y).unwrap())
        .collect();
    let mut table = RouteTable::default();
    let errors = table.apply(&values, &services);
    assert!(errors.is_empty(), "{errors:?}");
    table
}

/// The backend name a request is routed to.
fn routed(
    table: &RouteTable,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Option<String> {
    let selected = table.select("shop", "web", 80, &request(method, path, query, headers))?;
    Some(format!(
        "{}#{}",
        selected.route.key.name,
        selected.rule().backends[0].name
    ))
}

#[test]
fn every_match_kind_matches_what_it_says() {
    let rules = "    - matches: [{path: {type: Exact, value: /exact}}]
      backendRefs: [{name: web-v1, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /api/}}]
      backendRefs: [{name: api, port: 80}]
    - matches: [{path: {type: RegularExpression, value: '/items/[0-9]+'}}]
      backendRefs: [{name: web-v2, port: 80}]
    - matches: [{headers: [{name: X-Canary, value: 'yes'}], method: POST}]
      backendRefs: [{name: web-v2, port: 80}]
    - matches: [{queryParams: [{type: RegularExpression, name: v, value: '2|two'}]}]
      backendRefs: [{name: web-v2, port: 80}]
";
    let table = table(&[with_rules("r", rules)]);
    let none = HeaderMap::new();
    let mut canary = HeaderMap::new();
    canary.insert("x-canary", HeaderValue::from_static("yes"));
    let get = Method::GET;
    let post = Method::POST;
    assert_eq!(
        routed(&table, &get, "/exact", None, &none).as_deref(),
        Some("r#web-v1")
    );
    assert_eq!(routed(&table, &get, "/exact/more", None, &none), None);
    assert_eq!(
        routed(&table, &get, "/api", None, &none).as_deref(),
        Some("r#api")
    );
    assert_eq!(
        routed(&table, &get, "/api/x", None, &none).as_deref(),
        Some("r#api")
    );
    assert_eq!(routed(&table, &get, "/apix", None, &none), None);
    assert_eq!(
        routed(&table, &get, "/items/42", None, &none).as_deref(),
        Some("r#web-v2")
    );
    assert_eq!(routed(&table, &get, "/items/42x", None, &none), None);
    assert_eq!(
        routed(&table, &post, "/", None, &canary).as_deref(),
        Some("r#web-v2")
    );
    assert_eq!(routed(&table, &get, "/", None, &canary), None);
    assert_eq!(
        routed(&table, &get, "/", Some("a=1&v=two"), &none).as_deref(),
        Some("r#web-v2")
    );
    assert_eq!(routed(&table, &get, "/", Some("v=3"), &none), None);
    // Another port of the service has no route.
    assert!(
        table
            .select("shop", "web", 8080, &request(&get, "/exact", None, &none))
            .is_none()
    );
    assert!(table.has_parent("shop", "web"));
    assert!(!table.has_parent("shop", "api"));
}

#[test]
fn precedence_across_routes_follows_gateway_api() {
    let catch_all = with_rules(
        "a-catch-all",
        "    - backendRefs: [{name: web-v1, port: 80}]\n",
    );
    let prefix = with_rules(
        "b-prefix",
        "    - matches: [{path: {type: PathPrefix, value: /api}}]\n      backendRefs: [{name: api, port: 80}]\n",
    );
    let longer = with_rules(
        "c-longer",
        "    - matches: [{path: {type: PathPrefix, value: /api/v2}}]\n      backendRefs: [{name: web-v2, port: 80}]\n",
    );
    let with_header = with_rules(
        "d-header",
        "    - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-v, value: '1'}]}]\n      backendRefs: [{name: web-v1, port: 80}]\n",
    );
    let table = table(&[catch_all, prefix, longer, with_header]);
    let none = HeaderMap::new();
    let mut v1 = HeaderMap::new();
    v1.insert("x-v", HeaderValue::from_static("1"));
    let get = Method::GET;
    assert_eq!(
        routed(&table, &get, "/", None, &none).as_deref(),
        Some("a-catch-all#web-v1")
    );
    assert_eq!(
        routed(&table, &get, "/api/x", None, &none).as_deref(),
        Some("b-prefix#api")
    );
    assert_eq!(
        routed(&table, &get, "/api/v2/x", None, &none).as_deref(),
        Some("c-longer#web-v2")
    );
    assert_eq!(
        routed(&table, &get, "/api/x", None, &v1).as_deref(),
        Some("d-header#web-v1")
    );
}

#[test]
fn weights_split_in_proportion_and_zero_never_wins() {
    let rule = route(&with_rules(
        "split",
        "    - backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}, {name: api, port: 80, weight: 0}]\n",
    ))
    .unwrap()
    .rules
    .remove(0);
    let mut counts = BTreeMap::new();
    for draw in 0..1000 {
        *counts
            .entry(rule.pick_backend(draw).unwrap().name.clone())
            .or_insert(0) += 1;
    }
    assert_eq!(counts.get("web-v1"), Some(&900));
    assert_eq!(counts.get("web-v2"), Some(&100));
    assert_eq!(counts.get("api"), None);
}

#[test]
fn bad_routes_name_the_field_and_the_reason() {
    let cases: &[(&str, &str, Reason, &str)] = &[
        (
            "    - backendRefs: [{name: nowhere, port: 80}]\n",
            "spec.rules[0].backendRefs[0].name",
            Reason::BackendNotFound,
            "does not exist",
        ),
        (
            "    - backendRefs: [{name: web-v1, port: 80, weight: 0}]\n",
            "spec.rules[0].backendRefs",
            Reason::Invalid,
            "sum to 0",
        ),
        (
            "    - matches: [{path: {type: RegularExpression, value: '/(x'}}]\n      backendRefs: [{name: web-v1, port: 80}]\n",
            "spec.rules[0].matches[0].path.value",
            Reason::Invalid,
            "not a valid regular expression",
        ),
        (
            "    - backendRefs: [{name: web-v1, port: 80}]\n      timeouts: {request: 5 seconds}\n",
            "spec.rules[0].timeouts.request",
            Reason::Invalid,
            "not a duration",
        ),
        (
            "    - backendRefs: [{name: web-v1, port: 80}]\n      timeouts: {request: 1s, backendRequest: 2s}\n",
            "spec.rules[0].timeouts.backendRequest",
            Reason::Invalid,
            "must not be longer",
        ),
        (
            "    - backendRefs: [{name: web-v1, port: 80}]\n      filters: [{type: URLRewrite, urlRewrite: {hostname: x}}]\n",
            "spec.rules[0].filters[0].type",
            Reason::UnsupportedValue,
            "not supported",
        ),
        (
            "    - backendRefs: [{name: web-v1, namespace: other, port: 80}]\n",
            "spec.rules[0].backendRefs[0].namespace",
            Reason::RefNotPermitted,
            "ReferenceGrant",
        ),
        (
            "    - backendRefs: [{name: web-v1}]\n",
            "spec.rules[0].backendRefs[0].port",
            Reason::Invalid,
            "needs a port",
        ),
        (
            "    - backendRefs: [{name: web-v1, port: 80}]\n      retry: {codes: [200]}\n",
            "spec.rules[0].retry.codes[0]",
            Reason::Invalid,
            "400-599",
        ),
        (
            "    - backendRefs: [{name: web-v1, port: 80}]\n      sessionPersistence: {}\n",
            "spec.rules[0]",
            Reason::Invalid,
            "unknown field",
        ),
    ];
    for (rules, field, reason, message) in cases {
        let error = route(&with_rules("bad", rules)).unwrap_err();
        assert_eq!(error.route.to_string(), "shop/bad", "{rules}");
        assert!(error.field.starts_with(field), "{rules}: {error}");
        assert_eq!(error.kind, *reason, "{rules}: {error}");
        assert!(error.message.contains(message), "{rules}: {error}");
    }
    let gateway = "metadata: {name: gw, namespace: shop}\nspec:\n  parentRefs: [{name: my-gateway}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]\n";
    let error = route(gateway).unwrap_err();
    assert_eq!(error.kind, Reason::UnsupportedValue);
    assert_eq!(error.field, "spec.parentRefs[0]");
    let annotated = "metadata: {name: typo, namespace: shop, annotations: {ambit.dev/rate-limt: '5'}}\nspec:\n  parentRefs: [{kind: Service, group: '', name: web}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]\n";
    let error = route(annotated).unwrap_err();
    assert!(error.field.contains("ambit.dev/rate-limt"), "{error}");
    assert!(
        error.message.contains("unknown ambit annotation"),
        "{error}"
    );
}

#[test]
fn a_route_that_turns_bad_keeps_its_last_good_version() {
    let good = with_rules("r", "    - backendRefs: [{name: web-v2, port: 80}]\n");
    let bad = with_rules("r", "    - backendRefs: [{name: gone, port: 80}]\n");
    let new_bad = with_rules("n", "    - backendRefs: [{name: gone, port: 80}]\n");
    let parse = |y: &String| serde_yaml::from_str::<serde_yaml::Value>(y).unwrap();
    let mut table = RouteTable::default();
    assert!(table.apply(&[parse(&good)], &services).is_empty());
    let errors = table.apply(&[parse(&bad), parse(&new_bad)], &services);
    assert_eq!(errors.len(), 2);
    assert_eq!(table.routes().count(), 1);
    let none = HeaderMap::new();
    assert_eq!(
        routed(&table, &Method::GET, "/", None, &none).as_deref(),
        Some("r#web-v2")
    );
    // Removed from the objects: gone from the table.
    assert!(table.apply(&[], &services).is_empty());
    assert!(table.is_empty());
}

#[test]
fn annotations_set_ambits_policies_with_defaults() {
    let yaml = "metadata:
  name: tuned
  namespace: shop
  annotations:
    ambit.dev/fault-delay: 50ms
    ambit.dev/fault-abort-status: '503'
    ambit.dev/fault-abort-percent: '12.5'
    ambit.dev/rate-limit: '2.5'
    ambit.dev/max-requests: '8'
    ambit.dev/outlier-base-ejection: 1m
    other.io/ignored: x
spec:
  parentRefs: [{kind: Service, group: '', name: web}]
  rules: [{backendRefs: [{name: web, port: 80}], retry: {attempts: 2, backoff: 10ms}}]
";
    let route = route(yaml).unwrap();
    let policy = &route.policy;
    assert_eq!(
        policy.fault.delay,
        Some(FaultDelay {
            duration: Duration::from_millis(50),
            percent: 100.0
        })
    );
    assert_eq!(
        policy.fault.abort,
        Some(FaultAbort {
            status: 503,
            percent: 12.5
        })
    );
    assert_eq!(
        policy.rate_limit,
        Some(RateLimit {
            requests_per_second: 2.5,
            burst: 3
        })
    );
    assert_eq!(policy.circuit_breaker.max_requests, Some(8));
    assert_eq!(policy.circuit_breaker.max_connections, None);
    assert_eq!(policy.outlier.base_ejection, Duration::from_mins(1));
    assert_eq!(policy.outlier.consecutive_failures, 5);
    assert!((policy.retry_budget.percent - 20.0).abs() < f64::EPSILON);
    let retry = route.rules[0].retry.clone().unwrap();
    assert_eq!(retry.codes, DEFAULT_RETRY_CODES);
    assert_eq!(retry.attempts, 2);
    assert_eq!(retry.backoff, Some(Duration::from_millis(10)));
}

#[test]
fn durations_follow_gep_2257() {
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_mins(90)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    for bad in ["", "1", "1.5s", "100000s", "1h1m1s1ms1h", "-1s", "1d"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn redirects_and_header_filters() {
    let rules = "    - matches: [{path: {type: PathPrefix, value: /old}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {scheme: https, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
    - matches: [{path: {type: Exact, value: /moved}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {hostname: other.example, path: {type: ReplaceFullPath, replaceFullPath: /here}}
    - filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: x-a, value: '1'}], add: [{name: x-b, value: '2'}], remove: [x-c]}
        - type: ResponseHeaderModifier
          responseHeaderModifier: {set: [{name: x-served-by, value: waypoint}]}
      backendRefs: [{name: web, port: 80}]
";
    let table = table(&[with_rules("r", rules)]);
    let none = HeaderMap::new();
    let get = Method::GET;
    let view = request(&get, "/old/page", Some("q=1"), &none);
    let selected = table.select("shop", "web", 80, &view).unwrap();
    assert_eq!(
        selected.rule().redirect(&view, selected.matched(), "http"),
        Some((
            StatusCode::MOVED_PERMANENTLY,
            "https://web.shop/new/page?q=1".to_owned()
        ))
    );
    let view = request(&get, "/moved", None, &none);
    let selected = table.select("shop", "web", 80, &view).unwrap();
    assert_eq!(
        selected.rule().redirect(&view, selected.matched(), "http"),
        Some((StatusCode::FOUND, "http://other.example/here".to_owned()))
    );
    let view = request(&get, "/other", None, &none);
    let selected = table.select("shop", "web", 80, &view).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-a", HeaderValue::from_static("0"));
    headers.insert("x-b", HeaderValue::from_static("1"));
    headers.insert("x-c", HeaderValue::from_static("gone"));
    let mut response = HeaderMap::new();
    for filter in &selected.rule().filters {
        filter.apply_request_headers(&mut headers);
        filter.apply_response_headers(&mut response);
    }
    assert_eq!(headers["x-a"], "1");
    assert_eq!(headers.get_all("x-b").iter().count(), 2);
    assert!(headers.get("x-c").is_none());
    assert_eq!(response["x-served-by"], "waypoint");
    assert!(
        selected
            .rule()
            .redirect(&view, selected.matched(), "http")
            .is_none()
    );
}

#[test]
fn host_names_restrict_a_route() {
    assert!(matching::host_matches(&[], None));
    let names = vec!["web.shop".to_owned(), "*.example.com".to_owned()];
    assert!(matching::host_matches(&names, Some("web.shop:80")));
    assert!(matching::host_matches(&names, Some("A.Example.com")));
    assert!(!matching::host_matches(&names, Some("example.com")));
    assert!(!matching::host_matches(&names, None));
}

#[test]
fn header_regex_and_exact_query_match() {
    let rules = "    - matches: [{headers: [{type: RegularExpression, name: User-Agent, value: 'curl/.*'}]}]
      backendRefs: [{name: web-v1, port: 80}]
    - matches: [{queryParams: [{name: debug, value: 'on'}]}]
      backendRefs: [{name: web-v2, port: 80}]
";
    let table = table(&[with_rules("r", rules)]);
    let get = Method::GET;
    let mut curl = HeaderMap::new();
    curl.insert("user-agent", HeaderValue::from_static("curl/8.5"));
    let mut other = HeaderMap::new();
    other.insert("user-agent", HeaderValue::from_static("xcurl/8.5"));
    assert_eq!(
        routed(&table, &get, "/", None, &curl).as_deref(),
        Some("r#web-v1")
    );
    // Anchored: a match inside the value is not enough.
    assert_eq!(routed(&table, &get, "/", None, &other), None);
    assert_eq!(
        routed(&table, &get, "/", Some("debug=on"), &other).as_deref(),
        Some("r#web-v2")
    );
    assert_eq!(routed(&table, &get, "/", Some("debug=onx"), &other), None);
    assert_eq!(routed(&table, &get, "/", Some("Debug=on"), &other), None);
}

/// Found by the `http_route` fuzz target: a header match whose value is
/// not ASCII (HTTP allows such bytes in a field value) compiled, and no
/// request could ever match it, since the value was read as visible ASCII
/// only.
#[test]
fn a_header_value_that_is_not_ascii_matches_itself() {
    let rules = "    - matches: [{headers: [{name: x-team, value: 'équipe-ޘ'}]}]
      backendRefs: [{name: web-v1, port: 80}]
";
    let table = table(&[with_rules("r", rules)]);
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-team",
        HeaderValue::from_bytes("équipe-ޘ".as_bytes()).unwrap(),
    );
    assert_eq!(
        routed(&table, &Method::GET, "/", None, &headers).as_deref(),
        Some("r#web-v1")
    );
    headers.insert("x-team", HeaderValue::from_static("equipe"));
    assert_eq!(routed(&table, &Method::GET, "/", None, &headers), None);
}

/// A route on `web` with `meta` (YAML lines under `metadata`, besides the
/// name and namespace) and one rule matching `matches`, to backend `name`.
fn ranked(name: &str, meta: &str, matches: &str) -> String {
    format!(
        "metadata:
  name: {name}
  namespace: shop
{meta}spec:
  parentRefs: [{{kind: Service, group: '', name: web}}]
  rules: [{{matches: [{matches}], backendRefs: [{{name: web, port: 80}}]}}]
"
    )
}

#[test]
fn precedence_ties_break_on_kind_method_queries_age_then_name() {
    let table = table(&[
        ranked("z-exact", "", "{path: {type: Exact, value: /api/x}}"),
        ranked("b-prefix", "", "{path: {value: /api}}"),
        ranked(
            "a-regex",
            "",
            "{path: {type: RegularExpression, value: '/api.*'}}",
        ),
        ranked("m-any", "", "{path: {value: /m}}"),
        ranked("z-get", "", "{path: {value: /m}, method: GET}"),
        ranked(
            "q-one",
            "",
            "{path: {value: /q}, queryParams: [{name: a, value: '1'}]}",
        ),
        ranked(
            "z-two",
            "",
            "{path: {value: /q}, queryParams: [{name: a, value: '1'}, {name: b, value: '2'}]}",
        ),
        ranked(
            "a-new",
            "  creationTimestamp: '2025-01-01T00:00:00Z'\n",
            "{path: {value: /t}}",
        ),
        ranked(
            "z-old",
            "  creationTimestamp: '2024-01-01T00:00:00Z'\n",
            "{path: {value: /t}}",
        ),
        ranked("a-unknown-age", "", "{path: {value: /t}}"),
        ranked("n-b", "", "{path: {value: /n}}"),
        ranked("n-a", "", "{path: {value: /n}}"),
    ]);
    let none = HeaderMap::new();
    let name = |method: &Method, path: &str, query: Option<&str>| {
        table
            .select("shop", "web", 80, &request(method, path, query, &none))
            .map(|s| s.route.key.name.clone())
    };
    let get = Method::GET;
    assert_eq!(name(&get, "/api/x", None).as_deref(), Some("z-exact"));
    assert_eq!(name(&get, "/api/y", None).as_deref(), Some("b-prefix"));
    assert_eq!(name(&get, "/apix", None).as_deref(), Some("a-regex"));
    assert_eq!(name(&get, "/m", None).as_deref(), Some("z-get"));
    assert_eq!(name(&Method::POST, "/m", None).as_deref(), Some("m-any"));
    assert_eq!(name(&get, "/q", Some("a=1&b=2")).as_deref(), Some("z-two"));
    assert_eq!(name(&get, "/q", Some("a=1")).as_deref(), Some("q-one"));
    assert_eq!(name(&get, "/t", None).as_deref(), Some("z-old"));
    assert_eq!(name(&get, "/n", None).as_deref(), Some("n-a"));
}

#[test]
fn a_parent_without_a_port_takes_every_port() {
    let table = table(&[ranked("any-port", "", "{path: {value: /}}")]);
    let none = HeaderMap::new();
    for port in [80, 8080] {
        let view = request(&Method::GET, "/", None, &none);
        assert!(table.select("shop", "web", port, &view).is_some(), "{port}");
    }
    assert!(
        table
            .select("shop", "api", 80, &request(&Method::GET, "/", None, &none))
            .is_none()
    );
}

/// Checks that each route is rejected for `shop/bad`, at this field, for
/// this reason, with a message containing this.
fn assert_rejected(cases: &[(String, &str, Reason, &str)]) {
    for (yaml, field, reason, message) in cases {
        let error = route(yaml).unwrap_err();
        assert_eq!(error.route.to_string(), "shop/bad", "{yaml}");
        assert_eq!(error.field, *field, "{yaml}: {error}");
        assert_eq!(error.kind, *reason, "{yaml}: {error}");
        assert_eq!(error.reason(), reason.as_str());
        assert!(error.message.contains(message), "{yaml}: {error}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("HTTP route shop/bad: {field}: ")),
            "{error}"
        );
    }
}

#[test]
fn bad_parents_and_annotations_name_the_field() {
    // A route `shop/bad` with these annotations and parents.
    let bad = |annotations: &str, parents: &str| {
        format!(
            "metadata: {{name: bad, namespace: shop, annotations: {{{annotations}}}}}
spec:
  parentRefs: [{parents}]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
"
        )
    };
    let web = "{kind: Service, group: '', name: web}";
    assert_rejected(&[
        (
            bad("", "{kind: Service, group: '', name: wbe}"),
            "spec.parentRefs[0].name",
            Reason::NoMatchingParent,
            "does not exist",
        ),
        (
            bad(
                "",
                "{kind: Service, group: '', name: web, namespace: other}",
            ),
            "spec.parentRefs[0].namespace",
            Reason::UnsupportedValue,
            "consumer routes",
        ),
        (
            bad("", ""),
            "spec.parentRefs",
            Reason::NoMatchingParent,
            "needs a Service",
        ),
        (
            bad("ambit.dev/rate-limit: fast", web),
            "metadata.annotations[\"ambit.dev/rate-limit\"]",
            Reason::Invalid,
            "not a number",
        ),
        (
            bad("ambit.dev/outlier-base-ejection: 30", web),
            "metadata.annotations[\"ambit.dev/outlier-base-ejection\"]",
            Reason::Invalid,
            "not a duration",
        ),
        (
            bad("ambit.dev/fault-abort-status: '200'", web),
            "metadata.annotations[\"ambit.dev/fault-abort-status\"]",
            Reason::Invalid,
            "400-599",
        ),
    ]);
}

#[test]
fn bad_rules_name_the_field() {
    let bad = |rules: &str| with_rules("bad", rules);
    assert_rejected(&[
        (
            bad(
                "    - matches: [{path: {type: Exact, value: /x}}]\n      filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /y}}}]\n",
            ),
            "spec.rules[0].filters",
            Reason::Invalid,
            "PathPrefix",
        ),
        (
            bad("    - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 200}}]\n"),
            "spec.rules[0].filters[0].requestRedirect.statusCode",
            Reason::Invalid,
            "301",
        ),
        (
            bad("    - matches: [{path: {value: /x}}]\n"),
            "spec.rules[0].backendRefs",
            Reason::Invalid,
            "needs backendRefs",
        ),
        (
            bad(
                "    - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: 'bad header', value: x}]}}]\n      backendRefs: [{name: web, port: 80}]\n",
            ),
            "spec.rules[0].filters[0].requestHeaderModifier.set[0].name",
            Reason::Invalid,
            "not a header name",
        ),
        (
            bad("    - matches: [{method: FETCH}]\n      backendRefs: [{name: web, port: 80}]\n"),
            "spec.rules[0].matches[0].method",
            Reason::Invalid,
            "FETCH",
        ),
        (
            bad(
                "    - matches: [{path: {value: api}}]\n      backendRefs: [{name: web, port: 80}]\n",
            ),
            "spec.rules[0].matches[0].path.value",
            Reason::Invalid,
            "start with /",
        ),
    ]);
}

#[test]
fn an_object_without_readable_metadata_is_reported_as_unknown() {
    let value: serde_yaml::Value = serde_yaml::from_str("spec: {rules: []}").expect("test YAML");
    let mut table = RouteTable::default();
    let errors = table.apply(&[value], &services);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].route.to_string(), "?/?");
    assert!(table.is_empty());
}

#[test]
fn zero_timeouts_mean_none_and_small_rates_get_a_burst_of_one() {
    // An unquoted number is read as its text.
    let yaml = "metadata: {name: r, namespace: shop, annotations: {ambit.dev/rate-limit: '0.5', ambit.dev/max-connections: 4}}
spec:
  parentRefs: [{kind: Service, group: '', name: web}]
  rules: [{backendRefs: [{name: web, port: 80}], timeouts: {request: 0s, backendRequest: 1m30s}}]
";
    let route = route(yaml).unwrap();
    assert_eq!(
        route.rules[0].timeouts,
        Timeouts {
            request: None,
            backend_request: Some(Duration::from_secs(90)),
        }
    );
    assert_eq!(route.policy.rate_limit.map(|r| r.burst), Some(1));
    assert_eq!(route.policy.circuit_breaker.max_connections, Some(4));
    assert_eq!(route.policy.outlier.max_ejection_percent, 50);
    assert_eq!(route.policy.retry_budget.min_per_second, 10);
    assert_eq!(route.policy.fault, Fault::default());
    assert!(route.rules[0].retry.is_none());
}

#[test]
fn redirects_keep_the_request_port_unless_the_scheme_changes() {
    let rules = "    - matches: [{path: {value: /old}}]
      filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
";
    let route = route(&with_rules("r", rules)).unwrap();
    let rule = &route.rules[0];
    let none = HeaderMap::new();
    let get = Method::GET;
    let view = RequestView {
        host: Some("web.shop:8080"),
        ..request(&get, "/old/page", Some("a=1&b=2"), &none)
    };
    assert_eq!(
        rule.redirect(&view, &rule.matches[0], "http"),
        Some((
            StatusCode::FOUND,
            "http://web.shop:8080/page?a=1&b=2".to_owned()
        ))
    );
    let view = RequestView {
        host: Some("web.shop:8080"),
        ..request(&get, "/old", None, &none)
    };
    assert_eq!(
        rule.redirect(&view, &rule.matches[0], "http"),
        Some((StatusCode::FOUND, "http://web.shop:8080/".to_owned()))
    );
}
