//! The resources the fake API server serves, and how request paths name them.

/// One kind of object the fake API server stores, as its discovery documents
/// and request paths name it.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, empty for the core group (`/api/v1`).
    pub group: &'static str,
    /// API version within the group, e.g. `v1`.
    pub version: &'static str,
    /// Lower-case plural used in paths, e.g. `pods`; unique in [`RESOURCES`].
    pub plural: &'static str,
    /// The `kind` of its objects, e.g. `Pod`.
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

/// Every resource the server stores. Any JSON object of these kinds is
/// accepted: the store keeps `serde_json::Value`s, not typed objects.
pub const RESOURCES: &[ResourceType] = &[
    resource("", "v1", "namespaces", "Namespace", false),
    resource("", "v1", "nodes", "Node", false),
    resource("", "v1", "pods", "Pod", true),
    resource("", "v1", "services", "Service", true),
    resource("", "v1", "serviceaccounts", "ServiceAccount", true),
    resource("", "v1", "secrets", "Secret", true),
    resource("", "v1", "configmaps", "ConfigMap", true),
    resource("apps", "v1", "deployments", "Deployment", true),
    resource(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
    ),
    resource(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
    ),
    resource(
        "security.ambit.dev",
        "v1alpha1",
        "authorizationpolicies",
        "AuthorizationPolicy",
        true,
    ),
    resource(
        "security.ambit.dev",
        "v1alpha1",
        "peerauthentications",
        "PeerAuthentication",
        true,
    ),
    resource(
        "gateway.networking.k8s.io",
        "v1",
        "httproutes",
        "HTTPRoute",
        true,
    ),
];

/// The group of `TokenReview`, served apart from the store (create only).
pub(crate) const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/version`
    Version,
    /// `/api`: the core group's versions.
    CoreVersions,
    /// `/apis`: the named groups.
    Groups,
    /// `/api/v1`, `/apis/{group}/{version}`: the resources of a group version.
    ResourceList {
        group: &'static str,
        version: &'static str,
    },
    /// `POST /apis/authentication.k8s.io/v1/tokenreviews`
    TokenReview,
    /// `.../{plural}` or `.../namespaces/{ns}/{plural}`; no namespace means
    /// all namespaces (or a cluster-scoped resource).
    Collection {
        resource: &'static ResourceType,
        namespace: Option<String>,
    },
    /// One object, possibly a subresource such as `status`.
    Object {
        resource: &'static ResourceType,
        namespace: Option<String>,
        name: String,
        subresource: Option<String>,
    },
    /// Anything else.
    Unknown,
}

const fn resource(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> ResourceType {
    ResourceType {
        group,
        version,
        plural,
        kind,
        namespaced,
    }
}

// === impl ResourceType ===

impl ResourceType {
    /// `v1` for the core group, `group/version` otherwise.
    #[must_use]
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind of a list of these objects, e.g. `PodList`.
    #[must_use]
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The resource with this plural name (`pods`, `authorizationpolicies`).
    #[must_use]
    pub fn by_plural(plural: &str) -> Option<&'static Self> {
        RESOURCES.iter().find(|resource| resource.plural == plural)
    }

    /// The resource whose objects carry this `apiVersion` and `kind`.
    #[must_use]
    pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Self> {
        RESOURCES
            .iter()
            .find(|resource| resource.kind == kind && resource.api_version() == api_version)
    }

    fn in_group_version(group: &str, version: &str, plural: &str) -> Option<&'static Self> {
        RESOURCES.iter().find(|resource| {
            resource.group == group && resource.version == version && resource.plural == plural
        })
    }
}

/// The distinct group versions of [`RESOURCES`] (and `TokenReview`'s), in
/// table order, core first.
pub(crate) fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut versions: Vec<(&'static str, &'static str)> = Vec::new();
    let all = RESOURCES
        .iter()
        .map(|resource| (resource.group, resource.version))
        .chain([(AUTHENTICATION_GROUP, "v1")]);
    for group_version in all {
        if !versions.contains(&group_version) {
            versions.push(group_version);
        }
    }
    versions
}

// === impl Route ===

impl Route {
    /// Parses a request path (without the query).
    pub(crate) fn parse(path: &str) -> Self {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        match segments.as_slice() {
            ["version"] => Self::Version,
            ["api"] => Self::CoreVersions,
            ["apis"] => Self::Groups,
            ["api", version, rest @ ..] => Self::in_group("", version, rest),
            ["apis", group, version, rest @ ..] => Self::in_group(group, version, rest),
            _ => Self::Unknown,
        }
    }

    fn in_group(group: &str, version: &str, rest: &[&str]) -> Self {
        let Some(&(group, version)) =
            group_versions()
                .iter()
                .find(|(known_group, known_version)| {
                    *known_group == group && *known_version == version
                })
        else {
            return Self::Unknown;
        };
        if group == AUTHENTICATION_GROUP {
            return if rest == ["tokenreviews"] {
                Self::TokenReview
            } else if rest.is_empty() {
                Self::ResourceList { group, version }
            } else {
                Self::Unknown
            };
        }
        if let ["namespaces", namespace, plural, object @ ..] = rest
            && let Some(resource) = ResourceType::in_group_version(group, version, plural)
            && resource.namespaced
        {
            return Self::scoped(resource, Some((*namespace).to_owned()), object);
        }
        match rest {
            [] => Self::ResourceList { group, version },
            [plural, object @ ..] => match ResourceType::in_group_version(group, version, plural) {
                // A namespaced object needs its namespace in the path.
                Some(resource) if resource.namespaced && !object.is_empty() => Self::Unknown,
                Some(resource) => Self::scoped(resource, None, object),
                None => Self::Unknown,
            },
        }
    }

    fn scoped(resource: &'static ResourceType, namespace: Option<String>, object: &[&str]) -> Self {
        match object {
            [] => Self::Collection {
                resource,
                namespace,
            },
            [name] => Self::Object {
                resource,
                namespace,
                name: (*name).to_owned(),
                subresource: None,
            },
            [name, subresource] => Self::Object {
                resource,
                namespace,
                name: (*name).to_owned(),
                subresource: Some((*subresource).to_owned()),
            },
            _ => Self::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ResourceType, Route};

    fn object(plural: &str, namespace: Option<&str>, name: &str, sub: Option<&str>) -> Route {
        Route::Object {
            resource: ResourceType::by_plural(plural).expect("known resource"),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
            subresource: sub.map(str::to_owned),
        }
    }

    #[test]
    fn paths_name_resources() {
        let pods = ResourceType::by_plural("pods").expect("pods");
        let all_pods = Route::Collection {
            resource: pods,
            namespace: None,
        };
        assert_eq!(Route::parse("/api/v1/pods"), all_pods);
        assert_eq!(
            Route::parse("/api/v1/namespaces/default/pods/"),
            Route::Collection {
                resource: pods,
                namespace: Some("default".to_owned())
            }
        );
        assert_eq!(
            Route::parse("/api/v1/namespaces/default/pods/a"),
            object("pods", Some("default"), "a", None)
        );
        assert_eq!(
            Route::parse("/api/v1/namespaces/default/pods/a/status"),
            object("pods", Some("default"), "a", Some("status"))
        );
        assert_eq!(
            Route::parse("/api/v1/namespaces/team"),
            object("namespaces", None, "team", None)
        );
        assert_eq!(
            Route::parse("/api/v1/namespaces/team/status"),
            object("namespaces", None, "team", Some("status"))
        );
        assert_eq!(
            Route::parse("/apis/security.ambit.dev/v1alpha1/namespaces/x/authorizationpolicies/p"),
            object("authorizationpolicies", Some("x"), "p", None)
        );
        assert_eq!(
            Route::parse("/apis/authentication.k8s.io/v1/tokenreviews"),
            Route::TokenReview
        );
        assert_eq!(
            Route::parse("/apis/discovery.k8s.io/v1"),
            Route::ResourceList {
                group: "discovery.k8s.io",
                version: "v1"
            }
        );
        assert_eq!(Route::parse("/version"), Route::Version);
        for unknown in [
            "/",
            "/api/v2/pods",
            "/api/v1/pods/a",
            "/api/v1/widgets",
            "/apis/security.ambit.dev/v1/x",
            "/healthz",
        ] {
            assert_eq!(Route::parse(unknown), Route::Unknown, "{unknown}");
        }
    }
}
