//! The names a workload's traffic is labelled with, worked out once per
//! configuration snapshot (when the workload index is built), so recording
//! a connection only clones shared strings.

use std::sync::Arc;

use mesh_core::{service::Service, workload::Pod};

use super::intern::Interner;

/// The value of a label that is not known, as Istio writes it.
pub const UNKNOWN: &str = "unknown";

/// The pod label that names a pod's workload.
pub const WORKLOAD_LABEL: &str = "app";

/// How a workload appears in metric labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadNames {
    /// The workload: the pod's `app` label, else the pod's name (there is no
    /// Deployment to name it after, as Istio does).
    pub workload: Arc<str>,
    /// The pod's namespace.
    pub namespace: Arc<str>,
    /// The pod's SPIFFE id, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    pub principal: Arc<str>,
    /// `<name>.<namespace>.svc.<cluster domain>` of the first service by name
    /// that selects the pod, or `unknown`.
    pub service: Arc<str>,
}

// === impl WorkloadNames ===

impl WorkloadNames {
    /// The names of `pod`, whose identity is `principal`, among `services`
    /// of the cluster domain `cluster_domain`; `services` need only hold
    /// those of the pod's namespace. The texts come from `strings`.
    #[must_use]
    pub fn new<'a>(
        pod: &Pod,
        principal: Arc<str>,
        services: impl IntoIterator<Item = &'a Service>,
        cluster_domain: &str,
        strings: &mut Interner,
    ) -> Self {
        let workload = pod
            .labels
            .get(WORKLOAD_LABEL)
            .filter(|app| !app.is_empty())
            .unwrap_or(&pod.name);
        let service =
            match mesh_core::service::first_selecting(services, &pod.namespace, &pod.labels) {
                Some(service) => strings.get(&service.hostname(cluster_domain)),
                None => strings.get(UNKNOWN),
            };
        Self {
            workload: strings.get(workload),
            namespace: strings.get(&pod.namespace),
            principal,
            service,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn workload_is_the_app_label_else_the_pod_name() {
        let principal: Arc<str> = "spiffe://cluster.local/ns/shop/sa/web".into();
        let mut strings = Interner::default();
        let labelled =
            pod("{name: web-7f9-abc, namespace: shop, ips: [10.0.0.1], labels: {app: web}}");
        let names = WorkloadNames::new(
            &labelled,
            principal.clone(),
            &[],
            "cluster.local",
            &mut strings,
        );
        assert_eq!(&*names.workload, "web");
        assert_eq!(&*names.namespace, "shop");
        assert_eq!(&*names.principal, "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(&*names.service, UNKNOWN);
        let bare =
            pod("{name: loner, namespace: shop, ips: [10.0.0.2], labels: {tier: x, app: ''}}");
        let names = WorkloadNames::new(&bare, principal, &[], "cluster.local", &mut strings);
        assert_eq!(&*names.workload, "loner");
    }

    #[test]
    fn service_is_the_first_selecting_one_by_name_in_the_cluster_domain() {
        let principal: Arc<str> = "spiffe://cluster.local/ns/shop/sa/web".into();
        let web = pod("{name: web-1, namespace: shop, ips: [10.0.0.1], labels: {app: web}}");
        let services: Vec<Service> = serde_yaml::from_str(
            "[{name: web-b, namespace: shop, selector: {app: web}},
              {name: web-a, namespace: shop, selector: {app: web}},
              {name: aaa, namespace: other, selector: {app: web}}]",
        )
        .unwrap();
        let names = WorkloadNames::new(
            &web,
            principal,
            &services,
            "corp.example",
            &mut Interner::default(),
        );
        assert_eq!(&*names.service, "web-a.shop.svc.corp.example");
    }
}
