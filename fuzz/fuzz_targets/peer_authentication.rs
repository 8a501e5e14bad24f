//! `PeerAuthentication` objects, from the local file and from the API
//! server: any YAML compiles without a panic; a rejected one is STRICT, on
//! every port, for every pod in its scope, whatever older policies of its
//! level and the levels above say; a pod's own request can only tighten;
//! port-level modes survive the check against the pods' ports only for
//! ports the pods have; and the object written out as YAML and read back
//! compiles to the same model.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use ambit_fuzz::text;
use kube::api::DynamicObject;
use libfuzzer_sys::fuzz_target;
use mesh_core::{
    peer_authn::{self, Mode, PeerAuthentication, PeerAuthnSet, Subject, WorkloadPorts},
    policy::{DEFAULT_ROOT_NAMESPACE, PolicyKey},
    workload::{MtlsMode, PodKey},
};

/// The mesh's root namespace in these checks.
const ROOT: &str = DEFAULT_ROOT_NAMESPACE;
/// The target ports of the Services that select the pods in scope.
const KNOWN_PORTS: [u16; 3] = [80, 8080, 9090];

fuzz_target!(|data: &[u8]| {
    let Some(value) = text::yaml(data) else {
        return;
    };
    let compiled = peer_authn::compile(&value);
    check(compiled.clone());
    if let Some(again) = text::yaml_round_trip(&value) {
        assert_eq!(
            peer_authn::compile(&again),
            compiled,
            "the object written out and read back compiles the same"
        );
    }
    if let Ok(json) = serde_json::to_value(&value)
        && let Ok(object) = serde_json::from_value::<DynamicObject>(json)
    {
        check(peer_authn::compile(&mesh_kube::translate::local_object(
            &object,
        )));
    }
});

/// The level a peer authentication acts at; `None`: it applies to no pod
/// (a selector in the root namespace, as in Istio).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Mesh,
    Namespace,
    Workload,
}

fn level(policy: &PeerAuthentication) -> Option<Level> {
    match (policy.selector.is_empty(), policy.key.namespace == ROOT) {
        (true, true) => Some(Level::Mesh),
        (true, false) => Some(Level::Namespace),
        (false, false) => Some(Level::Workload),
        (false, true) => None,
    }
}

/// Everything that must hold of one compiled peer authentication.
fn check(mut policy: PeerAuthentication) {
    let _ = policy.status(ROOT);
    serde_json::to_string(&policy).expect("a peer authentication serialises");
    if policy.rejected.is_some() {
        assert_eq!(policy.mode, Mode::Strict, "a rejected policy is STRICT");
        assert!(
            policy.port_level.is_empty(),
            "a rejected policy has no port modes"
        );
    }
    // The check against the ports of the pods it selects.
    let labels = pod_labels(&policy);
    let known: BTreeSet<u16> = KNOWN_PORTS.into();
    let namespace = policy.key.namespace.clone();
    let workloads = [WorkloadPorts {
        namespace: &namespace,
        labels: &labels,
        ports: Some(known.clone()),
    }];
    let was_rejected = policy.rejected.is_some();
    let ports = policy.port_level.clone();
    peer_authn::check_ports(std::slice::from_mut(&mut policy), &workloads);
    let selects = policy.selects(&policy.key.namespace, &labels);
    if policy.rejected.is_none() {
        if selects {
            assert!(
                policy.port_level.keys().all(|port| known.contains(port)),
                "a port the pods lack was kept: {policy:?}"
            );
        }
    } else if !was_rejected {
        assert!(
            selects && ports.keys().any(|port| !known.contains(port)),
            "only a port the pods lack rejects an accepted policy: {ports:?}"
        );
    }
    let Some(level) = level(&policy) else {
        return;
    };
    let pod = PodKey {
        namespace: match level {
            Level::Mesh => "fuzz-elsewhere".to_owned(),
            Level::Namespace | Level::Workload => policy.key.namespace.clone(),
        },
        name: "fuzz-pod".to_owned(),
    };
    for requested in [MtlsMode::Permissive, MtlsMode::Strict] {
        for ports_known in [false, true] {
            let subject = Subject {
                pod: &pod,
                labels: &labels,
                requested,
                namespace_label: None,
                ports_known,
            };
            let alone = std::slice::from_ref(&policy);
            let resolved = PeerAuthnSet::new(alone, ROOT).resolve(&subject);
            if requested == MtlsMode::Strict || policy.rejected.is_some() {
                assert_strict(&resolved, &policy, "alone");
            }
            if policy.rejected.is_some() {
                let mut set = permissive_levels_above(&policy, level);
                set.push(policy.clone());
                let resolved = PeerAuthnSet::new(&set, ROOT).resolve(&subject);
                assert_strict(&resolved, &policy, "beside older PERMISSIVE policies");
            }
        }
    }
}

fn assert_strict(resolved: &peer_authn::Resolved, policy: &PeerAuthentication, context: &str) {
    assert!(
        resolved.mode == MtlsMode::Strict
            && resolved.ports.values().all(|m| *m == MtlsMode::Strict),
        "{context}: a pod in scope of {policy:?} resolved to {resolved:?}"
    );
}

/// The labels of a pod `policy` selects: its selector, and one more.
fn pod_labels(policy: &PeerAuthentication) -> BTreeMap<String, String> {
    let mut labels = policy.selector.clone();
    labels
        .entry("fuzz-extra".to_owned())
        .or_insert_with(|| "label".to_owned());
    labels
}

/// Accepted PERMISSIVE policies, older than any, at `level` and every level
/// above it, in the scope of `policy`: a rejected policy overrides them all.
fn permissive_levels_above(policy: &PeerAuthentication, level: Level) -> Vec<PeerAuthentication> {
    let permissive = |namespace: &str, selector: BTreeMap<String, String>| PeerAuthentication {
        key: PolicyKey {
            namespace: namespace.to_owned(),
            name: format!("fuzz permissive {}", selector.len()),
        },
        creation: Some("1970-01-01T00:00:00Z".to_owned()),
        selector,
        mode: Mode::Permissive,
        port_level: BTreeMap::from([(8080, Mode::Permissive)]),
        rejected: None,
    };
    let mut set = vec![permissive(ROOT, BTreeMap::new())];
    if level >= Level::Namespace {
        set.push(permissive(&policy.key.namespace, BTreeMap::new()));
    }
    if level == Level::Workload {
        set.push(permissive(&policy.key.namespace, policy.selector.clone()));
    }
    for other in &mut set {
        // Port modes only where a selector allows them.
        if other.selector.is_empty() {
            other.port_level.clear();
        }
    }
    set.retain(|other| other.key != policy.key);
    set
}
