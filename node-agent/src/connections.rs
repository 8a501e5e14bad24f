//! Recently closed connections, with who talked to whom and how: the admin
//! API's `/connections` and one access-log line per connection.

use std::{collections::VecDeque, net::SocketAddr, sync::Mutex, time::SystemTime};

use serde::Serialize;

use crate::{authz::Authorization, proxy::Direction};

/// How many closed connections the log keeps.
pub const LOG_CAPACITY: usize = 1024;

/// How a connection was secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// HBONE: mutual TLS between the two agents.
    MutualTls,
    /// Both ends are pods of this node; the agent knows both identities and
    /// the bytes never leave the node, so TLS is skipped (a setting).
    SameNode,
    /// No TLS: one end is outside the mesh.
    Plaintext,
}

/// One proxied connection: its ends and how it was secured.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    /// Which proxy carried it.
    pub direction: Direction,
    /// The enrolled pod (namespace/name) whose proxy carried it.
    pub pod: String,
    /// The connecting side.
    pub src: SocketAddr,
    /// Where it went.
    pub dst: SocketAddr,
    /// The source's SPIFFE id, when known.
    pub src_identity: Option<String>,
    /// The destination's SPIFFE id, when known.
    pub dst_identity: Option<String>,
    /// How it was secured.
    pub security: Security,
    /// The authorization verdict, where this agent knows it: always on the
    /// destination's side; on the source's side when the destination's
    /// agent reported it.
    pub authorization: Option<Authorization>,
}

/// A closed connection.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionRecord {
    /// The connection.
    #[serde(flatten)]
    pub flow: Flow,
    /// Bytes from source to destination.
    pub bytes_sent: u64,
    /// Bytes from destination to source.
    pub bytes_received: u64,
    /// Why it ended badly, if it did.
    pub error: Option<String>,
    /// When it closed, seconds since the epoch.
    pub closed_at: u64,
}

/// The recent-connections ring.
#[derive(Debug, Default)]
pub struct ConnectionLog {
    records: Mutex<VecDeque<ConnectionRecord>>,
}

// === impl ConnectionLog ===

impl ConnectionLog {
    /// Records a closed connection and writes its access-log line.
    pub fn closed(&self, flow: Flow, bytes_sent: u64, bytes_received: u64, error: Option<String>) {
        tracing::info!(
            direction = ?flow.direction,
            pod = %flow.pod,
            src = %flow.src,
            dst = %flow.dst,
            src_identity = flow.src_identity.as_deref().unwrap_or("-"),
            dst_identity = flow.dst_identity.as_deref().unwrap_or("-"),
            security = ?flow.security,
            verdict = flow.authorization.as_ref().map_or("-", |a| a.decision.as_str()),
            policy = flow.authorization.as_ref().map_or("-", |a| a.policy.as_str()),
            enforced_by = flow.authorization.as_ref().map_or("-", |a| a.enforced_by.as_str()),
            enforcement_point = flow.authorization.as_ref().map_or("-", |a| a.enforcement_point.as_str()),
            bytes_sent,
            bytes_received,
            error = error.as_deref().unwrap_or("-"),
            "connection closed"
        );
        let closed_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let record = ConnectionRecord {
            flow,
            bytes_sent,
            bytes_received,
            error,
            closed_at,
        };
        let mut records = self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if records.len() == LOG_CAPACITY {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// The recent connections, oldest first.
    #[must_use]
    pub fn recent(&self) -> Vec<ConnectionRecord> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}
