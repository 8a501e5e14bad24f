//! Indices of the per-CPU event counters the eBPF programs keep. Userspace
//! sums each index over all CPUs.

/// `connect4/6` rewrote a connection to the outbound listener.
pub const CONNECT_REDIRECTED: u32 = 0;
/// `connect4/6` left a socket alone because it carries [`crate::MESH_MARK`].
pub const CONNECT_SKIPPED_MESH_MARK: u32 = 1;
/// `connect4/6` saw a TCP connect in a network namespace that is not enrolled.
pub const CONNECT_SKIPPED_NOT_ENROLLED: u32 = 2;
/// `connect4/6` could not record the original destination (map full); the
/// connect was refused (`EPERM`) rather than let through unredirected.
pub const CONNECT_RECORD_FAILED: u32 = 3;
/// `sock_ops` moved an original destination to its 4-tuple key.
pub const TUPLE_RECORDED: u32 = 4;
/// `getpeername4/6` showed an application its real peer.
pub const GETPEERNAME_TRANSLATED: u32 = 5;
/// `bind4/6` refused an application a mesh port.
pub const BIND_DENIED: u32 = 6;
/// `getsockopt` answered `SO_ORIGINAL_DST`.
pub const ORIGINAL_DST_ANSWERED: u32 = 7;
/// `sk_lookup` steered an arriving connection to the inbound listener.
pub const INBOUND_STEERED: u32 = 8;
/// `sk_lookup` left one of the inbound proxy's own connections alone.
pub const INBOUND_BYPASSED: u32 = 9;
/// `connect4/6` let a same-node connection go straight to its destination
/// (policy allows the pair), to be spliced in the kernel.
pub const CONNECT_DIRECT: u32 = 10;
/// `sk_lookup` let a direct same-node connection reach the application.
pub const INBOUND_DIRECT: u32 = 11;
/// `sock_ops` added a direct connection's socket to the splice sock hash.
pub const SOCKETS_SPLICED: u32 = 12;
/// `sk_msg` handed a message straight to the peer socket.
pub const MESSAGES_SPLICED: u32 = 13;
/// `sk_msg` sent a message through TCP because the peer socket was not in
/// the sock hash yet (the connection stays on TCP from then on).
pub const MESSAGES_VIA_TCP: u32 = 14;
/// `sk_lookup` refused (reset) a connection arriving at an enrolled pod
/// because no agent listener is registered for it: the agent is stopped,
/// crashed or has not taken the pod over yet. Never delivered around it.
pub const INBOUND_REFUSED_NO_AGENT: u32 = 15;
/// `sock_ops` could not key a redirected connection's original destination
/// by its 4-tuple; the agent then finds none and closes the connection.
pub const TUPLE_RECORD_FAILED: u32 = 16;
/// `sock_ops` put a socket of a leg between an application and the agent
/// (kernel path) in the splice sock hash; `sockets_spliced` counts it too.
pub const POD_LEG_SOCKETS: u32 = 17;
/// A direction of a spliced connection handed over its budget
/// ([`crate::SPLICE_DIRECTION_BUDGET`]) and goes through TCP from then on.
pub const SPLICE_BUDGET_SPENT: u32 = 18;
/// Number of counters.
pub const COUNT: u32 = 19;

/// Human names, indexed like the constants above.
pub const NAMES: [&str; COUNT as usize] = [
    "connect_redirected",
    "connect_skipped_mesh_mark",
    "connect_skipped_not_enrolled",
    "connect_record_failed",
    "tuple_recorded",
    "getpeername_translated",
    "bind_denied",
    "original_dst_answered",
    "inbound_steered",
    "inbound_bypassed",
    "connect_direct",
    "inbound_direct",
    "sockets_spliced",
    "messages_spliced",
    "messages_via_tcp",
    "inbound_refused_no_agent",
    "tuple_record_failed",
    "pod_leg_sockets",
    "splice_budget_spent",
];
