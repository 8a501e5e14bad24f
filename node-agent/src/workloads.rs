//! What the agent knows about every meshed pod in the cluster, indexed by
//! address: its identity, its node, its mTLS mode, its names in metrics;
//! and the services of the configuration. The control side builds a new
//! index from each configuration snapshot; the proxies read the current one
//! to decide how to reach a destination.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use mesh_core::{
    identity::SpiffeId,
    local_config::LocalSnapshot,
    service::Service,
    workload::{MtlsMode, PodKey},
};

use crate::metrics::labels::WorkloadNames;

/// A meshed pod, as the data path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// namespace/name.
    pub key: PodKey,
    /// Its SPIFFE id.
    pub identity: SpiffeId,
    /// The node it runs on, when the configuration says.
    pub node: Option<String>,
    /// Whether it runs on this agent's node.
    pub local: bool,
    /// Its mTLS mode.
    pub mtls: MtlsMode,
    /// Its labels, which policies select it by.
    pub labels: Arc<BTreeMap<String, String>>,
    /// How its traffic is labelled in metrics.
    pub names: WorkloadNames,
}

/// Meshed pods by address.
#[derive(Debug, Default)]
pub struct WorkloadIndex {
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    services: Vec<Arc<Service>>,
}

/// The current index, swapped whole on every configuration change.
pub type SharedWorkloads = crate::published::Published<WorkloadIndex>;

// === impl WorkloadIndex ===

impl WorkloadIndex {
    /// Indexes the pods of `snapshot` as seen from `node`, with services
    /// named in `cluster_domain`. Pods whose identity cannot be formed are
    /// left out (and logged).
    #[must_use]
    pub fn build(
        snapshot: &LocalSnapshot,
        node: &str,
        trust_domain: &str,
        cluster_domain: &str,
    ) -> Self {
        let mut by_ip = HashMap::new();
        for pod in &snapshot.pods {
            let identity = match SpiffeId::new(trust_domain, &pod.namespace, &pod.service_account) {
                Ok(identity) => identity,
                Err(error) => {
                    tracing::warn!(pod = %pod.key(), %error, "pod has no valid identity; it is not a mesh destination");
                    continue;
                }
            };
            let workload = Arc::new(Workload {
                key: pod.key(),
                node: pod.node.clone(),
                local: pod.is_on_node(node),
                mtls: pod.mtls,
                labels: Arc::new(pod.labels.clone()),
                names: WorkloadNames::new(pod, &identity, &snapshot.services, cluster_domain),
                identity,
            });
            for ip in &pod.ips {
                by_ip.insert(ip.to_canonical(), workload.clone());
            }
        }
        let services = snapshot.services.iter().cloned().map(Arc::new).collect();
        Self { by_ip, services }
    }

    /// The services of the configuration, in file order.
    #[must_use]
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// Every address with its pod.
    pub fn entries(&self) -> impl Iterator<Item = (IpAddr, &Arc<Workload>)> {
        self.by_ip.iter().map(|(ip, w)| (*ip, w))
    }

    /// The meshed pod with this address.
    #[must_use]
    pub fn by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip.to_canonical())
    }
}
