//! The Kubernetes manifests, validated offline: `kubectl kustomize
//! manifests/` builds and holds what the `DaemonSet`, the controller and
//! RBAC must be (checked against the binaries' own settings and against
//! docs/install.md); every core object passes `kubernetes-validate`
//! (strict, for Kubernetes 1.30 and 1.33); every example custom resource
//! in `docs/` and `manifests/` passes its CRD's schema and is accepted by
//! the model the agents run (authorization policies, peer
//! authentications); each CRD's schema and its model agree on what is
//! valid. Each check is also shown to fail on a broken input,
//! so none passes vacuously.
//!
//! The tools come from `cargo xtask setup`: `kubectl` (Debian's
//! `kubernetes-client` when none is installed) and `kubernetes-validate`
//! (with `jsonschema` and `PyYAML`) in a virtual environment under
//! /opt/ambit-tools, which also runs `tests/scripts/validate_crs.py`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize as _;
use serde_yaml::Value;

const VENV: &str = "/opt/ambit-tools/kubernetes-validate";
const CRD: &str = "manifests/crds/authorizationpolicies.security.ambit.dev.yaml";
const PEER_AUTHN_CRD: &str = "manifests/crds/peerauthentications.security.ambit.dev.yaml";
const AGENT_CONFIG: &str = "node-agent/src/config.rs";
/// The agent's settings that the CLI shares, named in mesh-core and
/// re-used by [`AGENT_CONFIG`].
const AGENT_SHARED_SETTINGS: &str = "mesh-core/src/agent_settings.rs";
const CONTROLLER_CONFIG: &str = "controller/src/config.rs";
const WAYPOINT_CONFIG: &str = "waypoint/src/config.rs";
const SETUP_HINT: &str = "run `cargo xtask setup` (it installs kubectl and kubernetes-validate)";

/// The capabilities the agent holds; docs/install.md says why for each.
const AGENT_CAPABILITIES: [&str; 5] = ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"];

/// Everything the agent may read, and nothing else.
const AGENT_RESOURCES: [(&str, &str); 7] = [
    ("", "namespaces"),
    ("", "pods"),
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("security.ambit.dev", "authorizationpolicies"),
    ("security.ambit.dev", "peerauthentications"),
    ("gateway.networking.k8s.io", "httproutes"),
];

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
                "cannot run {}: {error}; {SETUP_HINT}",
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

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// `kubectl kustomize manifests/`, as text and as YAML documents.
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

/// The entry of a list of named objects (`env`, `volumes`, `volumeMounts`).
fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_sequence()
        .into_iter()
        .flatten()
        .find(|item| item["name"] == name)
        .unwrap_or_else(|| panic!("no {name:?} in {list:?}"))
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a str {
    named(&container["env"], name)["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} has no plain value"))
}

/// The (group, resource) pairs `role` grants, asserting it only reads.
fn reads_only(role: &Value) -> BTreeSet<(String, String)> {
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        for verb in strings(&rule["verbs"]) {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str()),
                "{} may {verb}: {rule:?}",
                role["metadata"]["name"].as_str().unwrap_or("?")
            );
        }
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                granted.insert((group.clone(), resource));
            }
        }
    }
    granted
}

/// [`AGENT_RESOURCES`] as a set.
fn agent_resources() -> BTreeSet<(String, String)> {
    AGENT_RESOURCES
        .iter()
        .map(|(g, r)| ((*g).to_owned(), (*r).to_owned()))
        .collect()
}

/// The environment variables and flags a container is given that the
/// binary's settings (`config_rs`) do not know: a typo is ignored at run
/// time, so it is caught here.
fn unknown_settings(container: &Value, config_rs: &str) -> Vec<String> {
    let mut source = read(config_rs);
    if config_rs == AGENT_CONFIG {
        source.push_str(&read(AGENT_SHARED_SETTINGS));
    }
    let mut unknown = Vec::new();
    for entry in container["env"].as_sequence().into_iter().flatten() {
        let name = entry["name"].as_str().expect("env name");
        if !source.contains(&format!("\"{name}\"")) {
            unknown.push(format!("variable {name}"));
        }
    }
    for arg in strings(&container["args"]) {
        let field = arg
            .strip_prefix("--")
            .and_then(|flag| flag.split('=').next())
            .unwrap_or_else(|| panic!("{arg:?} is not a --flag"))
            .replace('-', "_");
        if !source.contains(&format!("pub {field}:")) {
            unknown.push(format!("flag {arg}"));
        }
    }
    unknown
}

#[test]
fn kustomize_builds_the_agent_controller_crd_and_least_privilege_rbac() {
    let (_, docs) = built();
    let kinds: BTreeSet<(String, String)> = docs
        .iter()
        .map(|d| {
            let field = |value: &Value| value.as_str().unwrap_or_default().to_owned();
            (field(&d["kind"]), field(&d["metadata"]["name"]))
        })
        .collect();
    for (kind, name) in [
        ("Namespace", "ambit-system"),
        (
            "CustomResourceDefinition",
            "authorizationpolicies.security.ambit.dev",
        ),
        (
            "CustomResourceDefinition",
            "peerauthentications.security.ambit.dev",
        ),
        ("ServiceAccount", "ambit-node-agent"),
        ("ServiceAccount", "ambit-controller"),
        ("ClusterRole", "ambit-node-agent"),
        ("ClusterRole", "ambit-controller"),
        ("ClusterRoleBinding", "ambit-node-agent"),
        ("ClusterRoleBinding", "ambit-controller"),
        ("ClusterRole", "ambit-waypoint"),
        ("Role", "ambit-controller"),
        ("RoleBinding", "ambit-controller"),
        ("DaemonSet", "ambit-node-agent"),
        ("Deployment", "ambit-controller"),
        ("Service", "ambit-controller"),
    ] {
        assert!(
            kinds.contains(&(kind.to_owned(), name.to_owned())),
            "no {kind} {name} in the build: {kinds:?}"
        );
    }
    let namespace = find(&docs, "Namespace", "ambit-system");
    assert_eq!(
        namespace["metadata"]["labels"]["ambit.dev/mesh"], "disabled",
        "the mesh's own pods are never meshed"
    );
    let crd = find(
        &docs,
        "CustomResourceDefinition",
        "authorizationpolicies.security.ambit.dev",
    );
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_mapping());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_sequence()
        .expect("printer columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Action", "Accepted", "Age"]);
    assert_eq!(
        strings(
            &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["action"]["enum"]
        ),
        ["ALLOW", "DENY", "AUDIT"]
    );
    let crd = find(
        &docs,
        "CustomResourceDefinition",
        "peerauthentications.security.ambit.dev",
    );
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_mapping());
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(
        strings(&spec["mtls"]["properties"]["mode"]["enum"]),
        mesh_core::peer_authn::MODES,
        "the modes the model reads"
    );
    assert_eq!(
        strings(&spec["portLevelMtls"]["additionalProperties"]["properties"]["mode"]["enum"]),
        mesh_core::peer_authn::MODES
    );
}

#[test]
fn the_agent_daemonset_is_unprivileged_and_surge_updated() {
    let (_, docs) = built();
    let ds = find(&docs, "DaemonSet", "ambit-node-agent");
    assert_eq!(ds["metadata"]["namespace"], "ambit-system");
    let update = &ds["spec"]["updateStrategy"];
    assert_eq!(update["type"], "RollingUpdate");
    assert_eq!(
        (
            update["rollingUpdate"]["maxUnavailable"].as_u64(),
            update["rollingUpdate"]["maxSurge"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "15020");
    assert_eq!(annotations["prometheus.io/path"], "/stats/prometheus");

    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["serviceAccountName"], "ambit-node-agent");
    assert_eq!(
        spec["hostPID"].as_bool(),
        Some(true),
        "pods' PIDs and /proc"
    );
    assert_ne!(
        spec["hostNetwork"].as_bool(),
        Some(true),
        "two agents overlap during a surge update: no host ports"
    );
    let agent = &spec["containers"][0];
    let readiness = &agent["readinessProbe"]["httpGet"];
    assert_eq!(
        (readiness["port"].as_u64(), readiness["path"].as_str()),
        (Some(15021), Some("/healthz/ready"))
    );

    let security = &agent["securityContext"];
    assert_eq!(
        security["privileged"].as_bool(),
        Some(false),
        "capabilities, not privileged"
    );
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    let caps = strings(&security["capabilities"]["add"]);
    assert_eq!(caps, AGENT_CAPABILITIES, "capabilities added");
    // docs/install.md says why for each, and lists no other.
    let documented: Vec<String> = read("docs/install.md")
        .lines()
        .filter_map(|line| line.strip_prefix("| `")?.split_once("` |"))
        .map(|(cap, _)| cap.to_owned())
        .filter(|cap| cap.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert_eq!(documented, caps, "the capability table of docs/install.md");
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");

    // Host mounts: the bpffs (pins), cgroup v2 read-only.
    let volume_path = |name: &str| {
        named(&spec["volumes"], name)["hostPath"]["path"]
            .as_str()
            .map(str::to_owned)
    };
    let mounts = &agent["volumeMounts"];
    assert_eq!(volume_path("bpffs").as_deref(), Some("/sys/fs/bpf"));
    let bpffs = named(mounts, "bpffs");
    assert!(
        env_value(agent, "AMBIT_BPFFS_DIR")
            .starts_with(bpffs["mountPath"].as_str().expect("mountPath")),
        "the pin directory is on the host's bpffs"
    );
    assert_eq!(volume_path("cgroup").as_deref(), Some("/sys/fs/cgroup"));
    let cgroup = named(mounts, "cgroup");
    assert_eq!(cgroup["readOnly"].as_bool(), Some(true));
    assert!(
        env_value(agent, "AMBIT_CGROUP_ROOT")
            .starts_with(cgroup["mountPath"].as_str().expect("mountPath")),
        "the pod cgroup root is in the host's cgroup tree"
    );
}

#[test]
fn the_agent_runs_in_kubernetes_mode_with_certificates_from_the_controller() {
    let (_, docs) = built();
    let spec = &find(&docs, "DaemonSet", "ambit-node-agent")["spec"]["template"]["spec"];
    let agent = &spec["containers"][0];
    let mounts = &agent["volumeMounts"];
    // The projected token and the trust bundle are mounted where the agent
    // is told to read them.
    assert!(strings(&agent["args"]).contains(&"--kubernetes".to_owned()));
    // Agents of a rolling update meet on the host's /run/ambit, and the old
    // one waits for its SIGTERM after handing over (a restarted container
    // would take the pods back).
    assert_eq!(
        env_value(agent, "AMBIT_HANDOFF_SOCKET"),
        "/run/ambit/handoff.sock"
    );
    assert_eq!(env_value(agent, "AMBIT_EXIT_AFTER_HANDOFF"), "false");
    assert_eq!(named(mounts, "handoff")["mountPath"], "/run/ambit");
    assert_eq!(
        named(&spec["volumes"], "handoff")["hostPath"]["path"],
        "/run/ambit"
    );
    // Keeping the eBPF state on exit is no longer a setting: the agent
    // always keeps it, so the old variable must not linger.
    assert!(
        !agent["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|e| e["name"] == "AMBIT_KEEP_BPF_STATE"),
        "{:?}",
        agent["env"]
    );
    let token =
        &named(&spec["volumes"], "ca-token")["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "ambit-ca");
    assert_eq!(token["expirationSeconds"].as_u64(), Some(3600));
    let token_file = format!(
        "{}/{}",
        named(mounts, "ca-token")["mountPath"]
            .as_str()
            .expect("mountPath"),
        token["path"].as_str().expect("path")
    );
    assert_eq!(env_value(agent, "AMBIT_CA_TOKEN_FILE"), token_file);
    assert_eq!(
        named(&spec["volumes"], "trust-bundle")["configMap"]["name"],
        "ambit-trust-bundle"
    );
    let bundle_file = format!(
        "{}/ca.crt",
        named(mounts, "trust-bundle")["mountPath"]
            .as_str()
            .expect("mountPath")
    );
    assert_eq!(env_value(agent, "AMBIT_TRUST_BUNDLE"), bundle_file);
    let service = find(&docs, "Service", "ambit-controller");
    assert_eq!(
        env_value(agent, "AMBIT_CA_ADDRESS"),
        format!(
            "https://ambit-controller.ambit-system.svc:{}",
            service["spec"]["ports"][0]["port"].as_u64().expect("port")
        )
    );
    let unknown = unknown_settings(agent, AGENT_CONFIG);
    assert!(
        unknown.is_empty(),
        "{AGENT_CONFIG} does not read {unknown:?}"
    );
    // A misspelt one is caught.
    let mut typo = agent.clone();
    typo["env"][0]["name"] = Value::from("AMBIT_NODE_NAEM");
    typo["args"][0] = Value::from("--kubernetez");
    assert_eq!(
        unknown_settings(&typo, AGENT_CONFIG),
        ["variable AMBIT_NODE_NAEM", "flag --kubernetez"]
    );
}

#[test]
fn the_controller_deployment_matches_its_settings_and_service() {
    let (_, docs) = built();
    let deployment = find(&docs, "Deployment", "ambit-controller");
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], "ambit-controller");
    let controller = &spec["containers"][0];
    assert_eq!(
        named(&controller["env"], "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    let unknown = unknown_settings(controller, CONTROLLER_CONFIG);
    assert!(
        unknown.is_empty(),
        "{CONTROLLER_CONFIG} does not read {unknown:?}"
    );
    let port = controller["ports"][0]["containerPort"].as_u64();
    assert_eq!(port, Some(15012), "the controller's default --listen port");
    assert_eq!(
        controller["readinessProbe"]["httpGet"]["scheme"], "HTTPS",
        "the controller serves /healthz over TLS"
    );
    let security = &controller["securityContext"];
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    let service = find(&docs, "Service", "ambit-controller");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn rbac_gives_the_agent_reads_only_and_the_controller_its_own_secret_only() {
    let (_, docs) = built();
    let granted = reads_only(find(&docs, "ClusterRole", "ambit-node-agent"));
    assert_eq!(granted, agent_resources(), "the agent reads exactly these");

    // Each role is bound to its own service account only.
    for name in ["ambit-node-agent", "ambit-controller"] {
        let binding = find(&docs, "ClusterRoleBinding", name);
        assert_eq!(binding["roleRef"]["name"], name);
        let subjects = binding["subjects"].as_sequence().expect("subjects");
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0]["name"], name);
        assert_eq!(subjects[0]["namespace"], "ambit-system");
    }

    // No wildcards anywhere; Secrets only in the controller's namespace,
    // and only its CA.
    for doc in &docs {
        for rule in doc["rules"].as_sequence().into_iter().flatten() {
            for field in ["apiGroups", "resources", "verbs"] {
                assert!(!strings(&rule[field]).contains(&"*".to_owned()), "{rule:?}");
            }
            if strings(&rule["resources"]).contains(&"secrets".to_owned()) {
                assert_eq!(doc["kind"], "Role", "Secrets cluster-wide: {rule:?}");
                assert_eq!(strings(&rule["resourceNames"]), ["ambit-ca"]);
                assert_eq!(strings(&rule["verbs"]), ["get", "list", "watch"]);
            }
        }
    }
}

/// What `ambit waypoint apply` writes (`--dry-run`): valid for the
/// Kubernetes versions ambit supports; the container's flags and variables
/// are the waypoint's own; its certificate inputs are mounted where the
/// variables point; the pod carries what the controller requires of a
/// waypoint; the Service finds the pods on the port the agents dial; the
/// account is bound to the read-only `ambit-waypoint` role of the build.
#[test]
fn the_waypoint_as_applied_matches_its_settings_and_role() {
    let out = run(
        ambit_tests::Testbed::bin("ambit"),
        &[
            "waypoint",
            "apply",
            "--dry-run",
            "-n",
            "shop",
            "--name",
            "wp",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let docs: Vec<Value> =
        serde_yaml::from_value(serde_yaml::to_value(&json).expect("as YAML")).expect("documents");
    let dir = tempdir("waypoint");
    let file = dir.join("waypoint.yaml");
    let yaml = docs.iter().fold(String::new(), |yaml, doc| {
        yaml + "---\n" + &serde_yaml::to_string(doc).expect("YAML")
    });
    std::fs::write(&file, yaml).expect("write");
    for version in KUBERNETES_VERSIONS {
        let validated = kubernetes_validate(&file, version);
        assert!(
            validated.status.success(),
            "the applied waypoint, {version}:\n{}",
            text(&validated)
        );
    }

    let deployment = find(&docs, "Deployment", "wp");
    the_waypoint_pod_matches_its_settings(&deployment["spec"]["template"]);

    let service = find(&docs, "Service", "wp");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        service["metadata"]["labels"]["ambit.dev/waypoint"], "wp",
        "the waypoint's own Service never goes through a waypoint"
    );
    assert_eq!(
        named(&service["spec"]["ports"], "hbone")["port"].as_u64(),
        Some(15008)
    );
    assert_eq!(
        find(&docs, "ServiceAccount", "wp")["metadata"]["labels"]["ambit.dev/waypoint"],
        "wp",
        "the controller publishes the trust bundle where such accounts live"
    );

    let binding = find(&docs, "ClusterRoleBinding", "ambit-waypoint:shop:wp");
    assert_eq!(binding["roleRef"]["name"], "ambit-waypoint");
    assert_eq!(binding["subjects"][0]["name"], "wp");
    assert_eq!(binding["subjects"][0]["namespace"], "shop");
    let (_, built) = built();
    let granted = reads_only(find(&built, "ClusterRole", "ambit-waypoint"));
    assert_eq!(
        granted,
        agent_resources(),
        "the waypoint reads what the agents read"
    );
}

/// The waypoint's pod template: what the controller requires of a
/// waypoint, flags and variables the waypoint reads, certificate inputs
/// mounted where the variables point, its ports and readiness.
fn the_waypoint_pod_matches_its_settings(pod: &Value) {
    assert_eq!(pod["metadata"]["labels"]["ambit.dev/waypoint"], "wp");
    assert_eq!(pod["metadata"]["labels"]["ambit.dev/mesh"], "disabled");
    assert_eq!(pod["spec"]["serviceAccountName"], "wp");
    let container = &pod["spec"]["containers"][0];
    let flags: Vec<String> = strings(&container["args"])
        .into_iter()
        .filter(|a| a.starts_with("--"))
        .collect();
    let mut settings = container.clone();
    settings["args"] = serde_yaml::to_value(&flags).expect("flags");
    let unknown = unknown_settings(&settings, WAYPOINT_CONFIG);
    assert!(
        unknown.is_empty(),
        "{WAYPOINT_CONFIG} does not read {unknown:?}"
    );
    assert_eq!(
        named(&container["env"], "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let mount = |volume: &str| {
        named(&container["volumeMounts"], volume)["mountPath"]
            .as_str()
            .expect("a mount path")
            .to_owned()
    };
    let volumes = &pod["spec"]["volumes"];
    assert_eq!(
        named(volumes, "trust-bundle")["configMap"]["name"],
        "ambit-trust-bundle"
    );
    assert_eq!(
        env_value(container, "AMBIT_TRUST_BUNDLE"),
        format!("{}/ca.crt", mount("trust-bundle"))
    );
    let token = &named(volumes, "ca-token")["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "ambit-ca");
    assert_eq!(
        env_value(container, "AMBIT_CA_TOKEN_FILE"),
        format!(
            "{}/{}",
            mount("ca-token"),
            token["path"].as_str().expect("path")
        )
    );
    let port = |name: &str| named(&container["ports"], name)["containerPort"].as_u64();
    assert_eq!(
        port("hbone"),
        Some(15008),
        "the waypoint's default --listen port"
    );
    assert_eq!(
        port("metrics"),
        Some(15020),
        "the waypoint's default --metrics-addr port"
    );
    let exposed: Vec<u64> = container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    assert!(
        !exposed.contains(&15000),
        "the admin views (--admin-addr) are on localhost, not a pod port: {exposed:?}"
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"],
        "/healthz/ready"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "metrics");
}

#[test]
fn the_kustomization_builds_with_old_kubectl() {
    // Debian's kubernetes-client (kubectl 1.20) embeds kustomize 2.0.3: no
    // components, no `labels:`, directories only under `bases:`. The build
    // was checked with that kubectl by hand; this keeps to what it knows.
    let kustomization: Value =
        serde_yaml::from_str(&read("manifests/kustomization.yaml")).expect("YAML");
    let known = ["apiVersion", "kind", "resources", "images"];
    for key in kustomization.as_mapping().expect("a mapping").keys() {
        let key = key.as_str().expect("a string key");
        assert!(
            known.contains(&key),
            "{key} in manifests/kustomization.yaml is newer than kubectl 1.20's kustomize"
        );
    }
    for resource in strings(&kustomization["resources"]) {
        assert!(
            root().join("manifests").join(&resource).is_file(),
            "{resource}: kustomize 2.0 takes only files as resources"
        );
    }
}

/// The oldest Kubernetes ambit supports (docs/install.md) and the newest
/// kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30", "1.33"];

fn kubernetes_validate(file: &Path, version: &str) -> Output {
    let command = Path::new(VENV).join("bin/kubernetes-validate");
    run(
        command,
        &["--strict", "-k", version, file.to_str().expect("UTF-8")],
    )
}

#[test]
fn every_core_object_passes_kubernetes_validate() {
    let (yaml, docs) = built();
    let dir = tempdir("validate");
    let build = dir.join("build.yaml");
    std::fs::write(&build, &yaml).expect("write the build");
    for version in KUBERNETES_VERSIONS {
        let out = kubernetes_validate(&build, version);
        let report = text(&out);
        assert!(
            out.status.success(),
            "kubernetes-validate {version}:\n{report}"
        );
        for doc in &docs {
            let object = format!(
                "{}/{}",
                doc["kind"].as_str().expect("kind").to_lowercase(),
                doc["metadata"]["name"].as_str().expect("name")
            );
            assert!(
                report.contains(&format!(
                    "passed for resource {object} against version {version}"
                )),
                "{object} not validated for {version}:\n{report}"
            );
        }
        let template = root().join("manifests/waypoint/template.yaml");
        let waypoint = kubernetes_validate(&template, version);
        assert!(
            waypoint.status.success(),
            "waypoint template, {version}:\n{}",
            text(&waypoint)
        );
    }

    // A typo in a field fails: the check is real.
    let broken = dir.join("broken.yaml");
    std::fs::write(
        &broken,
        yaml.replacen("priorityClassName:", "priorityClasName:", 1),
    )
    .expect("write");
    let out = kubernetes_validate(&broken, KUBERNETES_VERSIONS[1]);
    assert!(
        !out.status.success(),
        "a misspelt field passed:\n{}",
        text(&out)
    );
}

/// One example custom resource as `validate_crs.py` judged it.
struct Judged {
    origin: String,
    kind: String,
    name: String,
    ok: bool,
    errors: Vec<String>,
    object: serde_json::Value,
}

/// Runs `validate_crs.py` on `paths` with ambit's CRDs: its report,
/// whether it passed, and every example it found.
fn validate_crs(paths: &[&str]) -> (String, bool, Vec<Judged>) {
    validate_crs_with(&[CRD, PEER_AUTHN_CRD], paths)
}

/// [`validate_crs`] with other CRDs.
fn validate_crs_with(crds: &[&str], paths: &[&str]) -> (String, bool, Vec<Judged>) {
    let dir = tempdir("dump");
    let dump = dir.join("examples.json");
    let mut args = vec!["tests/scripts/validate_crs.py"];
    for crd in crds {
        args.extend(["--crd", *crd]);
    }
    args.extend(["--dump", dump.to_str().expect("UTF-8")]);
    args.extend_from_slice(paths);
    let out = run(Path::new(VENV).join("bin/python"), &args);
    let report = text(&out);
    let dumped: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&dump).unwrap_or_else(|e| panic!("no dump ({e}):\n{report}")),
    )
    .expect("JSON");
    let judged = dumped
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| Judged {
            origin: e["origin"].as_str().unwrap_or_default().to_owned(),
            kind: e["kind"].as_str().unwrap_or_default().to_owned(),
            name: e["name"].as_str().unwrap_or_default().to_owned(),
            ok: e["ok"].as_bool().unwrap_or_default(),
            errors: e["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect(),
            object: e["object"].clone(),
        })
        .collect();
    (report, out.status.success(), judged)
}

/// Why the agents' model of `kind` rejects `object`, if it does.
fn model_rejects(kind: &str, object: &serde_json::Value) -> Option<String> {
    let value = serde_yaml::to_value(object).expect("JSON is YAML");
    match kind {
        "AuthorizationPolicy" => mesh_core::policy::compile(&value)
            .rejected
            .map(|error| error.to_string()),
        "PeerAuthentication" => mesh_core::peer_authn::compile(&value)
            .rejected
            .map(|error| error.to_string()),
        other => Some(format!("no model for {other}")),
    }
}

#[test]
fn every_example_custom_resource_matches_its_crd_and_the_policy_model() {
    let (report, passed, examples) = validate_crs(&["docs", "manifests"]);
    assert!(passed, "{report}");
    for origin in [
        "docs/authorization.md",
        "docs/peer-authentication.md",
        "docs/running.md",
        "manifests/examples/authorizationpolicy.yaml",
        "manifests/examples/peerauthentication.yaml",
    ] {
        assert!(
            examples.iter().any(|e| e.origin.starts_with(origin)),
            "no example found in {origin}:\n{report}"
        );
    }
    assert!(examples.len() >= 4, "too few examples found:\n{report}");
    for example in &examples {
        assert!(example.ok, "{}: {:?}", example.origin, example.errors);
        assert_eq!(
            model_rejects(&example.kind, &example.object),
            None,
            "{} {}: the agents would reject it",
            example.origin,
            example.name
        );
    }
    println!("{report}");

    // A broken example fails, naming the field.
    let dir = tempdir("crs");
    let broken = dir.join("broken.md");
    std::fs::write(
        &broken,
        "```yaml\napiVersion: security.ambit.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: shop}\nspec:\n  action: MAYBE\n  rules: [{from: [{source: {principal: [x]}}]}]\n```\n",
    )
    .expect("write");
    let (report, passed, _) = validate_crs(&[broken.to_str().expect("UTF-8")]);
    assert!(!passed, "a broken example passed:\n{report}");
    assert!(
        report.contains("spec.action") && report.contains("principal"),
        "{report}"
    );
}

/// A policy's spec, whether the CRD's schema takes it, and whether the
/// agents' model does.
struct Case {
    spec: &'static str,
    schema_accepts: bool,
    model_accepts: bool,
}

const fn case(spec: &'static str, schema_accepts: bool, model_accepts: bool) -> Case {
    Case {
        spec,
        schema_accepts,
        model_accepts,
    }
}

/// Where the two may differ, the schema is never the looser one in a way
/// that opens traffic: the model rejects what only it can check (a CIDR's
/// host bits, the spiffe:// prefix) and the policy fails closed, and the
/// fields it refuses (when, targetRefs, provider) are kept by the schema so
/// that the API server does not strip them into a wider policy.
const CASES: &[Case] = &[
    case("{}", true, true),
    case(
        "{selector: {matchLabels: {app: db}}, action: DENY, rules: [{}]}",
        true,
        true,
    ),
    case(
        "{action: AUDIT, rules: [{from: [{source: {principals: ['*', cluster.local/ns/a/sa/b, '*/sa/admin', 'cluster.local/ns/a/*'], notPrincipals: [x], namespaces: ['*', shop, 'team-*', '*-prod'], notNamespaces: [legacy.v1], ipBlocks: [10.0.0.0/8, 10.1.2.3, 'fd00::/64', '::1'], notIpBlocks: [192.168.0.0/16], requestPrincipals: [a], notRequestPrincipals: [b], remoteIpBlocks: [1.2.3.4], notRemoteIpBlocks: [5.6.7.8]}}], to: [{operation: {ports: ['8080', 443, '65535', 1], notPorts: [22], hosts: [a.example], notHosts: [b], methods: [GET], notMethods: [POST], paths: [/api/*], notPaths: [/admin]}}]}]}",
        true,
        true,
    ),
    case("{action: MAYBE}", false, false),
    case("{action: CUSTOM}", false, false),
    case("{action: allow}", false, false),
    case(
        "{rules: [{from: [{source: {principal: [x]}}]}]}",
        false,
        false,
    ),
    case(
        "{rules: [{to: [{operation: {port: ['80']}}]}]}",
        false,
        false,
    ),
    case("{selector: {matchExpressions: []}}", false, false),
    case(
        "{rules: [{from: [{source: {principals: ['']}}]}]}",
        false,
        false,
    ),
    case(
        "{rules: [{from: [{source: {principals: ['a*b']}}]}]}",
        false,
        false,
    ),
    case(
        "{rules: [{from: [{source: {principals: ['*a*']}}]}]}",
        false,
        false,
    ),
    case(
        "{rules: [{from: [{source: {principals: ['**']}}]}]}",
        false,
        false,
    ),
    case(
        "{rules: [{from: [{source: {principals: ['a b']}}]}]}",
        false,
        false,
    ),
    case(
        "{rules: [{from: [{source: {principals: ['a?b']}}]}]}",
        false,
        false,
    ),
    case(
        "{rules: [{from: [{source: {namespaces: [Shop]}}]}]}",
        false,
        false,
    ),
    case(
        "{rules: [{from: [{source: {namespaces: [shop_1]}}]}]}",
        false,
        false,
    ),
    case(
        "{rules: [{from: [{source: {notNamespaces: ['a*b']}}]}]}",
        false,
        false,
    ),
    case(
        "{rules: [{from: [{source: {ipBlocks: [example.com]}}]}]}",
        false,
        false,
    ),
    case(
        "{rules: [{from: [{source: {ipBlocks: ['10.0.0.0/8 ']}}]}]}",
        false,
        true,
    ),
    case(
        "{rules: [{to: [{operation: {ports: ['0']}}]}]}",
        false,
        false,
    ),
    case("{rules: [{to: [{operation: {ports: [0]}}]}]}", false, false),
    case(
        "{rules: [{to: [{operation: {ports: ['65536']}}]}]}",
        false,
        false,
    ),
    case(
        "{rules: [{to: [{operation: {notPorts: [70000]}}]}]}",
        false,
        false,
    ),
    case(
        "{rules: [{to: [{operation: {ports: [http]}}]}]}",
        false,
        false,
    ),
    case(
        "{rules: [{to: [{operation: {ports: ['-1']}}]}]}",
        false,
        false,
    ),
    // Only the model can tell.
    case(
        "{rules: [{from: [{source: {principals: ['spiffe://cluster.local/ns/a/sa/b']}}]}]}",
        true,
        false,
    ),
    case(
        "{rules: [{from: [{source: {ipBlocks: [10.0.0.1/8]}}]}]}",
        true,
        false,
    ),
    case(
        "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]}",
        true,
        false,
    ),
    // Kept by the schema so that the model sees them: accepted where the
    // waypoint enforces them, rejected (failing closed) otherwise.
    case(
        "{rules: [{when: [{key: 'request.headers[x]', values: [v]}]}]}",
        true,
        true,
    ),
    case(
        "{rules: [{when: [{key: 'request.auth.claims[iss]', values: [v]}]}]}",
        true,
        false,
    ),
    case(
        "{targetRefs: [{kind: Service, group: '', name: db}]}",
        true,
        true,
    ),
    case(
        "{targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: w}}",
        true,
        true,
    ),
    case(
        "{targetRefs: [{kind: Deployment, group: apps, name: db}]}",
        true,
        false,
    ),
    case("{provider: {name: opa}}", true, false),
];

/// The same for peer authentications: the schema refuses what it can
/// say (the modes, the fields), the model also what only it can check
/// (port-level modes without a selector, a key that is not a port), and a
/// policy it rejects acts as STRICT.
const PEER_AUTHN_CASES: &[Case] = &[
    case("{}", true, true),
    case("{mtls: {}}", true, true),
    case("{mtls: {mode: STRICT}}", true, true),
    case("{mtls: {mode: DISABLE}}", true, true),
    case("{mtls: {mode: UNSET}}", true, true),
    case(
        "{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {'8080': {mode: STRICT}, '9090': {}}}",
        true,
        true,
    ),
    case("{mtls: {mode: strict}}", false, false),
    case("{mtls: {mode: STRIKT}}", false, false),
    case("{mtls: {tls: x}}", false, false),
    case("{selector: {matchExpressions: []}}", false, false),
    case("{targetRefs: [{kind: Service, name: web}]}", false, false),
    case(
        "{selector: {matchLabels: {app: web}}, portLevelMtls: {'8080': {mode: permissive}}}",
        false,
        false,
    ),
    case(
        "{selector: {matchLabels: {app: web}}, portLevelMtls: {'8080': {mood: STRICT}}}",
        false,
        false,
    ),
    // Only the model can tell.
    case("{portLevelMtls: {'8080': {mode: STRICT}}}", true, false),
    case(
        "{selector: {matchLabels: {app: web}}, portLevelMtls: {http: {mode: STRICT}}}",
        true,
        false,
    ),
    case(
        "{selector: {matchLabels: {app: web}}, portLevelMtls: {'0': {mode: STRICT}}}",
        true,
        false,
    ),
    case(
        "{selector: {matchLabels: {app: web}}, portLevelMtls: {'70000': {mode: STRICT}}}",
        true,
        false,
    ),
];

/// Judges `cases` as objects of `kind` with the CRDs' schemas and the
/// model, and lists where they disagree with the case.
fn disagreements(kind: &str, api_version: &str, cases: &[Case]) -> Vec<String> {
    let documents: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            format!(
                "apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: case-{i}, namespace: shop}}\nspec: {}\n",
                case.spec
            )
        })
        .collect();
    let dir = tempdir("agree");
    let file = dir.join("cases.yaml");
    std::fs::write(&file, documents.join("---\n")).expect("write");
    let (report, _, judged) = validate_crs(&[file.to_str().expect("UTF-8")]);
    assert_eq!(judged.len(), cases.len(), "every case is judged:\n{report}");
    let mut wrong = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let example = judged
            .iter()
            .find(|e| e.name == format!("case-{i}"))
            .unwrap_or_else(|| panic!("case-{i} not judged:\n{report}"));
        if example.ok != case.schema_accepts {
            wrong.push(format!(
                "schema {} {} ({:?})",
                if example.ok { "accepts" } else { "rejects" },
                case.spec,
                example.errors
            ));
        }
        let model = model_rejects(kind, &example.object);
        if model.is_none() != case.model_accepts {
            wrong.push(format!(
                "model {} {} ({model:?})",
                if model.is_none() {
                    "accepts"
                } else {
                    "rejects"
                },
                case.spec
            ));
        }
    }
    wrong
}

#[test]
fn the_crd_schema_and_the_policy_model_agree() {
    let wrong = disagreements("AuthorizationPolicy", "security.ambit.dev/v1alpha1", CASES);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_crd_schema_and_the_peer_authentication_model_agree() {
    let wrong = disagreements(
        "PeerAuthentication",
        "security.ambit.dev/v1alpha1",
        PEER_AUTHN_CASES,
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_crd_schema_the_api_server_would_refuse_fails_the_check() {
    // The conversion to JSON Schema relies on the structural-schema rules;
    // a CRD breaking them fails, whatever its examples.
    let crd = read(CRD);
    let dir = tempdir("structural");
    for (what, from, to) in [
        (
            "a node without a type",
            "          kind:\n            type: string\n",
            "          kind:\n            description: no type\n",
        ),
        (
            "additionalProperties: false",
            "              selector:\n                type: object\n",
            "              selector:\n                type: object\n                additionalProperties: false\n",
        ),
        (
            "a lookahead RE2 cannot run",
            "pattern: '^[0-9A-Fa-f.:]+(/[0-9]{1,3})?$'",
            "pattern: '^(?!x)[0-9A-Fa-f.:]+(/[0-9]{1,3})?$'",
        ),
    ] {
        assert!(
            crd.contains(from),
            "{what}: the CRD changed; update this test"
        );
        let broken = dir.join("crd.yaml");
        std::fs::write(&broken, crd.replacen(from, to, 1)).expect("write");
        let (report, passed, _) =
            validate_crs_with(&[broken.to_str().expect("UTF-8")], &["manifests/examples"]);
        assert!(!passed, "{what} passed:\n{report}");
        assert!(report.contains("FAIL not structural"), "{what}:\n{report}");
    }
}

/// A fresh directory under the system's temporary directory, removed on
/// drop.
struct TempDir(PathBuf);

fn tempdir(what: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("ambit-manifests-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}

// === impl TempDir ===

impl TempDir {
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
