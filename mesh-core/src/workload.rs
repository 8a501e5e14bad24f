//! The workload model: what the mesh knows about a pod.

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// A pod's identity within the cluster: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodKey {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
}

/// A pod the node agent should enroll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Service account the pod runs as; its identity derives from it.
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// The pod's addresses (one per family at most, as Kubernetes assigns).
    pub ips: Vec<IpAddr>,
    /// Path of the pod's network namespace, e.g. `/var/run/netns/cni-1234`.
    #[serde(default)]
    pub netns: PathBuf,
    /// The node the pod runs on. A pod without one is on every agent's own
    /// node (single-node setups); a pod on another node is not enrolled but
    /// known as a mesh destination, reached over HBONE.
    #[serde(default)]
    pub node: Option<String>,
    /// mTLS mode for connections to the pod.
    #[serde(default)]
    pub mtls: MtlsMode,
    /// The pod's labels; authorization policies select pods by them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What a pod accepts from outside the mesh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Plaintext from clients outside the mesh is accepted (the default).
    #[default]
    Permissive,
    /// Only mesh traffic is accepted: HBONE, or plaintext from a meshed pod
    /// on the same node (the agent vouches for both ends).
    Strict,
}

pub(crate) fn default_namespace() -> String {
    "default".to_owned()
}

fn default_service_account() -> String {
    "default".to_owned()
}

// === impl PodKey ===

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl Pod ===

impl Pod {
    /// The pod's namespace/name key.
    #[must_use]
    pub fn key(&self) -> PodKey {
        PodKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Whether the pod runs on the node called `node`.
    #[must_use]
    pub fn is_on_node(&self, node: &str) -> bool {
        self.node.as_deref().is_none_or(|n| n == node)
    }
}
