//! One copy of each distinct label set among the objects a compact store
//! keeps: the pods of one Deployment carry the same labels, so 100,000
//! pods have a few thousand label sets, and each copy is a B-tree node of
//! about half a kilobyte.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

/// A pod's (or any object's) labels.
pub type Labels = BTreeMap<String, String>;

/// Hands out one shared `Arc` per distinct label set, and forgets the sets
/// no object uses any more.
#[derive(Debug, Default)]
pub struct LabelSets {
    sets: HashSet<Arc<Labels>>,
    /// How many sets were in use after the last sweep.
    in_use: usize,
}

// === impl LabelSets ===

impl LabelSets {
    /// The shared copy of `labels`.
    pub fn get(&mut self, labels: Labels) -> Arc<Labels> {
        if let Some(shared) = self.sets.get(&labels) {
            return shared.clone();
        }
        // Sets whose objects changed or left stay here until a sweep: one
        // once the table has doubled since the last, so each set costs
        // O(1) sweeping over its life.
        if self.sets.len() >= 2 * self.in_use + 1024 {
            self.sets.retain(|set| Arc::strong_count(set) > 1);
            self.in_use = self.sets.len();
        }
        let shared = Arc::new(labels);
        self.sets.insert(shared.clone());
        shared
    }

    /// How many sets it holds now, used or not.
    #[must_use]
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether it holds none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(app: &str) -> Labels {
        BTreeMap::from([("app".to_owned(), app.to_owned())])
    }

    #[test]
    fn equal_sets_share_one_copy() {
        let mut sets = LabelSets::default();
        let web = sets.get(labels("web"));
        let again = sets.get(labels("web"));
        let db = sets.get(labels("db"));
        assert!(Arc::ptr_eq(&web, &again));
        assert!(!Arc::ptr_eq(&web, &db));
        assert_eq!(sets.len(), 2);
    }

    #[test]
    fn sets_nobody_uses_are_forgotten_and_the_table_stays_bounded() {
        let mut sets = LabelSets::default();
        let kept = sets.get(labels("kept"));
        // A churn of 100,000 pods that each come and go with labels of
        // their own: the table never holds more than the sweep allows.
        // One set in use ("kept"): a sweep is due at 2 × 1 + 1024 sets.
        let most = 2 + 1024 + 1;
        for n in 0..100_000 {
            drop(sets.get(labels(&format!("pod-{n}"))));
            assert!(sets.len() <= most, "{} sets at {n}", sets.len());
        }
        assert!(
            Arc::ptr_eq(&kept, &sets.get(labels("kept"))),
            "a set in use stays"
        );
    }
}
