//! The objects the scale bench serves: namespaces `scale-000`…, each with
//! the same shape: apps of five pods each, a Service per app with its
//! `EndpointSlice`, and an ALLOW policy per app letting the next app's
//! service account in. Every second namespace is labelled into the mesh.
//!
//! Addresses: pods from 10.192.0.1 up (10.192.0.0/11 holds two million),
//! cluster IPs 10.97.0.0/16. They are API data only: the pods are on
//! imaginary nodes and nothing connects to them.

use std::net::Ipv4Addr;

use ambit_tests::fake_kube::FakeKube;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::BenchError;

/// How many objects of each kind.
#[derive(Clone, Debug, Serialize)]
pub struct Counts {
    /// The imaginary nodes the pods are spread over.
    pub nodes: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Pods.
    pub pods: usize,
    /// Services, one `EndpointSlice` each.
    pub services: usize,
    /// `AuthorizationPolicy` objects.
    pub policies: usize,
}

// === impl Counts ===

impl Counts {
    /// 10,000 pods on 100 nodes, 2,000 services, 1,000 policies.
    pub fn ten_thousand() -> Self {
        Self {
            nodes: 100,
            namespaces: 100,
            pods: 10_000,
            services: 2_000,
            policies: 1_000,
        }
    }

    /// The same cluster ten times over: 100,000 pods on 1,000 nodes, 20,000
    /// services, 10,000 policies.
    pub fn hundred_thousand() -> Self {
        let ten = Self::ten_thousand();
        Self {
            nodes: ten.nodes * 10,
            namespaces: ten.namespaces * 10,
            pods: ten.pods * 10,
            services: ten.services * 10,
            policies: ten.policies * 10,
        }
    }

    fn apps_per_namespace(&self) -> usize {
        self.services / self.namespaces
    }
}

/// Writes the corpus into the API server.
pub fn load(kube: &FakeKube, counts: &Counts) -> Result<(), BenchError> {
    let apply = |object: Value| {
        kube.apply(object)
            .map(drop)
            .map_err(|e| BenchError::failed(format!("load the scale corpus: {e}")))
    };
    let apps = counts.apps_per_namespace();
    let policies_per_namespace = counts.policies / counts.namespaces;
    let pods_per_namespace = counts.pods / counts.namespaces;
    let mut pod_index = 0_usize;
    for n in 0..counts.namespaces {
        crate::error::check_interrupted()?;
        let namespace = format!("scale-{n:03}");
        let labels = if n % 2 == 0 {
            json!({"ambit.dev/mesh": "enabled"})
        } else {
            json!({})
        };
        apply(json!({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": namespace, "labels": labels}}))?;
        for app in 0..apps {
            let mut addresses = Vec::new();
            for replica in 0..pods_per_namespace / apps {
                let ip = pod_ip(pod_index);
                pod_index += 1;
                addresses.push(ip);
                apply(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("app-{app}-{replica}"), "namespace": namespace,
                                 "labels": {"app": format!("app-{app}")}},
                    "spec": {"nodeName": format!("node-{:04}", pod_index % counts.nodes),
                             "serviceAccountName": format!("sa-{app}"),
                             "containers": [{"name": "app", "image": "app"}]},
                    "status": {"phase": "Running", "podIP": ip.to_string(),
                               "podIPs": [{"ip": ip.to_string()}]},
                }))?;
            }
            let service_index = n * apps + app;
            apply(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("app-{app}"), "namespace": namespace},
                "spec": {"selector": {"app": format!("app-{app}")},
                         "clusterIP": cluster_ip(service_index).to_string(),
                         "clusterIPs": [cluster_ip(service_index).to_string()],
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            }))?;
            apply(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("app-{app}-x"), "namespace": namespace,
                             "labels": {"kubernetes.io/service-name": format!("app-{app}")}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": addresses.iter().map(|ip| json!({
                    "addresses": [ip.to_string()], "conditions": {"ready": true}})).collect::<Vec<_>>(),
            }))?;
            if app < policies_per_namespace {
                apply(json!({
                    "apiVersion": "security.ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": format!("allow-app-{app}"), "namespace": namespace},
                    "spec": {"selector": {"matchLabels": {"app": format!("app-{app}")}},
                             "action": "ALLOW",
                             "rules": [{"from": [{"source": {"principals": [
                                 format!("cluster.local/ns/{namespace}/sa/sa-{}", (app + 1) % apps)]}}],
                                        "to": [{"operation": {"ports": ["8080"]}}]}]},
                }))?;
            }
        }
    }
    Ok(())
}

fn pod_ip(index: usize) -> Ipv4Addr {
    let index = u32::try_from(index).unwrap_or(0) + 1;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 192, 0, 0)) + index)
}

fn cluster_ip(index: usize) -> Ipv4Addr {
    let index = u32::try_from(index).unwrap_or(0) + 1;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + index)
}
