//! Map entries decoded from their kernel layout into addresses, ports,
//! cookies, verdicts, flags and counter names. Pure functions over the
//! `mesh_ebpf_common` types, so they are tested without a kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use mesh_ebpf_common::{
    AF_INET, AF_INET6, DirectKey, DirectVerdict, EnrolledNetns, InboundListenerKey, OriginalDst,
    SPLICE_FLAG_VIA_TCP, SocketTuple, SpliceStats, counters, ip_from_words, map_names,
};
use serde::Serialize;

/// One decoded map entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The key.
    pub key: Key,
    /// The value; `None` (JSON `null`) for sock hashes, whose values are
    /// sockets the kernel does not hand to userspace.
    pub value: Option<Value>,
}

/// A decoded key. Untagged: the JSON object has the variant's fields.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum Key {
    /// A pod network namespace (`AMBIT_ENROLLED`).
    Netns {
        /// The network namespace cookie.
        netns_cookie: u64,
    },
    /// A socket (`AMBIT_ODST_SOCK`).
    Socket {
        /// The socket cookie.
        socket_cookie: u64,
    },
    /// A connection's 4-tuple (`AMBIT_ODST_TUPL`, `AMBIT_BYPASS`,
    /// `AMBIT_SPLICE_SK`, `AMBIT_SPLICED`).
    Tuple(Tuple),
    /// A pod address (`AMBIT_INBOUND`).
    PodAddress {
        /// The pod address; `null` when the family is corrupt.
        pod_ip: Option<IpAddr>,
    },
    /// A counter (`AMBIT_COUNTERS`).
    Counter {
        /// Index into the array.
        index: u32,
        /// The counter's name; `null` for an index this CLI does not know.
        counter: Option<&'static str>,
    },
    /// A same-node pair (`AMBIT_DIRECT`).
    Direct {
        /// The source pod address.
        src_ip: Option<IpAddr>,
        /// The destination pod address.
        dst_ip: Option<IpAddr>,
        /// The destination port; 0 stands for every port without an entry
        /// of its own.
        dst_port: u16,
    },
}

/// A decoded [`SocketTuple`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Tuple {
    /// Cookie of the network namespace both ends live in (0 where the map
    /// does not qualify tuples by namespace).
    pub netns_cookie: u64,
    /// The local end (the application's, or the client's).
    pub src: Option<SocketAddr>,
    /// The remote end.
    pub dst: Option<SocketAddr>,
}

/// A decoded value. Untagged: the JSON object has the variant's fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// An enrolled pod's addresses (`AMBIT_ENROLLED`).
    Enrolled {
        /// The pod's IPv4 address, if it has one.
        ipv4: Option<Ipv4Addr>,
        /// The pod's IPv6 address, if it has one.
        ipv6: Option<Ipv6Addr>,
        /// Per-pod flags, as pinned.
        flags: u32,
        /// The pod's mTLS mode, from the flags: `strict` or `permissive`.
        mtls: &'static str,
        /// Whether its legs take the kernel path, from the flags: `on` or
        /// `off`.
        kernel_path: &'static str,
    },
    /// Where a redirected connection was going (`AMBIT_ODST_*`).
    OriginalDst {
        /// The original destination; `null` when the family is corrupt.
        original_dst: Option<SocketAddr>,
        /// Cookie of the connecting socket's network namespace.
        netns_cookie: u64,
    },
    /// A per-CPU counter (`AMBIT_COUNTERS`).
    Counter {
        /// The sum over CPUs.
        total: u64,
        /// The value on each CPU, by CPU number.
        per_cpu: Vec<u64>,
    },
    /// A plain number (`AMBIT_BYPASS`: presence is what counts).
    Number {
        /// The value.
        value: u32,
    },
    /// A same-node pair's verdict (`AMBIT_DIRECT`).
    Verdict {
        /// `allow` (connect directly, splice) or `deny`.
        verdict: &'static str,
    },
    /// An open spliced connection (`AMBIT_SPLICED`).
    Splice {
        /// Bytes the client sent.
        sent: u64,
        /// Bytes the server sent.
        received: u64,
        /// Monotonic clock (ns since boot) when the connection was established.
        opened_ns: u64,
        /// Flag names: `via_tcp`; unknown bits as hex.
        flags: Vec<String>,
        /// The client socket's cookie.
        socket_cookie: u64,
    },
}

/// How one of ambit's maps is keyed and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// `AMBIT_ENROLLED`.
    Enrolled,
    /// `AMBIT_ODST_SOCK`.
    OriginalDstBySocket,
    /// `AMBIT_ODST_TUPL`.
    OriginalDstByTuple,
    /// `AMBIT_INBOUND`.
    InboundListeners,
    /// `AMBIT_COUNTERS`.
    Counters,
    /// `AMBIT_BYPASS`.
    InboundBypass,
    /// `AMBIT_DIRECT`.
    Direct,
    /// `AMBIT_SPLICE_SK`.
    SpliceSockets,
    /// `AMBIT_SPLICED`.
    Spliced,
    /// `AMBIT_SPLICE_EV`.
    SpliceEvents,
}

// === impl MapKind ===

impl MapKind {
    /// The kind of the map pinned under `name`, if it is one of ambit's.
    #[must_use]
    pub fn of(name: &str) -> Option<Self> {
        Some(match name {
            map_names::ENROLLED_NETNS => Self::Enrolled,
            map_names::ORIG_DST_BY_COOKIE => Self::OriginalDstBySocket,
            map_names::ORIG_DST_BY_TUPLE => Self::OriginalDstByTuple,
            map_names::INBOUND_LISTENERS => Self::InboundListeners,
            map_names::COUNTERS => Self::Counters,
            map_names::INBOUND_BYPASS => Self::InboundBypass,
            map_names::DIRECT => Self::Direct,
            map_names::SPLICE_SOCKETS => Self::SpliceSockets,
            map_names::SPLICED => Self::Spliced,
            map_names::SPLICE_EVENTS => Self::SpliceEvents,
            _ => return None,
        })
    }

    /// Table columns of a dump of this map.
    #[must_use]
    pub fn headers(self) -> &'static [&'static str] {
        const TUPLE: [&str; 3] = ["NETNS COOKIE", "SRC", "DST"];
        match self {
            Self::Enrolled => &["NETNS COOKIE", "IPV4", "IPV6", "MTLS", "KERNEL PATH"],
            Self::OriginalDstBySocket => &["SOCKET COOKIE", "ORIGINAL DST", "NETNS COOKIE"],
            Self::OriginalDstByTuple => {
                &[TUPLE[0], TUPLE[1], TUPLE[2], "ORIGINAL DST", "NETNS COOKIE"]
            }
            Self::InboundListeners => &["POD ADDRESS"],
            Self::Counters => &["INDEX", "COUNTER", "TOTAL"],
            Self::InboundBypass => &[TUPLE[0], TUPLE[1], TUPLE[2], "VALUE"],
            Self::Direct => &["SRC", "DST", "PORT", "VERDICT"],
            Self::SpliceSockets => &TUPLE,
            Self::Spliced => &[
                TUPLE[0],
                TUPLE[1],
                TUPLE[2],
                "SENT",
                "RECEIVED",
                "OPENED NS",
                "FLAGS",
                "SOCKET COOKIE",
            ],
            Self::SpliceEvents => &[],
        }
    }
}

// === impl Entry ===

impl Entry {
    /// The entry as table cells, in the order of [`MapKind::headers`].
    #[must_use]
    pub fn cells(&self) -> Vec<String> {
        let mut cells = self.key.cells();
        if let Some(value) = &self.value {
            cells.extend(value.cells());
        }
        cells
    }
}

// === impl Key ===

impl Key {
    fn cells(&self) -> Vec<String> {
        match self {
            Self::Netns { netns_cookie } => vec![netns_cookie.to_string()],
            Self::Socket { socket_cookie } => vec![socket_cookie.to_string()],
            Self::Tuple(tuple) => vec![
                tuple.netns_cookie.to_string(),
                or_unknown(tuple.src),
                or_unknown(tuple.dst),
            ],
            Self::PodAddress { pod_ip } => vec![or_unknown(*pod_ip)],
            Self::Counter { index, counter } => vec![
                index.to_string(),
                counter.map_or_else(|| "?".to_owned(), str::to_owned),
            ],
            Self::Direct {
                src_ip,
                dst_ip,
                dst_port,
            } => vec![
                or_unknown(*src_ip),
                or_unknown(*dst_ip),
                if *dst_port == 0 {
                    "*".to_owned()
                } else {
                    dst_port.to_string()
                },
            ],
        }
    }
}

// === impl Value ===

impl Value {
    fn cells(&self) -> Vec<String> {
        match self {
            Self::Enrolled {
                ipv4,
                ipv6,
                mtls,
                kernel_path,
                ..
            } => {
                vec![
                    or_dash(*ipv4),
                    or_dash(*ipv6),
                    (*mtls).to_owned(),
                    (*kernel_path).to_owned(),
                ]
            }
            Self::OriginalDst {
                original_dst,
                netns_cookie,
            } => vec![or_unknown(*original_dst), netns_cookie.to_string()],
            Self::Counter { total, .. } => vec![total.to_string()],
            Self::Number { value } => vec![value.to_string()],
            Self::Verdict { verdict } => vec![(*verdict).to_owned()],
            Self::Splice {
                sent,
                received,
                opened_ns,
                flags,
                socket_cookie,
            } => vec![
                sent.to_string(),
                received.to_string(),
                opened_ns.to_string(),
                if flags.is_empty() {
                    "-".to_owned()
                } else {
                    flags.join(",")
                },
                socket_cookie.to_string(),
            ],
        }
    }
}

// === decoding ===

/// An `AMBIT_ENROLLED` entry.
#[must_use]
pub fn enrolled(netns_cookie: u64, value: &EnrolledNetns) -> Entry {
    Entry {
        key: Key::Netns { netns_cookie },
        value: Some(Value::Enrolled {
            ipv4: enrolled_ipv4(value),
            ipv6: enrolled_ipv6(value),
            flags: value.flags,
            mtls: if value.is_strict() {
                "strict"
            } else {
                "permissive"
            },
            kernel_path: if value.has_kernel_path() { "on" } else { "off" },
        }),
    }
}

/// The IPv4 address of an enrolled pod, if it has one.
#[must_use]
pub fn enrolled_ipv4(value: &EnrolledNetns) -> Option<Ipv4Addr> {
    match ip_from_words([value.ipv4, 0, 0, 0], AF_INET) {
        Some(IpAddr::V4(ip)) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// The IPv6 address of an enrolled pod, if it has one.
#[must_use]
pub fn enrolled_ipv6(value: &EnrolledNetns) -> Option<Ipv6Addr> {
    match ip_from_words(value.ipv6, AF_INET6) {
        Some(IpAddr::V6(ip)) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// An `AMBIT_ODST_SOCK` entry.
#[must_use]
pub fn original_dst_by_socket(socket_cookie: u64, value: &OriginalDst) -> Entry {
    Entry {
        key: Key::Socket { socket_cookie },
        value: Some(original_dst(value)),
    }
}

/// An `AMBIT_ODST_TUPL` entry.
#[must_use]
pub fn original_dst_by_tuple(key: &SocketTuple, value: &OriginalDst) -> Entry {
    Entry {
        key: Key::Tuple(tuple(key)),
        value: Some(original_dst(value)),
    }
}

/// An `AMBIT_INBOUND` key (the value is a socket).
#[must_use]
pub fn inbound_listener(key: &InboundListenerKey) -> Entry {
    Entry {
        key: Key::PodAddress { pod_ip: key.ip() },
        value: None,
    }
}

/// An `AMBIT_COUNTERS` entry from the counter's value on every CPU.
#[must_use]
pub fn counter(index: u32, per_cpu: &[u64]) -> Entry {
    Entry {
        key: Key::Counter {
            index,
            counter: usize::try_from(index)
                .ok()
                .and_then(|i| counters::NAMES.get(i))
                .copied(),
        },
        value: Some(Value::Counter {
            total: per_cpu.iter().fold(0, |sum, v| sum.wrapping_add(*v)),
            per_cpu: per_cpu.to_vec(),
        }),
    }
}

/// An `AMBIT_BYPASS` entry.
#[must_use]
pub fn inbound_bypass(key: &SocketTuple, value: u32) -> Entry {
    Entry {
        key: Key::Tuple(tuple(key)),
        value: Some(Value::Number { value }),
    }
}

/// An `AMBIT_DIRECT` entry.
#[must_use]
pub fn direct(key: &DirectKey, value: DirectVerdict) -> Entry {
    Entry {
        key: Key::Direct {
            src_ip: ip_from_words(key.src_addr, key.family),
            dst_ip: ip_from_words(key.dst_addr, key.family),
            dst_port: key.dst_port,
        },
        value: Some(Value::Verdict {
            verdict: if value.allowed == 0 { "deny" } else { "allow" },
        }),
    }
}

/// An `AMBIT_SPLICE_SK` key (the value is a socket).
#[must_use]
pub fn splice_socket(key: &SocketTuple) -> Entry {
    Entry {
        key: Key::Tuple(tuple(key)),
        value: None,
    }
}

/// An `AMBIT_SPLICED` entry.
#[must_use]
pub fn spliced(key: &SocketTuple, value: &SpliceStats) -> Entry {
    Entry {
        key: Key::Tuple(tuple(key)),
        value: Some(Value::Splice {
            sent: value.sent,
            received: value.received,
            opened_ns: value.opened_ns,
            flags: splice_flags(value.flags),
            socket_cookie: value.cookie,
        }),
    }
}

/// Names of the bits set in [`SpliceStats::flags`]; unknown bits as hex.
#[must_use]
pub fn splice_flags(flags: u64) -> Vec<String> {
    let mut names = Vec::new();
    if flags & SPLICE_FLAG_VIA_TCP != 0 {
        names.push("via_tcp".to_owned());
    }
    let unknown = flags & !SPLICE_FLAG_VIA_TCP;
    if unknown != 0 {
        names.push(format!("{unknown:#x}"));
    }
    names
}

fn tuple(key: &SocketTuple) -> Tuple {
    Tuple {
        netns_cookie: key.netns_cookie,
        src: key.src(),
        dst: key.dst(),
    }
}

fn original_dst(value: &OriginalDst) -> Value {
    Value::OriginalDst {
        original_dst: value.socket_addr(),
        netns_cookie: value.netns_cookie,
    }
}

fn or_unknown<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests;
