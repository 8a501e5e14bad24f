//! `ambit waypoint apply | list | delete`: a namespace's waypoint in
//! Kubernetes, from the template `manifests/waypoint/template.yaml`
//! (compiled in).
//!
//! `apply` writes the waypoint's `ServiceAccount`, `ClusterRoleBinding` (to
//! the `ambit-waypoint` role), `Deployment` and `Service` by server-side
//! apply (field manager `ambit`), then labels the namespace
//! `ambit.dev/use-waypoint=NAME` so that its Services' traffic goes through
//! it; `--wait` follows the Deployment until a replica is ready. `list`
//! shows every waypoint `Deployment` (label `ambit.dev/waypoint`) with its
//! readiness and the Services that use it. `delete` removes the objects
//! `apply` wrote and the namespace label if it names this waypoint; Services
//! that still name it on their own label are listed, since their traffic
//! fails closed until they are relabelled.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Service},
};
use kube::{
    Api, Client,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    },
};
use node_agent::kube_source::translate::{USE_WAYPOINT_LABEL, WAYPOINT_LABEL, waypoint_of};
use serde::{Deserialize as _, Serialize};
use serde_json::{Value, json};

use crate::{Output, render, table};

/// The template `apply` fills in.
const TEMPLATE: &str = include_str!("../../manifests/waypoint/template.yaml");
/// The template's placeholder for the waypoint's name.
const NAME_PLACEHOLDER: &str = "NAME";
/// The template's placeholder for its namespace.
const NAMESPACE_PLACEHOLDER: &str = "NAMESPACE";
/// The server-side apply field manager.
const FIELD_MANAGER: &str = "ambit";
/// How often `--wait` looks at the Deployment.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Why a waypoint command failed.
#[derive(Debug, thiserror::Error)]
pub enum WaypointError {
    /// No API server configuration (no kubeconfig, not in a cluster, bad URL).
    #[error("cannot configure the Kubernetes client: {0} (set KUBECONFIG, or --kube-api-url)")]
    Config(String),
    /// A request to the API server failed.
    #[error("{action}: {source} (is the API server at {server} reachable, and may you {verb}?)")]
    Api {
        /// What was being done, e.g. `apply deployment shop/waypoint`.
        action: String,
        /// The verb RBAC would need.
        verb: &'static str,
        /// The API server's URL.
        server: String,
        /// The client's error.
        source: Box<kube::Error>,
    },
    /// The namespace does not exist.
    #[error("namespace {0:?} not found (create it first: kubectl create namespace {0})")]
    NoNamespace(String),
    /// The name is not a DNS label.
    #[error(
        "{0:?} is not a valid waypoint name: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"
    )]
    BadName(String),
    /// The compiled-in template does not parse (a build defect).
    #[error("the waypoint template does not parse: {0}")]
    Template(String),
    /// `delete` found nothing to delete.
    #[error("no waypoint {name:?} in namespace {namespace:?} (see `ambit waypoint list`)")]
    NotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// `--wait` ran out of time.
    #[error(
        "waypoint {namespace}/{name} not ready after {secs} s (check `kubectl -n {namespace} describe deployment {name}` and the pod's log; its readiness says why: `kubectl -n {namespace} port-forward deploy/{name} 15020` then `curl localhost:15020/healthz/ready`)"
    )]
    NotReady {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The time waited.
        secs: u64,
    },
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// `ambit waypoint ...`
#[derive(Debug, clap::Args)]
pub struct WaypointArgs {
    /// The API server's URL; without it, the kubeconfig (`KUBECONFIG`,
    /// `~/.kube/config`) or the in-cluster configuration is used.
    #[arg(long, global = true, env = "AMBIT_KUBE_API_URL")]
    pub kube_api_url: Option<String>,
    #[command(subcommand)]
    pub command: WaypointCommand,
}

/// The waypoint subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum WaypointCommand {
    /// Deploy (or update) a namespace's waypoint and label the namespace
    /// to use it.
    Apply(ApplyArgs),
    /// The waypoints, their readiness and the Services that use them.
    List {
        /// Only this namespace's waypoints (default: every namespace).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// Remove a waypoint and the namespace's label naming it.
    Delete(Target),
}

/// Which waypoint.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The waypoint's namespace.
    #[arg(long, short = 'n')]
    pub namespace: String,
    /// The waypoint's name (its Deployment, Service and account).
    #[arg(long, default_value = "waypoint", value_parser = parse_name)]
    pub name: String,
}

/// `ambit waypoint apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub target: Target,
    /// The waypoint's image.
    #[arg(long, default_value = concat!("ghcr.io/ambit-mesh/ambit-waypoint:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Leave the namespace's labels alone (Services opt in on their own
    /// `ambit.dev/use-waypoint` label).
    #[arg(long)]
    pub no_namespace_label: bool,
    /// Print the objects instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until a replica is ready, for at most this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<u64>,
}

/// What `apply` or `delete` did, for `-o json|yaml`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The waypoint's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `kind/name` of each object applied or deleted.
    pub objects: Vec<String>,
    /// The namespace's `ambit.dev/use-waypoint` label now (`None`: unset).
    pub namespace_label: Option<String>,
    /// Services whose own label still names the waypoint (after `delete`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub still_named_by: Vec<String>,
    /// Ready replicas when `--wait` ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
}

/// One row of `list`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    /// The waypoint's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Ready replicas.
    pub ready_replicas: i32,
    /// Desired replicas.
    pub replicas: i32,
    /// The container image.
    pub image: String,
    /// Whether the namespace's label names it.
    pub namespace_uses_it: bool,
    /// The Services whose traffic goes through it.
    pub services: Vec<String>,
    /// Seconds since the Deployment was created.
    pub age_seconds: Option<u64>,
}

/// Runs a waypoint command and returns what to print.
pub fn run(args: &WaypointArgs, output: Output) -> Result<String, WaypointError> {
    if let WaypointCommand::Apply(apply) = &args.command
        && apply.dry_run
    {
        let objects = objects(&apply.target, &apply.image)?;
        return Ok(match output {
            Output::Json => serde_json::to_string_pretty(&objects).unwrap_or_default() + "\n",
            _ => objects.iter().fold(String::new(), |mut text, object| {
                let _ = write!(
                    text,
                    "---\n{}",
                    serde_yaml::to_string(object).unwrap_or_default()
                );
                text
            }),
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let kube = Kube::connect(args.kube_api_url.as_deref()).await?;
        match &args.command {
            WaypointCommand::Apply(apply) => {
                let outcome = kube.apply(apply, output).await?;
                Ok(table::output(&outcome, output, |o| {
                    outcome_text(o, "applied")
                }))
            }
            WaypointCommand::List { namespace } => {
                let listed = kube.list(namespace.as_deref()).await?;
                Ok(table::output(&listed, output, |l| list_table(l)))
            }
            WaypointCommand::Delete(target) => {
                let outcome = kube.delete(target).await?;
                Ok(table::output(&outcome, output, |o| {
                    outcome_text(o, "deleted")
                }))
            }
        }
    })
}

/// A waypoint name must be a DNS label: it names a Deployment, a Service
/// and a `ServiceAccount`, and is the last part of a SPIFFE id.
fn parse_name(name: &str) -> Result<String, WaypointError> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if valid && name != "none" {
        Ok(name.to_owned())
    } else {
        Err(WaypointError::BadName(name.to_owned()))
    }
}

/// The template's objects for `target`, with `image`.
fn objects(target: &Target, image: &str) -> Result<Vec<Value>, WaypointError> {
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(TEMPLATE) {
        let mut object = Value::deserialize(document)
            .map_err(|error| WaypointError::Template(error.to_string()))?;
        fill(&mut object, &target.namespace, &target.name);
        if let Some(containers) = object
            .pointer_mut("/spec/template/spec/containers")
            .and_then(Value::as_array_mut)
        {
            for container in containers {
                container["image"] = json!(image);
            }
        }
        objects.push(object);
    }
    Ok(objects)
}

/// Replaces the placeholders in every string of `value`: a string that is
/// a placeholder, or a `:`-separated part of one that is.
fn fill(value: &mut Value, namespace: &str, name: &str) {
    match value {
        Value::String(text) => {
            let parts: Vec<&str> = text
                .split(':')
                .map(|part| match part {
                    NAME_PLACEHOLDER => name,
                    NAMESPACE_PLACEHOLDER => namespace,
                    other => other,
                })
                .collect();
            *text = parts.join(":");
        }
        Value::Array(items) => items.iter_mut().for_each(|v| fill(v, namespace, name)),
        Value::Object(map) => map.values_mut().for_each(|v| fill(v, namespace, name)),
        _ => {}
    }
}

/// `kind/name` as kubectl prints it.
fn object_ref(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?").to_lowercase(),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The API resource of a template object, from its apiVersion and kind.
fn api_resource(object: &Value) -> ApiResource {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap_or_default();
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

/// The text form of `apply` and `delete`.
fn outcome_text(outcome: &Outcome, verb: &str) -> String {
    let mut text = String::new();
    for object in &outcome.objects {
        let _ = writeln!(text, "{object} {verb}");
    }
    match &outcome.namespace_label {
        Some(label) => {
            let _ = writeln!(
                text,
                "namespace/{} labelled {USE_WAYPOINT_LABEL}={label}",
                outcome.namespace
            );
        }
        None => {
            let _ = writeln!(
                text,
                "namespace/{} has no {USE_WAYPOINT_LABEL} label",
                outcome.namespace
            );
        }
    }
    if let Some(ready) = outcome.ready_replicas {
        let _ = writeln!(
            text,
            "waypoint {}/{} ready ({ready} replica(s))",
            outcome.namespace, outcome.name
        );
    }
    if !outcome.still_named_by.is_empty() {
        let _ = writeln!(
            text,
            "warning: these Services still name the waypoint on their own {USE_WAYPOINT_LABEL} label, and their traffic fails closed until relabelled: {}",
            outcome.still_named_by.join(", ")
        );
    }
    text
}

/// The table form of `list`.
fn list_table(listed: &[Listed]) -> String {
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|w| {
            let used_by = match (w.namespace_uses_it, w.services.len()) {
                (true, n) => format!("namespace ({n} services)"),
                (false, 0) => "-".to_owned(),
                (false, _) => w.services.join(","),
            };
            vec![
                w.namespace.clone(),
                w.name.clone(),
                format!("{}/{}", w.ready_replicas, w.replicas),
                used_by,
                table::or_dash(w.age_seconds.map(render::duration)),
                w.image.clone(),
            ]
        })
        .collect();
    table::render(
        &["NAMESPACE", "NAME", "READY", "USED BY", "AGE", "IMAGE"],
        &rows,
    )
}

/// A client for the API server, and its URL for error messages.
struct Kube {
    client: Client,
    server: String,
}

impl Kube {
    async fn connect(url: Option<&str>) -> Result<Self, WaypointError> {
        let config = node_agent::kube_source::config_for(url)
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
    async fn namespace_labels(
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
    async fn label_namespace(
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

    async fn apply(&self, args: &ApplyArgs, output: Output) -> Result<Outcome, WaypointError> {
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
    async fn wait_ready(
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

    async fn list(&self, namespace: Option<&str>) -> Result<Vec<Listed>, WaypointError> {
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
    async fn services_using(
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

    async fn delete(&self, target: &Target) -> Result<Outcome, WaypointError> {
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

/// A progress line on stderr, for people (not with `-o json|yaml`, whose
/// stdout is for programs; stderr stays free of noise there too).
fn progress(output: Output, line: &str) {
    if output == Output::Table {
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(namespace: &str, name: &str) -> Target {
        Target {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn the_template_is_filled_in_everywhere() {
        let objects = objects(&target("shop", "wp"), "registry/wp:1").unwrap();
        let kinds: Vec<String> = objects.iter().map(object_ref).collect();
        assert_eq!(
            kinds,
            [
                "serviceaccount/wp",
                "clusterrolebinding/ambit-waypoint:shop:wp",
                "deployment/wp",
                "service/wp"
            ]
        );
        let text = serde_json::to_string(&objects).unwrap();
        for placeholder in ["\"NAME\"", ":NAME\"", "NAMESPACE"] {
            assert!(!text.contains(placeholder), "{placeholder} left in {text}");
        }
        let deployment = &objects[2];
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "registry/wp:1");
        assert_eq!(
            container["args"],
            json!(["--kubernetes", "--name", "wp", "--namespace", "shop"])
        );
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["labels"]["ambit.dev/waypoint"],
            "wp"
        );
        assert_eq!(
            deployment["spec"]["template"]["spec"]["serviceAccountName"],
            "wp"
        );
        assert_eq!(
            objects[1]["subjects"][0],
            json!({"kind": "ServiceAccount", "name": "wp", "namespace": "shop"})
        );
        assert!(objects[1]["metadata"].get("namespace").is_none());
        // Strings that merely contain a placeholder are left alone.
        let mut value = json!({"a": "NAME_X", "b": "x:NAME", "c": ["NAMESPACE"]});
        fill(&mut value, "ns", "n");
        assert_eq!(value, json!({"a": "NAME_X", "b": "x:n", "c": ["ns"]}));
    }

    #[test]
    fn names_must_be_dns_labels() {
        for good in ["waypoint", "wp-1", "a", &"x".repeat(63)] {
            assert!(parse_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "WP",
            "-wp",
            "wp-",
            "wp.x",
            "wp_x",
            "none",
            &"x".repeat(64),
        ] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_resources_follow_the_objects() {
        let objects = objects(&target("shop", "wp"), "i").unwrap();
        let plural: Vec<String> = objects.iter().map(|o| api_resource(o).plural).collect();
        assert_eq!(
            plural,
            [
                "serviceaccounts",
                "clusterrolebindings",
                "deployments",
                "services"
            ]
        );
        assert_eq!(api_resource(&objects[2]).api_version, "apps/v1");
    }

    #[test]
    fn outcomes_and_listings_read_naturally() {
        let outcome = Outcome {
            namespace: "shop".into(),
            name: "wp".into(),
            objects: vec!["deployment/wp".into()],
            namespace_label: None,
            still_named_by: vec!["web".into()],
            ready_replicas: None,
        };
        let text = outcome_text(&outcome, "deleted");
        assert!(
            text.starts_with(
                "deployment/wp deleted\nnamespace/shop has no ambit.dev/use-waypoint label\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("fails closed until relabelled: web"),
            "{text}"
        );
        let table = list_table(&[Listed {
            namespace: "shop".into(),
            name: "wp".into(),
            ready_replicas: 1,
            replicas: 1,
            image: "i".into(),
            namespace_uses_it: true,
            services: vec!["a".into(), "b".into()],
            age_seconds: Some(65),
        }]);
        assert_eq!(
            table,
            "NAMESPACE  NAME  READY  USED BY                 AGE   IMAGE\nshop       wp    1/1    namespace (2 services)  1m5s  i\n"
        );
    }
}
