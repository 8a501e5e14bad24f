//! The route table: every good route indexed by the Service it attaches
//! to, the choice of the rule a request takes (Gateway API precedence), and
//! the admin view of the routes.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde::Serialize;

use super::{
    PathMatch, RequestView, Route, RouteError, RouteKey, RouteMatch, RouteRule, compile, matching,
};

/// Every good route, indexed by the Service it attaches to, in precedence
/// order.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: BTreeMap<RouteKey, Arc<Route>>,
    by_parent: HashMap<(String, String), Vec<Candidate>>,
}

/// One (route, rule, match) attached to a parent.
#[derive(Clone, Debug)]
struct Candidate {
    route: Arc<Route>,
    rule: usize,
    matched: usize,
    port: Option<u16>,
}

/// The rule a request matched.
#[derive(Clone, Debug)]
pub struct Selected {
    /// The route.
    pub route: Arc<Route>,
    /// The rule's index.
    pub rule: usize,
    /// The match's index within the rule.
    pub matched: usize,
}

/// What the admin view shows of a route.
#[derive(Clone, Debug, Serialize)]
pub struct RouteView {
    /// namespace/name.
    pub route: String,
    /// `namespace/name[:port]` of each parent.
    pub parents: Vec<String>,
    /// Its rules, described.
    pub rules: Vec<RuleView>,
}

/// What the admin view shows of a rule.
#[derive(Clone, Debug, Serialize)]
pub struct RuleView {
    /// The matches, described.
    pub matches: Vec<String>,
    /// `namespace/name:port weight N` of each backend.
    pub backends: Vec<String>,
    /// The filters' kinds.
    pub filters: Vec<&'static str>,
    /// `request`, `backendRequest` timeouts.
    pub timeouts: BTreeMap<&'static str, String>,
    /// Retries, described.
    pub retry: Option<String>,
}

// === impl RouteTable ===

impl RouteTable {
    /// Rebuilds the table from `objects`; `services(namespace, name)`
    /// says whether a Service exists. A route that fails to compile keeps
    /// its version from this table, if it had one; every failure is
    /// returned.
    pub fn apply(
        &mut self,
        objects: &[serde_yaml::Value],
        services: &dyn Fn(&str, &str) -> bool,
    ) -> Vec<RouteError> {
        let mut routes = BTreeMap::new();
        let mut errors = Vec::new();
        for object in objects {
            match compile(object, services) {
                Ok(route) => {
                    routes.insert(route.key.clone(), Arc::new(route));
                }
                Err(error) => {
                    if let Some(previous) = self.routes.get(&error.route)
                        && !routes.contains_key(&error.route)
                    {
                        routes.insert(error.route.clone(), previous.clone());
                    }
                    errors.push(error);
                }
            }
        }
        *self = Self::from_routes(routes);
        errors
    }

    fn from_routes(routes: BTreeMap<RouteKey, Arc<Route>>) -> Self {
        let mut by_parent: HashMap<(String, String), Vec<Candidate>> = HashMap::new();
        for route in routes.values() {
            for parent in &route.parents {
                let list = by_parent
                    .entry((parent.namespace.clone(), parent.name.clone()))
                    .or_default();
                for (rule_index, rule) in route.rules.iter().enumerate() {
                    for matched in 0..rule.matches.len() {
                        list.push(Candidate {
                            route: route.clone(),
                            rule: rule_index,
                            matched,
                            port: parent.port,
                        });
                    }
                }
            }
        }
        for list in by_parent.values_mut() {
            list.sort_by_cached_key(precedence);
        }
        Self { routes, by_parent }
    }

    /// The rule `request` to `service_namespace/service_name:port` takes.
    #[must_use]
    pub fn select(
        &self,
        service_namespace: &str,
        service_name: &str,
        port: u16,
        request: &RequestView<'_>,
    ) -> Option<Selected> {
        let candidates = self
            .by_parent
            .get(&(service_namespace.to_owned(), service_name.to_owned()))?;
        candidates
            .iter()
            .filter(|c| c.port.is_none_or(|p| p == port))
            .find(|c| {
                matching::host_matches(&c.route.hostnames, request.host)
                    && c.route.rules[c.rule].matches[c.matched].matches(request)
            })
            .map(|c| Selected {
                route: c.route.clone(),
                rule: c.rule,
                matched: c.matched,
            })
    }

    /// Whether any route attaches to the Service.
    #[must_use]
    pub fn has_parent(&self, service_namespace: &str, service_name: &str) -> bool {
        self.by_parent
            .contains_key(&(service_namespace.to_owned(), service_name.to_owned()))
    }

    /// Every route.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.values()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Gateway API's precedence as a sort key (smaller first).
#[expect(clippy::type_complexity, reason = "a sort key")]
fn precedence(
    c: &Candidate,
) -> (
    u8,
    Reverse<usize>,
    bool,
    Reverse<usize>,
    Reverse<usize>,
    (bool, String),
    String,
    usize,
    usize,
) {
    let matched = &c.route.rules[c.rule].matches[c.matched];
    let (kind, length) = match &matched.path {
        PathMatch::Exact(p) => (0, p.len()),
        PathMatch::Prefix(p) => (1, p.len()),
        PathMatch::Regex(r) => (2, r.as_str().len()),
    };
    (
        kind,
        Reverse(length),
        matched.method.is_none(),
        Reverse(matched.headers.len()),
        Reverse(matched.query.len()),
        (
            c.route.creation.is_none(),
            c.route.creation.clone().unwrap_or_default(),
        ),
        c.route.key.to_string(),
        c.rule,
        c.matched,
    )
}

impl Selected {
    /// The rule matched.
    #[must_use]
    pub fn rule(&self) -> &RouteRule {
        &self.route.rules[self.rule]
    }

    /// The match that matched.
    #[must_use]
    pub fn matched(&self) -> &RouteMatch {
        &self.rule().matches[self.matched]
    }
}
