//! Metrics read at scrape time from where the figures already live: the eBPF
//! programs' counters map and the certificate manager. Nothing is copied in
//! between scrapes.

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

/// Name of the eBPF counters' family, without `_total`.
pub const EBPF_EVENTS: &str = "ambit_ebpf_events";
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
