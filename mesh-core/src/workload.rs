//! The workload model: what the mesh knows about a pod.

use std::{fmt, net::IpAddr, path::PathBuf};

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
    pub netns: PathBuf,
}

fn default_namespace() -> String {
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
}
