//! The custom resources ambit watches, by group, version, kind and plural
//! (the API's path segment), so every watcher and status writer names them
//! the same way.

use kube::api::{ApiResource, GroupVersionKind};

/// A custom resource's API coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CustomResource {
    /// The API group.
    pub group: &'static str,
    /// The API version.
    pub version: &'static str,
    /// The kind.
    pub kind: &'static str,
    /// The plural: the API's path segment.
    pub plural: &'static str,
}

/// ambit's `AuthorizationPolicy` (`security.ambit.dev/v1alpha1`).
pub const AUTHORIZATION_POLICY: CustomResource = CustomResource {
    group: "security.ambit.dev",
    version: "v1alpha1",
    kind: "AuthorizationPolicy",
    plural: "authorizationpolicies",
};

/// ambit's `PeerAuthentication` (`security.ambit.dev/v1alpha1`).
pub const PEER_AUTHENTICATION: CustomResource = CustomResource {
    group: "security.ambit.dev",
    version: "v1alpha1",
    kind: "PeerAuthentication",
    plural: "peerauthentications",
};

/// Gateway API's `HTTPRoute` (`gateway.networking.k8s.io/v1`).
pub const HTTP_ROUTE: CustomResource = CustomResource {
    group: "gateway.networking.k8s.io",
    version: "v1",
    kind: "HTTPRoute",
    plural: "httproutes",
};

// === impl CustomResource ===

impl CustomResource {
    /// The resource as kube's dynamic API takes it.
    #[must_use]
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
}
