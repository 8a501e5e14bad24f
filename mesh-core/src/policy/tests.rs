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
            "\"request.auth.claims[iss]\" is not supported (ambit validates no JWT); the supported condition keys are request.headers[<name>], source.principal, source.namespace, source.ip, destination.port",
        ),
        (
            "spec: {rules: [{when: [{key: destination.ip, values: [10.0.0.1]}]}]}",
            "spec.rules[0].when[0].key",
            "\"destination.ip\" is not supported; the supported condition keys are request.headers[<name>], source.principal",
        ),
        (
            "spec: {rules: [{when: [{key: 'request.headers[x y]', values: [x]}]}]}",
            "spec.rules[0].when[0].key",
            "\"x y\" in \"request.headers[x y]\" is not a header name",
        ),
        (
            "spec: {rules: [{when: [{key: source.ip, notValues: [10.0.0.0/33]}]}]}",
            "spec.rules[0].when[0].notValues[0]",
            "not an IP address or CIDR",
        ),
        (
            "spec: {rules: [{when: [{key: destination.port, values: ['8080', http]}]}]}",
            "spec.rules[0].when[0].values[1]",
            "not a port number",
        ),
        (
            "spec: {rules: [{when: [{key: source.principal, values: ['spiffe://cluster.local/ns/a/sa/b']}]}]}",
            "spec.rules[0].when[0].values[0]",
            "without the scheme",
        ),
        (
            "spec: {rules: [{when: [{key: source.namespace}]}]}",
            "spec.rules[0].when[0].values",
            "needs values or notValues",
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
            "spec: {rules: [{to: [{operation: {notMethods: ['*']}}]}]}",
            "spec.rules[0].to[0].operation.notMethods[0]",
            "leave methods out to match any",
        ),
        (
            "spec: {rules: [{to: [{operation: {methods: ['GET /']}}]}]}",
            "spec.rules[0].to[0].operation.methods[0]",
            "not an HTTP method",
        ),
        (
            "spec: {rules: [{to: [{operation: {paths: [api]}}]}]}",
            "spec.rules[0].to[0].operation.paths[0]",
            "must start with /",
        ),
        (
            "spec: {rules: [{to: [{operation: {paths: ['api*']}}]}]}",
            "spec.rules[0].to[0].operation.paths[0]",
            "must start with /",
        ),
        (
            "spec: {rules: [{to: [{operation: {notPaths: ['/search?q=x']}}]}]}",
            "spec.rules[0].to[0].operation.notPaths[0]",
            "without the query",
        ),
        (
            "spec: {rules: [{to: [{operation: {paths: ['/api/{*}/keys']}}]}]}",
            "spec.rules[0].to[0].operation.paths[0]",
            "path templates ({*}, {**}) are not supported",
        ),
        (
            "spec: {rules: [{to: [{operation: {paths: ['/a*/b']}}]}]}",
            "spec.rules[0].to[0].operation.paths[0]",
            "`*` may only",
        ),
        (
            "spec: {rules: [{to: [{operation: {hosts: ['http://example.com']}}]}]}",
            "spec.rules[0].to[0].operation.hosts[0]",
            "not a host",
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
    assert!(policy.rules[0].unenforceable);
    let status = policy.status();
    for part in [
        "failing closed at the node agent",
        "need a waypoint",
        "enforced only by a waypoint",
        "rules that use them allow nothing",
        "spec.rules[0].from[0].source.requestPrincipals are not supported",
        "fail closed at the waypoint too",
    ] {
        assert!(status.contains(part), "{part:?} not in {status:?}");
    }
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
fn targeting_policies_are_found_by_service_or_waypoint() {
    let targets = |set: &PolicySet, namespace: &str, service: &str, waypoint: &str| {
        set.any_targets(&ServiceTarget {
            namespace,
            service,
            waypoint,
        })
    };
    let set = set(L7_POLICIES);
    assert!(targets(&set, "shop", "backend", "other-waypoint"));
    assert!(targets(&set, "shop", "unnamed", "shop-waypoint"));
    assert!(!targets(&set, "shop", "unnamed", "other-waypoint"));
    assert!(!targets(&set, "other", "backend", "shop-waypoint"));
    // With none, every request is allowed by default.
    let request = mtls(CLIENT, "10.0.0.1", 80).with_http(http("DELETE", "/", "x", &[]));
    let verdict = set.evaluate_target(
        &ServiceTarget {
            namespace: "shop",
            service: "unnamed",
            waypoint: "other-waypoint",
        },
        &request,
    );
    assert_eq!(verdict.decision, Decision::Allow);
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

// --- L7 fields, evaluated fully when the request has HTTP attributes.

/// A node agent's verdict for `request` to `shop` pod `app=backend`.
fn at_agent(set: &PolicySet, request: &Request) -> Verdict {
    verdict(set, "shop", &[("app", "backend")], request)
}

fn get(path: &str) -> HttpAttributes {
    http("GET", path, "backend", &[])
}

fn with(request: Request, method: &str, path: &str) -> Request {
    request.with_http(http(method, path, "backend", &[]))
}

const GET_ONLY: &str = "
- metadata: {name: get-only, namespace: shop}
  spec:
    selector: {matchLabels: {app: backend}}
    rules: [{to: [{operation: {methods: [GET]}}]}]
";

#[test]
fn an_allow_of_get_allows_get_and_denies_delete_at_a_waypoint() {
    let set = set(GET_ONLY);
    let client = || mtls(CLIENT, "10.0.0.1", 80);
    let allowed = at_agent(&set, &with(client(), "GET", "/api"));
    assert_eq!(allowed.decision, Decision::Allow, "{}", allowed.reason);
    assert_eq!(allowed.policy, "shop/get-only");
    let denied = at_agent(&set, &with(client(), "DELETE", "/api"));
    assert_eq!(denied.decision, Decision::Deny);
    assert_eq!(
        denied.policy, "shop/get-only",
        "the denial names the policy"
    );
    assert!(
        denied.reason.contains("DELETE /api (host backend)")
            && !denied.reason.contains("fails closed"),
        "{}",
        denied.reason
    );
    // The same policy at L4 fails closed, as it always did.
    let l4 = at_agent(&set, &client());
    assert_eq!(l4.decision, Decision::Deny);
    assert_eq!(l4.policy, "shop/get-only");
    assert!(
        l4.reason.contains("fails closed") && l4.reason.contains("need a waypoint"),
        "{}",
        l4.reason
    );
}

#[test]
fn a_deny_of_delete_denies_only_delete_at_a_waypoint_and_l4_fields_at_the_agent() {
    let set = set("
- metadata: {name: no-delete, namespace: shop}
  spec:
    action: DENY
    rules: [{to: [{operation: {ports: ['80'], methods: [DELETE]}}]}]
");
    let client = || mtls(CLIENT, "10.0.0.1", 80);
    for method in ["GET", "POST", "PUT", "HEAD"] {
        let got = at_agent(&set, &with(client(), method, "/"));
        assert_eq!(got.decision, Decision::Allow, "{method}: {}", got.reason);
        assert_eq!(got.policy, evaluate::DEFAULT_ALLOW);
    }
    let denied = at_agent(&set, &with(client(), "DELETE", "/items/7"));
    assert_eq!(denied.decision, Decision::Deny);
    assert_eq!(denied.policy, "shop/no-delete");
    assert_eq!(
        denied.reason,
        "DENY policy shop/no-delete matched DELETE /items/7 (host backend)"
    );
    // At L4 it applies on its port alone, as before.
    let l4 = at_agent(&set, &client());
    assert_eq!(l4.decision, Decision::Deny);
    assert_eq!(l4.policy, "shop/no-delete");
    assert!(l4.reason.contains("L4 fields only"), "{}", l4.reason);
    assert_eq!(
        at_agent(&set, &mtls(CLIENT, "10.0.0.1", 8080)).decision,
        Decision::Allow
    );
}

#[test]
fn paths_match_exactly_by_prefix_by_suffix_or_any() {
    let set = set(r"
- metadata: {name: paths, namespace: shop}
  spec:
    selector: {matchLabels: {app: backend}}
    rules:
      - to: [{operation: {paths: [/health, '/api/*', '*.png'], notPaths: ['/api/internal*']}}]
      - to: [{operation: {methods: [OPTIONS], paths: ['*']}}]
");
    let decide = |method: &str, path: &str| {
        at_agent(&set, &with(mtls(CLIENT, "10.0.0.1", 80), method, path)).decision
    };
    let cases = [
        ("GET", "/health", Decision::Allow),
        ("GET", "/health/", Decision::Deny),
        ("GET", "/healthz", Decision::Deny),
        ("GET", "/api/items", Decision::Allow),
        ("GET", "/api/", Decision::Allow),
        ("GET", "/api", Decision::Deny),
        ("GET", "/img/logo.png", Decision::Allow),
        ("GET", "/img/logo.PNG", Decision::Deny),
        ("GET", "/api/internal/keys", Decision::Deny),
        ("GET", "/other", Decision::Deny),
        ("OPTIONS", "/anything", Decision::Allow),
        // The query is not part of the path.
        ("GET", "/health?verbose=1", Decision::Allow),
    ];
    for (method, path, expected) in cases {
        assert_eq!(decide(method, path), expected, "{method} {path}");
    }
    assert_eq!(
        HttpAttributes::new(http::Method::GET, "/health?verbose=1").path,
        "/health"
    );
}

#[test]
fn hosts_match_without_case_and_with_any_port() {
    let set = set(r"
- metadata: {name: hosts, namespace: shop}
  spec:
    selector: {matchLabels: {app: backend}}
    rules:
      - to: [{operation: {hosts: [Backend.Shop.svc.cluster.local, '*.example.com', 'api.*', 'pinned.local:8443'], notHosts: [legacy.example.com]}}]
");
    let decide = |host: Option<&str>| {
        let mut attributes = get("/");
        attributes.host = host.map(ToOwned::to_owned);
        at_agent(&set, &mtls(CLIENT, "10.0.0.1", 80).with_http(attributes)).decision
    };
    let cases = [
        (Some("backend.shop.svc.cluster.local"), Decision::Allow),
        (Some("BACKEND.shop.svc.cluster.local"), Decision::Allow),
        (Some("backend.shop.svc.cluster.local:8080"), Decision::Allow),
        (Some("www.example.com"), Decision::Allow),
        (Some("www.Example.com:443"), Decision::Allow),
        (Some("api.anything"), Decision::Allow),
        (Some("pinned.local:8443"), Decision::Allow),
        (Some("pinned.local"), Decision::Deny),
        (Some("pinned.local:9000"), Decision::Deny),
        (Some("legacy.example.com"), Decision::Deny),
        (Some("legacy.example.com:80"), Decision::Deny),
        (Some("backend.shop"), Decision::Deny),
        (Some("example.com"), Decision::Deny),
        (None, Decision::Deny),
    ];
    for (host, expected) in cases {
        assert_eq!(decide(host), expected, "{host:?}");
    }
}

#[test]
fn header_conditions_follow_istio() {
    let set = set(r"
- metadata: {name: users, namespace: shop}
  spec:
    selector: {matchLabels: {app: backend}}
    rules:
      - when: [{key: 'request.headers[X-User]', values: [alice, 'team-*'], notValues: [team-intern]}]
- metadata: {name: no-bots, namespace: shop}
  spec:
    selector: {matchLabels: {app: backend}}
    action: DENY
    rules:
      - when: [{key: 'request.headers[user-agent]', notValues: ['browser/*']}]
");
    let decide = |headers: &[(&str, &str)]| {
        let mut headers = headers.to_vec();
        headers.push(("user-agent", "browser/1"));
        let attributes = http("GET", "/", "backend", &headers);
        at_agent(&set, &mtls(CLIENT, "10.0.0.1", 80).with_http(attributes)).decision
    };
    assert_eq!(decide(&[("x-user", "alice")]), Decision::Allow);
    assert_eq!(decide(&[("x-user", "team-ops")]), Decision::Allow);
    assert_eq!(decide(&[("x-user", "team-intern")]), Decision::Deny);
    assert_eq!(decide(&[("x-user", "bob")]), Decision::Deny);
    assert_eq!(decide(&[]), Decision::Deny, "values need the header");
    // Any value of a repeated header can match, and any can exclude.
    assert_eq!(
        decide(&[("x-user", "bob"), ("x-user", "alice")]),
        Decision::Allow
    );
    assert_eq!(
        decide(&[("x-user", "alice"), ("x-user", "team-intern")]),
        Decision::Deny
    );
    // notValues alone: a missing header matches, so the DENY catches it.
    let bot = |headers: &[(&str, &str)]| {
        let attributes = http("GET", "/", "backend", headers);
        at_agent(&set, &mtls(CLIENT, "10.0.0.1", 80).with_http(attributes))
    };
    assert_eq!(bot(&[("x-user", "alice")]).policy, "shop/no-bots");
    assert_eq!(
        bot(&[("x-user", "alice"), ("user-agent", "curl/8")]).policy,
        "shop/no-bots"
    );
    let policy = &set.policies()[0];
    assert_eq!(policy.waypoint_fields, ["spec.rules[0].when[0]"]);
    assert!(matches!(
        &policy.rules[0].when[0],
        Condition::RequestHeader(h) if h.name == "x-user"
    ));
}

#[test]
fn source_conditions_work_at_the_node_agent() {
    let set = set(r"
- metadata: {name: by-condition, namespace: shop}
  spec:
    selector: {matchLabels: {app: backend}}
    rules:
      - when:
          - {key: source.principal, values: ['*/sa/frontend', '*/sa/admin'], notValues: ['cluster.local/ns/ops/*']}
          - {key: source.ip, values: [10.0.0.0/16], notValues: [10.0.9.0/24]}
      - when: [{key: source.namespace, values: [batch]}]
");
    let policy = &set.policies()[0];
    assert!(
        policy.waypoint_fields.is_empty(),
        "L4 conditions need no waypoint"
    );
    assert!(!policy.rules[0].needs_waypoint);
    assert_eq!(policy.status(), "accepted");
    // As the agents' /policies shows them.
    let shown = serde_yaml::to_string(&**policy).unwrap();
    for part in ["key: source.principal", "key: source.ip", "- 10.0.9.0/24"] {
        assert!(shown.contains(part), "{part:?} not in {shown}");
    }
    let cases = [
        ("frontend", mtls(CLIENT, "10.0.0.1", 80), Decision::Allow),
        ("admin of ops", mtls(ADMIN, "10.0.0.1", 80), Decision::Deny),
        (
            "frontend from the excluded block",
            mtls(CLIENT, "10.0.9.1", 80),
            Decision::Deny,
        ),
        (
            "frontend from outside",
            mtls(CLIENT, "192.168.0.1", 80),
            Decision::Deny,
        ),
        (
            "batch namespace",
            mtls("cluster.local/ns/batch/sa/job", "192.168.0.1", 80),
            Decision::Allow,
        ),
        ("plaintext", plaintext("10.0.0.1", 80), Decision::Deny),
    ];
    for (name, request, expected) in cases {
        let got = at_agent(&set, &request);
        assert_eq!(got.decision, expected, "{name}: {}", got.reason);
    }
    // As with notNamespaces, notValues do not exclude plaintext (it has no
    // namespace to exclude), so a DENY on them catches it.
    let deny = set_of_deny_unless_shop();
    assert_eq!(
        at_agent(&deny, &mtls(ADMIN, "10.0.0.1", 80)).policy,
        "shop/outsiders"
    );
    assert_eq!(
        at_agent(&deny, &mtls(CLIENT, "10.0.0.1", 80)).decision,
        Decision::Allow
    );
    assert_eq!(
        at_agent(&deny, &plaintext("10.0.0.1", 80)).policy,
        "shop/outsiders"
    );
}

fn set_of_deny_unless_shop() -> PolicySet {
    set("
- metadata: {name: outsiders, namespace: shop}
  spec:
    action: DENY
    rules: [{when: [{key: source.namespace, notValues: [shop]}]}]
")
}

#[test]
fn destination_port_conditions_are_folded_into_the_ports() {
    let set = set("
- metadata: {name: db-port, namespace: shop}
  spec:
    action: DENY
    rules:
      - when: [{key: destination.port, values: ['5432', 6432]}]
      - to: [{operation: {ports: ['80', '5432'], methods: [POST]}}, {operation: {ports: ['443']}}]
        when: [{key: destination.port, values: ['80', '8080'], notValues: ['8080']}]
      - to: [{operation: {ports: ['9000']}}]
        when: [{key: destination.port, values: ['9001']}]
");
    let policy = &set.policies()[0];
    // Every port the rules depend on is in their operations (the fast
    // path tells ports apart by those alone); the contradictory rule is gone.
    assert_eq!(policy.rules.len(), 2);
    assert_eq!(policy.rules[0].to[0].ports, [5432, 6432]);
    assert_eq!(policy.rules[1].to.len(), 1);
    assert_eq!(policy.rules[1].to[0].ports, [80]);
    assert_eq!(policy.rules[1].to[0].not_ports, [8080]);
    let decide = |port| at_agent(&set, &mtls(CLIENT, "10.0.0.1", port)).decision;
    assert_eq!(decide(5432), Decision::Deny);
    assert_eq!(decide(6432), Decision::Deny);
    assert_eq!(decide(443), Decision::Allow);
    assert_eq!(decide(9000), Decision::Allow);
    assert_eq!(decide(9001), Decision::Allow);
    // Port 80 needs POST: at L4 the DENY applies on its ports alone.
    assert_eq!(decide(80), Decision::Deny);
    let by_method =
        |method| at_agent(&set, &with(mtls(CLIENT, "10.0.0.1", 80), method, "/")).decision;
    assert_eq!(by_method("POST"), Decision::Deny);
    assert_eq!(by_method("GET"), Decision::Allow);
}

#[test]
fn a_principal_rule_with_methods_lets_one_client_in_and_not_another() {
    let set = set("
- metadata: {name: frontend-reads, namespace: shop}
  spec:
    targetRefs: [{kind: Service, name: backend}]
    rules:
      - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]
        to: [{operation: {methods: [GET, HEAD]}}]
");
    let decide = |principal: &str, method: &str| {
        at_waypoint(
            &set,
            "backend",
            &with(mtls(principal, "10.0.0.1", 80), method, "/items"),
        )
    };
    assert_eq!(decide(CLIENT, "GET").decision, Decision::Allow);
    assert_eq!(decide(CLIENT, "HEAD").decision, Decision::Allow);
    let write = decide(CLIENT, "POST");
    assert_eq!(write.decision, Decision::Deny);
    assert_eq!(write.policy, "shop/frontend-reads");
    assert!(write.reason.contains("POST /items"), "{}", write.reason);
    // Another client: its principal is not let in at all.
    let admin = decide(ADMIN, "GET");
    assert_eq!(admin.decision, Decision::Deny);
    assert_eq!(admin.policy, evaluate::NO_ALLOW_MATCHED);
}

#[test]
fn request_principals_deny_on_what_the_waypoint_can_check() {
    let set = set("
- metadata: {name: no-jwt-delete, namespace: shop}
  spec:
    targetRefs: [{kind: Service, name: backend}]
    action: DENY
    rules: [{from: [{source: {requestPrincipals: ['*']}}], to: [{operation: {methods: [DELETE]}}]}]
");
    let request = |method| with(mtls(CLIENT, "10.0.0.1", 80), method, "/");
    assert_eq!(
        at_waypoint(&set, "backend", &request("GET")).decision,
        Decision::Allow
    );
    let denied = at_waypoint(&set, "backend", &request("DELETE"));
    assert_eq!(denied.policy, "shop/no-jwt-delete");
    assert!(denied.reason.contains("not supported"), "{}", denied.reason);
    assert!(
        set.policies()[0]
            .status()
            .contains("rules that use them apply without them"),
        "{}",
        set.policies()[0].status()
    );
}

#[test]
fn methods_are_http_tokens_in_uppercase() {
    let policy = &policies(
        "
- metadata: {name: m, namespace: shop}
  spec: {rules: [{to: [{operation: {methods: [GET, M-SEARCH, PROPFIND]}}]}]}
",
    )[0];
    assert!(policy.rejected.is_none(), "{}", policy.status());
    let set = PolicySet::new(vec![policy.clone()], DEFAULT_ROOT_NAMESPACE);
    let decide = |method| at_agent(&set, &with(mtls(CLIENT, "10.0.0.1", 80), method, "/")).decision;
    assert_eq!(decide("M-SEARCH"), Decision::Allow);
    assert_eq!(decide("PROPFIND"), Decision::Allow);
    assert_eq!(decide("POST"), Decision::Deny);
    // Methods are case-sensitive: a lowercase request method is another one.
    assert_eq!(decide("get"), Decision::Deny);
}

#[test]
fn http_attributes_from_a_request_head() {
    let request = http::Request::builder()
        .method("PUT")
        .uri("http://backend.shop:8080/api/items?id=7")
        .header("x-user", "alice")
        .body(())
        .unwrap();
    let (parts, ()) = request.into_parts();
    let attributes = HttpAttributes::from_parts(&parts);
    assert_eq!(attributes.method, http::Method::PUT);
    assert_eq!(attributes.path, "/api/items");
    assert_eq!(attributes.host.as_deref(), Some("backend.shop:8080"));
    assert_eq!(attributes.headers["x-user"], "alice");
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::HOST, http::HeaderValue::from_static("a.b"));
    let built = HttpAttributes::new(http::Method::GET, "/")
        .with_host("a.b")
        .with_headers(headers.clone());
    assert_eq!(
        built,
        HttpAttributes {
            method: http::Method::GET,
            path: "/".to_owned(),
            host: Some("a.b".to_owned()),
            headers,
        }
    );
}

#[test]
fn the_status_says_who_enforces_a_policy() {
    let status = |yaml: &str| policies(yaml)[0].status();
    assert_eq!(
        status(
            "
- metadata: {name: l4, namespace: shop}
  spec: {rules: [{when: [{key: source.principal, values: ['*']}]}]}
"
        ),
        "accepted"
    );
    let deny = status(
        "
- metadata: {name: l7, namespace: shop}
  spec: {action: DENY, rules: [{when: [{key: 'request.headers[x-debug]', values: ['*']}]}]}
",
    );
    assert_eq!(
        deny,
        "accepted, failing closed at the node agent: spec.rules[0].when[0] need a waypoint (they are enforced only by a waypoint, for a policy attached with targetRefs); rules that use them apply on their L4 fields alone"
    );
}
