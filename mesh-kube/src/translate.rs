//! From Kubernetes objects to the configuration the local file would hold:
//! which pods are enrolled (by the `ambit.dev/mesh` label of the pod and
//! its namespace), their addresses and service accounts, the meshed pods
//! of other nodes (destinations), the services with their cluster IPs and
//! ready endpoints, the authorization policies, the peer authentications
//! with the namespaces' `ambit.dev/mtls` labels (mesh-core resolves each
//! pod's modes from them, see [`mesh_core::peer_authn`]) and the routes.
//! Pure functions, so they are tested without an API server.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod as KubePod, Service as KubeService},
    discovery::v1::EndpointSlice,
};
use kube::api::DynamicObject;
use mesh_core::{
    local_config::LocalConfigFile,
    policy::Policy,
    service::{Endpoint, Service, ServicePort},
    workload::{KERNEL_PATH_LABEL, KernelPath, MtlsMode, Pod},
};

use crate::label_sets::LabelSets;
use crate::labels::{
    AMBIT_ANNOTATION_PREFIX, MESH_LABEL, MTLS_LABEL, SERVICE_NAME_LABEL, USE_WAYPOINT_LABEL,
    WAYPOINT_LABEL,
};

/// Whether a pod with `pod_labels` in a namespace with `namespace_labels`
/// is in the mesh: `disabled` on the pod wins, then `enabled` on the pod or
/// on its namespace.
#[must_use]
pub fn is_enrolled(
    pod_labels: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
) -> bool {
    match pod_labels.get(MESH_LABEL).map(String::as_str) {
        Some("disabled") => false,
        Some("enabled") => true,
        _ => namespace_labels.get(MESH_LABEL).map(String::as_str) == Some("enabled"),
    }
}

/// Why a pod of this node is not (yet) a mesh pod the agent can enroll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotReady {
    /// It has no address yet (not scheduled or not started).
    NoAddress,
    /// It has finished (`Succeeded` or `Failed`) or is being deleted.
    Ended,
    /// It has no `metadata.uid`, so its cgroup cannot be found.
    NoUid,
}

/// A meshed pod of this node and what finding its network namespace needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePod {
    /// The pod as the local configuration would list it, without `netns`.
    pub pod: Pod,
    /// `metadata.uid`, which names its cgroup.
    pub uid: String,
}

/// The meshed pod `pod` is, or why it cannot be enrolled yet; `None` when
/// it is not in the mesh at all. `namespace_labels` are its namespace's.
#[must_use]
pub fn node_pod(
    pod: &KubePod,
    namespace_labels: Option<&BTreeMap<String, String>>,
    node: &str,
) -> Option<Result<NodePod, NotReady>> {
    let namespace = pod.metadata.namespace.clone()?;
    let name = pod.metadata.name.clone()?;
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    let namespace_labels = namespace_labels.unwrap_or(&empty);
    if !is_enrolled(&labels, namespace_labels) {
        return None;
    }
    if has_ended(pod) {
        return Some(Err(NotReady::Ended));
    }
    let ips = pod_ips(pod);
    if ips.is_empty() {
        return Some(Err(NotReady::NoAddress));
    }
    let Some(uid) = pod.metadata.uid.clone() else {
        return Some(Err(NotReady::NoUid));
    };
    Some(Ok(NodePod {
        pod: mesh_pod(
            name,
            namespace,
            service_account_of(pod),
            ips,
            node,
            Arc::new(labels),
        ),
        uid,
    }))
}

/// Whether the pod has finished (`Succeeded` or `Failed`) or is being
/// deleted.
fn has_ended(pod: &KubePod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_some() || matches!(phase, Some("Succeeded" | "Failed"))
}

/// A pod's `spec.serviceAccountName`, `default` when unset.
fn service_account_of(pod: &KubePod) -> String {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.clone())
        .unwrap_or_else(|| "default".to_owned())
}

/// A meshed pod as the local configuration would list it, without `netns`.
fn mesh_pod(
    name: String,
    namespace: String,
    service_account: String,
    ips: Vec<IpAddr>,
    node: &str,
    labels: Arc<BTreeMap<String, String>>,
) -> Pod {
    Pod {
        name,
        namespace,
        service_account,
        ips,
        netns: std::path::PathBuf::new(),
        node: Some(node.to_owned()),
        // The pod's own `ambit.dev/mtls` label is among its labels;
        // validation reads it, with its namespace's (see [`config`]).
        mtls: MtlsMode::Permissive,
        mtls_requested: None,
        port_mtls: BTreeMap::new(),
        mtls_warnings: Vec::new(),
        labels,
        // Validation reads the pod's and its namespace's label.
        kernel_path: KernelPath::Off,
    }
}

/// What the agent keeps of another node's pod: only what makes it a mesh
/// destination, a few hundred bytes where k8s-openapi's `Pod` struct takes
/// ~2.2 KB even with every other field emptied (`PodSpec` alone is 1.4 KB).
/// Whether it is meshed is decided when a snapshot is built, since its
/// namespace's labels can change meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePod {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.nodeName`.
    pub node: String,
    /// `spec.serviceAccountName`, `default` when unset.
    pub service_account: String,
    /// `metadata.labels`, shared with the snapshot's pod and the agent's
    /// index entry made from it.
    pub labels: Arc<BTreeMap<String, String>>,
    /// `status.podIPs`, else `status.podIP`.
    pub ips: Vec<IpAddr>,
}

/// The compact form of a pod of any node, or `None` when it cannot be a
/// destination: unscheduled, without an address, finished or being
/// deleted. Its labels are the copy in `label_sets`.
#[must_use]
pub fn compact_pod(pod: &KubePod, label_sets: &mut LabelSets) -> Option<RemotePod> {
    if has_ended(pod) {
        return None;
    }
    let ips = pod_ips(pod);
    if ips.is_empty() {
        return None;
    }
    Some(RemotePod {
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
        node: pod.spec.as_ref()?.node_name.clone()?,
        service_account: service_account_of(pod),
        labels: label_sets.get(pod.metadata.labels.clone().unwrap_or_default()),
        ips,
    })
}

/// A meshed pod of another node, as a destination: no network namespace,
/// its node named. `None` when it is on `own_node` or not meshed.
/// `namespace_labels` are its namespace's.
#[must_use]
pub fn remote_pod(
    pod: &RemotePod,
    namespace_labels: Option<&BTreeMap<String, String>>,
    own_node: &str,
) -> Option<Pod> {
    let empty = BTreeMap::new();
    if pod.node == own_node || !is_enrolled(&pod.labels, namespace_labels.unwrap_or(&empty)) {
        return None;
    }
    Some(mesh_pod(
        pod.name.clone(),
        pod.namespace.clone(),
        pod.service_account.clone(),
        pod.ips.clone(),
        &pod.node,
        pod.labels.clone(),
    ))
}

/// Drops what no translation reads and what often makes up most of an
/// object's size: `managedFields` and annotations (such as `kubectl`'s
/// `last-applied-configuration`, a copy of the whole object), except
/// ambit's own (`ambit.dev/...`, which routes carry settings in).
pub fn trim_metadata<K: kube::Resource>(object: &mut K) {
    let metadata = object.meta_mut();
    metadata.managed_fields = None;
    if let Some(annotations) = &mut metadata.annotations {
        annotations.retain(|key, _| key.starts_with(AMBIT_ANNOTATION_PREFIX));
        if annotations.is_empty() {
            metadata.annotations = None;
        }
    }
}

/// A pod's addresses: `status.podIPs`, else `status.podIP`; unparsable
/// entries are left out.
fn pod_ips(pod: &KubePod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if listed.is_empty() {
        status
            .pod_ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .into_iter()
            .collect()
    } else {
        listed
    }
}

/// Namespace name → its labels.
#[must_use]
pub fn namespace_labels<'a>(
    namespaces: impl IntoIterator<Item = &'a Namespace>,
) -> HashMap<String, BTreeMap<String, String>> {
    namespaces
        .into_iter()
        .filter_map(|ns| {
            Some((
                ns.metadata.name.clone()?,
                ns.metadata.labels.clone().unwrap_or_default(),
            ))
        })
        .collect()
}

/// What the agent keeps of a Kubernetes Service: the mesh's service
/// model of it without endpoints and waypoint (see [`service`]), and its
/// own `ambit.dev/` labels, which choose the waypoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSource {
    /// Name, namespace, selector, ports, cluster IPs.
    pub service: Service,
    /// The Service's labels under `ambit.dev/`.
    pub ambit_labels: BTreeMap<String, String>,
}

/// The compact form of a Service: its selector, ports (numeric target
/// ports, the port itself when none is given; a named one is resolved by
/// the `EndpointSlices`) and cluster IPs (none for a headless service).
/// `None` without a name, namespace or spec.
#[must_use]
pub fn compact_service(service: &KubeService) -> Option<ServiceSource> {
    let spec = service.spec.as_ref()?;
    let cluster_ips = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .fold(Vec::new(), |mut ips, ip| {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
            ips
        });
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|port| {
            Some(ServicePort {
                name: port.name.clone(),
                port: u16::try_from(port.port).ok()?,
                target_port: match &port.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p)) => {
                        u16::try_from(*p).ok()
                    }
                    // Kubernetes: no targetPort means the port itself.
                    None => u16::try_from(port.port).ok(),
                    Some(_) => None,
                },
                app_protocol: port.app_protocol.clone(),
            })
        })
        .collect();
    let ambit_labels = service
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(key, _)| key.starts_with(AMBIT_ANNOTATION_PREFIX))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    Some(ServiceSource {
        service: Service {
            name: service.metadata.name.clone()?,
            namespace: service.metadata.namespace.clone()?,
            selector: Arc::new(spec.selector.clone().unwrap_or_default()),
            ports,
            cluster_ips,
            endpoints: None,
            waypoint: None,
        },
        ambit_labels,
    })
}

/// A Service as the mesh's service model: its compact form with the
/// ready endpoints of its `slices`, and the waypoint it uses: the
/// Service's `ambit.dev/use-waypoint` label, else its namespace's
/// (`namespace_labels`); `none` on the Service opts it out of its
/// namespace's waypoint, and a waypoint's own Service (labelled
/// `ambit.dev/waypoint`) has none.
#[must_use]
pub fn service<'a>(
    source: &ServiceSource,
    slices: impl IntoIterator<Item = &'a SliceEndpoints>,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Service {
    Service {
        endpoints: Some(endpoints_of(slices)),
        waypoint: waypoint_of(Some(&source.ambit_labels), namespace_labels),
        ..source.service.clone()
    }
}

/// The waypoint a Service with `labels` in a namespace with
/// `namespace_labels` goes through; see [`service`].
#[must_use]
pub fn waypoint_of(
    labels: Option<&BTreeMap<String, String>>,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Option<String> {
    if labels.is_some_and(|labels| labels.contains_key(WAYPOINT_LABEL)) {
        return None;
    }
    labels
        .and_then(|labels| labels.get(USE_WAYPOINT_LABEL))
        .or_else(|| namespace_labels?.get(USE_WAYPOINT_LABEL))
        .filter(|name| *name != "none")
        .cloned()
}

/// What the agent keeps of an `EndpointSlice`: the Service it belongs to
/// and its ready endpoints, a fraction of the object (whose every
/// endpoint carries conditions, hints, references and zones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoints {
    /// The namespace of the slice and its Service.
    pub namespace: String,
    /// The Service (the `kubernetes.io/service-name` label).
    pub service: String,
    /// The ready endpoints, with the slice's TCP ports; shared with the
    /// snapshot's Service when it is the Service's only slice.
    pub endpoints: Arc<[Endpoint]>,
}

/// The endpoints of a Service's slices: the one slice's own list, shared,
/// or a new list of them all.
fn endpoints_of<'a>(slices: impl IntoIterator<Item = &'a SliceEndpoints>) -> Arc<[Endpoint]> {
    let mut slices = slices.into_iter();
    match (slices.next(), slices.next()) {
        (None, _) => Arc::from([]),
        (Some(only), None) => only.endpoints.clone(),
        (Some(first), Some(second)) => first
            .endpoints
            .iter()
            .chain(second.endpoints.iter())
            .chain(slices.flat_map(|slice| slice.endpoints.iter()))
            .cloned()
            .collect(),
    }
}

/// The compact form of a slice; `None` when it names no Service.
#[must_use]
pub fn compact_slice(slice: &EndpointSlice) -> Option<SliceEndpoints> {
    let (namespace, service) = slice_owner(slice)?;
    Some(SliceEndpoints {
        namespace: namespace.to_owned(),
        service: service.to_owned(),
        endpoints: ready_endpoints(slice).into(),
    })
}

/// The ready endpoints of one `EndpointSlice` with its TCP ports. An
/// endpoint whose readiness is not stated counts as ready, as the API
/// documents; a terminating one is not ready.
fn ready_endpoints(slice: &EndpointSlice) -> Vec<Endpoint> {
    let ports: BTreeMap<String, u16> = slice
        .ports
        .iter()
        .flatten()
        .filter(|port| port.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|port| {
            let number = u16::try_from(port.port?).ok()?;
            Some((port.name.clone().unwrap_or_default(), number))
        })
        .collect();
    let ports = Arc::new(ports);
    slice
        .endpoints
        .iter()
        .filter(|endpoint| {
            endpoint
                .conditions
                .as_ref()
                .and_then(|conditions| conditions.ready)
                != Some(false)
        })
        .flat_map(|endpoint| {
            endpoint
                .addresses
                .iter()
                .filter_map(|address| address.parse::<IpAddr>().ok())
                .map(|ip| Endpoint {
                    ip,
                    ports: ports.clone(),
                    node: endpoint.node_name.clone(),
                })
        })
        .collect()
}

/// The Service an `EndpointSlice` belongs to: its namespace and the
/// `kubernetes.io/service-name` label.
#[must_use]
pub fn slice_owner(slice: &EndpointSlice) -> Option<(&str, &str)> {
    Some((
        slice.metadata.namespace.as_deref()?,
        slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?,
    ))
}

/// A custom resource (`AuthorizationPolicy`, `PeerAuthentication`,
/// `HTTPRoute`) as the local
/// file would hold it (see [`mesh_core::local_config::resource_as_written`]).
#[must_use]
pub fn local_object(object: &DynamicObject) -> serde_yaml::Value {
    let value = serde_yaml::to_value(object).unwrap_or(serde_yaml::Value::Null);
    mesh_core::local_config::resource_as_written(&value)
}

/// An `AuthorizationPolicy` object compiled, as the local file's would be;
/// a policy that does not compile is kept, rejected (it fails closed).
#[must_use]
pub fn policy(object: &DynamicObject) -> Option<Arc<Policy>> {
    Some(Arc::new(mesh_core::policy::compile(&local_object(object))))
}

/// The custom resources the agent reads as the local file would hold
/// them (see [`local_object`]); authorization policies are not among them:
/// they are compiled as they arrive (see [`policy`]).
#[derive(Clone, Debug, Default)]
pub struct CustomResources {
    /// `PeerAuthentication` objects.
    pub peer_authentications: Vec<serde_yaml::Value>,
    /// `HTTPRoute` objects.
    pub routes: Vec<serde_yaml::Value>,
}

/// Each namespace's value of the label `key`, where it has one, from every
/// namespace's labels (see [`namespace_labels`]).
fn namespace_label<'a>(
    namespace_labels: impl IntoIterator<Item = (&'a String, &'a BTreeMap<String, String>)>,
    key: &str,
) -> BTreeMap<String, String> {
    namespace_labels
        .into_iter()
        .filter_map(|(namespace, labels)| Some((namespace.clone(), labels.get(key)?.clone())))
        .collect()
}

/// The configuration file the objects amount to, without authorization
/// policies (compiled as they arrive, see [`policy`]); `namespace_labels`
/// are every namespace's labels (see [`namespace_labels`]), of which the
/// `ambit.dev/mtls` and `ambit.dev/kernel-path` labels count.
#[must_use]
pub fn config<'a>(
    pods: Vec<Arc<Pod>>,
    services: Vec<Arc<Service>>,
    resources: CustomResources,
    namespace_labels: impl IntoIterator<Item = (&'a String, &'a BTreeMap<String, String>)> + Clone,
) -> LocalConfigFile {
    LocalConfigFile {
        pods,
        policies: Vec::new(),
        services,
        routes: resources.routes,
        peer_authentications: resources.peer_authentications,
        namespace_mtls: namespace_label(namespace_labels.clone(), MTLS_LABEL),
        namespace_kernel_path: namespace_label(namespace_labels, KERNEL_PATH_LABEL),
    }
}

#[cfg(test)]
mod tests;
