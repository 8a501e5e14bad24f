//! The Kubernetes manifests, validated offline: `kubectl kustomize
//! manifests/` builds and holds what the `DaemonSet`, the controller and RBAC
//! must be; every core object passes `kubernetes-validate` (strict, for
//! Kubernetes 1.33); every example custom resource in `docs/` and
//! `manifests/` passes its CRD's schema. Each check is also shown to fail
//! on a broken input, so none passes vacuously.
//!
//! The tools come from `cargo xtask setup`: `kubectl` (Debian's
//! `kubernetes-client` when none is installed) and `kubernetes-validate`
//! in a virtual environment under /opt/ambit-tools.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize as _;
use serde_yaml::Value;

const VENV: &str = "/opt/ambit-tools/kubernetes-validate";
const CRD: &str = "manifests/crds/authorizationpolicies.security.ambit.dev.yaml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    let program = program.as_ref();
    Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {}: {error}; run `cargo xtask setup` (it installs kubectl and kubernetes-validate)",
                program.to_string_lossy()
            )
        })
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `kubectl kustomize manifests/`, as YAML documents.
fn built() -> (String, Vec<Value>) {
    let out = run("kubectl", &["kustomize", "manifests"]);
    assert!(
        out.status.success(),
        "kubectl kustomize manifests/ failed:\n{}",
        text(&out)
    );
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    let docs = serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| Value::deserialize(doc).expect("kustomize writes YAML"))
        .collect();
    (yaml, docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the build"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn kustomize_builds_the_agent_controller_crd_and_least_privilege_rbac() {
    let (_, docs) = built();
    let ds = find(&docs, "DaemonSet", "ambit-node-agent");
    assert_eq!(ds["metadata"]["namespace"], "ambit-system");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    let update = &ds["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!(
        (
            update["maxUnavailable"].as_u64(),
            update["maxSurge"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "15020");
    let agent = &spec["containers"][0];
    assert_eq!(
        agent["readinessProbe"]["httpGet"]["port"].as_u64(),
        Some(15021)
    );
    let security = &agent["securityContext"];
    assert_eq!(
        security["privileged"].as_bool(),
        Some(false),
        "capabilities, not privileged"
    );
    let caps = strings(&security["capabilities"]["add"]);
    for cap in ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"] {
        assert!(caps.iter().any(|c| c == cap), "{cap} missing from {caps:?}");
    }
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    let host_paths: Vec<String> = spec["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v["hostPath"]["path"].as_str().map(str::to_owned))
        .collect();
    assert!(
        host_paths.contains(&"/sys/fs/bpf".to_owned()),
        "{host_paths:?}"
    );
    assert!(
        host_paths.contains(&"/sys/fs/cgroup".to_owned()),
        "{host_paths:?}"
    );
    assert!(
        strings(&agent["args"]).contains(&"--kubernetes".to_owned()),
        "the agent runs in Kubernetes mode"
    );

    find(&docs, "Deployment", "ambit-controller");
    find(&docs, "Service", "ambit-controller");
    let crd = find(
        &docs,
        "CustomResourceDefinition",
        "authorizationpolicies.security.ambit.dev",
    );
    let version = &crd["spec"]["versions"][0];
    assert!(
        version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rules"]
            .is_mapping()
    );
    assert!(version["subresources"]["status"].is_mapping());

    // The agent only reads.
    let role = find(&docs, "ClusterRole", "ambit-node-agent");
    for rule in role["rules"].as_sequence().expect("rules") {
        for verb in strings(&rule["verbs"]) {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str()),
                "the agent may {verb}: {rule:?}"
            );
        }
        assert!(
            !strings(&rule["resources"])
                .iter()
                .any(|r| r == "secrets" || r == "*"),
            "{rule:?}"
        );
    }
    // The controller reads only its own Secret.
    let controller_role = find(&docs, "Role", "ambit-controller");
    let secrets = controller_role["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .find(|r| strings(&r["resources"]).contains(&"secrets".to_owned()))
        .expect("a secrets rule");
    assert_eq!(strings(&secrets["resourceNames"]), ["ambit-ca"]);
}

fn kubernetes_validate(file: &Path) -> Output {
    let command = Path::new(VENV).join("bin/kubernetes-validate");
    run(
        command,
        &["--strict", "-k", "1.33", file.to_str().expect("UTF-8")],
    )
}

#[test]
fn every_core_object_passes_kubernetes_validate() {
    let (yaml, _) = built();
    let dir = tempdir("validate");
    let build = dir.join("build.yaml");
    std::fs::write(&build, &yaml).expect("write the build");
    let out = kubernetes_validate(&build);
    assert!(out.status.success(), "kubernetes-validate:\n{}", text(&out));
    let report = text(&out);
    for object in [
        "daemonset/ambit-node-agent",
        "deployment/ambit-controller",
        "clusterrole/ambit-node-agent",
    ] {
        assert!(report.contains(object), "{object} not validated:\n{report}");
    }
    let waypoint = kubernetes_validate(&root().join("manifests/waypoint/template.yaml"));
    assert!(
        waypoint.status.success(),
        "waypoint template:\n{}",
        text(&waypoint)
    );

    // A typo in a field fails: the check is real.
    let broken = dir.join("broken.yaml");
    std::fs::write(
        &broken,
        yaml.replacen("priorityClassName:", "priorityClasName:", 1),
    )
    .expect("write");
    let out = kubernetes_validate(&broken);
    assert!(
        !out.status.success(),
        "a misspelt field passed:\n{}",
        text(&out)
    );
}

fn validate_crs(paths: &[&str]) -> Output {
    let mut args = vec!["tests/scripts/validate_crs.py", "--crd", CRD];
    args.extend_from_slice(paths);
    run(Path::new(VENV).join("bin/python"), &args)
}

#[test]
fn every_example_custom_resource_matches_its_crd() {
    let out = validate_crs(&["docs", "manifests"]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let summary: serde_json::Value =
        serde_json::from_str(report.trim().lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("no summary ({e}):\n{report}"));
    assert!(
        summary["validated"].as_u64() >= Some(3),
        "too few examples found:\n{report}"
    );

    // A broken example fails, naming the field.
    let dir = tempdir("crs");
    let broken = dir.join("broken.md");
    std::fs::write(
        &broken,
        "```yaml\napiVersion: security.ambit.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: shop}\nspec:\n  action: MAYBE\n  rules: [{from: [{source: {principal: [x]}}]}]\n```\n",
    )
    .expect("write");
    let out = validate_crs(&[broken.to_str().expect("UTF-8")]);
    let report = text(&out);
    assert!(!out.status.success(), "a broken example passed:\n{report}");
    assert!(
        report.contains("spec.action") && report.contains("principal"),
        "{report}"
    );
}

/// A fresh directory under the system's temporary directory.
fn tempdir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ambit-manifests-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
