//! The workload model: what the mesh knows about a pod.

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf, sync::Arc};

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
    /// mTLS mode for connections to the pod. In the local file: what the
    /// pod asks for, which can only tighten what the peer authentications
    /// resolve (see [`crate::peer_authn`]); once validated, the pod's
    /// effective mode.
    #[serde(default)]
    pub mtls: MtlsMode,
    /// The mode the pod asked for (the file's `mtls`), kept by validation
    /// when it writes the effective mode into `mtls`, so that a validated
    /// pod validated again comes out the same. Never read from the file;
    /// see [`Pod::requested_mtls`].
    #[serde(skip)]
    pub mtls_requested: Option<MtlsMode>,
    /// The effective modes of the ports whose mode differs from `mtls`
    /// (port-level peer authentication), by target port. Filled in by
    /// validation; never read from the file.
    #[serde(skip)]
    pub port_mtls: BTreeMap<u16, MtlsMode>,
    /// What an operator should know about how the modes were decided (an
    /// unreadable `ambit.dev/mtls` label, a rejected peer authentication).
    /// Filled in by validation; never read from the file.
    #[serde(skip)]
    pub mtls_warnings: Vec<String>,
    /// The pod's labels; authorization policies select pods by them.
    #[serde(default)]
    pub labels: Arc<BTreeMap<String, String>>,
    /// Whether the pod asked for the kernel path (its own or its
    /// namespace's `ambit.dev/kernel-path` label). Filled in by validation;
    /// never read from the file.
    #[serde(skip)]
    pub kernel_path: KernelPath,
}

/// The label (on a pod or its namespace) that opts workloads in to the
/// kernel path: `enabled` or `disabled`; the pod's own label wins.
pub const KERNEL_PATH_LABEL: &str = "ambit.dev/kernel-path";

/// What a pod asked for with [`KERNEL_PATH_LABEL`].
///
/// The kernel path hands the bytes of the legs between the pod's
/// applications and the agent (and of its same-node direct connections)
/// socket to socket with `sk_msg`. It is only safe for applications that
/// read with non-blocking sockets and retry on `EAGAIN`, so it is never on
/// unless asked for, and a value the agent cannot read leaves it off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum KernelPath {
    /// No label, or `disabled`: the user-space path.
    #[default]
    Off,
    /// `enabled`.
    Requested,
    /// A value other than `enabled` or `disabled`: the user-space path, and
    /// this says why.
    Rejected(String),
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

/// A pod's effective mTLS modes: its own, and those of the ports that
/// differ, as the inbound proxy reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodMtls {
    /// The pod's mode.
    pub mode: MtlsMode,
    /// Ports whose mode differs, by target port.
    pub ports: BTreeMap<u16, MtlsMode>,
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

// === impl MtlsMode ===

impl MtlsMode {
    /// The stricter of the two.
    #[must_use]
    pub fn stricter(self, other: Self) -> Self {
        if self == Self::Strict || other == Self::Strict {
            Self::Strict
        } else {
            Self::Permissive
        }
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Permissive => "permissive",
            Self::Strict => "strict",
        })
    }
}

// === impl PodMtls ===

impl PodMtls {
    /// The mode for connections to `port`.
    #[must_use]
    pub fn at_port(&self, port: u16) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.mode)
    }
}

// === impl KernelPath ===

impl KernelPath {
    /// The pod's choice from its own label, else its namespace's.
    #[must_use]
    pub fn from_labels(pod_label: Option<&str>, namespace_label: Option<&str>) -> Self {
        let (value, whose) = match (pod_label, namespace_label) {
            (Some(value), _) => (value, "pod"),
            (None, Some(value)) => (value, "namespace"),
            (None, None) => return Self::Off,
        };
        match value {
            "enabled" => Self::Requested,
            "disabled" => Self::Off,
            other => Self::Rejected(format!(
                "the {whose}'s {KERNEL_PATH_LABEL}={other:?} is neither \"enabled\" nor \"disabled\"; the pod stays on the user-space path"
            )),
        }
    }
}

// === impl Pod ===

impl Pod {
    /// The mTLS mode the pod asks for: `mtls` as written until validated,
    /// what validation kept after.
    #[must_use]
    pub fn requested_mtls(&self) -> MtlsMode {
        self.mtls_requested.unwrap_or(self.mtls)
    }

    /// Whether `self` and `other` are the same pod as written (the file's
    /// or the API server's fields, and the mTLS mode it asks for), whatever
    /// validation has filled in: a validated pod can then stand in for a
    /// fresh one, since validating either gives the same pod.
    #[must_use]
    pub fn same_as_written(&self, other: &Self) -> bool {
        // Every field named, so that a new one must be placed here or among
        // validation's.
        let Self {
            name,
            namespace,
            service_account,
            ips,
            netns,
            node,
            labels,
            mtls: _,
            mtls_requested: _,
            port_mtls: _,
            mtls_warnings: _,
            kernel_path: _,
        } = self;
        *name == other.name
            && *namespace == other.namespace
            && *service_account == other.service_account
            && *ips == other.ips
            && *netns == other.netns
            && *node == other.node
            && self.requested_mtls() == other.requested_mtls()
            && (Arc::ptr_eq(labels, &other.labels) || *labels == other.labels)
    }

    /// The pod's namespace/name key.
    #[must_use]
    pub fn key(&self) -> PodKey {
        PodKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// The pod's effective mTLS modes.
    #[must_use]
    pub fn mtls_modes(&self) -> PodMtls {
        PodMtls {
            mode: self.mtls,
            ports: self.port_mtls.clone(),
        }
    }

    /// Whether the pod runs on the node called `node`.
    #[must_use]
    pub fn is_on_node(&self, node: &str) -> bool {
        self.node.as_deref().is_none_or(|n| n == node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_path_is_read_from_the_pod_label_then_the_namespace_label() {
        assert_eq!(KernelPath::from_labels(None, None), KernelPath::Off);
        assert_eq!(
            KernelPath::from_labels(None, Some("enabled")),
            KernelPath::Requested
        );
        assert_eq!(
            KernelPath::from_labels(Some("enabled"), None),
            KernelPath::Requested
        );
        // The pod's own label wins, both ways.
        assert_eq!(
            KernelPath::from_labels(Some("disabled"), Some("enabled")),
            KernelPath::Off
        );
        assert_eq!(
            KernelPath::from_labels(Some("enabled"), Some("disabled")),
            KernelPath::Requested
        );
        // Anything else is rejected, naming whose label and the value; a
        // pod's readable label still wins over a namespace's unreadable one.
        let KernelPath::Rejected(reason) = KernelPath::from_labels(Some("Enabled"), None) else {
            panic!("a value in the wrong case is rejected");
        };
        assert!(
            reason.contains("the pod's ambit.dev/kernel-path=\"Enabled\""),
            "{reason}"
        );
        let KernelPath::Rejected(reason) = KernelPath::from_labels(None, Some("yes")) else {
            panic!("an unknown value is rejected");
        };
        assert!(reason.contains("the namespace's"), "{reason}");
        assert_eq!(
            KernelPath::from_labels(Some("disabled"), Some("yes")),
            KernelPath::Off
        );
    }
}
