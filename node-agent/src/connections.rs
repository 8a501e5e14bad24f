//! Connections, open and recently closed, with who talked to whom and how:
//! the admin API's `/connections` (and its follow stream) and one
//! access-log line per connection.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime},
};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::sync::lock;
use crate::{
    flow::{Authorization, ByteCounts, Flow},
    workloads::{SharedWorkloads, WorkloadIndex},
};

/// How many closed connections a follower may fall behind before it misses
/// some (it is told how many).
const FOLLOW_BACKLOG: usize = 1024;

/// How many closed connections the log keeps.
pub const LOG_CAPACITY: usize = 1024;

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

/// Whether a connection is still open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Relaying now; bytes so far.
    Open,
    /// Ended; final bytes.
    Closed,
}

/// One connection as the admin API lists it: open ones with their bytes so
/// far, closed ones with their final figures.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionView {
    /// Open or closed.
    pub state: ConnectionState,
    /// The connection and its figures.
    #[serde(flatten)]
    pub record: ConnectionRecord,
    /// When it opened, seconds since the epoch (open connections only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<u64>,
    /// How long it has been open, in seconds (open connections only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_secs: Option<f64>,
}

/// Each end of a connection resolved to a meshed workload and its node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ends {
    /// The source's workload (namespace/name), when meshed.
    pub src_workload: Option<String>,
    /// The source's node, when meshed.
    pub src_node: Option<String>,
    /// The destination's workload (namespace/name), when meshed.
    pub dst_workload: Option<String>,
    /// The destination's node, when meshed.
    pub dst_node: Option<String>,
}

/// Open connections and the recent-connections ring.
#[derive(Debug)]
pub struct ConnectionLog {
    /// This agent's node, for the access log.
    node: String,
    /// Who is behind an address, for the access log.
    workloads: Arc<SharedWorkloads>,
    records: Mutex<VecDeque<ConnectionRecord>>,
    open: Mutex<BTreeMap<u64, Arc<LiveEntry>>>,
    next_id: AtomicU64,
    closed_feed: broadcast::Sender<ConnectionRecord>,
}

/// An open connection, registered while its relay runs.
#[derive(Debug)]
struct LiveEntry {
    flow: Flow,
    counts: ByteCounts,
    /// The verdict the destination's agent reports in its CONNECT response
    /// (source side of HBONE), once it arrived.
    reported: OnceLock<Authorization>,
    opened: Instant,
    opened_at: u64,
}

/// The handle of an open connection: its byte counters, and its place in the
/// open list, which it leaves when dropped.
pub struct LiveConnection<'a> {
    log: &'a ConnectionLog,
    id: u64,
    entry: Arc<LiveEntry>,
}

// === impl ConnectionLog ===

impl ConnectionLog {
    /// The log of the agent of `node`, naming connection ends by `workloads`.
    #[must_use]
    pub fn new(node: &str, workloads: Arc<SharedWorkloads>) -> Self {
        Self {
            node: node.to_owned(),
            workloads,
            records: Mutex::default(),
            open: Mutex::default(),
            next_id: AtomicU64::new(0),
            closed_feed: broadcast::channel(FOLLOW_BACKLOG).0,
        }
    }

    /// Lists `flow` as open until the returned handle is dropped; the relay
    /// counts its bytes in the handle's counters.
    pub fn open(&self, flow: &Flow) -> LiveConnection<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(LiveEntry {
            flow: flow.clone(),
            counts: ByteCounts::default(),
            reported: OnceLock::new(),
            opened: Instant::now(),
            opened_at: unix_now(),
        });
        lock(&self.open).insert(id, entry.clone());
        LiveConnection {
            log: self,
            id,
            entry,
        }
    }

    /// How many connections are open (what a draining agent still carries).
    #[must_use]
    pub fn open_count(&self) -> usize {
        lock(&self.open).len()
    }

    /// Every open connection, oldest first, with its bytes so far.
    #[must_use]
    pub fn open_connections(&self) -> Vec<ConnectionView> {
        let entries: Vec<_> = lock(&self.open).values().cloned().collect();
        entries
            .into_iter()
            .map(|entry| {
                let mut flow = entry.flow.clone();
                if flow.authorization.is_none() {
                    flow.authorization = entry.reported.get().cloned();
                }
                ConnectionView {
                    state: ConnectionState::Open,
                    record: ConnectionRecord {
                        flow,
                        bytes_sent: entry.counts.sent.load(Ordering::Relaxed),
                        bytes_received: entry.counts.received.load(Ordering::Relaxed),
                        error: None,
                        closed_at: 0,
                    },
                    opened_at: Some(entry.opened_at),
                    age_secs: Some(entry.opened.elapsed().as_secs_f64()),
                }
            })
            .collect()
    }

    /// Every connection closed from now on, as it closes. A follower that
    /// falls more than 1,024 records behind learns how many it missed.
    #[must_use]
    pub fn follow(&self) -> broadcast::Receiver<ConnectionRecord> {
        self.closed_feed.subscribe()
    }

    /// Records a closed connection and writes its access-log line.
    pub fn closed(&self, flow: Flow, bytes_sent: u64, bytes_received: u64, error: Option<String>) {
        let ends = Ends::resolve(&self.workloads.current(), &flow);
        tracing::info!(
            node = %self.node,
            src_workload = ends.src_workload.as_deref().unwrap_or("-"),
            src_node = ends.src_node.as_deref().unwrap_or("-"),
            dst_workload = ends.dst_workload.as_deref().unwrap_or("-"),
            dst_node = ends.dst_node.as_deref().unwrap_or("-"),
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
        let closed_at = unix_now();
        let record = ConnectionRecord {
            flow,
            bytes_sent,
            bytes_received,
            error,
            closed_at,
        };
        // Nobody following is the usual case, not an error.
        let _ = self.closed_feed.send(record.clone());
        let mut records = lock(&self.records);
        if records.len() == LOG_CAPACITY {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// The recent connections, oldest first.
    #[must_use]
    pub fn recent(&self) -> Vec<ConnectionRecord> {
        lock(&self.records).iter().cloned().collect()
    }
}

// === impl Ends ===

impl Ends {
    /// `flow`'s ends as `index` knows them.
    #[must_use]
    pub fn resolve(index: &WorkloadIndex, flow: &Flow) -> Self {
        let end = |ip: std::net::IpAddr| {
            index
                .by_ip(ip)
                .map(|w| (Some(w.key.to_string()), w.node.clone()))
                .unwrap_or_default()
        };
        let (src_workload, src_node) = end(flow.src.ip());
        let (dst_workload, dst_node) = end(flow.dst.ip());
        Self {
            src_workload,
            src_node,
            dst_workload,
            dst_node,
        }
    }
}

// === impl LiveConnection ===

impl LiveConnection<'_> {
    /// The connection's byte counters, for its relay.
    #[must_use]
    pub fn counts(&self) -> &ByteCounts {
        &self.entry.counts
    }

    /// Where the relay puts the verdict the destination's agent reports.
    #[must_use]
    pub fn reported(&self) -> &OnceLock<Authorization> {
        &self.entry.reported
    }
}

impl Drop for LiveConnection<'_> {
    fn drop(&mut self) {
        lock(&self.log.open).remove(&self.id);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
