//! Filters of the listing commands, applied to the admin API's JSON so that
//! every output format shows the same selection.

use clap::{Args, ValueEnum};
use serde_json::Value;

/// `--namespace`, `--workload` and `--node`.
#[derive(Clone, Debug, Default, Args)]
pub struct Scope {
    /// Only this namespace (for connections: either end's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only this workload: a pod name or namespace/name (for connections:
    /// either end).
    #[arg(long)]
    pub workload: Option<String>,
    /// Only this node (for connections: either end's, or the reporting agent's).
    #[arg(long)]
    pub node: Option<String>,
}

/// The filters of `ambit connections`.
#[derive(Clone, Debug, Default, Args)]
pub struct ConnectionFilters {
    /// Namespace, workload and node.
    #[command(flatten)]
    pub scope: Scope,
    /// Only connections the agent carried this way.
    #[arg(long, value_enum)]
    pub direction: Option<Direction>,
    /// Only open, or only closed, connections.
    #[arg(long, value_enum)]
    pub state: Option<State>,
}

/// Which proxy carried a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    /// From a pod of this node.
    Outbound,
    /// To a pod of this node.
    Inbound,
}

/// Whether a connection is still open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum State {
    /// Relaying now.
    Open,
    /// Ended.
    Closed,
}

// === impl Scope ===

impl Scope {
    /// Whether a workload-shaped item (`namespace`, `name`, `node`) matches.
    #[must_use]
    pub fn matches_workload(&self, item: &Value) -> bool {
        let namespace = item["namespace"].as_str();
        let name = item["name"].as_str();
        let key = namespace.zip(name).map(|(ns, n)| format!("{ns}/{n}"));
        self.namespace
            .as_deref()
            .is_none_or(|ns| namespace == Some(ns))
            && self
                .workload
                .as_deref()
                .is_none_or(|w| name == Some(w) || key.as_deref() == Some(w))
            && self
                .node
                .as_deref()
                .is_none_or(|node| item["node"].as_str() == Some(node))
    }

    /// Whether a service matches: its namespace, its name or one of the
    /// pods behind it (`--workload`). Services have no node.
    #[must_use]
    pub fn matches_service(&self, item: &Value) -> bool {
        let namespace = item["namespace"].as_str();
        let endpoints: Vec<&str> = item["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        self.namespace
            .as_deref()
            .is_none_or(|ns| namespace == Some(ns))
            && self.workload.as_deref().is_none_or(|w| {
                item["name"].as_str() == Some(w)
                    || endpoints
                        .iter()
                        .any(|e| *e == w || e.split_once('/').is_some_and(|(_, n)| n == w))
            })
            && self.node.is_none()
    }

    /// Whether a certificate matches: its identity names the namespace
    /// (`spiffe://<td>/ns/<namespace>/sa/<account>`).
    #[must_use]
    pub fn matches_certificate(&self, item: &Value) -> bool {
        let namespace = item["identity"].as_str().and_then(identity_namespace);
        self.namespace
            .as_deref()
            .is_none_or(|ns| namespace == Some(ns))
    }

    /// Whether a policy matches: its namespace (`key.namespace`).
    #[must_use]
    pub fn matches_policy(&self, item: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| item["key"]["namespace"].as_str() == Some(ns))
    }

    /// Whether either end of a connection (or the pod that carried it)
    /// matches.
    fn matches_connection(&self, item: &Value) -> bool {
        let ends = ["src_workload", "dst_workload", "pod"].map(|field| item[field].as_str());
        let namespace_of = |key: &str| key.split_once('/').map(|(ns, _)| ns.to_owned());
        let identity_namespaces =
            ["src_identity", "dst_identity"].map(|f| item[f].as_str().and_then(identity_namespace));
        self.namespace.as_deref().is_none_or(|ns| {
            ends.iter()
                .flatten()
                .any(|key| namespace_of(key).as_deref() == Some(ns))
                || identity_namespaces.iter().flatten().any(|n| *n == ns)
        }) && self.workload.as_deref().is_none_or(|w| {
            ends.iter()
                .flatten()
                .any(|key| *key == w || key.split_once('/').is_some_and(|(_, name)| name == w))
        }) && self.node.as_deref().is_none_or(|node| {
            ["node", "src_node", "dst_node"]
                .iter()
                .any(|f| item[*f].as_str() == Some(node))
        })
    }
}

// === impl ConnectionFilters ===

impl ConnectionFilters {
    /// Whether a connection matches every filter given.
    #[must_use]
    pub fn matches(&self, item: &Value) -> bool {
        self.scope.matches_connection(item)
            && self.direction.is_none_or(|d| {
                item["direction"].as_str()
                    == Some(match d {
                        Direction::Outbound => "outbound",
                        Direction::Inbound => "inbound",
                    })
            })
            && self.state.is_none_or(|s| {
                // The follow stream's lines are closed connections.
                item["state"].as_str().unwrap_or("closed")
                    == match s {
                        State::Open => "open",
                        State::Closed => "closed",
                    }
            })
    }
}

/// Keeps the items of a JSON array that `keep` accepts.
#[must_use]
pub fn filter(value: Value, keep: impl Fn(&Value) -> bool) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.into_iter().filter(|item| keep(item)).collect()),
        other => other,
    }
}

/// The namespace of a SPIFFE id `spiffe://<td>/ns/<namespace>/sa/<account>`.
fn identity_namespace(identity: &str) -> Option<&str> {
    let path = identity.strip_prefix("spiffe://")?.split_once('/')?.1;
    let rest = path.strip_prefix("ns/")?;
    rest.split_once('/').map(|(ns, _)| ns)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn connection() -> Value {
        json!({
            "state": "open", "direction": "outbound", "pod": "shop/frontend",
            "src_workload": "shop/frontend", "dst_workload": "db/cache",
            "src_identity": "spiffe://cluster.local/ns/shop/sa/frontend",
            "dst_identity": "spiffe://cluster.local/ns/db/sa/cache",
            "node": "n1", "src_node": "n1", "dst_node": "n2"
        })
    }

    #[test]
    fn connection_filters_match_either_end() {
        let item = connection();
        let with = |f: ConnectionFilters| f.matches(&item);
        let scope = |namespace: Option<&str>, workload: Option<&str>, node: Option<&str>| Scope {
            namespace: namespace.map(str::to_owned),
            workload: workload.map(str::to_owned),
            node: node.map(str::to_owned),
        };
        assert!(with(ConnectionFilters::default()));
        for (namespace, workload, node, expected) in [
            (Some("shop"), None, None, true),
            (Some("db"), None, None, true),
            (Some("other"), None, None, false),
            (None, Some("cache"), None, true),
            (None, Some("db/cache"), None, true),
            (None, Some("shop/cache"), None, false),
            (None, None, Some("n2"), true),
            (None, None, Some("n3"), false),
            (Some("shop"), Some("cache"), Some("n1"), true),
        ] {
            let filters = ConnectionFilters {
                scope: scope(namespace, workload, node),
                ..ConnectionFilters::default()
            };
            assert_eq!(
                with(filters),
                expected,
                "{namespace:?} {workload:?} {node:?}"
            );
        }
        let inbound = ConnectionFilters {
            direction: Some(Direction::Inbound),
            ..ConnectionFilters::default()
        };
        assert!(!with(inbound));
        let closed = ConnectionFilters {
            state: Some(State::Closed),
            ..ConnectionFilters::default()
        };
        assert!(!with(closed));
    }

    #[test]
    fn workloads_and_certificates_filter_by_namespace_name_and_node() {
        let workload = json!({"namespace": "shop", "name": "cache", "node": "n2"});
        let only = |namespace: &str| Scope {
            namespace: Some(namespace.to_owned()),
            ..Scope::default()
        };
        assert!(only("shop").matches_workload(&workload));
        assert!(!only("db").matches_workload(&workload));
        let node = Scope {
            node: Some("n1".to_owned()),
            ..Scope::default()
        };
        assert!(!node.matches_workload(&workload));
        let cert = json!({"identity": "spiffe://cluster.local/ns/shop/sa/cache"});
        assert!(only("shop").matches_certificate(&cert));
        assert!(!only("sho").matches_certificate(&cert));
        assert_eq!(
            filter(json!([workload, {"namespace": "db", "name": "x"}]), |w| {
                only("shop").matches_workload(w)
            })
            .as_array()
            .map(Vec::len),
            Some(1)
        );
    }
}
