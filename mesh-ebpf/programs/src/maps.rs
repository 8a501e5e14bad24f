//! The maps every program shares. All are pinned by name so that a
//! restarted agent finds them again under its bpffs directory.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf, SockHash},
};
use mesh_ebpf_common::{
    DirectKey, DirectVerdict, EnrolledNetns, InboundListenerKey, OriginalDst, SocketTuple, SpliceStats, counters,
};

/// Enrolled pods' network namespaces, by netns cookie. Written by the agent.
#[map(name = "AMBIT_ENROLLED")]
pub static ENROLLED_NETNS: HashMap<u64, EnrolledNetns> = HashMap::pinned(16_384, 0);

/// Original destinations by socket cookie, from `connect` until close.
#[map(name = "AMBIT_ODST_SOCK")]
pub static ORIG_DST_BY_COOKIE: LruHashMap<u64, OriginalDst> = LruHashMap::pinned(65_536, 0);

/// Original destinations by the application side's 4-tuple; the agent takes
/// (reads and deletes) the entry when it accepts the connection.
#[map(name = "AMBIT_ODST_TUPL")]
pub static ORIG_DST_BY_TUPLE: LruHashMap<SocketTuple, OriginalDst> = LruHashMap::pinned(65_536, 0);

/// The agent's inbound listeners, by the pod address they serve.
#[map(name = "AMBIT_INBOUND")]
pub static INBOUND_LISTENERS: SockHash<InboundListenerKey> = SockHash::pinned(16_384, 0);

/// The inbound proxy's own connections to applications, by their tuple
/// (client side as source, netns cookie 0): `sk_lookup` leaves them alone.
/// The agent adds an entry before it connects and removes it once connected.
#[map(name = "AMBIT_BYPASS")]
pub static INBOUND_BYPASS: LruHashMap<SocketTuple, u32> = LruHashMap::pinned(16_384, 0);

/// Same-node pairs that policy lets connect directly, by (source, destination,
/// port); port 0 covers every port without an entry of its own. Written by
/// the agent from the policies in force; empty when splicing is off.
#[map(name = "AMBIT_DIRECT")]
pub static DIRECT: HashMap<DirectKey, DirectVerdict> = HashMap::pinned(65_536, 0);

/// Both sockets of each direct connection, by their own tuple (local as
/// source, netns cookie 0: pod addresses are unique on a node). `sk_msg` is
/// attached here.
#[map(name = "AMBIT_SPLICE_SK")]
pub static SPLICE_SOCKETS: SockHash<SocketTuple> = SockHash::pinned(65_536, 0);

/// Byte counts of open spliced connections, by the client side's tuple.
#[map(name = "AMBIT_SPLICED")]
pub static SPLICED: LruHashMap<SocketTuple, SpliceStats> = LruHashMap::pinned(65_536, 0);

/// Spliced connections opening and closing, for the agent's logs and counters.
#[map(name = "AMBIT_SPLICE_EV")]
pub static SPLICE_EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);

/// Whether policy lets `src` connect straight to `dst` on `port`: the exact
/// port's entry decides, else the pair's port-0 entry.
#[inline(always)]
pub fn direct_allowed(family: u16, src: [u32; 4], dst: [u32; 4], port: u16) -> bool {
    let mut key = DirectKey { src_addr: src, dst_addr: dst, dst_port: port, family, pad: 0 };
    // SAFETY: the value is copied out at once; entries are plain data.
    if let Some(verdict) = unsafe { DIRECT.get(&key) } {
        return verdict.allowed == 1;
    }
    key.dst_port = 0;
    // SAFETY: as above.
    unsafe { DIRECT.get(&key) }.is_some_and(|verdict| verdict.allowed == 1)
}

/// Event counters, see `mesh_ebpf_common::counters`.
#[map(name = "AMBIT_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counters::COUNT, 0);

/// Adds one to a counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from the map lookup and is this CPU's own
        // slot, so nothing else writes it concurrently.
        unsafe { *slot += 1 };
    }
}

/// Whether the network namespace with this cookie is enrolled in the mesh.
#[inline(always)]
pub fn is_enrolled(netns_cookie: u64) -> bool {
    ENROLLED_NETNS.get_ptr(netns_cookie).is_some()
}

/// The enrolled pod's entry for this network namespace, if enrolled.
#[inline(always)]
pub fn enrolled(netns_cookie: u64) -> Option<EnrolledNetns> {
    // SAFETY: the value is copied out at once; entries are plain data.
    unsafe { ENROLLED_NETNS.get(&netns_cookie) }.copied()
}
