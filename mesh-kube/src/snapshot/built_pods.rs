//! The last snapshot's pods, shared into the next: a rebuild makes each
//! pod afresh from its store (that is how it sees a change) but keeps the
//! one it built before whenever the two are the same as written, dropping
//! the fresh one at once. Validation then copies a shared pod only if what
//! it fills in changes (its namespace's mTLS label, say). So a rebuild
//! after one change holds one generation of pods plus the changed ones,
//! never two full generations.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use mesh_core::workload::Pod;

/// The pods of the last snapshot, by a hash of namespace and name (a
/// collision only costs a pod built again: sharing needs
/// [`Pod::same_as_written`]).
#[derive(Default)]
pub struct BuiltPods {
    by_key: HashMap<u64, Arc<Pod>>,
    hasher: RandomState,
}

// === impl BuiltPods ===

impl BuiltPods {
    /// `pod`, or the last snapshot's pod of that name when it is the same
    /// as written.
    pub fn share(&self, pod: Pod) -> Arc<Pod> {
        match self.by_key.get(&self.key_of(&pod)) {
            Some(built) if built.same_as_written(&pod) => built.clone(),
            _ => Arc::new(pod),
        }
    }

    /// Remembers `pods`, the snapshot just built, in place of the last.
    pub fn remember(&mut self, pods: &[Arc<Pod>]) {
        self.by_key.clear();
        for pod in pods {
            self.by_key.insert(self.key_of(pod), pod.clone());
        }
    }

    fn key_of(&self, pod: &Pod) -> u64 {
        self.hasher
            .hash_one((pod.namespace.as_str(), pod.name.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mesh_core::{
        local_config::{self, LocalConfigFile, LocalSnapshot},
        policy::DEFAULT_ROOT_NAMESPACE,
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
        built: &mut BuiltPods,
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
        let mut built = BuiltPods::default();
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
        let mut built = BuiltPods::default();
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
    fn a_pod_that_starts_asking_for_strict_is_strict_at_once() {
        let mut built = BuiltPods::default();
        let first = build(&mut built, vec![pod("a", 1, "web")], None);
        assert_eq!(first.pods[0].mtls, MtlsMode::Permissive);
        let mut asks = pod("a", 1, "web");
        asks.mtls = MtlsMode::Strict;
        let second = build(&mut built, vec![asks], None);
        assert_eq!(second.pods[0].mtls, MtlsMode::Strict);
    }

    #[test]
    fn a_pod_that_asks_for_strict_stays_strict_when_shared() {
        let mut built = BuiltPods::default();
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
