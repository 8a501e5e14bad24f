//! Everything that crosses the kernel boundary between ambit's eBPF programs
//! and the node agent: map keys and values, map and program names, ports,
//! the mesh socket mark and the counter indices.
//!
//! Every type is `#[repr(C)]` with explicit padding so that the eBPF side and
//! userspace agree on the layout byte for byte; the sizes are asserted at
//! compile time. Addresses are kept exactly as the kernel hands them to eBPF:
//! IPv4 in the first word of a `[u32; 4]`, all words in network byte order.
//! Ports are in host byte order.
//!
//! With the `user` feature (the agent and the CLI, never the eBPF programs)
//! the crate links `std` and adds the userspace side of the same contract:
//! [`pins`], the pinned state's layout on bpffs, and [`program_types`], the
//! program types the kernel must support.
//!
//! Its modules (`counters`, `map_names`, `pins`, `pod_impls`,
//! `program_names`, `program_types`) import none of each other; the types
//! they share are at the crate root (`cargo xtask lint --order` shows it).

#![cfg_attr(not(feature = "user"), no_std)]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub mod counters;
#[cfg(feature = "user")]
pub mod pins;
#[cfg(feature = "user")]
pub mod program_types;

/// `SO_MARK` carried by every socket the mesh itself opens. Sockets with this
/// mark are never redirected, so the agent's upstream connections cannot loop
/// back into it, and only they may bind the mesh ports inside a pod.
pub const MESH_MARK: u32 = 0x539;

/// `SO_MARK` of the inbound proxy's transparent connections to the
/// application (from the client's own address). Like [`MESH_MARK`] it is
/// never redirected; in addition, replies to it are routed back to the agent
/// inside the pod (`ip rule fwmark MESH_RETURN_MARK lookup 133`).
pub const MESH_RETURN_MARK: u32 = 0x53a;

/// Whether a socket mark is one of the mesh's own.
#[must_use]
pub const fn is_mesh_mark(mark: u32) -> bool {
    mark == MESH_MARK || mark == MESH_RETURN_MARK
}

/// In-pod listener for traffic the pod sends (captured by `connect4/6`).
pub const OUTBOUND_PORT: u16 = 15001;
/// In-pod listener for plaintext traffic arriving at the pod (steered by `sk_lookup`).
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// In-pod listener for HBONE (mTLS) traffic arriving at the pod.
pub const INBOUND_HBONE_PORT: u16 = 15008;
/// Ports inside an enrolled pod that belong to the mesh: applications may not
/// bind them and `sk_lookup` never steers connections addressed to them.
pub const RESERVED_POD_PORTS: [u16; 3] =
    [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_HBONE_PORT];

/// `AF_INET` as the kernel reports it in eBPF contexts.
pub const AF_INET: u16 = 2;
/// `AF_INET6` as the kernel reports it in eBPF contexts.
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u32 = 6;
/// `SOL_IP`, the level of `SO_ORIGINAL_DST` for IPv4.
pub const SOL_IP: i32 = 0;
/// `SOL_IPV6`, the level of `IP6T_SO_ORIGINAL_DST` for IPv6.
pub const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` (and `IP6T_SO_ORIGINAL_DST`, which has the same value).
pub const SO_ORIGINAL_DST: i32 = 80;
/// Interface index of the loopback device; the same in every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// Names of the maps in the eBPF object. They are also the file names the
/// maps are pinned under, so they must stay below 16 bytes.
pub mod map_names {
    /// [`crate::EnrolledNetns`] by netns cookie.
    pub const ENROLLED_NETNS: &str = "AMBIT_ENROLLED";
    /// [`crate::OriginalDst`] by socket cookie, from `connect` until the socket closes.
    pub const ORIG_DST_BY_COOKIE: &str = "AMBIT_ODST_SOCK";
    /// [`crate::OriginalDst`] by [`crate::SocketTuple`] of the application's side.
    pub const ORIG_DST_BY_TUPLE: &str = "AMBIT_ODST_TUPL";
    /// The agent's inbound listener sockets by [`crate::InboundListenerKey`].
    pub const INBOUND_LISTENERS: &str = "AMBIT_INBOUND";
    /// Per-CPU event counters, indexed by [`crate::counters`].
    pub const COUNTERS: &str = "AMBIT_COUNTERS";
    /// [`crate::SocketTuple`]s (netns cookie 0) of the inbound proxy's own
    /// connections to applications, which `sk_lookup` must not steer.
    pub const INBOUND_BYPASS: &str = "AMBIT_BYPASS";
    /// [`crate::DirectVerdict`] by [`crate::DirectKey`]: the same-node pairs
    /// that policy lets connect directly, spliced in the kernel.
    pub const DIRECT: &str = "AMBIT_DIRECT";
    /// Both sockets of every spliced connection, by their own
    /// [`crate::SocketTuple`] (local as source, netns cookie 0).
    pub const SPLICE_SOCKETS: &str = "AMBIT_SPLICE_SK";
    /// [`crate::SpliceStats`] of open spliced connections, by the client's tuple.
    pub const SPLICED: &str = "AMBIT_SPLICED";
    /// [`crate::SpliceEvent`]s: spliced connections opening and closing.
    pub const SPLICE_EVENTS: &str = "AMBIT_SPLICE_EV";
    /// Every map, in a stable order (for pinning and listing).
    pub const ALL: [&str; 10] = [
        INBOUND_BYPASS,
        ENROLLED_NETNS,
        ORIG_DST_BY_COOKIE,
        ORIG_DST_BY_TUPLE,
        INBOUND_LISTENERS,
        COUNTERS,
        DIRECT,
        SPLICE_SOCKETS,
        SPLICED,
        SPLICE_EVENTS,
    ];
}

/// Names of the programs (their Rust function names in the eBPF crate).
pub mod program_names {
    /// `cgroup/connect4`: capture outbound IPv4 connections.
    pub const CONNECT4: &str = "ambit_connect4";
    /// `cgroup/connect6`: capture outbound IPv6 connections.
    pub const CONNECT6: &str = "ambit_connect6";
    /// `sockops`: move the original destination to the connection's 4-tuple.
    pub const SOCK_OPS: &str = "ambit_sock_ops";
    /// `cgroup/getpeername4`: show the application its real peer.
    pub const GETPEERNAME4: &str = "ambit_getpeername4";
    /// `cgroup/getpeername6`: show the application its real peer.
    pub const GETPEERNAME6: &str = "ambit_getpeername6";
    /// `cgroup/bind4`: keep applications off the mesh ports.
    pub const BIND4: &str = "ambit_bind4";
    /// `cgroup/bind6`: keep applications off the mesh ports.
    pub const BIND6: &str = "ambit_bind6";
    /// `cgroup/getsockopt`: answer `SO_ORIGINAL_DST`.
    pub const GETSOCKOPT: &str = "ambit_getsockopt";
    /// `sk_lookup`: steer connections arriving at a pod to the inbound listener.
    pub const SK_LOOKUP: &str = "ambit_sk_lookup";
    /// `sk_msg` on the splice sock hash: hand each message of a spliced
    /// connection straight to the peer socket.
    pub const SK_MSG: &str = "ambit_sk_msg";

    /// The programs attached once to the pod cgroup root, in attach order.
    pub const CGROUP: [&str; 8] = [
        CONNECT4,
        CONNECT6,
        SOCK_OPS,
        GETPEERNAME4,
        GETPEERNAME6,
        BIND4,
        BIND6,
        GETSOCKOPT,
    ];

    /// Every program: the cgroup ones, then `sk_lookup` (one attachment per
    /// enrolled pod network namespace) and `sk_msg` (on the splice sock hash).
    pub const ALL: [&str; 10] = {
        // `CGROUP` followed by the two others, built so the lists cannot drift.
        let mut all = [""; 10];
        let mut i = 0;
        while i < CGROUP.len() {
            all[i] = CGROUP[i];
            i += 1;
        }
        all[8] = SK_LOOKUP;
        all[9] = SK_MSG;
        all
    };
}

/// Version of the layout of the pinned maps (their names, key and value
/// types and sizes). An agent refuses to adopt pinned state of another
/// version. Raise it with any change to a pinned map.
///
/// - 1: the layout before versioning (no marker in the pin directory).
/// - 2: [`EnrolledNetns::flags`] carries [`ENROLLED_STRICT`]; 17 counters.
/// - 3: [`EnrolledNetns::flags`] carries [`ENROLLED_KERNEL_PATH`],
///   [`SpliceStats::flags`] [`SPLICE_FLAG_POD_LEG`]; 19 counters.
pub const PIN_LAYOUT_VERSION: u32 = 3;

/// [`EnrolledNetns::flags`] bit: the pod's mTLS mode is strict. Kept in the
/// pinned state so that it outlives the agent.
pub const ENROLLED_STRICT: u32 = 1;

/// [`EnrolledNetns::flags`] bit: the pod opted in to the kernel path
/// (`ambit.dev/kernel-path=enabled`) and the kernel took `sk_msg`. Its
/// sockets on the legs to and from the agent, and its same-node direct
/// connections, are spliced by `sk_msg`.
pub const ENROLLED_KERNEL_PATH: u32 = 2;

/// Value of the enrolled-netns map: presence turns capture on; the pod's
/// addresses let `connect4/6` bind a captured socket to the pod's own
/// address, so the application's `getsockname()` shows the pod, not loopback.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnrolledNetns {
    /// The pod's IPv4 address, network byte order; 0 when it has none.
    pub ipv4: u32,
    /// Per-pod flags: [`ENROLLED_STRICT`] when the pod accepts only mTLS,
    /// [`ENROLLED_KERNEL_PATH`] when its legs go through `sk_msg`.
    pub flags: u32,
    /// The pod's IPv6 address, network byte order; all zero when it has none.
    pub ipv6: [u32; 4],
}

/// Where an application meant to connect before `connect4/6` rewrote it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDst {
    /// Destination address, network byte order; IPv4 in word 0.
    pub addr: [u32; 4],
    /// Destination port, host byte order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Explicit padding; always zero.
    pub pad: u32,
    /// Cookie of the network namespace the connecting socket lives in.
    pub netns_cookie: u64,
}

/// The application side of a redirected connection: the connecting socket's
/// local address and the address it ended up connected to (the agent's
/// outbound listener), qualified by network namespace because every pod has
/// its own loopback and its own ephemeral ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SocketTuple {
    /// Cookie of the network namespace both ends live in.
    pub netns_cookie: u64,
    /// The application's local address, network byte order.
    pub src_addr: [u32; 4],
    /// The address the application is connected to, network byte order.
    pub dst_addr: [u32; 4],
    /// The application's local port, host byte order.
    pub src_port: u16,
    /// The port the application is connected to, host byte order.
    pub dst_port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Explicit padding; always zero.
    pub pad: u16,
}

/// Key of the inbound-listener sock hash: a pod address. `sk_lookup` looks up
/// the destination address of an arriving connection here.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InboundListenerKey {
    /// The pod address, network byte order; IPv4 in word 0.
    pub addr: [u32; 4],
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Explicit padding; always zero.
    pub pad: u16,
}

/// Key of the direct-connection map: a source pod address, a destination pod
/// address and a destination port (0: every port without an entry of its
/// own).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DirectKey {
    /// The source pod's address, network byte order.
    pub src_addr: [u32; 4],
    /// The destination pod's address, network byte order.
    pub dst_addr: [u32; 4],
    /// The destination port, host byte order; 0 for "any other port".
    pub dst_port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Explicit padding; always zero.
    pub pad: u32,
}

/// Value of the direct-connection map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectVerdict {
    /// 1: the pair may connect directly and be spliced; 0: it may not (an
    /// exact port entry that overrides the pair's port-0 entry).
    pub allowed: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
}

/// Byte counts of an open spliced connection, kept by `sk_msg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceStats {
    /// Bytes the client sent.
    pub sent: u64,
    /// Bytes the server sent.
    pub received: u64,
    /// `bpf_ktime_get_ns()` when the client's side was established.
    pub opened_ns: u64,
    /// [`SPLICE_FLAG_VIA_TCP`] once the client sent before the server's
    /// socket was in the sock hash; [`SPLICE_FLAG_POD_LEG`] for a leg
    /// between an application and the agent.
    pub flags: u64,
    /// The client socket's cookie: the agent names it when it resets the
    /// connection, so that no other socket can be hit by mistake.
    pub cookie: u64,
}

/// The client sent a message before the server's socket joined the sock
/// hash; that message went through TCP, so every later one must too, or
/// they could overtake it.
pub const SPLICE_FLAG_VIA_TCP: u64 = 1;

/// Bytes each direction of a spliced connection may hand over with `sk_msg`;
/// the rest of that direction goes through TCP.
///
/// The kernel queues a redirected message on the receiving socket
/// (`bpf_tcp_ingress` in `net/ipv4/tcp_bpf.c`) without checking its receive
/// buffer: a sender faster than its reader never waits, the queue grows
/// until the kernel's TCP memory limit, and then the sender's write fails
/// with `ENOMEM`. TCP's flow control bounds what one direction can queue
/// to the receive buffer (`tcp_rmem`, 6 MiB at most by default); this
/// bounds a spliced direction the same way. Switching to TCP keeps the
/// order: the receiver reads what `sk_msg` queued before anything TCP
/// brought.
pub const SPLICE_DIRECTION_BUDGET: u64 = 4 << 20;

/// The connection is a leg between an application and the agent inside one
/// pod (app to outbound listener, or the inbound proxy to the app), not a
/// same-node direct connection: the agent carries its bytes and accounts
/// for it itself, so its open and close are not reported.
pub const SPLICE_FLAG_POD_LEG: u64 = 2;

/// A spliced connection opened or closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceEvent {
    /// The client side's tuple (local as source, netns cookie 0).
    pub tuple: SocketTuple,
    /// The byte counts so far (final when closed).
    pub stats: SpliceStats,
    /// [`SPLICE_OPENED`] or [`SPLICE_CLOSED`].
    pub kind: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
}

/// [`SpliceEvent::kind`]: the client's side was established.
pub const SPLICE_OPENED: u32 = 1;
/// [`SpliceEvent::kind`]: the client's side closed.
pub const SPLICE_CLOSED: u32 = 2;

const _: () = assert!(core::mem::size_of::<EnrolledNetns>() == 24);
const _: () = assert!(core::mem::size_of::<DirectKey>() == 40);
const _: () = assert!(core::mem::size_of::<DirectVerdict>() == 8);
const _: () = assert!(core::mem::size_of::<SpliceStats>() == 40);
const _: () = assert!(core::mem::size_of::<SpliceEvent>() == 96);
const _: () = assert!(core::mem::size_of::<OriginalDst>() == 32);
const _: () = assert!(core::mem::size_of::<SocketTuple>() == 48);
const _: () = assert!(core::mem::size_of::<InboundListenerKey>() == 20);

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers, and
    // has every padding byte spelled out as a field, so any bit pattern is valid.
    unsafe impl aya::Pod for super::EnrolledNetns {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OriginalDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketTuple {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InboundListenerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DirectKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DirectVerdict {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SpliceStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SpliceEvent {}
}

// === conversions between kernel layout and `core::net` ===

/// Packs an IP address the way eBPF contexts carry it.
#[must_use]
pub fn addr_words(ip: IpAddr) -> ([u32; 4], u16) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([word(0), word(4), word(8), word(12)], AF_INET6)
        }
    }
}

/// Unpacks an address from eBPF layout; `None` for an unknown family.
#[must_use]
pub fn ip_from_words(words: [u32; 4], family: u16) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))),
        AF_INET6 => {
            let mut o = [0u8; 16];
            for (chunk, word) in o.chunks_exact_mut(4).zip(words) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

impl EnrolledNetns {
    /// The value for a pod with these addresses (at most one per family is
    /// used; later ones of the same family are ignored).
    pub fn for_pod(ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut value = Self::default();
        for ip in ips {
            match ip.to_canonical() {
                IpAddr::V4(v4) if value.ipv4 == 0 => value.ipv4 = addr_words(IpAddr::V4(v4)).0[0],
                IpAddr::V6(v6) if value.ipv6 == [0; 4] => value.ipv6 = addr_words(IpAddr::V6(v6)).0,
                _ => {}
            }
        }
        value
    }

    /// The same entry with the strict-mTLS flag set or cleared.
    #[must_use]
    pub const fn with_strict(self, strict: bool) -> Self {
        self.with_flag(ENROLLED_STRICT, strict)
    }

    /// Whether the pod's mTLS mode is strict.
    #[must_use]
    pub const fn is_strict(&self) -> bool {
        self.flags & ENROLLED_STRICT != 0
    }

    /// The same entry with the kernel-path flag set or cleared.
    #[must_use]
    pub const fn with_kernel_path(self, on: bool) -> Self {
        self.with_flag(ENROLLED_KERNEL_PATH, on)
    }

    /// The same entry with `flag` set or cleared.
    const fn with_flag(mut self, flag: u32, on: bool) -> Self {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
        self
    }

    /// Whether the pod's legs take the kernel path.
    #[must_use]
    pub const fn has_kernel_path(&self) -> bool {
        self.flags & ENROLLED_KERNEL_PATH != 0
    }
}

impl OriginalDst {
    /// The destination as a socket address; `None` if the record is corrupt.
    #[must_use]
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        ip_from_words(self.addr, self.family).map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl SocketTuple {
    /// The tuple of an application socket `src` connected to `dst` inside the
    /// network namespace `netns_cookie`. IPv4-mapped IPv6 addresses are folded
    /// to IPv4, as the eBPF side does, so both sides build the same key.
    #[must_use]
    pub fn new(netns_cookie: u64, src: SocketAddr, dst: SocketAddr) -> Self {
        let (src_addr, family) = addr_words(src.ip().to_canonical());
        let (dst_addr, _) = addr_words(dst.ip().to_canonical());
        Self {
            netns_cookie,
            src_addr,
            dst_addr,
            src_port: src.port(),
            dst_port: dst.port(),
            family,
            pad: 0,
        }
    }

    /// The application's local address.
    #[must_use]
    pub fn src(&self) -> Option<SocketAddr> {
        ip_from_words(self.src_addr, self.family).map(|ip| SocketAddr::new(ip, self.src_port))
    }

    /// The address the application is connected to.
    #[must_use]
    pub fn dst(&self) -> Option<SocketAddr> {
        ip_from_words(self.dst_addr, self.family).map(|ip| SocketAddr::new(ip, self.dst_port))
    }
}

impl SpliceEvent {
    /// Reads an event as the eBPF side wrote it (native byte order);
    /// `None` if `bytes` is too short.
    #[must_use]
    pub fn from_ne_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < core::mem::size_of::<Self>() {
            return None;
        }
        // Fixed-size copies out of a slice already checked to be long enough.
        let array = |at: usize| -> [u8; 8] {
            let mut out = [0; 8];
            out.copy_from_slice(&bytes[at..at + 8]);
            out
        };
        let u16_at = |at: usize| u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| {
            u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| u64::from_ne_bytes(array(at));
        let words = |at: usize| [u32_at(at), u32_at(at + 4), u32_at(at + 8), u32_at(at + 12)];
        Some(Self {
            tuple: SocketTuple {
                netns_cookie: u64_at(0),
                src_addr: words(8),
                dst_addr: words(24),
                src_port: u16_at(40),
                dst_port: u16_at(42),
                family: u16_at(44),
                pad: u16_at(46),
            },
            stats: SpliceStats {
                sent: u64_at(48),
                received: u64_at(56),
                opened_ns: u64_at(64),
                flags: u64_at(72),
                cookie: u64_at(80),
            },
            kind: u32_at(88),
            pad: u32_at(92),
        })
    }
}

impl DirectKey {
    /// The key for `src` connecting to `dst` on `port` (0: any other port).
    /// Both addresses must be of one family once IPv4-mapped ones are folded.
    #[must_use]
    pub fn new(src: IpAddr, dst: IpAddr, port: u16) -> Self {
        let (src_addr, family) = addr_words(src.to_canonical());
        let (dst_addr, _) = addr_words(dst.to_canonical());
        Self {
            src_addr,
            dst_addr,
            dst_port: port,
            family,
            pad: 0,
        }
    }
}

impl InboundListenerKey {
    /// The key for a pod address.
    #[must_use]
    pub fn new(ip: IpAddr) -> Self {
        let (addr, family) = addr_words(ip.to_canonical());
        Self {
            addr,
            family,
            pad: 0,
        }
    }

    /// The pod address this key stands for.
    #[must_use]
    pub fn ip(&self) -> Option<IpAddr> {
        ip_from_words(self.addr, self.family)
    }
}

#[cfg(test)]
mod tests;
