use std::collections::BTreeMap;

use super::*;

const CLIENT: &str = "cluster.local/ns/shop/sa/frontend";
const ADMIN: &str = "cluster.local/ns/ops/sa/admin";

fn policies(yaml: &str) -> Vec<Policy> {
    let values: Vec<serde_yaml::Value> = serde_yaml::from_str(yaml).expect("test YAML parses");
    compile_all(&values)
}

fn set(yaml: &str) -> PolicySet {
    PolicySet::new(policies(yaml), DEFAULT_ROOT_NAMESPACE)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn mtls(principal: &str, ip: &str, port: u16) -> Request {
    Request {
        principal: Some(principal.to_owned()),
        namespace: principal.split('/').nth(2).map(ToOwned::to_owned),
        source_ip: ip.parse().unwrap(),
        port,
        http: None,
    }
}

fn plaintext(ip: &str, port: u16) -> Request {
    Request {
        principal: None,
        namespace: None,
        source_ip: ip.parse().unwrap(),
        port,
        http: None,
    }
}

fn verdict(
    set: &PolicySet,
    namespace: &str,
    pod_labels: &[(&str, &str)],
    request: &Request,
) -> Verdict {
    let labels = labels(pod_labels);
    set.evaluate(
        Workload {
            namespace,
            labels: &labels,
        },
        request,
    )
}

/// One line of the table: a policy set, a request to `shop` pod `app=backend`
/// (unless the case says otherwise), and the expected decision and deciding
/// policy.
struct Case {
    name: &'static str,
    policies: &'static str,
    request: Request,
    decision: Decision,
    policy: &'static str,
}

fn allow(
    name: &'static str,
    policies: &'static str,
    request: Request,
    policy: &'static str,
) -> Case {
    Case {
        name,
        policies,
        request,
        decision: Decision::Allow,
        policy,
    }
}

fn deny(
    name: &'static str,
    policies: &'static str,
    request: Request,
    policy: &'static str,
) -> Case {
    Case {
        name,
        policies,
        request,
        decision: Decision::Deny,
        policy,
    }
}

const ALLOW_FRONTEND: &str = r"
- metadata: {name: allow-frontend, namespace: shop}
  spec:
    selector: {matchLabels: {app: backend}}
    rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]
";

#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn policy_table() {
    let cases = [
        // No policies at all.
        allow(
            "no policy",
            "[]",
            plaintext("10.0.0.1", 80),
            "default allow",
        ),
        // principals.
        allow(
            "principal exact",
            ALLOW_FRONTEND,
            mtls(CLIENT, "10.0.0.1", 80),
            "shop/allow-frontend",
        ),
        deny(
            "principal other",
            ALLOW_FRONTEND,
            mtls(ADMIN, "10.0.0.1", 80),
            "no ALLOW matched",
        ),
        deny(
            "principal never matches plaintext",
            ALLOW_FRONTEND,
            plaintext("10.0.0.1", 80),
            "no ALLOW matched",
        ),
        allow(
            "principal suffix",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{from: [{source: {principals: ['*/sa/admin']}}]}]}
",
            mtls(ADMIN, "10.0.0.1", 80),
            "shop/p",
        ),
        allow(
            "principal prefix",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{from: [{source: {principals: ['cluster.local/ns/shop/*']}}]}]}
",
            mtls(CLIENT, "10.0.0.1", 80),
            "shop/p",
        ),
        deny(
            "principal * needs mTLS",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{from: [{source: {principals: ['*']}}]}]}
",
            plaintext("10.0.0.1", 80),
            "no ALLOW matched",
        ),
        // notPrincipals.
        deny(
            "notPrincipals excludes",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{from: [{source: {notPrincipals: ['*/sa/admin']}}]}]}
",
            mtls(ADMIN, "10.0.0.1", 80),
            "no ALLOW matched",
        ),
        allow(
            "notPrincipals lets others in",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{from: [{source: {notPrincipals: ['*/sa/admin']}}]}]}
",
            mtls(CLIENT, "10.0.0.1", 80),
            "shop/p",
        ),
        // namespaces / notNamespaces.
        allow(
            "namespace matches",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{from: [{source: {namespaces: [ops]}}]}]}
",
            mtls(ADMIN, "10.0.0.1", 80),
            "shop/p",
        ),
        deny(
            "namespace differs",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{from: [{source: {namespaces: [ops]}}]}]}
",
            mtls(CLIENT, "10.0.0.1", 80),
            "no ALLOW matched",
        ),
        deny(
            "namespace never matches plaintext",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{from: [{source: {namespaces: ['*']}}]}]}
",
            plaintext("10.0.0.1", 80),
            "no ALLOW matched",
        ),
        deny(
            "notNamespaces",
            r"
- metadata: {name: p, namespace: shop}
  spec: {action: DENY, rules: [{from: [{source: {notNamespaces: [shop]}}]}]}
",
            mtls(ADMIN, "10.0.0.1", 80),
            "shop/p",
        ),
        allow(
            "notNamespaces own namespace passes",
            r"
- metadata: {name: p, namespace: shop}
  spec: {action: DENY, rules: [{from: [{source: {notNamespaces: [shop]}}]}]}
",
            mtls(CLIENT, "10.0.0.1", 80),
            "default allow",
        ),
        // ipBlocks / notIpBlocks, both families.
        allow(
            "ipBlock contains",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/24, 'fd00::/64']}}]}]}
",
            plaintext("10.0.0.9", 80),
            "shop/p",
        ),
        allow(
            "ipBlock v6",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/24, 'fd00::/64']}}]}]}
",
            plaintext("fd00::5", 80),
            "shop/p",
        ),
        allow(
            "ipBlock single address, v4-mapped source",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{from: [{source: {ipBlocks: [10.0.0.9]}}]}]}
",
            plaintext("::ffff:10.0.0.9", 80),
            "shop/p",
        ),
        deny(
            "ipBlock outside",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}]}
",
            plaintext("10.0.1.9", 80),
            "no ALLOW matched",
        ),
        deny(
            "notIpBlocks",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{from: [{source: {notIpBlocks: [10.0.0.0/24]}}]}]}
",
            plaintext("10.0.0.9", 80),
            "no ALLOW matched",
        ),
        // ports / notPorts, strings and numbers.
        allow(
            "port listed",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{to: [{operation: {ports: ['8080', 9090]}}]}]}
",
            plaintext("10.0.0.1", 9090),
            "shop/p",
        ),
        deny(
            "port not listed",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{to: [{operation: {ports: ['8080']}}]}]}
",
            plaintext("10.0.0.1", 80),
            "no ALLOW matched",
        ),
        deny(
            "notPorts",
            r"
- metadata: {name: p, namespace: shop}
  spec: {action: DENY, rules: [{to: [{operation: {notPorts: ['8080']}}]}]}
",
            plaintext("10.0.0.1", 80),
            "shop/p",
        ),
        // A rule needs its from AND its to; any rule may match.
        deny(
            "from and to both required",
            r"
- metadata: {name: p, namespace: shop}
  spec:
    rules:
      - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]
        to: [{operation: {ports: ['8080']}}]
",
            mtls(CLIENT, "10.0.0.1", 80),
            "no ALLOW matched",
        ),
        allow(
            "second rule matches",
            r"
- metadata: {name: p, namespace: shop}
  spec:
    rules:
      - to: [{operation: {ports: ['8080']}}]
      - from: [{source: {namespaces: [shop]}}]
",
            mtls(CLIENT, "10.0.0.1", 80),
            "shop/p",
        ),
        // Every field of a source must match.
        deny(
            "all fields of a source",
            r"
- metadata: {name: p, namespace: shop}
  spec: {rules: [{from: [{source: {namespaces: [shop], ipBlocks: [192.168.0.0/16]}}]}]}
",
            mtls(CLIENT, "10.0.0.1", 80),
            "no ALLOW matched",
        ),
        // Empty spec: allow nothing. One empty rule: allow everything.
        deny(
            "allow-nothing",
            r"
- metadata: {name: nothing, namespace: shop}
  spec: {}
",
            mtls(CLIENT, "10.0.0.1", 80),
            "no ALLOW matched",
        ),
        allow(
            "allow-all",
            r"
- metadata: {name: all, namespace: shop}
  spec: {rules: [{}]}
",
            plaintext("10.0.0.1", 80),
            "shop/all",
        ),
        // Precedence: DENY beats ALLOW; AUDIT changes nothing.
        deny(
            "deny beats allow",
            r"
- metadata: {name: all, namespace: shop}
  spec: {rules: [{}]}
- metadata: {name: no-admin, namespace: shop}
  spec: {action: DENY, rules: [{from: [{source: {principals: ['*/sa/admin']}}]}]}
",
            mtls(ADMIN, "10.0.0.1", 80),
            "shop/no-admin",
        ),
        allow(
            "audit only records",
            r"
- metadata: {name: watch, namespace: shop}
  spec: {action: AUDIT, rules: [{}]}
",
            plaintext("10.0.0.1", 80),
            "default allow",
        ),
        // Scope: selectors, other namespaces, the root namespace.
        allow(
            "selector does not match: policy does not apply",
            r"
- metadata: {name: p, namespace: shop}
  spec: {selector: {matchLabels: {app: cache}}, rules: []}
",
            plaintext("10.0.0.1", 80),
            "default allow",
        ),
        deny(
            "selector needs every label",
            r"
- metadata: {name: p, namespace: shop}
  spec: {selector: {matchLabels: {app: backend, tier: web}}, action: DENY, rules: [{}]}
- metadata: {name: q, namespace: shop}
  spec: {selector: {matchLabels: {app: backend}}, action: DENY, rules: [{}]}
",
            plaintext("10.0.0.1", 80),
            "shop/q",
        ),
        allow(
            "another namespace's policy does not apply",
            r"
- metadata: {name: p, namespace: other}
  spec: {action: DENY, rules: [{}]}
",
            plaintext("10.0.0.1", 80),
            "default allow",
        ),
        deny(
            "root namespace applies mesh-wide",
            r"
- metadata: {name: mesh-deny, namespace: ambit-system}
  spec: {action: DENY, rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]}
",
            plaintext("10.0.0.1", 80),
            "ambit-system/mesh-deny",
        ),
        deny(
            "root namespace selector applies in any namespace",
            r"
- metadata: {name: mesh-deny, namespace: ambit-system}
  spec: {selector: {matchLabels: {app: backend}}, action: DENY, rules: [{}]}
",
            plaintext("10.0.0.1", 80),
            "ambit-system/mesh-deny",
        ),
        // L7 fields without a waypoint fail closed.
        deny(
            "L7 ALLOW allows nothing",
            r"
- metadata: {name: get-only, namespace: shop}
  spec: {rules: [{to: [{operation: {methods: [GET]}}]}]}
",
            mtls(CLIENT, "10.0.0.1", 80),
            "shop/get-only",
        ),
        deny(
            "L7 DENY applies on its L4 fields",
            r"
- metadata: {name: no-admin-paths, namespace: shop}
  spec: {action: DENY, rules: [{to: [{operation: {ports: ['80'], paths: [/admin]}}]}]}
",
            mtls(CLIENT, "10.0.0.1", 80),
            "shop/no-admin-paths",
        ),
        allow(
            "L7 DENY L4 fields still must match",
            r"
- metadata: {name: no-admin-paths, namespace: shop}
  spec: {action: DENY, rules: [{to: [{operation: {ports: ['8080'], paths: [/admin]}}]}]}
",
            mtls(CLIENT, "10.0.0.1", 80),
            "default allow",
        ),
        allow(
            "an L4 ALLOW still allows beside an L7 one",
            r"
- metadata: {name: get-only, namespace: shop}
  spec: {rules: [{to: [{operation: {methods: [GET]}}]}]}
- metadata: {name: frontend, namespace: shop}
  spec: {rules: [{from: [{source: {principals: ['*/sa/frontend']}}]}]}
",
            mtls(CLIENT, "10.0.0.1", 80),
            "shop/frontend",
        ),
        // Rejected policies fail closed.
        deny(
            "rejected ALLOW allows nothing",
            r"
- metadata: {name: bad-allow, namespace: shop}
  spec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]}
",
            plaintext("10.0.0.1", 80),
            "shop/bad-allow",
        ),
        deny(
            "rejected DENY denies everything in scope",
            r"
- metadata: {name: bad-deny, namespace: shop}
  spec: {action: DENY, rules: [{from: [{source: {principals: ['a*b']}}]}]}
",
            mtls(CLIENT, "10.0.0.1", 80),
            "shop/bad-deny",
        ),
        deny(
            "unknown action fails closed as a DENY",
            r"
- metadata: {name: typo, namespace: shop}
  spec: {action: DENNY, rules: [{}]}
",
            plaintext("10.0.0.1", 80),
            "shop/typo",
        ),
        allow(
            "a rejected policy elsewhere changes nothing here",
            r"
- metadata: {name: bad, namespace: other}
  spec: {action: DENY, rules: [{from: [{source: {ipBlocks: [nonsense]}}]}]}
",
            plaintext("10.0.0.1", 80),
            "default allow",
        ),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let got = verdict(
            &set(case.policies),
            "shop",
            &[("app", "backend"), ("tier", "api")],
            &case.request,
        );
        if got.decision != case.decision || got.policy != case.policy {
            failures.push(format!(
                "{}: expected {:?} by {:?}, got {:?} by {:?} ({})",
                case.name, case.decision, case.policy, got.decision, got.policy, got.reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn audit_matches_are_reported() {
    let set = set(r"
- metadata: {name: watch, namespace: shop}
  spec: {action: AUDIT, rules: [{from: [{source: {namespaces: [shop]}}]}]}
");
    let got = verdict(&set, "shop", &[], &mtls(CLIENT, "10.0.0.1", 80));
    assert_eq!(got.audited, vec!["shop/watch".to_owned()]);
    let got = verdict(&set, "shop", &[], &mtls(ADMIN, "10.0.0.1", 80));
    assert!(got.audited.is_empty());
}

/// Each bad field is rejected with the policy's name and the field's path.
#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn bad_policies_name_the_policy_and_the_field() {
    let cases = [
        (
            "spec: {action: PERMIT}",
            "spec.action",
            "unknown action \"PERMIT\"",
        ),
        ("spec: {action: CUSTOM}", "spec.action", "CUSTOM"),
        (
            "spec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]}",
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "not an IP address or CIDR",
        ),
        (
            "spec: {rules: [{from: [{source: {notIpBlocks: [10.1.2.3/8]}}]}]}",
            "spec.rules[0].from[0].source.notIpBlocks[0]",
            "host bits",
        ),
        (
            "spec: {rules: [{}, {from: [{source: {principals: ['spiffe://cluster.local/ns/a/sa/b']}}]}]}",
            "spec.rules[1].from[0].source.principals[0]",
            "without the scheme",
        ),
        (
            "spec: {rules: [{from: [{source: {principals: ['a*b']}}]}]}",
            "spec.rules[0].from[0].source.principals[0]",
            "`*` may only",
        ),
        (
            "spec: {rules: [{from: [{source: {principals: ['']}}]}]}",
            "spec.rules[0].from[0].source.principals[0]",
            "empty",
        ),
        (
            "spec: {rules: [{from: [{source: {namespaces: ['Shop']}}]}]}",
            "spec.rules[0].from[0].source.namespaces[0]",
            "not a namespace",
        ),
        (
            "spec: {rules: [{to: [{operation: {ports: ['http']}}]}]}",
            "spec.rules[0].to[0].operation.ports[0]",
            "not a port number",
        ),
        (
            "spec: {rules: [{to: [{operation: {notPorts: [70000]}}]}]}",
            "spec.rules[0].to[0].operation.notPorts[0]",
            "not a port",
        ),
        (
            "spec: {rules: [{from: [{source: {principal: [x]}}]}]}",
            "spec.rules[0].from[0].source.principal",
            "unknown field `principal`",
        ),
        (
            "spec: {rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]}",
            "spec.rules[0].when[0].key",
            "the supported condition key is request.headers[<name>]",
        ),
        (
            "spec: {rules: [{when: [{key: 'request.headers[x]'}]}]}",
            "spec.rules[0].when[0].values",
            "needs values or notValues",
        ),
        (
            "spec: {targetRefs: [{kind: Deployment, group: apps, name: w}]}",
            "spec.targetRefs[0]",
            "cannot be targeted",
        ),
        (
            "spec: {targetRefs: [{kind: Service, name: w, namespace: other}]}",
            "spec.targetRefs[0].namespace",
            "its own namespace",
        ),
        (
            "spec: {selector: {matchLabels: {app: x}}, targetRefs: [{kind: Service, name: w}]}",
            "spec.targetRefs",
            "not both",
        ),
        (
            "spec: {rules: [{to: [{operation: {methods: [get]}}]}]}",
            "spec.rules[0].to[0].operation.methods[0]",
            "not an HTTP method",
        ),
        (
            "spec: {rules: [{to: [{operation: {paths: [api]}}]}]}",
            "spec.rules[0].to[0].operation.paths[0]",
            "must start with /",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nspec: {}",
            "apiVersion",
            "unknown apiVersion",
        ),
    ];
    for (spec, field, message) in cases {
        let yaml = format!("metadata: {{name: broken, namespace: shop}}\n{spec}");
        let value: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let policy = compile(&value);
        let error = policy
            .rejected
            .as_ref()
            .unwrap_or_else(|| panic!("{spec}: accepted"));
        assert_eq!(error.policy.to_string(), "shop/broken", "{spec}");
        assert_eq!(error.field, field, "{spec}: {error}");
        assert!(error.message.contains(message), "{spec}: {error}");
        assert!(
            error
                .to_string()
                .starts_with("authorization policy shop/broken: "),
            "{error}"
        );
        assert!(
            policy.status().starts_with("rejected: "),
            "{}",
            policy.status()
        );
    }
}

#[test]
fn istio_objects_load_as_they_are() {
    let policy = &policies(
        r#"
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: httpbin, namespace: foo, labels: {team: a}, annotations: {x: y}}
  spec:
    selector: {matchLabels: {app: httpbin, version: v1}}
    action: ALLOW
    rules:
      - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}, {source: {namespaces: [dev]}}]
        to: [{operation: {ports: ["8000"]}}]
"#,
    )[0];
    assert!(policy.rejected.is_none(), "{}", policy.status());
    assert_eq!(policy.status(), "accepted");
    assert_eq!(policy.rules[0].from.len(), 2);
    assert_eq!(policy.rules[0].to[0].ports, vec![8000]);
    assert_eq!(policy.selector.len(), 2);
}

#[test]
fn waypoint_fields_are_listed_in_the_status() {
    let policy = &policies(
        r"
- metadata: {name: get-only, namespace: shop}
  spec: {rules: [{from: [{source: {requestPrincipals: ['*']}}], to: [{operation: {methods: [GET], paths: [/api]}}]}]}
",
    )[0];
    assert!(policy.rejected.is_none());
    assert_eq!(
        policy.waypoint_fields,
        [
            "spec.rules[0].from[0].source.requestPrincipals",
            "spec.rules[0].to[0].operation.methods",
            "spec.rules[0].to[0].operation.paths"
        ]
    );
    assert!(policy.rules[0].needs_waypoint);
    assert!(
        policy.status().contains("need a waypoint"),
        "{}",
        policy.status()
    );
}

#[test]
fn evaluation_looks_only_at_policies_that_can_apply() {
    // 10,000 policies over 1,000 namespaces; the workload sees its own.
    let mut values = Vec::new();
    for n in 0..1000 {
        for p in 0..10 {
            let yaml = format!(
                "metadata: {{name: p{p}, namespace: ns{n}}}\nspec: {{selector: {{matchLabels: {{app: a{p}}}}}, rules: [{{}}]}}"
            );
            values.push(serde_yaml::from_str(&yaml).unwrap());
        }
    }
    let set = PolicySet::new(compile_all(&values), DEFAULT_ROOT_NAMESPACE);
    let labels = labels(&[("app", "a3"), ("tier", "x")]);
    let workload = Workload {
        namespace: "ns7",
        labels: &labels,
    };
    let applicable: Vec<String> = set
        .applicable(workload)
        .map(|p| p.key.to_string())
        .collect();
    assert_eq!(applicable, ["ns7/p3"]);
    assert_eq!(
        set.evaluate(workload, &plaintext("10.0.0.1", 80)).policy,
        "ns7/p3"
    );
}

#[test]
fn a_request_carries_the_principal_without_the_scheme() {
    let id = crate::identity::SpiffeId::new("cluster.local", "shop", "frontend").unwrap();
    let request = Request::new(Some(&id), "::ffff:10.0.0.1".parse().unwrap(), 80);
    assert_eq!(request.principal.as_deref(), Some(CLIENT));
    assert_eq!(request.namespace.as_deref(), Some("shop"));
    assert_eq!(
        request.source_ip,
        "10.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(Request::new(None, request.source_ip, 80).principal, None);
}

// --- At the waypoint: HTTP attributes and targetRefs.

const L7_POLICIES: &str = "
- metadata: {name: get-only, namespace: shop}
  spec:
    targetRefs: [{kind: Service, group: '', name: backend}]
    rules:
      - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]
        to: [{operation: {methods: [GET, HEAD], paths: ['/api/*', /health]}}]
- metadata: {name: no-delete, namespace: shop}
  spec:
    targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: shop-waypoint}]
    action: DENY
    rules:
      - to: [{operation: {methods: [DELETE]}}]
- metadata: {name: internal-host, namespace: shop}
  spec:
    targetRefs: [{kind: Service, name: admin}]
    rules:
      - to: [{operation: {hosts: [admin.shop.svc.cluster.local, '*.internal']}}]
        when: [{key: 'request.headers[x-team]', values: [ops, 'sre-*'], notValues: [sre-intern]}]
";

fn http(method: &str, path: &str, host: &str, headers: &[(&str, &str)]) -> HttpAttributes {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    HttpAttributes {
        method: method.parse().unwrap(),
        path: path.to_owned(),
        host: Some(host.to_owned()),
        headers: map,
    }
}

fn at_waypoint(set: &PolicySet, service: &str, request: &Request) -> Verdict {
    set.evaluate_target(
        &ServiceTarget {
            namespace: "shop",
            service,
            waypoint: "shop-waypoint",
        },
        request,
    )
}

#[test]
fn the_waypoint_checks_methods_paths_and_principals() {
    let set = set(L7_POLICIES);
    let request = |principal: &str, method: &str, path: &str| {
        mtls(principal, "10.0.0.1", 80).with_http(http(method, path, "backend", &[]))
    };
    let decide = |r| at_waypoint(&set, "backend", &r).decision;
    assert_eq!(
        decide(request(CLIENT, "GET", "/api/items")),
        Decision::Allow
    );
    assert_eq!(decide(request(CLIENT, "HEAD", "/health")), Decision::Allow);
    assert_eq!(
        decide(request(CLIENT, "POST", "/api/items")),
        Decision::Deny
    );
    assert_eq!(decide(request(CLIENT, "GET", "/admin")), Decision::Deny);
    assert_eq!(decide(request(ADMIN, "GET", "/api/items")), Decision::Deny);
    // The DENY on the waypoint wins over the ALLOW, and names itself.
    let denied = at_waypoint(&set, "backend", &request(CLIENT, "DELETE", "/api/items"));
    assert_eq!(denied.decision, Decision::Deny);
    assert_eq!(denied.policy, "shop/no-delete");
    // Another service of the waypoint: only the Gateway-wide DENY applies.
    let other = |method| at_waypoint(&set, "other", &request(ADMIN, method, "/")).decision;
    assert_eq!(other("GET"), Decision::Allow);
    assert_eq!(other("DELETE"), Decision::Deny);
}

#[test]
fn the_waypoint_checks_hosts_and_headers() {
    let set = set(L7_POLICIES);
    let decide = |host: &str, team: Option<&str>| {
        let headers: Vec<(&str, &str)> = team.map(|t| ("x-team", t)).into_iter().collect();
        let request = mtls(CLIENT, "10.0.0.1", 80).with_http(http("GET", "/", host, &headers));
        at_waypoint(&set, "admin", &request).decision
    };
    assert_eq!(
        decide("admin.shop.svc.cluster.local", Some("ops")),
        Decision::Allow
    );
    assert_eq!(
        decide("ADMIN.shop.svc.cluster.local:8080", Some("ops")),
        Decision::Allow
    );
    assert_eq!(decide("db.internal", Some("sre-oncall")), Decision::Allow);
    assert_eq!(decide("db.internal", Some("sre-intern")), Decision::Deny);
    assert_eq!(decide("db.internal", Some("dev")), Decision::Deny);
    assert_eq!(decide("db.internal", None), Decision::Deny);
    assert_eq!(decide("example.com", Some("ops")), Decision::Deny);
}

#[test]
fn targeted_policies_are_the_waypoints_and_l7_rules_fail_closed_without_http() {
    let set = set(L7_POLICIES);
    // Node agents never see targetRefs policies.
    let at_agent = verdict(
        &set,
        "shop",
        &[("app", "backend")],
        &mtls(ADMIN, "10.0.0.1", 80),
    );
    assert_eq!(at_agent.decision, Decision::Allow);
    assert_eq!(at_agent.policy, evaluate::DEFAULT_ALLOW);
    // Opaque TCP at the waypoint: the ALLOW rule's HTTP fields cannot
    // match, so it allows nothing; the DENY of DELETE applies on its L4
    // fields alone, so everything through the waypoint is denied.
    let opaque = at_waypoint(&set, "backend", &mtls(CLIENT, "10.0.0.1", 80));
    assert_eq!(opaque.decision, Decision::Deny);
    assert_eq!(opaque.policy, "shop/no-delete");
    assert!(
        opaque.reason.contains("L4 fields only"),
        "{}",
        opaque.reason
    );
    assert_eq!(
        policies(L7_POLICIES)[0].status(),
        "accepted; enforced by the waypoint"
    );
}

#[test]
fn a_selector_policy_with_http_fields_still_fails_closed_at_the_agent() {
    let set = set("
- metadata: {name: get-only, namespace: shop}
  spec:
    selector: {matchLabels: {app: backend}}
    rules: [{to: [{operation: {methods: [GET]}}]}]
");
    let decided = verdict(
        &set,
        "shop",
        &[("app", "backend")],
        &mtls(CLIENT, "10.0.0.1", 80),
    );
    assert_eq!(decided.decision, Decision::Deny);
    assert!(
        decided.reason.contains("fails closed"),
        "{}",
        decided.reason
    );
}

#[test]
fn request_principals_fail_closed_even_at_the_waypoint() {
    let set = set("
- metadata: {name: jwt, namespace: shop}
  spec:
    targetRefs: [{kind: Service, name: backend}]
    rules: [{from: [{source: {requestPrincipals: ['*']}}], to: [{operation: {methods: [GET]}}]}]
");
    let request = mtls(CLIENT, "10.0.0.1", 80).with_http(http("GET", "/", "backend", &[]));
    assert_eq!(
        at_waypoint(&set, "backend", &request).decision,
        Decision::Deny
    );
    assert!(
        policies(
            "
- metadata: {name: jwt, namespace: shop}
  spec:
    targetRefs: [{kind: Service, name: backend}]
    rules: [{from: [{source: {requestPrincipals: ['*']}}]}]
"
        )[0]
        .status()
        .contains("not supported")
    );
}
