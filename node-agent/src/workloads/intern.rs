//! One shared copy of each distinct string while an index is built: the
//! tens of thousands of pods of a cluster repeat a few hundred namespaces,
//! apps, principals and service names.

use std::{collections::HashSet, sync::Arc};

/// Hands out one `Arc<str>` per distinct text.
#[derive(Debug, Default)]
pub struct Interner(HashSet<Arc<str>>);

// === impl Interner ===

impl Interner {
    /// The shared copy of `text`, made on first use.
    pub fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = text.into();
        self.0.insert(shared.clone());
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_share_one_copy_and_different_ones_do_not() {
        let mut strings = Interner::default();
        let first = strings.get("shop");
        let again = strings.get(&String::from("shop"));
        assert!(Arc::ptr_eq(&first, &again));
        let other = strings.get("web");
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(&*other, "web");
    }
}
