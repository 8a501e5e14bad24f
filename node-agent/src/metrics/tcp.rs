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
//! See docs/metrics.md for every label and why its values are bounded.

use std::sync::Arc;

use mesh_proxy::HboneError;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

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

/// The four families.
pub struct TcpMetrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent_bytes: Family<TcpLabels, Counter>,
    received_bytes: Family<TcpLabels, Counter>,
}

// === impl TcpMetrics ===

impl TcpMetrics {
    /// Registers the families in `registry`.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            opened: Family::default(),
            closed: Family::default(),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
        };
        let families = [
            (
                "istio_tcp_connections_opened",
                "TCP connections opened (established, or refused during set-up)",
                &metrics.opened,
            ),
            (
                "istio_tcp_connections_closed",
                "TCP connections closed",
                &metrics.closed,
            ),
            (
                "istio_tcp_sent_bytes",
                "Bytes sent from the destination back to the source of TCP connections, added at close",
                &metrics.sent_bytes,
            ),
            (
                "istio_tcp_received_bytes",
                "Bytes received from the source for the destination of TCP connections, added at close",
                &metrics.received_bytes,
            ),
        ];
        for (name, help, family) in families {
            registry.register(name, help, family.clone());
        }
        metrics
    }

    /// A connection was established.
    pub fn opened(&self, flow: &Flow, workloads: &WorkloadIndex) {
        for labels in series(flow, workloads, ResponseFlags::None) {
            self.opened.get_or_create(&labels).inc();
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
        for labels in series(flow, workloads, flags) {
            self.closed.get_or_create(&labels).inc();
            // Istio's sense: received is the request, sent the response.
            self.received_bytes.get_or_create(&labels).inc_by(sent);
            self.sent_bytes.get_or_create(&labels).inc_by(received);
        }
    }

    /// A connection was refused during set-up: opened and closed at once.
    pub fn refused(&self, flow: &Flow, workloads: &WorkloadIndex, flags: ResponseFlags) {
        for labels in series(flow, workloads, flags) {
            self.opened.get_or_create(&labels).inc();
            self.closed.get_or_create(&labels).inc();
            // Zero-byte series too, so every closed series has its bytes.
            self.received_bytes.get_or_create(&labels).inc_by(0);
            self.sent_bytes.get_or_create(&labels).inc_by(0);
        }
    }
}

/// The series `flow` is counted in: one per reporter.
fn series(
    flow: &Flow,
    workloads: &WorkloadIndex,
    flags: ResponseFlags,
) -> impl Iterator<Item = TcpLabels> {
    let first = labels(flow, workloads, flags);
    let both = flow.direction == Direction::Outbound
        && matches!(flow.security, Security::SameNode | Security::SameNodeKernel);
    let second = both.then(|| TcpLabels {
        reporter: Reporter::Destination,
        ..first.clone()
    });
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
