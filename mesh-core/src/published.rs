//! A value the control side replaces whole and the data path reads: each
//! reader takes the current `Arc` and keeps a consistent version for as
//! long as it needs, while a new one is published.

use std::sync::{Arc, RwLock};

/// The current version of a `T`.
#[derive(Debug, Default)]
pub struct Published<T>(RwLock<Arc<T>>);

// === impl Published ===

impl<T> Published<T> {
    /// Starts with `value`.
    pub fn new(value: T) -> Self {
        Self(RwLock::new(Arc::new(value)))
    }

    /// The current version.
    #[must_use]
    pub fn current(&self) -> Arc<T> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the current version.
    pub fn publish(&self, value: T) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(value);
    }
}
