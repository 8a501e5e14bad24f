//! Each pod's effective mTLS modes, from the peer authentications and the
//! `ambit.dev/mtls` labels, with Istio's scope and precedence:
//!
//! 1. Three levels: mesh (a policy without a selector in the root
//!    namespace), namespace (without a selector in the pod's namespace)
//!    and workload (a selector the pod's labels match, in the pod's
//!    namespace; as in Istio, one in the root namespace applies to no pod).
//! 2. The default is PERMISSIVE; then the mesh level, the namespace level
//!    and the workload level each override the one above, unless they are
//!    UNSET. Of several policies at one level, the oldest wins (creation
//!    time, then name). The winning workload policy's port-level modes
//!    apply to their ports (UNSET there: the pod's mode).
//! 3. A rejected policy takes its level over, whatever its age: it acts as
//!    STRICT there, without port-level modes.
//! 4. A namespace's `ambit.dev/mtls` label acts at the namespace level,
//!    combined with the namespace's policy by taking the stricter.
//! 5. The pod's own label, or the `mtls` field of its local-config entry,
//!    can only tighten: each of the pod's modes becomes the stricter of
//!    the resolved one and what the pod asks for.
//! 6. A label value other than `strict` or `permissive` is taken as
//!    `strict`, with a warning naming the label, the value and the object.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{MTLS_LABEL, PeerAuthentication, parse_label};
use crate::workload::{MtlsMode, PodKey};

/// The peer authentications in force, indexed by scope.
#[derive(Debug, Default)]
pub struct PeerAuthnSet<'a> {
    root_namespace: &'a str,
    /// Without a selector, by namespace.
    wide: HashMap<&'a str, Vec<&'a PeerAuthentication>>,
    /// With a selector, by namespace; never the root namespace's.
    selecting: HashMap<&'a str, Vec<&'a PeerAuthentication>>,
}

/// What the resolution of one pod needs.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// The pod.
    pub pod: &'a PodKey,
    /// Its labels (its own `ambit.dev/mtls` among them).
    pub labels: &'a BTreeMap<String, String>,
    /// What its local-config entry asks for (`mtls:`); permissive when
    /// it says nothing.
    pub requested: MtlsMode,
    /// Its namespace's `ambit.dev/mtls` label, when it has one.
    pub namespace_label: Option<&'a str>,
    /// Whether its ports are known (a Service selects it): port-level
    /// modes for it were checked against them.
    pub ports_known: bool,
}

/// A pod's effective modes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// The pod's mode.
    pub mode: MtlsMode,
    /// The ports whose mode differs from the pod's.
    pub ports: BTreeMap<u16, MtlsMode>,
    /// What an operator should know: unreadable labels, rejected policies
    /// that made the pod strict, port-level modes that were not checked.
    pub warnings: Vec<String>,
}

// === impl PeerAuthnSet ===

impl<'a> PeerAuthnSet<'a> {
    /// Indexes `policies`; those without a selector in `root_namespace`
    /// apply mesh-wide.
    #[must_use]
    pub fn new(policies: &'a [PeerAuthentication], root_namespace: &'a str) -> Self {
        let mut set = Self {
            root_namespace,
            ..Self::default()
        };
        for policy in policies {
            let namespace = policy.key.namespace.as_str();
            if policy.selector.is_empty() {
                set.wide.entry(namespace).or_default().push(policy);
            } else if namespace != root_namespace {
                set.selecting.entry(namespace).or_default().push(policy);
            }
        }
        set
    }

    /// The effective modes of `subject`.
    #[must_use]
    pub fn resolve(&self, subject: &Subject<'_>) -> Resolved {
        let namespace = subject.pod.namespace.as_str();
        let mut warnings = Vec::new();
        let mut mode = MtlsMode::Permissive;
        // The policy whose level set `mode` last, to say so when it is a
        // rejected one.
        let mut decided_by = None;
        let mesh = winner(self.wide.get(self.root_namespace), |_| true);
        if let Some(mesh_mode) = mesh.and_then(|p| p.mode.effective()) {
            mode = mesh_mode;
            decided_by = mesh;
        }
        // In the root namespace, its policies without a selector are the
        // mesh level; its label still acts at the namespace level.
        let own = if namespace == self.root_namespace {
            None
        } else {
            winner(self.wide.get(namespace), |_| true)
        };
        let label = subject.namespace_label.map(|value| {
            parse_label(value).unwrap_or_else(|message| {
                warnings.push(format!("namespace {namespace}: {message}"));
                MtlsMode::Strict
            })
        });
        let own_mode = own.and_then(|p| p.mode.effective());
        if let Some(level) = [own_mode, label]
            .into_iter()
            .flatten()
            .reduce(MtlsMode::stricter)
        {
            mode = level;
            decided_by = own.filter(|_| own_mode == Some(level));
        }
        let workload = winner(self.selecting.get(namespace), |policy| {
            policy.selects(namespace, subject.labels)
        });
        if let Some(workload_mode) = workload.and_then(|p| p.mode.effective()) {
            mode = workload_mode;
            decided_by = workload;
        }
        if let Some(policy) = decided_by
            && let Some(error) = &policy.rejected
        {
            warnings.push(format!(
                "peer authentication {} is rejected ({}: {}); it acts as STRICT for this pod",
                policy.key, error.field, error.message
            ));
        }
        let mut ports: BTreeMap<u16, MtlsMode> = workload
            .map(|policy| {
                policy
                    .port_level
                    .iter()
                    .map(|(port, m)| (*port, m.effective().unwrap_or(mode)))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(policy) = workload
            && !policy.port_level.is_empty()
            && !subject.ports_known
        {
            warnings.push(format!(
                "no Service selects this pod, so the ports of peer authentication {}'s port-level modes were not checked against its ports",
                policy.key
            ));
        }
        let label = subject.labels.get(MTLS_LABEL).map(|value| {
            parse_label(value).unwrap_or_else(|message| {
                warnings.push(format!("pod {}: {message}", subject.pod));
                MtlsMode::Strict
            })
        });
        let asked = subject
            .requested
            .stricter(label.unwrap_or(MtlsMode::Permissive));
        mode = mode.stricter(asked);
        for port_mode in ports.values_mut() {
            *port_mode = port_mode.stricter(asked);
        }
        ports.retain(|_, port_mode| *port_mode != mode);
        Resolved {
            mode,
            ports,
            warnings,
        }
    }
}

/// The policy that decides one level among `candidates` that `applies`
/// keeps: a rejected one if any (it fails closed), else the oldest.
fn winner<'a>(
    candidates: Option<&Vec<&'a PeerAuthentication>>,
    applies: impl Fn(&PeerAuthentication) -> bool,
) -> Option<&'a PeerAuthentication> {
    candidates?
        .iter()
        .copied()
        .filter(|policy| applies(policy))
        .min_by(|a, b| (a.rejected.is_none(), a.age()).cmp(&(b.rejected.is_none(), b.age())))
}
