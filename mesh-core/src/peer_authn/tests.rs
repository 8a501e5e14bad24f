use std::collections::BTreeMap;

use super::*;
use crate::{
    local_config::{LocalConfigFile, LocalSnapshot, validate},
    policy::DEFAULT_ROOT_NAMESPACE,
    workload::MtlsMode::{Permissive, Strict},
};

/// One pod, `shop/web` (labels `app: web` and `extra`), under the peer
/// authentications `policies`, with the namespace label `namespace_label`,
/// the local-config field `mtls:` (`pod_mtls`), and a Service `web`
/// selecting it with target ports 8080 and 8081 unless `services` says
/// otherwise.
struct Case {
    name: &'static str,
    policies: &'static str,
    namespace_label: Option<&'static str>,
    pod_labels: &'static str,
    pod_mtls: Option<&'static str>,
    services: &'static str,
    mode: MtlsMode,
    ports: &'static [(u16, MtlsMode)],
    /// (peer authentication name, rejected field)
    rejected: &'static [(&'static str, &'static str)],
    /// Each must be part of one of the pod's warnings.
    warnings: &'static [&'static str],
}

const SERVICE: &str = "[{name: web, namespace: shop, selector: {app: web}, ports: [{port: 80, targetPort: 8080}, {port: 81, targetPort: 8081}]}]";

const fn case(name: &'static str, policies: &'static str, mode: MtlsMode) -> Case {
    Case {
        name,
        policies,
        namespace_label: None,
        pod_labels: "{app: web}",
        pod_mtls: None,
        services: SERVICE,
        mode,
        ports: &[],
        rejected: &[],
        warnings: &[],
    }
}

const MESH_STRICT: &str =
    "{metadata: {name: mesh, namespace: ambit-system}, spec: {mtls: {mode: STRICT}}}";
const MESH_PERMISSIVE: &str =
    "{metadata: {name: mesh, namespace: ambit-system}, spec: {mtls: {mode: PERMISSIVE}}}";
const NS_STRICT: &str = "{metadata: {name: ns, namespace: shop}, spec: {mtls: {mode: STRICT}}}";

const CASES: &[Case] = &[
        // --- Istio's precedence: default, mesh, namespace, workload, port.
        case("nothing: permissive", "[]", Permissive),
        case("mesh STRICT", "[MESH_STRICT]", Strict),
        case(
            "namespace PERMISSIVE overrides mesh STRICT",
            "[MESH_STRICT, {metadata: {name: ns, namespace: shop}, spec: {mtls: {mode: PERMISSIVE}}}]",
            Permissive,
        ),
        case(
            "namespace UNSET inherits mesh STRICT",
            "[MESH_STRICT, {metadata: {name: ns, namespace: shop}, spec: {mtls: {mode: UNSET}}}]",
            Strict,
        ),
        case(
            "namespace without mtls is UNSET",
            "[MESH_STRICT, {metadata: {name: ns, namespace: shop}, spec: {}}]",
            Strict,
        ),
        case(
            "mesh UNSET, namespace UNSET: the default",
            "[{metadata: {name: mesh, namespace: ambit-system}, spec: {mtls: {mode: UNSET}}}, {metadata: {name: ns, namespace: shop}}]",
            Permissive,
        ),
        case(
            "workload UNSET inherits namespace STRICT over mesh PERMISSIVE",
            "[MESH_PERMISSIVE, NS_STRICT, {metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: UNSET}}}]",
            Strict,
        ),
        case(
            "workload PERMISSIVE overrides namespace STRICT",
            "[NS_STRICT, {metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}}]",
            Permissive,
        ),
        case(
            "workload DISABLE means PERMISSIVE",
            "[NS_STRICT, {metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}}}]",
            Permissive,
        ),
        case(
            "mesh DISABLE means PERMISSIVE",
            "[{metadata: {name: mesh, namespace: ambit-system}, spec: {mtls: {mode: DISABLE}}}]",
            Permissive,
        ),
        case(
            "a selector the pod does not match: the namespace's mode",
            "[NS_STRICT, {metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: db}}, mtls: {mode: PERMISSIVE}}}]",
            Strict,
        ),
        case(
            "another namespace's workload policy does not apply",
            "[{metadata: {name: w, namespace: other}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}}]",
            Permissive,
        ),
        case(
            "as in Istio, a selector in the root namespace applies to no pod",
            "[{metadata: {name: w, namespace: ambit-system}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}}]",
            Permissive,
        ),
        case(
            "oldest namespace policy wins (the older one is PERMISSIVE)",
            "[{metadata: {name: a-new, namespace: shop, creationTimestamp: '2025-01-01T00:00:00Z'}, spec: {mtls: {mode: STRICT}}},
              {metadata: {name: z-old, namespace: shop, creationTimestamp: '2024-01-01T00:00:00Z'}, spec: {mtls: {mode: PERMISSIVE}}}]",
            Permissive,
        ),
        case(
            "oldest namespace policy wins (the older one is STRICT)",
            "[{metadata: {name: a-new, namespace: shop, creationTimestamp: '2025-01-01T00:00:00Z'}, spec: {mtls: {mode: PERMISSIVE}}},
              {metadata: {name: z-old, namespace: shop, creationTimestamp: '2024-01-01T00:00:00Z'}, spec: {mtls: {mode: STRICT}}}]",
            Strict,
        ),
        case(
            "same age: by name",
            "[{metadata: {name: b, namespace: shop, creationTimestamp: '2024-01-01T00:00:00Z'}, spec: {mtls: {mode: PERMISSIVE}}},
              {metadata: {name: a, namespace: shop, creationTimestamp: '2024-01-01T00:00:00Z'}, spec: {mtls: {mode: STRICT}}}]",
            Strict,
        ),
        Case {
            pod_labels: "{app: web, extra: 'yes'}",
            ..case(
                "oldest workload policy wins",
                "[{metadata: {name: a, namespace: shop, creationTimestamp: '2025-01-01T00:00:00Z'}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}},
                  {metadata: {name: b, namespace: shop, creationTimestamp: '2024-06-01T00:00:00Z'}, spec: {selector: {matchLabels: {extra: 'yes'}}, mtls: {mode: PERMISSIVE}}}]",
                Permissive,
            )
        },
        Case {
            pod_labels: "{app: web, extra: 'yes'}",
            ports: &[(8081, Strict)],
            ..case(
                "oldest workload policy wins, with their port-level modes",
                "[{metadata: {name: a, namespace: shop, creationTimestamp: '2024-01-01T00:00:00Z'}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {8081: {mode: STRICT}}}},
                  {metadata: {name: b, namespace: shop, creationTimestamp: '2025-01-01T00:00:00Z'}, spec: {selector: {matchLabels: {extra: 'yes'}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}}]",
                Permissive,
            )
        },
        Case {
            ports: &[(8081, Strict)],
            ..case(
                "a port-level STRICT under a PERMISSIVE workload",
                "[NS_STRICT, {metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {8081: {mode: STRICT}}}}]",
                Permissive,
            )
        },
        Case {
            ports: &[(8080, Permissive)],
            ..case(
                "port UNSET inherits the workload's mode; a string port is a port",
                "[{metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, portLevelMtls: {'8080': {mode: DISABLE}, 8081: {mode: UNSET}}}}]",
                Strict,
            )
        },
        Case {
            ports: &[(8080, Permissive)],
            ..case(
                "a workload UNSET with a port-level mode: the namespace's mode, and the port's",
                "[NS_STRICT, {metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: web}}, portLevelMtls: {8080: {mode: PERMISSIVE}}}}]",
                Strict,
            )
        },
        Case {
            policies: "[{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: istio, namespace: shop, uid: x}, spec: {mtls: {mode: STRICT}}}, {apiVersion: security.istio.io/v1beta1, kind: PeerAuthentication, metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: web}}, portLevelMtls: {8080: {mode: PERMISSIVE}}}}]",
            ports: &[(8080, Permissive)],
            ..case("Istio's objects load as they are", "", Strict)
        },
        // --- Labels: the namespace's acts at the namespace level; the pod's
        // --- (or its entry's mtls) only tightens.
        Case {
            namespace_label: Some("strict"),
            ..case("a namespace label strict", "[]", Strict)
        },
        Case {
            namespace_label: Some("permissive"),
            ..case(
                "namespace label and namespace policy: the stricter",
                "[NS_STRICT]",
                Strict,
            )
        },
        Case {
            namespace_label: Some("strict"),
            ..case(
                "namespace label and namespace policy: the stricter (label)",
                "[{metadata: {name: ns, namespace: shop}, spec: {mtls: {mode: PERMISSIVE}}}]",
                Strict,
            )
        },
        Case {
            namespace_label: Some("permissive"),
            ..case(
                "a namespace label overrides the mesh, as a namespace policy would",
                "[MESH_STRICT]",
                Permissive,
            )
        },
        Case {
            namespace_label: Some("strict"),
            ..case(
                "a workload policy overrides the namespace label",
                "[{metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}}]",
                Permissive,
            )
        },
        Case {
            pod_labels: "{app: web, ambit.dev/mtls: permissive}",
            ..case(
                "a pod label permissive in a strict namespace stays strict",
                "[NS_STRICT]",
                Strict,
            )
        },
        Case {
            pod_mtls: Some("permissive"),
            ..case(
                "an entry's mtls: permissive in a strict namespace stays strict",
                "[NS_STRICT]",
                Strict,
            )
        },
        Case {
            pod_mtls: Some("strict"),
            ..case(
                "an entry's mtls: strict tightens a permissive namespace",
                "[{metadata: {name: ns, namespace: shop}, spec: {mtls: {mode: PERMISSIVE}}}]",
                Strict,
            )
        },
        Case {
            pod_labels: "{app: web, ambit.dev/mtls: strict}",
            ..case(
                "a pod label strict tightens every port",
                "[{metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {8080: {mode: PERMISSIVE}}}}]",
                Strict,
            )
        },
        Case {
            pod_labels: "{app: web, ambit.dev/mtls: Strict}",
            warnings: &["pod shop/web: ambit.dev/mtls=\"Strict\" is neither"],
            ..case(
                "an unreadable pod label is strict, with a warning",
                "[]",
                Strict,
            )
        },
        Case {
            pod_labels: "{app: web, ambit.dev/mtls: PERMISSIVE}",
            warnings: &["pod shop/web: ambit.dev/mtls=\"PERMISSIVE\""],
            ..case(
                "an uppercase pod label is strict, with a warning",
                "[]",
                Strict,
            )
        },
        Case {
            namespace_label: Some("STRICT"),
            warnings: &["namespace shop: ambit.dev/mtls=\"STRICT\" is neither"],
            ..case(
                "an unreadable namespace label is strict, with a warning",
                "[]",
                Strict,
            )
        },
        Case {
            namespace_label: Some("permisive"),
            warnings: &["namespace shop: ambit.dev/mtls=\"permisive\"", "taken as strict"],
            ..case(
                "a namespace label typo is strict, with a warning",
                "[MESH_PERMISSIVE]",
                Strict,
            )
        },
        // --- Bad input fails closed: STRICT in its scope.
        Case {
            rejected: &[("ns", "spec.mtls.mode")],
            warnings: &["peer authentication shop/ns is rejected (spec.mtls.mode"],
            ..case(
                "a lowercase mode is rejected and STRICT",
                "[MESH_PERMISSIVE, {metadata: {name: ns, namespace: shop}, spec: {mtls: {mode: permissive}}}]",
                Strict,
            )
        },
        Case {
            rejected: &[("w", "spec.mtls.mode")],
            ..case(
                "a typo in a workload mode is rejected and STRICT",
                "[{metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISIVE}}}]",
                Strict,
            )
        },
        Case {
            rejected: &[("w", "spec.portLevelMtls.8080.mode")],
            ..case(
                "a bad port-level mode rejects the policy",
                "[{metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {8080: {mode: OFF}}}}]",
                Strict,
            )
        },
        Case {
            rejected: &[("ns", "spec.portLevelMtls")],
            ..case(
                "port-level modes without a selector are rejected",
                "[{metadata: {name: ns, namespace: shop}, spec: {mtls: {mode: PERMISSIVE}, portLevelMtls: {8080: {mode: PERMISSIVE}}}}]",
                Strict,
            )
        },
        Case {
            rejected: &[("w", "spec.portLevelMtls.9090")],
            warnings: &["peer authentication shop/w is rejected (spec.portLevelMtls.9090"],
            ..case(
                "a port-level mode for a port the pod does not have is rejected",
                "[{metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {8080: {mode: PERMISSIVE}, 9090: {mode: STRICT}}}}]",
                Strict,
            )
        },
        Case {
            rejected: &[("w", "spec.portLevelMtls.0")],
            ..case(
                "port 0 is rejected",
                "[{metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: web}}, portLevelMtls: {0: {mode: STRICT}}}}]",
                Strict,
            )
        },
        Case {
            services: "[]",
            ports: &[(9090, Strict)],
            warnings: &["no Service selects this pod"],
            ..case(
                "without a Service the ports are not checked, and it says so",
                "[{metadata: {name: w, namespace: shop}, spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {9090: {mode: STRICT}}}}]",
                Permissive,
            )
        },
        Case {
            rejected: &[("ns", "spec.mtls.tls")],
            ..case(
                "an unknown field is rejected, naming it",
                "[{metadata: {name: ns, namespace: shop}, spec: {mtls: {mode: PERMISSIVE, tls: x}}}]",
                Strict,
            )
        },
        Case {
            rejected: &[("ns", "apiVersion")],
            ..case(
                "an unknown apiVersion is rejected",
                "[{apiVersion: security.istio.io/v2, metadata: {name: ns, namespace: shop}, spec: {mtls: {mode: PERMISSIVE}}}]",
                Strict,
            )
        },
        Case {
            rejected: &[("a-new", "spec.mtls.mode")],
            ..case(
                "a rejected policy takes its level over, however young",
                "[{metadata: {name: z-old, namespace: shop, creationTimestamp: '2024-01-01T00:00:00Z'}, spec: {mtls: {mode: PERMISSIVE}}},
                  {metadata: {name: a-new, namespace: shop, creationTimestamp: '2025-01-01T00:00:00Z'}, spec: {mtls: {mode: NONE}}}]",
                Strict,
            )
        },
        Case {
            rejected: &[("mesh", "spec.mtls.mode")],
            ..case(
                "a rejected mesh policy is STRICT mesh-wide, below a namespace PERMISSIVE",
                "[{metadata: {name: mesh, namespace: ambit-system}, spec: {mtls: {mode: Strict}}}, {metadata: {name: ns, namespace: shop}, spec: {mtls: {mode: PERMISSIVE}}}]",
                Permissive,
            )
        },
        Case {
            rejected: &[("w", "spec.selector.matchExpressions")],
            ..case(
                "an unreadable selector widens a rejected policy to the namespace",
                "[{metadata: {name: w, namespace: shop}, spec: {selector: {matchExpressions: []}, mtls: {mode: PERMISSIVE}}}]",
                Strict,
            )
        },
];

fn snapshot_of(case: &Case) -> LocalSnapshot {
    let policies = case
        .policies
        .replace("MESH_STRICT", MESH_STRICT)
        .replace("MESH_PERMISSIVE", MESH_PERMISSIVE)
        .replace("NS_STRICT", NS_STRICT);
    let mtls = case
        .pod_mtls
        .map(|m| format!(", mtls: {m}"))
        .unwrap_or_default();
    let text = format!(
        "pods: [{{name: web, namespace: shop, ips: [10.0.0.1], netns: /x, labels: {}{mtls}}}]\nservices: {}\npeerAuthentications: {policies}\n",
        case.pod_labels, case.services
    );
    let mut file: LocalConfigFile = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: the case does not parse: {e}\n{text}", case.name));
    if let Some(label) = case.namespace_label {
        file.namespace_mtls = BTreeMap::from([("shop".to_owned(), label.to_owned())]);
    }
    validate(file, DEFAULT_ROOT_NAMESPACE)
}

#[test]
fn modes_resolve_as_istio_with_labels_that_only_tighten_and_bad_input_strict() {
    let mut wrong = Vec::new();
    for case in CASES {
        let snapshot = snapshot_of(case);
        assert!(
            snapshot.rejected.is_empty(),
            "{}: {:?}",
            case.name,
            snapshot.rejected
        );
        let pod = &snapshot.pods[0];
        let ports: BTreeMap<u16, MtlsMode> = case.ports.iter().copied().collect();
        if (pod.mtls, &pod.port_mtls) != (case.mode, &ports) {
            wrong.push(format!(
                "{}: got {} {:?}, want {} {ports:?}",
                case.name, pod.mtls, pod.port_mtls, case.mode
            ));
        }
        let rejected: Vec<(&str, &str)> = snapshot
            .peer_authentications
            .iter()
            .filter_map(|p| Some((p.key.name.as_str(), p.rejected.as_ref()?.field.as_str())))
            .collect();
        if rejected != case.rejected {
            wrong.push(format!(
                "{}: rejected {rejected:?}, want {:?}",
                case.name, case.rejected
            ));
        }
        for expected in case.warnings {
            if !pod.mtls_warnings.iter().any(|w| w.contains(expected)) {
                wrong.push(format!(
                    "{}: no warning with {expected:?} in {:?}",
                    case.name, pod.mtls_warnings
                ));
            }
        }
        // A rejected policy that decides says so (checked where a case
        // names the warning); otherwise nothing is to be said.
        if case.warnings.is_empty() && case.rejected.is_empty() && !pod.mtls_warnings.is_empty() {
            wrong.push(format!(
                "{}: unexpected warnings {:?}",
                case.name, pod.mtls_warnings
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_rejection_names_the_policy_the_field_and_what_is_wrong() {
    let policy = compile(
        &serde_yaml::from_str(
            "{metadata: {name: typo, namespace: shop}, spec: {mtls: {mode: STRICTT}}}",
        )
        .unwrap(),
    );
    let error = policy.rejected.clone().unwrap();
    assert_eq!(error.field, "spec.mtls.mode");
    assert_eq!(
        error.to_string(),
        "peer authentication shop/typo: spec.mtls.mode: unknown mode \"STRICTT\"; expected one of UNSET, STRICT, PERMISSIVE, DISABLE (uppercase)"
    );
    assert_eq!(policy.mode, Mode::Strict);
    assert!(
        policy
            .status(DEFAULT_ROOT_NAMESPACE)
            .ends_with("it fails closed and is STRICT for namespace shop"),
        "{}",
        policy.status(DEFAULT_ROOT_NAMESPACE)
    );
    let mesh = compile(
        &serde_yaml::from_str("{metadata: {name: m, namespace: ambit-system}, spec: {mtls: 1}}")
            .unwrap(),
    );
    assert!(
        mesh.status(DEFAULT_ROOT_NAMESPACE)
            .ends_with("is STRICT for the whole mesh"),
        "{}",
        mesh.status(DEFAULT_ROOT_NAMESPACE)
    );
}

#[test]
fn label_values_are_exact_and_lowercase() {
    assert_eq!(parse_label("strict"), Ok(Strict));
    assert_eq!(parse_label("permissive"), Ok(Permissive));
    for bad in ["Strict", "STRICT", "Permissive", "permisive", "", " strict"] {
        let message = parse_label(bad).unwrap_err();
        assert!(
            message.contains(MTLS_LABEL) && message.ends_with("taken as strict"),
            "{message}"
        );
    }
}
