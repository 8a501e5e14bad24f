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

use std::{fmt::Write as _, time::Duration};

use kube::api::{ApiResource, GroupVersionKind};
use mesh_kube::labels::USE_WAYPOINT_LABEL;
use serde::{Deserialize as _, Serialize};
use serde_json::{Value, json};

use crate::render;
use crate::table::{self, Output};

mod cluster;
#[cfg(test)]
mod tests;

use self::cluster::Kube;

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

/// A progress line on stderr, for people (not with `-o json|yaml`, whose
/// stdout is for programs; stderr stays free of noise there too).
fn progress(output: Output, line: &str) {
    if output == Output::Table {
        eprintln!("{line}");
    }
}
