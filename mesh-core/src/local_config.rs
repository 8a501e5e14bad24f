//! The local configuration file: the embedded default when the agent runs
//! without Kubernetes. One YAML document lists the pods to enroll.
//!
//! ```yaml
//! pods:
//!   - name: client
//!     namespace: default
//!     serviceAccount: client
//!     ips: [10.10.1.11, "fd00:10:10:1::b"]
//!     netns: /run/netns/client
//!     node: node-1            # optional; pods of other nodes are HBONE destinations
//!     mtls: strict            # optional; can only tighten what peerAuthentications resolve
//!     labels: {app: client}   # optional; policies and services select pods by label
//! services:                   # optional; see crate::service
//!   - name: server
//!     namespace: default
//!     selector: {app: server}
//!     clusterIPs: [10.96.0.10]  # optional; meshed clients' connections to it are balanced
//!     ports: [{port: 80, targetPort: 8080}]
//! policies:                   # AuthorizationPolicy objects (crate::policy)
//!   - metadata: {name: allow-client, namespace: default}
//!     spec:
//!       selector: {matchLabels: {app: server}}
//!       rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]
//! peerAuthentications:        # PeerAuthentication objects (crate::peer_authn)
//!   - metadata: {name: strict, namespace: default}
//!     spec: {mtls: {mode: STRICT}}
//! routes: []                  # Gateway API HTTPRoute objects, for the waypoint
//! ```
//!
//! A file that cannot be read or parsed is an error for the whole file. A
//! pod entry that is wrong on its own (listed twice, an address another pod
//! already has, no addresses, a relative netns path) is rejected with a
//! reason and the other pods go ahead; so is a policy (it then fails
//! closed, see [`crate::policy`]), a peer authentication (it then acts as
//! STRICT in its scope, see [`crate::peer_authn`]), and a service (listed
//! twice, a name that is not a DNS label, no selector, a bad port).
//!
//! Validation also resolves each pod's effective mTLS modes, the pod's
//! and its ports', from the peer authentications, the `ambit.dev/mtls`
//! labels and the pod's `mtls` field (see [`crate::peer_authn`]): a
//! snapshot's pods carry them.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{
    peer_authn::{self, PeerAuthentication, PeerAuthnSet, Subject, WorkloadPorts},
    policy::{self, Policy},
    service::{self, Service, ServiceKey},
    workload::{KERNEL_PATH_LABEL, KernelPath, Pod, PodKey},
};

/// Why the local configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    /// The file could not be read.
    #[error("cannot read the local config {path}: {source} (check the path and its permissions)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML of the expected shape.
    #[error("cannot parse the local config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error, which names the line and column.
        source: serde_yaml::Error,
    },
}

/// The file as written.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalConfigFile {
    /// Pods to enroll. Shared: a pod validated before may stand in for an
    /// unchanged one (see [`Pod::same_as_written`]), and validation copies
    /// it only if what it fills in changes.
    #[serde(default)]
    pub pods: Vec<Arc<Pod>>,
    /// Authorization policies, each read on its own (see
    /// [`crate::policy`]): one that is wrong is rejected without failing
    /// the file.
    #[serde(default)]
    pub policies: Vec<serde_yaml::Value>,
    /// Services: names for sets of pods (see [`crate::service`]). Shared
    /// as the pods are: validation only checks them.
    #[serde(default)]
    pub services: Vec<Arc<Service>>,
    /// Gateway API `HTTPRoute` objects, kept as written: the waypoint reads
    /// them; the node agent only carries them.
    #[serde(default)]
    pub routes: Vec<serde_yaml::Value>,
    /// `PeerAuthentication` objects, each read on its own (see
    /// [`crate::peer_authn`]): one that is wrong is rejected, and acts as
    /// STRICT in its scope, without failing the file.
    #[serde(default)]
    pub peer_authentications: Vec<serde_yaml::Value>,
    /// Each namespace's `ambit.dev/mtls` label, as written. Kubernetes
    /// mode fills it in from the Namespaces; the file has no namespaces.
    #[serde(skip)]
    pub namespace_mtls: BTreeMap<String, String>,
    /// Each namespace's `ambit.dev/kernel-path` label, as written; filled in
    /// like `namespace_mtls`.
    #[serde(skip)]
    pub namespace_kernel_path: BTreeMap<String, String>,
}

/// A pod entry that was rejected, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RejectedPod {
    /// The entry's namespace/name.
    pub pod: PodKey,
    /// Position of the entry in the file's `pods` list, from 1.
    pub entry: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// A service entry that was rejected, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RejectedService {
    /// The entry's namespace/name.
    pub service: ServiceKey,
    /// Position of the entry in the file's `services` list, from 1.
    pub entry: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// A validated configuration: what the control side publishes to the data path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LocalSnapshot {
    /// Pods to enroll, in file order.
    pub pods: Vec<Arc<Pod>>,
    /// Entries that were rejected.
    pub rejected: Vec<RejectedPod>,
    /// Authorization policies in file order, rejected ones included (they
    /// fail closed).
    pub policies: Vec<Arc<Policy>>,
    /// Services, in file order.
    pub services: Vec<Arc<Service>>,
    /// Service entries that were rejected.
    pub rejected_services: Vec<RejectedService>,
    /// `HTTPRoute` objects as written, for the waypoint.
    pub routes: Vec<serde_yaml::Value>,
    /// Peer authentications in file order, rejected ones included (they
    /// act as STRICT in their scope).
    pub peer_authentications: Vec<PeerAuthentication>,
}

/// A Kubernetes custom resource (`AuthorizationPolicy`, `HTTPRoute`) as
/// the local file would hold it: everything but the status, and of the
/// metadata the name, the namespace, and what routes read: ambit's
/// annotations (`ambit.dev/...`) and the creation time (their precedence).
/// The rest is the API server's and the controller's bookkeeping; leaving
/// it out means an object is read, and a bad one rejected, with the same
/// field paths as in the local file, wherever it is compiled (the agents,
/// the waypoint, the controller's status).
#[must_use]
pub fn resource_as_written(object: &serde_yaml::Value) -> serde_yaml::Value {
    let mut value = object.clone();
    if let Some(mapping) = value.as_mapping_mut() {
        mapping.remove("status");
    }
    if let Some(metadata) = value
        .get_mut("metadata")
        .and_then(serde_yaml::Value::as_mapping_mut)
    {
        metadata.retain(|key, _| {
            matches!(
                key.as_str(),
                Some("name" | "namespace" | "annotations" | "creationTimestamp")
            )
        });
        if let Some(annotations) = metadata
            .get_mut("annotations")
            .and_then(serde_yaml::Value::as_mapping_mut)
        {
            annotations.retain(|key, _| key.as_str().is_some_and(|k| k.starts_with("ambit.dev/")));
        }
        if metadata
            .get("annotations")
            .and_then(serde_yaml::Value::as_mapping)
            .is_some_and(serde_yaml::Mapping::is_empty)
        {
            metadata.remove("annotations");
        }
    }
    value
}

/// Reads and validates a local configuration file; peer authentications
/// without a selector in `root_namespace` apply mesh-wide.
pub fn load(path: &Path, root_namespace: &str) -> Result<LocalSnapshot, LocalConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| LocalConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, root_namespace).map_err(|source| LocalConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Parses and validates configuration text (see [`load`]).
pub fn parse(text: &str, root_namespace: &str) -> Result<LocalSnapshot, serde_yaml::Error> {
    // An empty document is an empty configuration, not an error.
    let file: LocalConfigFile = if text.trim().is_empty() {
        LocalConfigFile::default()
    } else {
        serde_yaml::from_str(text)?
    };
    Ok(validate(file, root_namespace))
}

/// Splits a file's pods and services into accepted and rejected entries,
/// compiles its policies, and resolves each pod's mTLS modes (peer
/// authentications without a selector in `root_namespace` apply
/// mesh-wide).
#[must_use]
pub fn validate(file: LocalConfigFile, root_namespace: &str) -> LocalSnapshot {
    let LocalConfigFile {
        pods,
        policies,
        services,
        routes,
        peer_authentications,
        namespace_mtls,
        namespace_kernel_path,
    } = file;
    let (services, rejected_services) = validate_services(services);
    let mut snapshot = LocalSnapshot {
        policies: policy::compile_all(&policies)
            .into_iter()
            .map(Arc::new)
            .collect(),
        services,
        rejected_services,
        routes,
        peer_authentications: peer_authn::compile_all(&peer_authentications),
        ..LocalSnapshot::default()
    };
    let (accepted, rejected) = check_pods(&pods);
    snapshot.rejected = rejected;
    snapshot.pods = kept(pods, &accepted);
    resolve_mtls(&mut snapshot, &namespace_mtls, root_namespace);
    for pod in &mut snapshot.pods {
        let kernel_path = KernelPath::from_labels(
            pod.labels.get(KERNEL_PATH_LABEL).map(String::as_str),
            namespace_kernel_path
                .get(&pod.namespace)
                .map(String::as_str),
        );
        if pod.kernel_path != kernel_path {
            Arc::make_mut(pod).kernel_path = kernel_path;
        }
    }
    snapshot
}

/// Which of `pods` are accepted (in order), and why the others are not:
/// each is checked on its own and against the ones before it (a key or
/// an address listed twice keeps its first entry).
fn check_pods(pods: &[Arc<Pod>]) -> (Vec<bool>, Vec<RejectedPod>) {
    let mut seen_keys: HashMap<(&str, &str), usize> = HashMap::with_capacity(pods.len());
    let mut seen_ips: HashMap<IpAddr, &Pod> = HashMap::with_capacity(pods.len());
    let mut accepted = Vec::with_capacity(pods.len());
    let mut rejected = Vec::new();
    for (index, pod) in pods.iter().enumerate() {
        let entry = index + 1;
        let key = (pod.namespace.as_str(), pod.name.as_str());
        let reason = if let Some(first) = seen_keys.get(&key) {
            Some(format!(
                "pod {} is listed twice (entries {first} and {entry}); the first entry is used",
                pod.key()
            ))
        } else {
            check_pod(pod, &seen_ips)
        };
        accepted.push(reason.is_none());
        if let Some(reason) = reason {
            rejected.push(RejectedPod {
                pod: pod.key(),
                entry,
                reason,
            });
            continue;
        }
        seen_keys.insert(key, entry);
        for ip in &pod.ips {
            seen_ips.insert(*ip, pod);
        }
    }
    (accepted, rejected)
}

/// Checks the peer authentications' port-level modes against the ports of
/// the pods they select, then sets each pod's effective modes.
fn resolve_mtls(
    snapshot: &mut LocalSnapshot,
    namespace_mtls: &BTreeMap<String, String>,
    root_namespace: &str,
) {
    // Ports matter only where a policy sets port-level modes; finding them
    // costs a pass over the namespace's Services per pod.
    let port_level: HashSet<&str> = snapshot
        .peer_authentications
        .iter()
        .filter(|p| !p.port_level.is_empty())
        .map(|p| p.key.namespace.as_str())
        .collect();
    let mut services_in: HashMap<&str, Vec<&Service>> = HashMap::new();
    for service in snapshot
        .services
        .iter()
        .filter(|s| port_level.contains(s.namespace.as_str()))
    {
        services_in
            .entry(service.namespace.as_str())
            .or_default()
            .push(service);
    }
    let ports: Vec<_> = snapshot
        .pods
        .iter()
        .map(|pod| {
            let services = services_in.get(pod.namespace.as_str())?;
            service::target_ports(pod, services.iter().copied())
        })
        .collect();
    let workloads: Vec<WorkloadPorts<'_>> = snapshot
        .pods
        .iter()
        .zip(&ports)
        .map(|(pod, ports)| WorkloadPorts {
            namespace: &pod.namespace,
            labels: &pod.labels,
            ports: ports.clone(),
        })
        .collect();
    peer_authn::check_ports(&mut snapshot.peer_authentications, &workloads);
    let set = PeerAuthnSet::new(&snapshot.peer_authentications, root_namespace);
    let resolved: Vec<_> = snapshot
        .pods
        .iter()
        .zip(&ports)
        .map(|(pod, ports)| {
            set.resolve(&Subject {
                pod: &pod.key(),
                labels: &pod.labels,
                requested: pod.requested_mtls(),
                namespace_label: namespace_mtls.get(&pod.namespace).map(String::as_str),
                ports_known: ports.is_some(),
            })
        })
        .collect();
    for (pod, resolved) in snapshot.pods.iter_mut().zip(resolved) {
        let requested = Some(pod.requested_mtls());
        let unchanged = pod.mtls == resolved.mode
            && pod.mtls_requested == requested
            && pod.port_mtls == resolved.ports
            && pod.mtls_warnings == resolved.warnings;
        if !unchanged {
            let pod = Arc::make_mut(pod);
            pod.mtls = resolved.mode;
            pod.mtls_requested = requested;
            pod.port_mtls = resolved.ports;
            pod.mtls_warnings = resolved.warnings;
        }
    }
}

fn validate_services(entries: Vec<Arc<Service>>) -> (Vec<Arc<Service>>, Vec<RejectedService>) {
    let mut keep = Vec::with_capacity(entries.len());
    let mut rejected = Vec::new();
    let mut seen: HashMap<(&str, &str), usize> = HashMap::with_capacity(entries.len());
    let mut cluster_ips: HashMap<IpAddr, &Service> = HashMap::new();
    for (index, service) in entries.iter().enumerate() {
        let entry = index + 1;
        let key = (service.namespace.as_str(), service.name.as_str());
        let taken = service
            .cluster_ips
            .iter()
            .find_map(|ip| Some((ip, cluster_ips.get(ip)?)));
        let reason = if let Some(first) = seen.get(&key) {
            Some(format!(
                "service {} is listed twice (entries {first} and {entry}); the first entry is used",
                service.key()
            ))
        } else if let Some((ip, owner)) = taken {
            Some(format!(
                "service {} has cluster IP {ip}, which service {} already has",
                service.key(),
                owner.key()
            ))
        } else {
            service.validate().err().map(|error| error.to_string())
        };
        keep.push(reason.is_none());
        if let Some(reason) = reason {
            rejected.push(RejectedService {
                service: service.key(),
                entry,
                reason,
            });
        } else {
            for ip in &service.cluster_ips {
                cluster_ips.insert(*ip, service);
            }
            seen.insert(key, entry);
        }
    }
    (kept(entries, &keep), rejected)
}

/// The `entries` that `keep` marks, in order, in a list of just their
/// number: tens of thousands of pods in Kubernetes mode, where a list grown
/// by doubling would keep up to twice the room it needs.
fn kept<T>(entries: Vec<T>, keep: &[bool]) -> Vec<T> {
    let mut kept = Vec::with_capacity(keep.iter().filter(|keep| **keep).count());
    kept.extend(
        entries
            .into_iter()
            .zip(keep)
            .filter_map(|(entry, keep)| keep.then_some(entry)),
    );
    kept
}

fn check_pod(pod: &Pod, seen_ips: &HashMap<IpAddr, &Pod>) -> Option<String> {
    // Named only when something is wrong: otherwise a copy of both names
    // for every pod at every rebuild.
    let key = || pod.key();
    if pod.name.is_empty() || pod.namespace.is_empty() {
        return Some("a pod needs a non-empty name and namespace".to_owned());
    }
    if pod.ips.is_empty() {
        return Some(format!("pod {} has no ips", key()));
    }
    let mut families = HashSet::new();
    for ip in &pod.ips {
        if !families.insert(ip.is_ipv4()) {
            return Some(format!(
                "pod {} has more than one {} address",
                key(),
                if ip.is_ipv4() { "IPv4" } else { "IPv6" }
            ));
        }
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
            return Some(format!(
                "pod {} has address {ip}, which cannot be a pod address",
                key()
            ));
        }
        if let Some(owner) = seen_ips.get(ip) {
            return Some(format!(
                "pod {} has address {ip}, which pod {} already has",
                key(),
                owner.key()
            ));
        }
    }
    if pod.netns.as_os_str().is_empty() {
        if pod.node.is_none() {
            return Some(format!("pod {} has neither a netns path nor a node", key()));
        }
    } else if !pod.netns.is_absolute() {
        return Some(format!(
            "pod {} has netns path {}, which is not absolute",
            key(),
            pod.netns.display()
        ));
    }
    None
}

#[cfg(test)]
mod tests;
