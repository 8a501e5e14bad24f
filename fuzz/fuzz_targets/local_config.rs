//! The local configuration file (YAML → validated snapshot → the
//! waypoint's state): any text parses or fails without a panic; the file
//! read, written out and read back validates to the same snapshot; accepted
//! pods have unique names and addresses, at most one per family; a pod
//! that asks for strict mTLS gets it; and the waypoint builds its state,
//! routes and policies from any snapshot.

#![no_main]

use std::collections::{BTreeSet, HashSet};

use ambit_fuzz::text;
use libfuzzer_sys::fuzz_target;
use mesh_core::{
    local_config::{self, LocalConfigFile},
    policy::DEFAULT_ROOT_NAMESPACE,
    route::RouteTable,
    workload::MtlsMode,
};
use waypoint::state::{State, WaypointName};

fuzz_target!(|data: &[u8]| {
    if data.len() > text::MAX_YAML {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(snapshot) = local_config::parse(text, DEFAULT_ROOT_NAMESPACE) else {
        return;
    };
    // Written out and read back: the same snapshot.
    let file: LocalConfigFile = if text.trim().is_empty() {
        LocalConfigFile::default()
    } else {
        serde_yaml::from_str(text).expect("a file that parsed parses again")
    };
    // serde_yaml cannot write some raw objects (a tagged mapping key);
    // those files are not written out.
    if let Ok(written) = serde_yaml::to_string(&file) {
        let again = local_config::parse(&written, DEFAULT_ROOT_NAMESPACE).unwrap_or_else(|error| {
            panic!("a written configuration reads back: {error}\n{written}")
        });
        assert_eq!(again, snapshot, "written out and read back:\n{written}");
    }
    // The admin views serialise it; raw route objects with keys JSON
    // cannot hold fail there (and the views say so), never panic.
    let _ = serde_json::to_string(&snapshot);

    // What validation promises of the pods it accepts.
    let mut keys = HashSet::new();
    let mut addresses = HashSet::new();
    for pod in &snapshot.pods {
        assert!(keys.insert(pod.key()), "pod {} accepted twice", pod.key());
        assert!(!pod.ips.is_empty(), "pod {} has no address", pod.key());
        let families: BTreeSet<bool> = pod.ips.iter().map(std::net::IpAddr::is_ipv4).collect();
        assert_eq!(
            families.len(),
            pod.ips.len(),
            "pod {}: one address per family",
            pod.key()
        );
        for ip in &pod.ips {
            assert!(addresses.insert(*ip), "address {ip} accepted for two pods");
        }
    }
    let mut first_entries = HashSet::new();
    for (entry, pod) in file.pods.iter().enumerate() {
        if first_entries.insert(pod.key())
            && let Some(accepted) = snapshot.pods.iter().find(|p| p.key() == pod.key())
            && pod.mtls == MtlsMode::Strict
        {
            assert_eq!(
                accepted.mtls,
                MtlsMode::Strict,
                "pod entry {} asked for strict mTLS",
                entry + 1
            );
        }
    }
    assert_eq!(
        snapshot.pods.len() + snapshot.rejected.len(),
        file.pods.len(),
        "every pod entry is accepted or rejected"
    );
    assert_eq!(
        snapshot.services.len() + snapshot.rejected_services.len(),
        file.services.len(),
        "every service entry is accepted or rejected"
    );
    assert_eq!(snapshot.policies.len(), file.policies.len());
    assert_eq!(
        snapshot.peer_authentications.len(),
        file.peer_authentications.len()
    );

    // The waypoint's state from it: services it serves, routes, policies.
    let me = WaypointName {
        namespace: "shop".to_owned(),
        name: "wp".to_owned(),
        trust_domain: "cluster.local".to_owned(),
    };
    let state = State::build(snapshot, &me, &RouteTable::default());
    for (addr, served) in state.served_ports() {
        assert_eq!(
            state.served(*addr).map(|s| &s.service),
            Some(&served.service)
        );
        let _ = state.endpoints(&served.service, served.port.port, addr.is_ipv4());
    }
});
