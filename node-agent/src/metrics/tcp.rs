//! Istio's TCP metrics, with Istio's names and labels, so dashboards and
//! alerts written for Istio work on ambit unchanged:
//! `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
//! `istio_tcp_sent_bytes_total` and `istio_tcp_received_bytes_total`.
//!
//! - **Who reports.** The outbound proxy reports `source`, the inbound side
//!   (the HBONE server, the plaintext inbound proxy) `destination`. A
//!   same-node connection that the fast path carries (through the source's
//!   outbound proxy only, or spliced in the kernel) is reported twice, once
//!   per reporter, because this agent is both ends' agent: per-destination
//!   views (`reporter="destination"`) then see same-node traffic as they see
//!   traffic from other nodes.
//! - **Bytes** follow Istio: `received` counts the bytes from the source to
//!   the destination (the request), `sent` those from the destination back
//!   (the response), for both reporters. They are added when the connection
//!   closes.
//! - **Opened** is counted once a connection is established (upstream
//!   connected, or HBONE stream opened) or refused during set-up (denied,
//!   upstream failure); a refused one counts as opened and closed at once,
//!   with its flag. So `opened - closed`, summed over `response_flags`, is
//!   the number of open connections.
//!
//! - **Retention.** A label set's series go together once none of them has
//!   moved for the retention time and no open connection holds them
//!   ([`TcpMetrics::opened`] returns the hold), see [`mesh_core::metrics_retention`].
//!
//! See docs/metrics.md for every label and why its values are bounded.

use std::sync::{Arc, OnceLock};

use mesh_proxy::HboneError;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder},
    metrics::{MetricType, TypedMetric, counter::Counter},
    registry::Registry,
};

use mesh_core::metrics_retention::{Held, Retained};

use crate::{
    flow::{Direction, Flow, ProxyError, RelayEnd, Security},
    workloads::WorkloadIndex,
    workloads::names::{UNKNOWN, WorkloadNames},
};

/// Which end's proxy reports a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The source's outbound proxy.
    Source,
    /// The destination's inbound side.
    Destination,
}

/// Istio's `connection_security_policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    /// HBONE: mutual TLS between the agents, both identities proved.
    MutualTls,
    /// Anything else: plaintext, and the same-node fast path (no TLS; the
    /// agent vouches for both identities, which the principals show).
    Unknown,
}

/// Istio's `response_flags`: what went wrong, from a small fixed set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResponseFlags {
    /// `-`: nothing.
    #[default]
    None,
    /// `DENY`: refused by an authorization policy or by strict mTLS, or
    /// reset by a policy change.
    Deny,
    /// `UF`: the upstream connection failed: the application or the peer's
    /// HBONE port refused or was unreachable, the TLS handshake failed, or
    /// the peer's agent could not reach its application.
    UpstreamFailure,
    /// `UT`: the upstream connection timed out.
    UpstreamTimeout,
    /// `IO`: the relay ended with an I/O error (a reset or a broken pipe on
    /// either side).
    Io,
    /// `UH`: the service the client dialled has no ready endpoint.
    NoHealthyUpstream,
}

/// The labels of one series of Istio's TCP metrics, in Istio's order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpLabels {
    /// `source` or `destination`.
    pub reporter: Reporter,
    /// The source pod's workload, or `unknown`.
    pub source_workload: Arc<str>,
    /// The source pod's namespace, or `unknown`.
    pub source_workload_namespace: Arc<str>,
    /// The source's SPIFFE id, or `unknown`.
    pub source_principal: Arc<str>,
    /// The destination pod's workload, or `unknown`.
    pub destination_workload: Arc<str>,
    /// The destination pod's namespace, or `unknown`.
    pub destination_workload_namespace: Arc<str>,
    /// The destination's SPIFFE id, or `unknown`.
    pub destination_principal: Arc<str>,
    /// The host name of the service selecting the destination pod, or `unknown`.
    pub destination_service: Arc<str>,
    /// `mutual_tls` or `unknown`.
    pub connection_security_policy: SecurityPolicy,
    /// `-` or a flag.
    pub response_flags: ResponseFlags,
}

/// The counters of one label set, response flags included.
#[derive(Debug, Default)]
pub struct TcpCounters {
    opened: Counter,
    closed: Counter,
    sent_bytes: Counter,
    received_bytes: Counter,
}

/// The series of one connection label set (everything but
/// `response_flags`), per flag: they come and go together (see
/// [`mesh_core::metrics_retention`]), so `opened - closed` summed over the flags stays
/// the number of open connections. A flag's series appear once it is
/// first counted, at zero for the counters it has not moved.
#[derive(Debug, Default)]
pub struct TcpGroup {
    by_flags: [OnceLock<TcpCounters>; ResponseFlags::ALL.len()],
}

/// The series an open connection was counted in when it opened: they stay
/// while this lives (the proxies keep it for as long as the connection is
/// open).
#[derive(Debug)]
#[must_use = "the connection's series are held only while this lives"]
pub struct OpenSeries {
    _first: Held<TcpGroup>,
    _second: Option<Held<TcpGroup>>,
}

/// The four families, one store of label sets.
pub struct TcpMetrics {
    groups: Retained<TcpLabels, TcpGroup>,
}

/// One of the four families: a view of the store that encodes one of each
/// label set's counters.
#[derive(Debug)]
struct TcpFamily {
    groups: Retained<TcpLabels, TcpGroup>,
    counter: PickCounter,
}

/// Which of a label set's counters a family shows.
type PickCounter = fn(&TcpCounters) -> &Counter;

// === impl TcpMetrics ===

impl TcpMetrics {
    /// Registers the families in `registry`.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            groups: Retained::default(),
        };
        let families: [(&str, &str, PickCounter); 4] = [
            (
                "istio_tcp_connections_opened",
                "TCP connections opened (established, or refused during set-up)",
                |c| &c.opened,
            ),
            (
                "istio_tcp_connections_closed",
                "TCP connections closed",
                |c| &c.closed,
            ),
            (
                "istio_tcp_sent_bytes",
                "Bytes sent from the destination back to the source of TCP connections, added at close",
                |c| &c.sent_bytes,
            ),
            (
                "istio_tcp_received_bytes",
                "Bytes received from the source for the destination of TCP connections, added at close",
                |c| &c.received_bytes,
            ),
        ];
        for (name, help, counter) in families {
            let family = TcpFamily {
                groups: metrics.groups.clone(),
                counter,
            };
            registry.register(name, help, family);
        }
        metrics
    }

    /// A connection was established; its series stay while the returned
    /// handle lives.
    pub fn opened(&self, flow: &Flow, workloads: &WorkloadIndex) -> OpenSeries {
        let open = |labels: &TcpLabels| {
            let group = self.groups.hold(labels);
            group.flag(ResponseFlags::None).opened.inc();
            group
        };
        let (first, second) = series(flow, workloads);
        OpenSeries {
            _first: open(&first),
            _second: second.as_ref().map(open),
        }
    }

    /// An established connection closed after relaying `sent` bytes from
    /// the source and `received` bytes back (the [`Flow`]'s sense).
    pub fn closed(
        &self,
        flow: &Flow,
        workloads: &WorkloadIndex,
        flags: ResponseFlags,
        sent: u64,
        received: u64,
    ) {
        for labels in every(series(flow, workloads)) {
            let counters = self.groups.touch(&labels);
            let counters = counters.flag(flags);
            counters.closed.inc();
            // Istio's sense: received is the request, sent the response.
            counters.received_bytes.inc_by(sent);
            counters.sent_bytes.inc_by(received);
        }
    }

    /// A connection was refused during set-up: opened and closed at once.
    pub fn refused(&self, flow: &Flow, workloads: &WorkloadIndex, flags: ResponseFlags) {
        for labels in every(series(flow, workloads)) {
            let counters = self.groups.touch(&labels);
            let counters = counters.flag(flags);
            counters.opened.inc();
            counters.closed.inc();
        }
    }

    /// Drops the label sets unchanged for `retain` and held by no open
    /// connection; returns how many went.
    #[must_use = "how many went is worth logging"]
    pub fn evict_idle(&self, retain: std::time::Duration) -> usize {
        self.groups.evict_idle(retain)
    }
}

// === impl TcpGroup ===

impl TcpGroup {
    /// The counters of `flags`, made if new.
    fn flag(&self, flags: ResponseFlags) -> &TcpCounters {
        self.by_flags[flags.index()].get_or_init(TcpCounters::default)
    }
}

// === impl TcpFamily ===

impl TypedMetric for TcpFamily {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for TcpFamily {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, group) in self.groups.read().iter() {
            for flags in ResponseFlags::ALL {
                if let Some(counters) = group.by_flags[flags.index()].get() {
                    let labels = TcpLabels {
                        response_flags: flags,
                        ..labels.clone()
                    };
                    (self.counter)(counters).encode(encoder.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }

    fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// The series `flow` is counted in: its reporter's, and for a same-node
/// connection carried by the source's proxy the destination's too. Their
/// `response_flags` is `-`: they key a [`TcpGroup`].
fn series(flow: &Flow, workloads: &WorkloadIndex) -> (TcpLabels, Option<TcpLabels>) {
    let first = labels(flow, workloads, ResponseFlags::None);
    let both = flow.direction == Direction::Outbound
        && matches!(flow.security, Security::SameNode | Security::SameNodeKernel);
    let second = both.then(|| TcpLabels {
        reporter: Reporter::Destination,
        ..first.clone()
    });
    (first, second)
}

/// Each of [`series`]' label sets.
fn every((first, second): (TcpLabels, Option<TcpLabels>)) -> impl Iterator<Item = TcpLabels> {
    std::iter::once(first).chain(second)
}

/// The labels of `flow` as its carrying proxy reports it.
#[must_use]
pub fn labels(flow: &Flow, workloads: &WorkloadIndex, flags: ResponseFlags) -> TcpLabels {
    let unknown: Arc<str> = UNKNOWN.into();
    let source = end_names(workloads, flow.src.ip(), flow.src_identity.as_deref());
    let destination = end_names(workloads, flow.dst.ip(), flow.dst_identity.as_deref());
    let principal = |identity: Option<&str>| identity.map_or_else(|| unknown.clone(), Arc::from);
    TcpLabels {
        reporter: match flow.direction {
            Direction::Outbound => Reporter::Source,
            Direction::Inbound => Reporter::Destination,
        },
        source_workload: source.map_or_else(|| unknown.clone(), |n| n.workload.clone()),
        source_workload_namespace: source
            .map(|n| n.namespace.clone())
            .or_else(|| namespace_of(flow.src_identity.as_deref()))
            .unwrap_or_else(|| unknown.clone()),
        source_principal: principal(flow.src_identity.as_deref()),
        destination_workload: destination.map_or_else(|| unknown.clone(), |n| n.workload.clone()),
        destination_workload_namespace: destination
            .map(|n| n.namespace.clone())
            .or_else(|| namespace_of(flow.dst_identity.as_deref()))
            .unwrap_or_else(|| unknown.clone()),
        destination_principal: principal(flow.dst_identity.as_deref()),
        destination_service: destination.map_or_else(|| unknown.clone(), |n| n.service.clone()),
        connection_security_policy: match flow.security {
            // Istio's values: the kernel path is still mutual TLS between
            // the nodes; ambit_kernel_path_connections_total tells it apart.
            Security::MutualTls | Security::MutualTlsKernelPath => SecurityPolicy::MutualTls,
            Security::SameNode | Security::SameNodeKernel | Security::Plaintext => {
                SecurityPolicy::Unknown
            }
        },
        response_flags: flags,
    }
}

/// The names of the meshed pod at `ip`. When the connection proved an
/// identity that is not that pod's (an address reused by another pod, say),
/// the pod is not named: only what was proved is reported.
fn end_names<'a>(
    workloads: &'a WorkloadIndex,
    ip: std::net::IpAddr,
    identity: Option<&str>,
) -> Option<&'a WorkloadNames> {
    let names = &workloads.by_ip(ip)?.names;
    identity
        .is_none_or(|identity| *names.principal == *identity)
        .then_some(names)
}

/// The namespace part of a SPIFFE id.
fn namespace_of(identity: Option<&str>) -> Option<Arc<str>> {
    let id: mesh_core::identity::SpiffeId = identity?.parse().ok()?;
    Some(id.namespace().into())
}

// === impl ResponseFlags ===

impl ResponseFlags {
    /// Every flag, in the order a label set's series are listed: the
    /// order of declaration, which `index` relies on.
    pub const ALL: [Self; 6] = [
        Self::None,
        Self::Deny,
        Self::UpstreamFailure,
        Self::UpstreamTimeout,
        Self::Io,
        Self::NoHealthyUpstream,
    ];

    /// Where the flag is in [`Self::ALL`].
    fn index(self) -> usize {
        self as usize
    }

    /// The flag of a connection that failed during set-up.
    #[must_use]
    pub fn of_error(error: &ProxyError) -> Self {
        match error {
            ProxyError::ConnectTimeout(_) | ProxyError::Hbone(HboneError::Timeout(_)) => {
                Self::UpstreamTimeout
            }
            ProxyError::StrictMtls { .. } => Self::Deny,
            ProxyError::NoEndpoints { .. } | ProxyError::NoWaypoint { .. } => {
                Self::NoHealthyUpstream
            }
            ProxyError::Hbone(error) => Self::of_hbone(error),
            _ => Self::UpstreamFailure,
        }
    }

    /// The flag of a connection whose relay ended as `end`.
    #[must_use]
    pub fn of_end(end: &RelayEnd) -> Self {
        match end {
            RelayEnd::Done => Self::None,
            RelayEnd::Revoked(_) => Self::Deny,
            RelayEnd::Failed(error) => error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<HboneError>())
                .map_or(Self::Io, Self::of_hbone),
        }
    }

    fn of_hbone(error: &HboneError) -> Self {
        match error {
            HboneError::Refused { status, .. } if *status == http::StatusCode::FORBIDDEN => {
                Self::Deny
            }
            HboneError::Timeout(_) => Self::UpstreamTimeout,
            HboneError::H2 { .. } => Self::Io,
            HboneError::Shared(error) => Self::of_hbone(error),
            _ => Self::UpstreamFailure,
        }
    }

    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::Deny => "DENY",
            Self::UpstreamFailure => "UF",
            Self::UpstreamTimeout => "UT",
            Self::Io => "IO",
            Self::NoHealthyUpstream => "UH",
        }
    }
}

impl EncodeLabelValue for ResponseFlags {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

// === impl Reporter ===

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let value = match self {
            Self::Source => "source",
            Self::Destination => "destination",
        };
        EncodeLabelValue::encode(&value, encoder)
    }
}

// === impl SecurityPolicy ===

impl EncodeLabelValue for SecurityPolicy {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let value = match self {
            Self::MutualTls => "mutual_tls",
            Self::Unknown => "unknown",
        };
        EncodeLabelValue::encode(&value, encoder)
    }
}

#[cfg(test)]
mod tests;
