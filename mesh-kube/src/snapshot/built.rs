//! The last snapshot's pods and services, shared into the next: a rebuild
//! makes each afresh from its store (that is how it sees a change) but
//! keeps the one it built before whenever the two are the same as
//! written, dropping the fresh one at once. Validation then copies a
//! shared pod only if what it fills in changes (its namespace's mTLS
//! label, say), and a service never. So a rebuild after one change holds
//! one generation of pods and services plus the changed ones, never two
//! full generations.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use mesh_core::{service::Service, workload::Pod};

/// What a snapshot shares from the one before.
pub trait Shared {
    /// Its namespace and name, unique in a snapshot.
    fn namespaced_name(&self) -> (&str, &str);

    /// Whether `built`, from the last snapshot, can stand in for `self`,
    /// made afresh.
    fn same_as_built(&self, built: &Self) -> bool;
}

/// The pods or services of the last snapshot, by a hash of namespace and
/// name (a collision only costs one built again: sharing needs
/// [`Shared::same_as_built`]).
pub struct Built<T> {
    by_key: HashMap<u64, Arc<T>>,
    hasher: RandomState,
}

// === impl Built ===

impl<T> Default for Built<T> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            hasher: RandomState::new(),
        }
    }
}

impl<T: Shared> Built<T> {
    /// `fresh`, or the last snapshot's one of that name when it can stand
    /// in for it.
    pub fn share(&self, fresh: T) -> Arc<T> {
        match self.by_key.get(&self.key_of(&fresh)) {
            Some(built) if fresh.same_as_built(built) => built.clone(),
            _ => Arc::new(fresh),
        }
    }

    /// Remembers `built`, the snapshot's just built, in place of the last.
    pub fn remember(&mut self, built: &[Arc<T>]) {
        self.by_key.clear();
        for item in built {
            self.by_key.insert(self.key_of(item), item.clone());
        }
    }

    fn key_of(&self, item: &T) -> u64 {
        self.hasher.hash_one(item.namespaced_name())
    }
}

// === impl Pod, Service ===

impl Shared for Pod {
    fn namespaced_name(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    /// The same as written: validation fills in the rest alike (see
    /// [`Pod::same_as_written`]).
    fn same_as_built(&self, built: &Self) -> bool {
        self.same_as_written(built)
    }
}

impl Shared for Service {
    fn namespaced_name(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    /// Equal: validation changes nothing in a service.
    fn same_as_built(&self, built: &Self) -> bool {
        self == built
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mesh_core::{
        local_config::{self, LocalConfigFile, LocalSnapshot},
        policy::DEFAULT_ROOT_NAMESPACE,
        service::Service,
        workload::MtlsMode,
    };

    use super::*;

    fn pod(name: &str, last: u8, app: &str) -> Pod {
        serde_yaml::from_str(&format!(
            "{{name: {name}, namespace: shop, ips: [10.0.2.{last}], node: n2, labels: {{app: {app}}}}}"
        ))
        .unwrap()
    }

    /// What the snapshot builder does: each pod made afresh, shared from
    /// the last snapshot where it can be, then validated.
    fn build(
        built: &mut Built<Pod>,
        fresh: Vec<Pod>,
        namespace_mtls: Option<&str>,
    ) -> LocalSnapshot {
        let file = LocalConfigFile {
            pods: fresh.into_iter().map(|pod| built.share(pod)).collect(),
            namespace_mtls: namespace_mtls
                .map(|mode| BTreeMap::from([("shop".to_owned(), mode.to_owned())]))
                .unwrap_or_default(),
            ..LocalConfigFile::default()
        };
        let snapshot = local_config::validate(file, DEFAULT_ROOT_NAMESPACE);
        built.remember(&snapshot.pods);
        snapshot
    }

    #[test]
    fn a_rebuild_after_one_change_shares_every_other_pod_with_the_last_snapshot() {
        let mut built = Built::<Pod>::default();
        let first = build(
            &mut built,
            vec![pod("a", 1, "web"), pod("b", 2, "web"), pod("c", 3, "web")],
            None,
        );
        let second = build(
            &mut built,
            vec![pod("a", 1, "web"), pod("b", 2, "api"), pod("c", 3, "web")],
            None,
        );
        assert!(Arc::ptr_eq(&first.pods[0], &second.pods[0]));
        assert!(!Arc::ptr_eq(&first.pods[1], &second.pods[1]), "b changed");
        assert_eq!(second.pods[1].labels["app"], "api");
        assert!(Arc::ptr_eq(&first.pods[2], &second.pods[2]));
    }

    #[test]
    fn a_shared_pod_is_validated_from_what_it_asked_for_not_from_what_it_was_given() {
        let mut built = Built::<Pod>::default();
        // The namespace makes its pods strict; the pod asks for nothing.
        let strict = build(&mut built, vec![pod("a", 1, "web")], Some("STRICT"));
        assert_eq!(strict.pods[0].mtls, MtlsMode::Strict);
        // Unchanged, it is shared, though the mode it holds is not the one
        // it asked for.
        let strict_again = build(&mut built, vec![pod("a", 1, "web")], Some("STRICT"));
        assert!(Arc::ptr_eq(&strict.pods[0], &strict_again.pods[0]));
        // The label goes: the pod shared from the strict snapshot must come
        // out permissive, as a fresh one would, and not keep the mode it
        // was given as if it had asked for it.
        let relaxed = build(&mut built, vec![pod("a", 1, "web")], None);
        assert_eq!(relaxed.pods[0].mtls, MtlsMode::Permissive);
        let fresh = local_config::validate(
            LocalConfigFile {
                pods: vec![Arc::new(pod("a", 1, "web"))],
                ..LocalConfigFile::default()
            },
            DEFAULT_ROOT_NAMESPACE,
        );
        assert_eq!(relaxed.pods[0], fresh.pods[0]);
        // And with nothing changed, the next rebuild shares it as it is.
        let again = build(&mut built, vec![pod("a", 1, "web")], None);
        assert!(Arc::ptr_eq(&relaxed.pods[0], &again.pods[0]));
    }

    #[test]
    fn a_rebuild_shares_every_unchanged_service_and_checks_them_all_again() {
        let service = |name: &str, ip: &str, port: u16| -> Service {
            serde_yaml::from_str(&format!(
                "{{name: {name}, namespace: shop, selector: {{app: web}}, clusterIPs: [{ip}], ports: [{{port: {port}}}]}}"
            ))
            .unwrap()
        };
        let mut built = Built::<Service>::default();
        let mut rebuild = |fresh: Vec<Service>| {
            let file = LocalConfigFile {
                services: fresh.into_iter().map(|s| built.share(s)).collect(),
                ..LocalConfigFile::default()
            };
            let snapshot = local_config::validate(file, DEFAULT_ROOT_NAMESPACE);
            built.remember(&snapshot.services);
            snapshot
        };
        let first = rebuild(vec![
            service("a", "10.96.0.1", 80),
            service("b", "10.96.0.2", 80),
        ]);
        let second = rebuild(vec![
            service("a", "10.96.0.1", 80),
            service("b", "10.96.0.2", 8080),
        ]);
        assert!(Arc::ptr_eq(&first.services[0], &second.services[0]));
        assert!(!Arc::ptr_eq(&first.services[1], &second.services[1]));
        assert_eq!(second.services[1].ports[0].port, 8080);
        // A shared service is still checked against the others: one that
        // now takes its cluster IP is the one rejected.
        let third = rebuild(vec![
            service("a", "10.96.0.1", 80),
            service("c", "10.96.0.1", 80),
        ]);
        assert!(Arc::ptr_eq(&first.services[0], &third.services[0]));
        assert_eq!(third.services.len(), 1);
        assert_eq!(third.rejected_services[0].service.name, "c");
    }

    #[test]
    fn a_pod_that_starts_asking_for_strict_is_strict_at_once() {
        let mut built = Built::<Pod>::default();
        let first = build(&mut built, vec![pod("a", 1, "web")], None);
        assert_eq!(first.pods[0].mtls, MtlsMode::Permissive);
        let mut asks = pod("a", 1, "web");
        asks.mtls = MtlsMode::Strict;
        let second = build(&mut built, vec![asks], None);
        assert_eq!(second.pods[0].mtls, MtlsMode::Strict);
    }

    #[test]
    fn a_pod_that_asks_for_strict_stays_strict_when_shared() {
        let mut built = Built::<Pod>::default();
        let mut asks = pod("a", 1, "web");
        asks.mtls = MtlsMode::Strict;
        let first = build(&mut built, vec![asks.clone()], None);
        assert_eq!(first.pods[0].mtls, MtlsMode::Strict);
        let second = build(&mut built, vec![asks], Some("PERMISSIVE"));
        assert_eq!(
            second.pods[0].mtls,
            MtlsMode::Strict,
            "a pod can only tighten"
        );
    }
}
