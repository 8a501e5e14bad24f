//! Metric series that leave once nothing uses them, for the agent's and
//! the waypoint's metrics alike.
//!
//! A label set names workloads, identities, services, routes and policies,
//! so every one a process ever saw would stay in `/metrics` for as long as
//! it lives: over weeks of deployments coming and going, policies renamed
//! and namespaces created for a test run and deleted, that is memory and
//! scrape size without bound. So a series that has not moved for the
//! retention time (`--metrics-retain-idle-secs`, 10 minutes unless told) is
//! dropped, unless something still holds it: an agent's open connection
//! holds the series it was counted in when it opened (see
//! [`Retained::hold`]), so a connection open for days is never counted out
//! of its series before it closes.
//!
//! A series that comes back starts at zero, which Prometheus' `rate` and
//! `increase` read as a counter reset: nothing a dashboard shows is lost as
//! long as the series was scraped once after its last change, which the
//! retention (many scrape intervals) leaves time for.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder},
    metrics::{MetricType, TypedMetric},
};
use tokio_util::sync::CancellationToken;

/// A family of series keyed by label set, each a `V` (a counter, or a few
/// counters that must come and go together), dropped by
/// [`evict_idle`](Self::evict_idle) once idle and unheld. Clones share the
/// series.
#[derive(Debug)]
pub struct Retained<K, V> {
    series: Arc<RwLock<HashMap<K, Arc<Series<V>>>>>,
}

/// One series: its value and when it last changed.
#[derive(Debug, Default)]
pub struct Series<V> {
    value: V,
    /// When it last changed: [`now_ms`] at the last [`Retained::touch`],
    /// or when a [`Held`] of it was let go.
    touched_ms: AtomicU64,
}

/// A series held by an open connection: it is not dropped while this lives.
#[derive(Debug)]
#[must_use = "the series is held only while this lives"]
pub struct Held<V>(Arc<Series<V>>);

/// One metric of a [`Retained`] family, to register: the metric `pick`
/// chooses from each series (the counter itself, or one of several that
/// come and go together, as a request count and its durations), under the
/// series' labels.
#[derive(Debug)]
pub struct View<K, V, M> {
    family: Retained<K, V>,
    pick: fn(&V) -> &M,
}

// === impl Retained ===

impl<K, V> Default for Retained<K, V> {
    fn default() -> Self {
        Self {
            series: Arc::default(),
        }
    }
}

impl<K, V> Clone for Retained<K, V> {
    fn clone(&self) -> Self {
        Self {
            series: self.series.clone(),
        }
    }
}

impl<K: Clone + Hash + Eq, V: Default> Retained<K, V> {
    /// The series of `key`, made if new, marked as changed now: the caller
    /// changes its value.
    pub fn touch(&self, key: &K) -> Arc<Series<V>> {
        let now = now_ms();
        let existing = self.read().get(key).cloned();
        let series =
            existing.unwrap_or_else(|| self.write().entry(key.clone()).or_default().clone());
        series.touched_ms.store(now, Ordering::Relaxed);
        series
    }

    /// The series of `key`, made if new and marked as changed now, held
    /// until the returned handle is dropped.
    pub fn hold(&self, key: &K) -> Held<V> {
        Held(self.touch(key))
    }

    /// Drops every series unchanged for `retain` and held by nobody;
    /// returns how many went.
    #[must_use = "how many went is worth logging"]
    pub fn evict_idle(&self, retain: Duration) -> usize {
        let oldest_kept = now_ms().saturating_sub(millis(retain));
        let mut series = self.write();
        let before = series.len();
        series.retain(|_, entry| {
            Arc::strong_count(entry) > 1 || entry.touched_ms.load(Ordering::Relaxed) > oldest_kept
        });
        before - series.len()
    }

    /// How many series there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

impl<K, V> Retained<K, V> {
    /// Every series, for encoding: writers that make a new series wait
    /// meanwhile, those that change an existing one do not. A lock
    /// poisoned by a panicked holder is taken as it is: the map stays
    /// consistent after any partial update.
    pub fn read(&self) -> RwLockReadGuard<'_, HashMap<K, Arc<Series<V>>>> {
        self.series.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<K, Arc<Series<V>>>> {
        self.series.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The metric `pick` chooses from each series, to register on its own.
    #[must_use]
    pub fn view<M>(&self, pick: fn(&V) -> &M) -> View<K, V, M> {
        View {
            family: self.clone(),
            pick,
        }
    }
}

// === impl View ===

impl<K, V, M: TypedMetric> TypedMetric for View<K, V, M> {
    const TYPE: MetricType = M::TYPE;
}

impl<K, V, M> EncodeMetric for View<K, V, M>
where
    K: EncodeLabelSet + std::fmt::Debug + Send + Sync,
    V: std::fmt::Debug + Send + Sync,
    M: EncodeMetric + TypedMetric + std::fmt::Debug,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, series) in self.family.read().iter() {
            (self.pick)(&series.value).encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }

    fn is_empty(&self) -> bool {
        self.family.read().is_empty()
    }
}

// === impl Series ===

impl<V> std::ops::Deref for Series<V> {
    type Target = V;

    fn deref(&self) -> &V {
        &self.value
    }
}

// === impl Held ===

impl<V> std::ops::Deref for Held<V> {
    type Target = V;

    fn deref(&self) -> &V {
        &self.0.value
    }
}

impl<V> Drop for Held<V> {
    /// A connection that ends has just changed its series (its close is
    /// counted next): the retention runs from now.
    fn drop(&mut self) {
        self.0.touched_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// Calls `evict` (a family's `evict_idle`, or several) four times per
/// `retain`, so a series goes between 1 and 1.25 times `retain` after its
/// last change, until `shutdown`.
pub async fn evict_idle_until_cancelled(
    retain: Duration,
    shutdown: CancellationToken,
    evict: impl Fn(Duration) -> usize,
) {
    let mut ticks = tokio::time::interval((retain / 4).max(Duration::from_secs(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                let evicted = evict(retain);
                if evicted > 0 {
                    tracing::debug!(evicted, "idle metric series dropped");
                }
            }
        }
    }
}

/// Milliseconds since the first call in this process: a series' clock.
fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    millis(BASE.get_or_init(Instant::now).elapsed())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        policy: String,
    }

    fn key(policy: &str) -> Labels {
        Labels {
            policy: policy.to_owned(),
        }
    }

    fn encoded(family: &Retained<Labels, Counter>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("decisions", "d", family.view(|counter| counter));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn a_series_unchanged_for_the_retention_goes_and_a_changed_one_stays() {
        let family = Retained::<Labels, Counter>::default();
        family.touch(&key("shop/old")).inc();
        std::thread::sleep(Duration::from_millis(60));
        family.touch(&key("shop/new")).inc_by(2);
        assert_eq!(family.evict_idle(Duration::from_millis(40)), 1);
        let text = encoded(&family);
        assert!(
            text.contains(r#"decisions_total{policy="shop/new"} 2"#),
            "{text}"
        );
        assert!(!text.contains("shop/old"), "{text}");
    }

    #[test]
    fn a_held_series_stays_however_long_it_is_idle_and_goes_once_let_go() {
        let family = Retained::<Labels, Counter>::default();
        let held = family.hold(&key("shop/long"));
        held.inc();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(family.evict_idle(Duration::from_millis(10)), 0);
        assert_eq!(family.len(), 1);
        drop(held);
        assert_eq!(
            family.evict_idle(Duration::from_millis(10)),
            0,
            "letting go counts as a change: the retention runs from there"
        );
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(family.evict_idle(Duration::from_millis(10)), 1);
        assert!(family.is_empty());
    }

    #[test]
    fn a_series_made_again_after_it_went_starts_from_zero() {
        let family = Retained::<Labels, Counter>::default();
        family.touch(&key("shop/p")).inc_by(5);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(family.evict_idle(Duration::from_millis(10)), 1);
        family.touch(&key("shop/p")).inc();
        assert!(encoded(&family).contains(r#"decisions_total{policy="shop/p"} 1"#));
    }

    #[test]
    fn touching_an_existing_series_keeps_its_value_and_renews_it() {
        let family = Retained::<Labels, Counter>::default();
        family.touch(&key("shop/p")).inc();
        std::thread::sleep(Duration::from_millis(30));
        family.touch(&key("shop/p")).inc();
        assert_eq!(family.evict_idle(Duration::from_millis(20)), 0);
        assert_eq!(family.touch(&key("shop/p")).get(), 2);
    }
}
