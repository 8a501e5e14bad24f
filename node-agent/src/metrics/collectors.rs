//! Metrics read at scrape time from where the figures already live: the eBPF
//! programs' counters map, the certificate manager, the agent's runtimes and
//! its file descriptor table. Nothing is copied in between scrapes.

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::{ebpf::MeshMaps, identity::CertManager};

/// `ambit_ebpf_events_total{event}`: the eBPF programs' counters, summed
/// over CPUs, one series per counter (a fixed set, see
/// `mesh_ebpf_common::counters`).
pub struct EbpfEvents(pub Arc<MeshMaps>);

/// `ambit_certificate_expiration_timestamp_seconds{identity}`: when each
/// workload certificate the agent holds expires.
pub struct CertificateExpiry(pub Arc<CertManager>);

/// `ambit_agent_tasks{runtime}` and `process_open_fds`: the agent's live
/// tokio tasks per runtime, and its open file descriptors. Both return to
/// their idle values when the connections that raised them are gone, which
/// is how a leak shows (the bench's sustained-churn part reads them).
pub struct AgentProcess(pub Vec<(&'static str, tokio::runtime::Handle)>);

/// Name of the eBPF counters' family, without `_total`.
pub const EBPF_EVENTS: &str = "ambit_ebpf_events";
/// Name of the live-task gauge.
pub const AGENT_TASKS: &str = "ambit_agent_tasks";
/// Name of the heap gauge.
pub const AGENT_HEAP: &str = "ambit_agent_heap_bytes";
/// Name of the open file descriptor gauge (Prometheus' process metric name).
pub const OPEN_FDS: &str = "process_open_fds";
/// Name of the certificate expiry family.
pub const CERTIFICATE_EXPIRY: &str = "ambit_certificate_expiration_timestamp_seconds";

// === impl EbpfEvents ===

impl Collector for EbpfEvents {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let counters = match self.0.counters() {
            Ok(counters) => counters,
            Err(error) => {
                // A scrape without them beats a failed scrape.
                tracing::warn!(%error, "cannot read the eBPF counters for /metrics");
                return Ok(());
            }
        };
        let mut family = encoder.encode_descriptor(
            EBPF_EVENTS,
            "Events counted by the eBPF programs: connect redirects, inbound steering, same-node splices and more.",
            None,
            MetricType::Counter,
        )?;
        for (event, value) in counters {
            let labels = [("event", event)];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for EbpfEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EbpfEvents")
    }
}

// === impl CertificateExpiry ===

impl Collector for CertificateExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut family = encoder.encode_descriptor(
            CERTIFICATE_EXPIRY,
            "When each workload certificate the agent holds expires, in seconds since the epoch.",
            None,
            MetricType::Gauge,
        )?;
        for certificate in self.0.certificates() {
            let labels = [("identity", certificate.identity.as_str())];
            let not_after = i64::try_from(certificate.not_after).unwrap_or(i64::MAX);
            ConstGauge::new(not_after).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for CertificateExpiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertificateExpiry")
    }
}

// === impl AgentProcess ===

impl Collector for AgentProcess {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut family = encoder.encode_descriptor(
            AGENT_TASKS,
            "Tasks alive in each of the agent's runtimes (data-path, control).",
            None,
            MetricType::Gauge,
        )?;
        for (runtime, handle) in &self.0 {
            let labels = [("runtime", *runtime)];
            let tasks = i64::try_from(handle.metrics().num_alive_tasks()).unwrap_or(i64::MAX);
            ConstGauge::new(tasks).encode(family.encode_family(&labels)?)?;
        }
        match open_fds() {
            Ok(fds) => {
                let gauge = encoder.encode_descriptor(
                    OPEN_FDS,
                    "Open file descriptors of the agent process.",
                    None,
                    MetricType::Gauge,
                )?;
                ConstGauge::new(fds).encode(gauge)?;
            }
            // A scrape without it beats a failed scrape.
            Err(error) => tracing::warn!(%error, "cannot count open fds for /metrics"),
        }
        if let Some(heap) = crate::sys::heap_usage() {
            let mut family = encoder.encode_descriptor(
                AGENT_HEAP,
                "The allocator's heap: bytes in live allocations (in_use) and bytes free in its arenas (free), resident or not.",
                None,
                MetricType::Gauge,
            )?;
            for (state, bytes) in [("in_use", heap.in_use), ("free", heap.free)] {
                let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
                ConstGauge::new(bytes).encode(family.encode_family(&[("state", state)])?)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for AgentProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentProcess")
    }
}

/// Entries of `/proc/self/fd`, less the one the listing itself holds open.
fn open_fds() -> std::io::Result<i64> {
    let entries = std::fs::read_dir("/proc/self/fd")?.count();
    Ok(i64::try_from(entries.saturating_sub(1)).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::text::encode, registry::Registry};

    use super::*;

    fn scrape(collector: AgentProcess) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        text
    }

    fn sample(text: &str, series: &str) -> i64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    }

    #[test]
    fn live_tasks_and_open_fds_follow_what_the_process_holds() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let collector = || AgentProcess(vec![("data-path", runtime.handle().clone())]);
        let series = "ambit_agent_tasks{runtime=\"data-path\"}";
        let idle = scrape(collector());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = runtime.spawn(async move {
            let _ = stopped.await;
        });
        let file = std::fs::File::open("/proc/self/status").expect("open");
        let busy = scrape(collector());
        assert_eq!(sample(&busy, series), sample(&idle, series) + 1, "{busy}");
        // nextest runs each test in a process of its own: only ours opens.
        assert_eq!(
            sample(&busy, "process_open_fds"),
            sample(&idle, "process_open_fds") + 1,
            "{busy}"
        );
        drop(file);
        let _ = stop.send(());
        runtime.block_on(task).expect("task");
        let done = scrape(collector());
        assert_eq!(sample(&done, series), sample(&idle, series), "{done}");
        assert_eq!(
            sample(&done, "process_open_fds"),
            sample(&idle, "process_open_fds"),
            "{done}"
        );
    }

    #[test]
    fn the_heap_in_use_follows_what_the_process_allocates() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let collector = || AgentProcess(vec![("data-path", runtime.handle().clone())]);
        let series = "ambit_agent_heap_bytes{state=\"in_use\"}";
        let before = sample(&scrape(collector()), series);
        let block = vec![1u8; 8 << 20];
        let during = sample(&scrape(collector()), series);
        assert!(during >= before + (8 << 20), "{before} → {during}");
        drop(std::hint::black_box(block));
        let after = sample(&scrape(collector()), series);
        assert!(after < during - (4 << 20), "{during} → {after}");
        assert!(
            sample(
                &scrape(collector()),
                "ambit_agent_heap_bytes{state=\"free\"}"
            ) >= 0
        );
    }
}
