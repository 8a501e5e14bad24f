//! mTLS modes: `PeerAuthentication` objects, Istio's shape, checked once
//! when they are loaded; [`resolve`] turns them, with the `ambit.dev/mtls`
//! labels, into each pod's effective modes.
//!
//! ```yaml
//! apiVersion: security.ambit.dev/v1alpha1   # optional; Istio's security.istio.io/v1 and v1beta1 too
//! kind: PeerAuthentication                  # optional
//! metadata: {name: backend, namespace: shop}
//! spec:
//!   selector: {matchLabels: {app: backend}} # none: the namespace (the mesh, in the root namespace)
//!   mtls: {mode: PERMISSIVE}                # UNSET (default), STRICT, PERMISSIVE or DISABLE
//!   portLevelMtls:                          # only with a selector
//!     9090: {mode: STRICT}
//! ```
//!
//! **Modes.** STRICT: only mesh traffic is accepted (HBONE, or plaintext
//! from a meshed pod of the same node, which the agent vouches for).
//! PERMISSIVE: plaintext from outside the mesh is accepted too. DISABLE is
//! accepted so that Istio's objects load, and means what PERMISSIVE means:
//! ambit always carries traffic between meshed pods over mTLS and cannot
//! turn that off, so all it can do is accept plaintext. UNSET inherits
//! from the level above.
//!
//! **A policy that is wrong** (an unknown mode, such as `strict` or
//! `STRIKT`; port-level modes without a selector; a port that is not a
//! number; a port-level mode for a port the selected pods do not have; an
//! unknown field) is rejected with an error naming the field, and fails
//! closed: it acts as STRICT in its scope (see [`resolve`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use serde::{Deserialize, Serialize};

use crate::{
    policy::{PolicyKey, field_path, key_of, readable_selector},
    workload::MtlsMode,
};

mod resolve;
#[cfg(test)]
mod tests;

pub use resolve::{PeerAuthnSet, Resolved, Subject};

/// The `apiVersion`s a peer authentication may declare.
pub const API_VERSIONS: &[&str] = &[
    "security.ambit.dev/v1alpha1",
    "security.istio.io/v1",
    "security.istio.io/v1beta1",
];

/// The label that asks for a namespace's or a pod's mTLS mode: `strict`
/// or `permissive`, lowercase. Any other value is taken as `strict`.
pub const MTLS_LABEL: &str = "ambit.dev/mtls";

/// A policy's mTLS mode, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Mode {
    /// Inherit from the level above (the default).
    Unset,
    /// Only mesh traffic.
    Strict,
    /// Plaintext from outside the mesh is accepted too.
    Permissive,
    /// Istio's "no mTLS"; in ambit the same as PERMISSIVE (see the module
    /// docs).
    Disable,
}

/// The modes a policy may name.
pub const MODES: &[&str] = &["UNSET", "STRICT", "PERMISSIVE", "DISABLE"];

/// Why a peer authentication was rejected: the policy, the field, and
/// what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("peer authentication {policy}: {field}: {message}")]
pub struct PeerAuthnError {
    /// The policy's namespace/name.
    pub policy: PolicyKey,
    /// The field, as a path from the top of the object
    /// (`spec.mtls.mode`, `spec.portLevelMtls.9090`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// A checked peer authentication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerAuthentication {
    /// namespace/name.
    pub key: PolicyKey,
    /// `metadata.creationTimestamp`: of several policies at one level, the
    /// oldest wins (RFC 3339 sorts as text; one without sorts last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation: Option<String>,
    /// The pods of its namespace it applies to; empty: all of them (the
    /// mesh's, in the root namespace).
    pub selector: BTreeMap<String, String>,
    /// Its mode; STRICT when it was rejected.
    pub mode: Mode,
    /// Modes for ports of the selected pods (their target ports, as the
    /// application listens), overriding `mode` there.
    pub port_level: BTreeMap<u16, Mode>,
    /// Why it was rejected, when it was: it then keeps only its scope and
    /// acts as STRICT there.
    pub rejected: Option<PeerAuthnError>,
}

/// The ports of one pod, as [`check_ports`] needs them.
#[derive(Clone, Debug)]
pub struct WorkloadPorts<'a> {
    /// The pod's namespace.
    pub namespace: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// The target ports of the Services that select it; `None` when no
    /// Service does, so its ports cannot be known.
    pub ports: Option<BTreeSet<u16>>,
}

// --- The object as written; unknown fields are errors.

type RawPeerAuthn = crate::object::RawObject<RawMetadata, RawSpec>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMetadata {
    name: String,
    #[serde(default = "crate::workload::default_namespace")]
    namespace: String,
    #[serde(default)]
    creation_timestamp: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    selector: Option<RawSelector>,
    #[serde(default)]
    mtls: Option<RawMtls>,
    /// Read entry by entry, so that a bad one is named by its port.
    #[serde(default)]
    port_level_mtls: Option<serde_yaml::Mapping>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMtls {
    #[serde(default)]
    mode: Option<String>,
}

/// Reads one peer authentication. Never fails: one that cannot be
/// accepted comes back with [`PeerAuthentication::rejected`] set, its
/// scope kept and its mode STRICT.
#[must_use]
pub fn compile(value: &serde_yaml::Value) -> PeerAuthentication {
    let key = key_of(value);
    let raw: Result<RawPeerAuthn, _> = serde_path_to_error::deserialize(value.clone());
    let result = match raw {
        Ok(raw) => compile_raw(raw),
        Err(error) => Err(PeerAuthnError {
            policy: key.clone(),
            field: field_path(&error.path().to_string()),
            message: error.into_inner().to_string(),
        }),
    };
    result.unwrap_or_else(|error| rejected(value, key, error))
}

/// Reads every peer authentication of a list, in order.
#[must_use]
pub fn compile_all(values: &[serde_yaml::Value]) -> Vec<PeerAuthentication> {
    values.iter().map(compile).collect()
}

/// Rejects the accepted policies of `policies` that set a mode for a port
/// none of the pods they select has: a port not among the target ports of
/// the Services that select those pods. Pods whose ports cannot be known
/// (no Service selects them) do not count; when a policy selects no pod
/// with known ports, its ports are not checked.
pub fn check_ports(policies: &mut [PeerAuthentication], workloads: &[WorkloadPorts<'_>]) {
    for policy in policies
        .iter_mut()
        .filter(|p| p.rejected.is_none() && !p.port_level.is_empty())
    {
        let mut known: Option<BTreeSet<u16>> = None;
        for workload in workloads
            .iter()
            .filter(|w| policy.selects(w.namespace, w.labels))
        {
            if let Some(ports) = &workload.ports {
                known.get_or_insert_default().extend(ports);
            }
        }
        let Some(known) = known else { continue };
        let Some(missing) = policy
            .port_level
            .keys()
            .find(|port| !known.contains(port))
            .copied()
        else {
            continue;
        };
        let listed: Vec<String> = known.iter().map(u16::to_string).collect();
        let error = PeerAuthnError {
            policy: policy.key.clone(),
            field: format!("spec.portLevelMtls.{missing}"),
            message: format!(
                "the pods it selects have no port {missing}: it is not a target port of a Service that selects them (their ports: {})",
                listed.join(", ")
            ),
        };
        policy.fail_closed(error);
    }
}

fn compile_raw(raw: RawPeerAuthn) -> Result<PeerAuthentication, PeerAuthnError> {
    let header = raw.check_header(API_VERSIONS, "PeerAuthentication");
    let key = PolicyKey {
        namespace: raw.metadata.namespace,
        name: raw.metadata.name,
    };
    let fail = |field: &str, message: String| PeerAuthnError {
        policy: key.clone(),
        field: field.to_owned(),
        message,
    };
    if key.name.is_empty() {
        return Err(fail(
            "metadata.name",
            "a peer authentication needs a name".to_owned(),
        ));
    }
    header.map_err(|mismatch| fail(mismatch.field(), mismatch.message()))?;
    let spec = raw.spec;
    let selector = spec.selector.unwrap_or_default().match_labels;
    let mode = Mode::parse(spec.mtls.and_then(|m| m.mode).as_deref())
        .map_err(|m| fail("spec.mtls.mode", m))?;
    let mut port_level = BTreeMap::new();
    let entries = spec.port_level_mtls.unwrap_or_default();
    if !entries.is_empty() && selector.is_empty() {
        return Err(fail(
            "spec.portLevelMtls",
            "port-level modes need a selector: as in Istio, only a workload's policy may set them, not a namespace- or mesh-wide one".to_owned(),
        ));
    }
    for (port, entry) in entries {
        let written = scalar_text(&port);
        let field = format!("spec.portLevelMtls.{written}");
        let port = parse_port(&port).map_err(|m| fail(&field, m))?;
        let entry: RawMtls =
            serde_yaml::from_value(entry).map_err(|e| fail(&field, e.to_string()))?;
        let mode =
            Mode::parse(entry.mode.as_deref()).map_err(|m| fail(&format!("{field}.mode"), m))?;
        if port_level.insert(port, mode).is_some() {
            return Err(fail(&field, format!("port {port} is listed twice")));
        }
    }
    Ok(PeerAuthentication {
        key,
        creation: raw.metadata.creation_timestamp,
        selector,
        mode,
        port_level,
        rejected: None,
    })
}

/// A port-level key: a number, or a string holding one (Istio's JSON form).
fn parse_port(key: &serde_yaml::Value) -> Result<u16, String> {
    let number = match key {
        serde_yaml::Value::Number(n) => n.as_i64(),
        serde_yaml::Value::String(text) => text.trim().parse::<i64>().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{} is not a port number", scalar_text(key)))?;
    u16::try_from(number)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{number} is not a port (1-65535)"))
}

fn scalar_text(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::String(text) => text.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// A rejected policy keeps what can be read of its scope and acts as
/// STRICT there. A selector that cannot be read widens the scope to the
/// namespace.
fn rejected(
    value: &serde_yaml::Value,
    key: PolicyKey,
    error: PeerAuthnError,
) -> PeerAuthentication {
    let mut policy = PeerAuthentication {
        key,
        creation: value["metadata"]["creationTimestamp"]
            .as_str()
            .map(ToOwned::to_owned),
        selector: readable_selector(value),
        mode: Mode::Unset,
        port_level: BTreeMap::new(),
        rejected: None,
    };
    policy.fail_closed(error);
    policy
}

/// Reads an `ambit.dev/mtls` label value: exactly `strict` or
/// `permissive`. Anything else is an error saying it is taken as strict.
pub fn parse_label(value: &str) -> Result<MtlsMode, String> {
    match value {
        "strict" => Ok(MtlsMode::Strict),
        "permissive" => Ok(MtlsMode::Permissive),
        other => Err(format!(
            "{MTLS_LABEL}={other:?} is neither \"strict\" nor \"permissive\" (lowercase); taken as strict"
        )),
    }
}

// === impl Mode ===

impl Mode {
    /// Reads a mode as Istio writes it: uppercase, exactly; missing is UNSET.
    fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("UNSET") => Ok(Self::Unset),
            Some("STRICT") => Ok(Self::Strict),
            Some("PERMISSIVE") => Ok(Self::Permissive),
            Some("DISABLE") => Ok(Self::Disable),
            Some(other) => Err(format!(
                "unknown mode {other:?}; expected one of {} (uppercase)",
                MODES.join(", ")
            )),
        }
    }

    /// What the mode means for a pod; `None` for UNSET (inherit).
    #[must_use]
    pub fn effective(self) -> Option<MtlsMode> {
        match self {
            Self::Unset => None,
            Self::Strict => Some(MtlsMode::Strict),
            Self::Permissive | Self::Disable => Some(MtlsMode::Permissive),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unset => "UNSET",
            Self::Strict => "STRICT",
            Self::Permissive => "PERMISSIVE",
            Self::Disable => "DISABLE",
        })
    }
}

// === impl PeerAuthentication ===

impl PeerAuthentication {
    /// Whether the policy has a selector and it selects the pod of
    /// `namespace` with `labels`.
    #[must_use]
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        namespace == self.key.namespace
            && !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
    }

    /// What an operator should know: accepted, or why it was rejected and
    /// what it does instead; and when it has no effect.
    #[must_use]
    pub fn status(&self, root_namespace: &str) -> String {
        let scope = if !self.selector.is_empty() {
            "the pods it selects".to_owned()
        } else if self.key.namespace == root_namespace {
            "the whole mesh".to_owned()
        } else {
            format!("namespace {}", self.key.namespace)
        };
        if let Some(error) = &self.rejected {
            return format!(
                "rejected: {}: {}; it fails closed and is STRICT for {scope}",
                error.field, error.message
            );
        }
        if !self.selector.is_empty() && self.key.namespace == root_namespace {
            return "accepted; no effect: as in Istio, a policy with a selector in the root namespace applies to no pod".to_owned();
        }
        "accepted".to_owned()
    }

    /// Rejects the policy with `error`: STRICT in its scope, no port modes.
    fn fail_closed(&mut self, error: PeerAuthnError) {
        self.mode = Mode::Strict;
        self.port_level.clear();
        self.rejected = Some(error);
    }

    /// The order among policies of one level: the oldest first (one
    /// without a creation time last), then by name.
    fn age(&self) -> (bool, &str, &str) {
        (
            self.creation.is_none(),
            self.creation.as_deref().unwrap_or_default(),
            &self.key.name,
        )
    }
}
