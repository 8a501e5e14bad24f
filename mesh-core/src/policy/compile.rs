//! The policy compiler: checks an `AuthorizationPolicy` object once, when it
//! is loaded, and turns it into the [`Policy`] model; a policy that cannot be
//! accepted keeps what can be read of its scope and fails closed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::raw::{
    RawCondition, RawOperation, RawPolicy, RawRule, RawScalar, RawSource, RawTargetRef,
};
use super::{
    API_VERSIONS, Action, CONDITION_KEYS, Condition, ConditionValues, HeaderCondition, Operation,
    Pattern, Policy, PolicyError, PolicyKey, Rule, Source, TargetRef, accept_any, is_unenforceable,
    l7,
};

/// Reads one policy object. Never fails: a policy that cannot be accepted
/// comes back with [`Policy::rejected`] set and only its scope kept.
#[must_use]
pub fn compile(value: &serde_yaml::Value) -> Policy {
    let key = key_of(value);
    let raw: Result<RawPolicy, _> = serde_path_to_error::deserialize(value.clone());
    let result = match raw {
        Ok(raw) => compile_raw(raw),
        Err(error) => Err(PolicyError {
            policy: key.clone(),
            field: field_path(&error.path().to_string()),
            message: error.into_inner().to_string(),
        }),
    };
    result.unwrap_or_else(|error| rejected(value, key, error))
}

/// Reads every policy object of a list, in order.
#[must_use]
pub fn compile_all(values: &[serde_yaml::Value]) -> Vec<Policy> {
    values.iter().map(compile).collect()
}

fn compile_raw(raw: RawPolicy) -> Result<Policy, PolicyError> {
    let header = raw.check_header(API_VERSIONS, "AuthorizationPolicy");
    let key = PolicyKey {
        namespace: raw.metadata.namespace,
        name: raw.metadata.name,
    };
    let fail = |field: &str, message: String| PolicyError {
        policy: key.clone(),
        field: field.to_owned(),
        message,
    };
    if key.name.is_empty() {
        return Err(fail("metadata.name", "a policy needs a name".to_owned()));
    }
    header.map_err(|mismatch| fail(mismatch.field(), mismatch.message()))?;
    let spec = raw.spec;
    let target_refs = compile_target_refs(
        spec.target_refs
            .into_iter()
            .flatten()
            .chain(spec.target_ref),
        &key.namespace,
    )
    .map_err(|(field, m)| fail(&field, m))?;
    if !target_refs.is_empty() && spec.selector.is_some() {
        return Err(fail(
            "spec.targetRefs",
            "a policy has either a selector (node agents enforce it) or targetRefs (the waypoint does), not both".to_owned(),
        ));
    }
    if spec.provider.is_some() {
        return Err(fail(
            "spec.provider",
            "external authorizers (CUSTOM) are not supported".to_owned(),
        ));
    }
    let action = parse_action(spec.action.as_deref()).map_err(|m| fail("spec.action", m))?;
    let mut waypoint_fields = Vec::new();
    let mut rules = Vec::new();
    for (r, raw_rule) in spec.rules.unwrap_or_default().into_iter().enumerate() {
        let rule = compile_rule(raw_rule, &format!("spec.rules[{r}]"), &mut waypoint_fields)
            .map_err(|(field, m)| fail(&field, m))?;
        // A rule whose ports contradict each other matches nothing: without
        // it the policy means the same.
        rules.extend(rule);
    }
    Ok(Policy {
        key,
        selector: spec.selector.unwrap_or_default().match_labels,
        action,
        rules,
        rejected: None,
        waypoint_fields,
        target_refs,
    })
}

/// One rule at `path`; the fields it uses that need a waypoint are added to
/// `waypoint_fields`. `None` when it can match nothing.
fn compile_rule(
    raw: RawRule,
    path: &str,
    waypoint_fields: &mut Vec<String>,
) -> Result<Option<Rule>, FieldError> {
    let mut rule = Rule::default();
    let mut own_fields = Vec::new();
    let mut destination_ports = Vec::new();
    for (w, condition) in raw.when.unwrap_or_default().into_iter().enumerate() {
        let path = format!("{path}.when[{w}]");
        match compile_condition(condition, &path)? {
            Compiled::When(condition) => {
                if matches!(condition, Condition::RequestHeader(_)) {
                    own_fields.push(path);
                }
                rule.when.push(condition);
            }
            Compiled::DestinationPort(ports) => destination_ports.push(ports),
        }
    }
    for (f, from) in raw.from.unwrap_or_default().into_iter().enumerate() {
        let (source, l7) = compile_source(from.source, &format!("{path}.from[{f}].source"))?;
        own_fields.extend(l7);
        rule.from.push(source);
    }
    for (t, to) in raw.to.unwrap_or_default().into_iter().enumerate() {
        let (operation, l7) =
            compile_operation(to.operation, &format!("{path}.to[{t}].operation"))?;
        own_fields.extend(l7);
        rule.to.push(operation);
    }
    rule.needs_waypoint = !own_fields.is_empty();
    rule.unenforceable = own_fields.iter().any(|f| is_unenforceable(f));
    waypoint_fields.extend(own_fields);
    Ok(fold_destination_ports(&mut rule, destination_ports).then_some(rule))
}

fn parse_action(action: Option<&str>) -> Result<Action, String> {
    match action {
        None | Some("ALLOW") => Ok(Action::Allow),
        Some("DENY") => Ok(Action::Deny),
        Some("AUDIT") => Ok(Action::Audit),
        Some("CUSTOM") => Err("CUSTOM (an external authorizer) is not supported".to_owned()),
        Some(other) => Err(format!(
            "unknown action {other:?}; expected ALLOW, DENY or AUDIT"
        )),
    }
}

type FieldError = (String, String);

fn compile_source(raw: RawSource, path: &str) -> Result<(Source, Vec<String>), FieldError> {
    let patterns =
        |list: Option<Vec<String>>, field: &str, check: fn(&str) -> Result<(), String>| {
            list.unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, value)| {
                    Pattern::parse(value, check).map_err(|m| (format!("{path}.{field}[{i}]"), m))
                })
                .collect::<Result<Vec<_>, _>>()
        };
    let blocks = |list: Option<Vec<String>>, field: &str| {
        list.unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, value)| {
                parse_ip_block(value).map_err(|m| (format!("{path}.{field}[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let source = Source {
        principals: patterns(raw.principals, "principals", check_principal)?,
        not_principals: patterns(raw.not_principals, "notPrincipals", check_principal)?,
        namespaces: patterns(raw.namespaces, "namespaces", check_namespace)?,
        not_namespaces: patterns(raw.not_namespaces, "notNamespaces", check_namespace)?,
        ip_blocks: blocks(raw.ip_blocks, "ipBlocks")?,
        not_ip_blocks: blocks(raw.not_ip_blocks, "notIpBlocks")?,
    };
    let waypoint_only = [
        ("requestPrincipals", &raw.request_principals),
        ("notRequestPrincipals", &raw.not_request_principals),
        ("remoteIpBlocks", &raw.remote_ip_blocks),
        ("notRemoteIpBlocks", &raw.not_remote_ip_blocks),
    ];
    Ok((source, used_fields(path, &waypoint_only)))
}

fn compile_operation(
    raw: RawOperation,
    path: &str,
) -> Result<(Operation, Vec<String>), FieldError> {
    let ports = |list: Option<Vec<RawScalar>>, field: &str| {
        list.unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, port)| parse_port(port).map_err(|m| (format!("{path}.{field}[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()
    };
    let parsed =
        |list: &Option<Vec<String>>, field: &str, parse: fn(&str) -> Result<Pattern, String>| {
            list.iter()
                .flatten()
                .enumerate()
                .map(|(i, value)| parse(value).map_err(|m| (format!("{path}.{field}[{i}]"), m)))
                .collect::<Result<Vec<_>, _>>()
        };
    let methods = |list: &Option<Vec<String>>, field: &str| {
        list.iter()
            .flatten()
            .enumerate()
            .map(|(i, method)| {
                l7::check_method(method)
                    .map(|()| method.clone())
                    .map_err(|m| (format!("{path}.{field}[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let operation = Operation {
        ports: ports(raw.ports, "ports")?,
        not_ports: ports(raw.not_ports, "notPorts")?,
        hosts: parsed(&raw.hosts, "hosts", l7::parse_host)?,
        not_hosts: parsed(&raw.not_hosts, "notHosts", l7::parse_host)?,
        methods: methods(&raw.methods, "methods")?,
        not_methods: methods(&raw.not_methods, "notMethods")?,
        paths: parsed(&raw.paths, "paths", l7::parse_path)?,
        not_paths: parsed(&raw.not_paths, "notPaths", l7::parse_path)?,
    };
    let waypoint_only = [
        ("hosts", &raw.hosts),
        ("notHosts", &raw.not_hosts),
        ("methods", &raw.methods),
        ("notMethods", &raw.not_methods),
        ("paths", &raw.paths),
        ("notPaths", &raw.not_paths),
    ];
    Ok((operation, used_fields(path, &waypoint_only)))
}

/// A `when` condition, compiled: kept on the rule, or (`destination.port`)
/// folded into its operations.
enum Compiled {
    When(Condition),
    DestinationPort(ConditionValues<u16>),
}

/// A `when` condition; a key not in [`CONDITION_KEYS`] is refused with the
/// supported ones.
fn compile_condition(raw: RawCondition, path: &str) -> Result<Compiled, FieldError> {
    enum Key {
        Header(String),
        Principal,
        Namespace,
        Ip,
        Port,
    }
    let key = match raw.key.trim() {
        "source.principal" => Key::Principal,
        "source.namespace" => Key::Namespace,
        "source.ip" => Key::Ip,
        "destination.port" => Key::Port,
        other => match l7::header_key(other) {
            Some(Ok(name)) => Key::Header(name),
            Some(Err(message)) => return Err((format!("{path}.key"), message)),
            None => {
                let why = if other.starts_with("request.auth.") {
                    " (ambit validates no JWT)"
                } else {
                    ""
                };
                return Err((
                    format!("{path}.key"),
                    format!(
                        "{other:?} is not supported{why}; the supported condition keys are {}",
                        CONDITION_KEYS.join(", ")
                    ),
                ));
            }
        },
    };
    let texts = |list: Option<Vec<RawScalar>>| -> Vec<String> {
        list.unwrap_or_default()
            .into_iter()
            .map(|value| match value {
                RawScalar::Number(n) => n.to_string(),
                RawScalar::Text(text) => text,
            })
            .collect()
    };
    let (values, not_values) = (texts(raw.values), texts(raw.not_values));
    if values.is_empty() && not_values.is_empty() {
        return Err((
            format!("{path}.values"),
            "a condition needs values or notValues".to_owned(),
        ));
    }
    let patterns = |check: fn(&str) -> Result<(), String>| {
        condition_values(&values, &not_values, path, &|value| {
            Pattern::parse(value, check)
        })
    };
    Ok(match key {
        Key::Header(name) => {
            let values = patterns(accept_any)?;
            Compiled::When(Condition::RequestHeader(HeaderCondition {
                name,
                values: values.values,
                not_values: values.not_values,
            }))
        }
        Key::Principal => Compiled::When(Condition::SourcePrincipal(patterns(check_principal)?)),
        Key::Namespace => Compiled::When(Condition::SourceNamespace(patterns(check_namespace)?)),
        Key::Ip => Compiled::When(Condition::SourceIp(condition_values(
            &values,
            &not_values,
            path,
            &parse_ip_block,
        )?)),
        Key::Port => {
            Compiled::DestinationPort(condition_values(&values, &not_values, path, &|value| {
                parse_port(&RawScalar::Text(value.to_owned()))
            })?)
        }
    })
}

/// A condition's values and notValues, each read by `parse`.
fn condition_values<T>(
    values: &[String],
    not_values: &[String],
    path: &str,
    parse: &dyn Fn(&str) -> Result<T, String>,
) -> Result<ConditionValues<T>, FieldError> {
    let each = |list: &[String], field: &str| {
        list.iter()
            .enumerate()
            .map(|(i, value)| parse(value).map_err(|m| (format!("{path}.{field}[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(ConditionValues {
        values: each(values, "values")?,
        not_values: each(not_values, "notValues")?,
    })
}

/// Folds a rule's `destination.port` conditions into its operations, as
/// Istio does (each operation then needs the ports too), so that every
/// port the rule depends on is in its operations. `false` when no
/// operation can match any more: the rule matches nothing.
fn fold_destination_ports(rule: &mut Rule, conditions: Vec<ConditionValues<u16>>) -> bool {
    if conditions.is_empty() {
        return true;
    }
    // Every condition must hold: the ports in all of their values, and in
    // none of their notValues.
    let mut allowed: Option<Vec<u16>> = None;
    let mut excluded: Vec<u16> = Vec::new();
    for condition in conditions {
        if !condition.values.is_empty() {
            allowed = Some(match allowed {
                None => condition.values,
                Some(ports) => ports
                    .into_iter()
                    .filter(|p| condition.values.contains(p))
                    .collect(),
            });
        }
        excluded.extend(condition.not_values);
    }
    if rule.to.is_empty() {
        rule.to.push(Operation::default());
    }
    rule.to.retain_mut(|operation| {
        if let Some(allowed) = &allowed {
            operation.ports = if operation.ports.is_empty() {
                allowed.clone()
            } else {
                operation
                    .ports
                    .iter()
                    .copied()
                    .filter(|p| allowed.contains(p))
                    .collect()
            };
            if operation.ports.is_empty() {
                return false;
            }
        }
        for port in &excluded {
            if !operation.not_ports.contains(port) {
                operation.not_ports.push(*port);
            }
        }
        true
    });
    !rule.to.is_empty()
}

/// `targetRefs`: Services of the policy's namespace (group `""`) or
/// waypoints (`gateway.networking.k8s.io` `Gateway`).
fn compile_target_refs(
    refs: impl Iterator<Item = RawTargetRef>,
    namespace: &str,
) -> Result<Vec<TargetRef>, FieldError> {
    refs.enumerate()
        .map(|(i, raw)| {
            let field = format!("spec.targetRefs[{i}]");
            if raw.namespace.as_deref().is_some_and(|ns| ns != namespace) {
                return Err((
                    format!("{field}.namespace"),
                    "a policy can only target objects of its own namespace".to_owned(),
                ));
            }
            match (raw.group.as_deref().unwrap_or(""), raw.kind.as_str()) {
                ("" | "core", "Service") => Ok(TargetRef::Service(raw.name)),
                ("gateway.networking.k8s.io", "Gateway") => Ok(TargetRef::Gateway(raw.name)),
                (group, kind) => Err((
                    field,
                    format!("{kind} (group {group:?}) cannot be targeted; use a Service (group \"\") or a waypoint's Gateway"),
                )),
            }
        })
        .collect()
}

fn used_fields(path: &str, fields: &[(&str, &Option<Vec<String>>)]) -> Vec<String> {
    fields
        .iter()
        .filter(|(_, values)| values.as_ref().is_some_and(|v| !v.is_empty()))
        .map(|(field, _)| format!("{path}.{field}"))
        .collect()
}

fn parse_port(port: &RawScalar) -> Result<u16, String> {
    let number = match port {
        RawScalar::Number(n) => *n,
        RawScalar::Text(text) => text
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("{text:?} is not a port number"))?,
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{number} is not a port (1-65535)"))
}

fn parse_ip_block(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    if let Ok(net) = value.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "{value:?} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    value
        .parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{value:?} is not an IP address or CIDR block"))
}

fn check_principal(value: &str) -> Result<(), String> {
    if value.starts_with("spiffe://") {
        return Err(format!(
            "{value:?}: principals are written without the scheme, e.g. cluster.local/ns/default/sa/client"
        ));
    }
    if value.contains('?') || value.contains('#') {
        return Err(format!("{value:?} is not a SPIFFE id path"));
    }
    Ok(())
}

fn check_namespace(value: &str) -> Result<(), String> {
    let plain = value.trim_matches('*');
    if plain
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        Ok(())
    } else {
        Err(format!("{value:?} is not a namespace name"))
    }
}

/// The policy's namespace/name, read as far as the object allows.
pub(crate) fn key_of(value: &serde_yaml::Value) -> PolicyKey {
    let metadata = &value["metadata"];
    PolicyKey {
        namespace: metadata["namespace"]
            .as_str()
            .map_or_else(crate::workload::default_namespace, ToOwned::to_owned),
        name: metadata["name"].as_str().unwrap_or("<unnamed>").to_owned(),
    }
}

/// A rejected policy keeps what can be read of its scope and fails closed.
fn rejected(value: &serde_yaml::Value, key: PolicyKey, error: PolicyError) -> Policy {
    let selector = readable_selector(value);
    let action = match value["spec"]["action"].as_str() {
        None | Some("ALLOW") => Action::Allow,
        // AUDIT changes no verdict, so a broken one is harmless either way;
        // anything unreadable is taken as a DENY.
        Some("AUDIT") => Action::Audit,
        Some(_) => Action::Deny,
    };
    let rules = match action {
        // An ALLOW with no rules allows nothing.
        Action::Allow | Action::Audit => Vec::new(),
        // A DENY with one empty rule denies everything.
        Action::Deny => vec![Rule::default()],
    };
    Policy {
        key,
        selector,
        action,
        rules,
        rejected: Some(error),
        waypoint_fields: Vec::new(),
        target_refs: readable_target_refs(value),
    }
}

/// The `matchLabels` of a rejected policy (of either kind), as far as they
/// can be read: a selector that cannot be read widens the scope to the
/// namespace.
pub(crate) fn readable_selector(value: &serde_yaml::Value) -> BTreeMap<String, String> {
    value["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .and_then(|labels| {
            labels
                .iter()
                .map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect::<Option<BTreeMap<_, _>>>()
        })
        .unwrap_or_default()
}

/// The targets of a rejected policy, as far as they can be read: it then
/// fails closed at those targets (at the waypoint); with none readable, in
/// its namespace or selector's scope at the node agents.
fn readable_target_refs(value: &serde_yaml::Value) -> Vec<TargetRef> {
    value["spec"]["targetRefs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .chain(
            value["spec"]["targetRef"]
                .as_mapping()
                .map(|_| &value["spec"]["targetRef"]),
        )
        .filter_map(|target| {
            let name = target["name"].as_str()?.to_owned();
            match target["kind"].as_str()? {
                "Service" => Some(TargetRef::Service(name)),
                "Gateway" => Some(TargetRef::Gateway(name)),
                _ => None,
            }
        })
        .collect()
}

/// serde's path to the failing field (`spec.rules[0].from`); the whole
/// object when the failure is at the top.
pub(crate) fn field_path(path: &str) -> String {
    if path == "." || path.is_empty() {
        "(top level)".to_owned()
    } else {
        path.to_owned()
    }
}
