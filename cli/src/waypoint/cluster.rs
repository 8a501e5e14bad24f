//! The waypoint commands' calls to the API server: server-side apply of the
//! template's objects, the namespace label, listing, deletion and `--wait`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Service},
};
use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
};
use mesh_kube::{
    labels::{USE_WAYPOINT_LABEL, WAYPOINT_LABEL},
    translate::waypoint_of,
};
use serde_json::json;

use super::{
    ApplyArgs, FIELD_MANAGER, Listed, Outcome, Target, WAIT_POLL, WaypointError, api_resource,
    object_ref, objects, progress,
};
use crate::table::Output;

/// A client for the API server, and its URL for error messages.
pub(super) struct Kube {
    client: Client,
    server: String,
}

impl Kube {
    pub(super) async fn connect(url: Option<&str>) -> Result<Self, WaypointError> {
        let config = mesh_kube::client::config_for(url)
            .await
            .map_err(|e| WaypointError::Config(e.to_string()))?;
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|e| WaypointError::Config(e.to_string()))?;
        Ok(Self { client, server })
    }

    fn error(
        &self,
        action: String,
        verb: &'static str,
    ) -> impl FnOnce(kube::Error) -> WaypointError {
        let server = self.server.clone();
        move |source| WaypointError::Api {
            action,
            verb,
            server,
            source: Box::new(source),
        }
    }

    /// The namespace's labels, or [`WaypointError::NoNamespace`].
    pub(super) async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<BTreeMap<String, String>, WaypointError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let found = namespaces
            .get_opt(namespace)
            .await
            .map_err(self.error(format!("read namespace {namespace}"), "get namespaces"))?
            .ok_or_else(|| WaypointError::NoNamespace(namespace.to_owned()))?;
        Ok(found.metadata.labels.unwrap_or_default())
    }

    /// Sets (`Some`) or removes (`None`) the namespace's waypoint label.
    pub(super) async fn label_namespace(
        &self,
        namespace: &str,
        value: Option<&str>,
    ) -> Result<(), WaypointError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let patch = json!({"metadata": {"labels": {USE_WAYPOINT_LABEL: value}}});
        namespaces
            .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(self.error(format!("label namespace {namespace}"), "patch namespaces"))?;
        Ok(())
    }

    pub(super) async fn apply(
        &self,
        args: &ApplyArgs,
        output: Output,
    ) -> Result<Outcome, WaypointError> {
        let target = &args.target;
        let labels = self.namespace_labels(&target.namespace).await?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut applied = Vec::new();
        for object in objects(target, &args.image)? {
            let resource = api_resource(&object);
            let api: Api<DynamicObject> = if object["metadata"]["namespace"].is_string() {
                Api::namespaced_with(self.client.clone(), &target.namespace, &resource)
            } else {
                Api::all_with(self.client.clone(), &resource)
            };
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let reference = object_ref(&object);
            api.patch(&name, &params, &Patch::Apply(&object))
                .await
                .map_err(self.error(format!("apply {reference}"), "patch (apply) it"))?;
            progress(output, &format!("{reference} applied"));
            applied.push(reference);
        }
        let namespace_label = if args.no_namespace_label {
            labels.get(USE_WAYPOINT_LABEL).cloned()
        } else {
            if let Some(previous) = labels
                .get(USE_WAYPOINT_LABEL)
                .filter(|p| **p != target.name)
            {
                progress(
                    output,
                    &format!(
                        "namespace/{} used waypoint {previous:?}; now {:?}",
                        target.namespace, target.name
                    ),
                );
            }
            self.label_namespace(&target.namespace, Some(&target.name))
                .await?;
            Some(target.name.clone())
        };
        let ready_replicas = match args.wait {
            Some(secs) => Some(
                self.wait_ready(target, Duration::from_secs(secs), output)
                    .await?,
            ),
            None => None,
        };
        Ok(Outcome {
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            objects: applied,
            namespace_label,
            still_named_by: Vec::new(),
            ready_replicas,
        })
    }

    /// Polls the Deployment until a replica is ready, showing progress.
    pub(super) async fn wait_ready(
        &self,
        target: &Target,
        limit: Duration,
        output: Output,
    ) -> Result<i32, WaypointError> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &target.namespace);
        let started = Instant::now();
        let mut last_shown = None;
        loop {
            let deployment = deployments.get(&target.name).await.map_err(self.error(
                format!("read deployment {}/{}", target.namespace, target.name),
                "get deployments",
            ))?;
            let ready = deployment
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            if ready > 0 {
                return Ok(ready);
            }
            let waited = started.elapsed().as_secs();
            if last_shown != Some(waited) && waited.is_multiple_of(5) {
                progress(
                    output,
                    &format!(
                        "waiting for waypoint {}/{} to be ready ({waited} s)",
                        target.namespace, target.name
                    ),
                );
                last_shown = Some(waited);
            }
            if started.elapsed() >= limit {
                return Err(WaypointError::NotReady {
                    namespace: target.namespace.clone(),
                    name: target.name.clone(),
                    secs: limit.as_secs(),
                });
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    pub(super) async fn list(&self, namespace: Option<&str>) -> Result<Vec<Listed>, WaypointError> {
        let deployments: Api<Deployment> = match namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        };
        let found = deployments
            .list(&ListParams::default().labels(WAYPOINT_LABEL))
            .await
            .map_err(self.error("list waypoint deployments".to_owned(), "list deployments"))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut listed = Vec::new();
        for deployment in found.items {
            let meta = &deployment.metadata;
            let (Some(namespace), Some(name)) = (meta.namespace.clone(), meta.name.clone()) else {
                continue;
            };
            let labels = self.namespace_labels(&namespace).await.unwrap_or_default();
            let services = self.services_using(&namespace, &name, &labels).await?;
            listed.push(Listed {
                namespace_uses_it: labels.get(USE_WAYPOINT_LABEL) == Some(&name),
                ready_replicas: deployment
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0),
                replicas: deployment
                    .spec
                    .as_ref()
                    .and_then(|s| s.replicas)
                    .unwrap_or(1),
                image: deployment
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.image.clone())
                    .unwrap_or_default(),
                age_seconds: meta
                    .creation_timestamp
                    .as_ref()
                    .and_then(|t| u64::try_from(t.0.as_second()).ok())
                    .map(|created| now.saturating_sub(created)),
                services,
                namespace,
                name,
            });
        }
        listed.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(listed)
    }

    /// The Services in `namespace` whose traffic goes through waypoint
    /// `name`, as the agents decide it.
    pub(super) async fn services_using(
        &self,
        namespace: &str,
        name: &str,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, WaypointError> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let found = services
            .list(&ListParams::default())
            .await
            .map_err(self.error(format!("list services in {namespace}"), "list services"))?;
        Ok(found
            .items
            .into_iter()
            .filter(|service| {
                waypoint_of(service.metadata.labels.as_ref(), Some(namespace_labels)).as_deref()
                    == Some(name)
            })
            .filter_map(|service| service.metadata.name)
            .collect())
    }

    pub(super) async fn delete(&self, target: &Target) -> Result<Outcome, WaypointError> {
        let labels = self.namespace_labels(&target.namespace).await?;
        let mut deleted = Vec::new();
        // The reverse of apply's order: the Service first, so no new
        // connections are sent to a waypoint that is going away.
        for object in objects(target, "")?.iter().rev() {
            let resource = api_resource(object);
            let api: Api<DynamicObject> = if object["metadata"]["namespace"].is_string() {
                Api::namespaced_with(self.client.clone(), &target.namespace, &resource)
            } else {
                Api::all_with(self.client.clone(), &resource)
            };
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let reference = object_ref(object);
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => deleted.push(reference),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    return Err(self.error(format!("delete {reference}"), "delete it")(
                        error,
                    ));
                }
            }
        }
        let labelled = labels.get(USE_WAYPOINT_LABEL) == Some(&target.name);
        if deleted.is_empty() && !labelled {
            return Err(WaypointError::NotFound {
                namespace: target.namespace.clone(),
                name: target.name.clone(),
            });
        }
        let mut namespace_label = labels.get(USE_WAYPOINT_LABEL).cloned();
        if labelled {
            self.label_namespace(&target.namespace, None).await?;
            namespace_label = None;
        }
        let mut remaining = labels;
        remaining.remove(USE_WAYPOINT_LABEL);
        let still_named_by = self
            .services_using(&target.namespace, &target.name, &remaining)
            .await?;
        Ok(Outcome {
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            objects: deleted,
            namespace_label,
            still_named_by,
            ready_replicas: None,
        })
    }
}
