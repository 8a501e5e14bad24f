//! `AuthorizationPolicy` objects, from the local file and from the API
//! server: any YAML compiles without a panic; a rejected policy never
//! allows (alone it denies every request in its scope, beside other
//! policies it never turns a denial into an allow, and no verdict allows in
//! its name); a rule whose fields cannot all be checked never allows; and
//! the object written out as YAML and read back compiles to the same model.

#![no_main]

use std::{collections::BTreeMap, net::IpAddr};

use ambit_fuzz::text;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use kube::api::DynamicObject;
use libfuzzer_sys::fuzz_target;
use mesh_core::policy::{
    self, Action, Condition, Decision, HttpAttributes, Pattern, Policy, PolicyKey, PolicySet,
    Request, Rule, ServiceTarget, Source, TargetRef, Verdict, Workload,
};

/// The mesh's root namespace in these checks.
const ROOT: &str = policy::DEFAULT_ROOT_NAMESPACE;
/// The one principal the base policy (see [`base_policy`]) allows.
const BASE_PRINCIPAL: &str = "cluster.local/ns/fuzz-base/sa/allowed";

fuzz_target!(|data: &[u8]| {
    let Some(value) = text::yaml(data) else {
        return;
    };
    let compiled = policy::compile(&value);
    check(&compiled);
    if let Some(again) = text::yaml_round_trip(&value) {
        assert_eq!(
            policy::compile(&again),
            compiled,
            "the policy written out and read back compiles the same"
        );
    }
    // From the API server: the JSON the watch delivers, kept as the local
    // file would hold it.
    if let Ok(json) = serde_json::to_value(&value)
        && let Ok(object) = serde_json::from_value::<DynamicObject>(json)
    {
        check(&policy::compile(&mesh_kube::translate::local_object(
            &object,
        )));
    }
});

/// Everything that must hold of one compiled policy.
fn check(policy: &Policy) {
    let _ = policy.status();
    serde_json::to_string(policy).expect("a policy serialises (for the admin views)");
    let base = base_policy(policy);
    if base.key == policy.key {
        return;
    }
    let alone = PolicySet::new(vec![policy.clone()], ROOT);
    let base_only = PolicySet::new(vec![base.clone()], ROOT);
    let beside = PolicySet::new(vec![base, policy.clone()], ROOT);
    let requests = requests(policy);
    let key = policy.key.to_string();
    for scope in scopes(policy) {
        for request in &requests {
            let verdict_alone = scope.evaluate(&alone, request);
            let verdict_beside = scope.evaluate(&beside, request);
            for verdict in [&verdict_alone, &verdict_beside] {
                if verdict.decision == Decision::Allow && verdict.policy == key {
                    assert!(
                        policy.rejected.is_none(),
                        "a rejected policy allowed {request:?}: {verdict:?}\n{policy:#?}"
                    );
                    assert!(
                        can_allow(policy, request),
                        "a rule that cannot be checked allowed {request:?}: {verdict:?}\n{policy:#?}"
                    );
                }
            }
            if policy.rejected.is_none() {
                continue;
            }
            let expected = match policy.action {
                Action::Audit => Decision::Allow,
                Action::Allow | Action::Deny => Decision::Deny,
            };
            assert_eq!(
                verdict_alone.decision, expected,
                "a rejected {} policy alone, {scope:?}, {request:?}: {verdict_alone:?}\n{policy:#?}",
                policy.action
            );
            if verdict_beside.decision == Decision::Allow {
                let before = scope.evaluate(&base_only, request);
                assert_eq!(
                    before.decision,
                    Decision::Allow,
                    "a rejected policy turned a denial into an allow, {scope:?}, {request:?}: {verdict_beside:?}\n{policy:#?}"
                );
            }
        }
    }
}

/// Whether some rule of `policy` can be checked in full for `request`, so
/// that the policy may allow it.
fn can_allow(policy: &Policy, request: &Request) -> bool {
    policy
        .rules
        .iter()
        .any(|rule| !rule.unenforceable && (request.http.is_some() || !rule.needs_waypoint))
}

/// An accepted ALLOW policy with the scope of `policy` that allows only
/// [`BASE_PRINCIPAL`]: beside it, other clients are denied.
fn base_policy(policy: &Policy) -> Policy {
    Policy {
        key: PolicyKey {
            namespace: policy.key.namespace.clone(),
            name: "fuzz base policy".to_owned(),
        },
        selector: policy.selector.clone(),
        action: Action::Allow,
        rules: vec![Rule {
            from: vec![Source {
                principals: vec![Pattern::Exact(BASE_PRINCIPAL.to_owned())],
                ..Source::default()
            }],
            ..Rule::default()
        }],
        rejected: None,
        waypoint_fields: Vec::new(),
        target_refs: policy.target_refs.clone(),
    }
}

/// Where a policy applies: a workload it selects (node agents), or each
/// Service and waypoint it targets.
#[derive(Debug)]
enum Scope {
    Workload {
        namespace: String,
        labels: BTreeMap<String, String>,
    },
    Target {
        namespace: String,
        service: String,
        waypoint: String,
    },
}

impl Scope {
    fn evaluate(&self, set: &PolicySet, request: &Request) -> Verdict {
        match self {
            Self::Workload { namespace, labels } => {
                set.evaluate(Workload { namespace, labels }, request)
            }
            Self::Target {
                namespace,
                service,
                waypoint,
            } => set.evaluate_target(
                &ServiceTarget {
                    namespace,
                    service,
                    waypoint,
                },
                request,
            ),
        }
    }
}

fn scopes(policy: &Policy) -> Vec<Scope> {
    let namespace = policy.key.namespace.clone();
    if policy.target_refs.is_empty() {
        let mut labels = policy.selector.clone();
        labels
            .entry("fuzz-extra".to_owned())
            .or_insert_with(|| "label".to_owned());
        let mut scopes = vec![Scope::Workload {
            namespace: namespace.clone(),
            labels,
        }];
        if namespace == ROOT {
            // The root namespace's policies apply to the whole mesh.
            scopes.push(Scope::Workload {
                namespace: "fuzz-elsewhere".to_owned(),
                labels: policy.selector.clone(),
            });
        }
        return scopes;
    }
    policy
        .target_refs
        .iter()
        .map(|target| {
            let (service, waypoint) = match target {
                TargetRef::Service(name) => (name.clone(), "fuzz-waypoint".to_owned()),
                TargetRef::Gateway(name) => ("fuzz-service".to_owned(), name.clone()),
            };
            Scope::Target {
                namespace: namespace.clone(),
                service,
                waypoint,
            }
        })
        .collect()
}

/// Requests to check: plaintext and mTLS clients, the base's principal,
/// and values the policy names (principals, namespaces, address blocks,
/// ports, methods, paths, hosts, headers), so that its rules match some.
fn requests(policy: &Policy) -> Vec<Request> {
    let mut principals = vec![
        None,
        Some(BASE_PRINCIPAL.to_owned()),
        Some(format!(
            "cluster.local/ns/{}/sa/default",
            policy.key.namespace
        )),
    ];
    let mut ips: Vec<IpAddr> = vec!["10.0.0.1".parse().expect("an address")];
    let mut ports = vec![80];
    let mut http = vec![
        None,
        Some(HttpAttributes::new(Method::GET, "/")),
        Some(HttpAttributes::new(Method::DELETE, "/api/items").with_host("backend:8080")),
    ];
    for rule in &policy.rules {
        for source in &rule.from {
            principals.extend(
                source
                    .principals
                    .iter()
                    .chain(&source.not_principals)
                    .map(|p| Some(example(p))),
            );
            principals.extend(
                source
                    .namespaces
                    .iter()
                    .map(|n| Some(format!("cluster.local/ns/{}/sa/default", example(n)))),
            );
            ips.extend(source.ip_blocks.iter().map(ipnet::IpNet::network));
        }
        for condition in &rule.when {
            match condition {
                Condition::SourcePrincipal(values) => {
                    principals.extend(values.values.iter().map(|p| Some(example(p))));
                }
                Condition::SourceIp(blocks) => {
                    ips.extend(blocks.values.iter().map(ipnet::IpNet::network));
                }
                Condition::SourceNamespace(_) | Condition::RequestHeader(_) => {}
            }
        }
        for operation in &rule.to {
            ports.extend(operation.ports.iter().chain(&operation.not_ports));
            let method = operation
                .methods
                .first()
                .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
                .unwrap_or(Method::GET);
            let path = operation
                .paths
                .first()
                .map_or_else(|| "/".to_owned(), example);
            let mut attributes = HttpAttributes::new(method, &path);
            if let Some(host) = operation.hosts.first() {
                attributes = attributes.with_host(example(host));
            }
            attributes = attributes.with_headers(headers(&rule.when));
            http.push(Some(attributes));
        }
    }
    principals.truncate(6);
    ips.truncate(4);
    ports.truncate(4);
    http.truncate(5);
    let mut requests = Vec::new();
    for principal in &principals {
        for ip in &ips {
            for port in &ports {
                for attributes in &http {
                    requests.push(Request {
                        principal: principal.clone(),
                        namespace: principal
                            .as_deref()
                            .and_then(|p| p.split('/').nth(2))
                            .map(str::to_owned),
                        source_ip: *ip,
                        port: *port,
                        http: attributes.clone(),
                    });
                }
            }
        }
    }
    requests
}

/// The headers the `when` conditions of a rule ask for.
fn headers(conditions: &[Condition]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for condition in conditions {
        if let Condition::RequestHeader(header) = condition
            && let Ok(name) = HeaderName::from_bytes(header.name.as_bytes())
            && let Some(value) = header.values.first()
            && let Ok(value) = HeaderValue::from_str(&example(value))
        {
            headers.insert(name, value);
        }
    }
    headers
}

/// A value `pattern` matches.
fn example(pattern: &Pattern) -> String {
    match pattern {
        Pattern::Any => "anything".to_owned(),
        Pattern::Exact(value) => value.clone(),
        Pattern::Prefix(prefix) => format!("{prefix}x"),
        Pattern::Suffix(suffix) => format!("x{suffix}"),
    }
}
