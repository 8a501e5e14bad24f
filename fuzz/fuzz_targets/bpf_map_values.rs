//! The map value decoders of `ambit bpf map dump`: any bytes, read as each
//! map's key and value types (every bit pattern is a value the kernel may
//! hold), decode without a panic into a row with one cell per column; and
//! values the agent and the eBPF programs write decode back to what they
//! were made from: decode(encode(x)) == x.

#![no_main]

use std::net::{IpAddr, SocketAddr};

use ambit_fuzz::layout::Layout;
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use mesh_ebpf_common::{
    DirectKey, DirectVerdict, EnrolledNetns, InboundListenerKey, OriginalDst, SPLICE_FLAG_VIA_TCP,
    SocketTuple, SpliceEvent, SpliceStats, addr_words, counters, map_names,
};

// The CLI's decoders, compiled from its own source: `ambit` is a binary
// crate, and the decoders depend only on `mesh_ebpf_common` and serde.
// rustfmt formats them with the CLI (here it would look for their tests
// beside the file).
#[rustfmt::skip]
#[path = "../../cli/src/bpf/decode.rs"]
mod decode;

use decode::{Entry, Key, MapKind, Value};

fuzz_target!(|data: &[u8]| {
    raw_bytes_decode(data);
    let mut input = Unstructured::new(data);
    if let Ok(values) = Written::arbitrary(&mut input) {
        written_values_decode_back(&values);
    }
});

/// Values as the agent and the eBPF programs write them.
#[derive(Arbitrary, Debug)]
struct Written {
    netns_cookie: u64,
    socket_cookie: u64,
    pod_ips: Vec<IpAddr>,
    strict: bool,
    kernel_path: bool,
    src: SocketAddr,
    dst: SocketAddr,
    original: SocketAddr,
    direct_dst: IpAddr,
    direct_port: u16,
    allowed: bool,
    per_cpu: Vec<u64>,
    counter: u32,
    stats: [u64; 5],
    event_kind: u32,
}

/// Any bytes, read as each map's types, decode to a row with a cell per
/// column, serialise to JSON, and the ring buffer's own reader agrees
/// with the layout.
fn raw_bytes_decode(data: &[u8]) {
    let mut rows: Vec<(MapKind, Entry)> = Vec::new();
    let tuple = SocketTuple::read(data);
    let tail = |size: usize| data.get(data.len().saturating_sub(size)..).unwrap_or(data);
    let cookie = u64::read_front(data);
    if let (Some(cookie), Some(value)) = (cookie, EnrolledNetns::read(tail(EnrolledNetns::SIZE))) {
        rows.push((MapKind::Enrolled, decode::enrolled(cookie, &value)));
    }
    if let Some(value) = OriginalDst::read(tail(OriginalDst::SIZE)) {
        if let Some(cookie) = cookie {
            rows.push((
                MapKind::OriginalDstBySocket,
                decode::original_dst_by_socket(cookie, &value),
            ));
        }
        if let Some(tuple) = &tuple {
            rows.push((
                MapKind::OriginalDstByTuple,
                decode::original_dst_by_tuple(tuple, &value),
            ));
        }
    }
    if let Some(key) = InboundListenerKey::read(data) {
        rows.push((MapKind::InboundListeners, decode::inbound_listener(&key)));
    }
    if let Some(tuple) = &tuple {
        let value = u32::read_front(tail(4)).unwrap_or_default();
        rows.push((MapKind::InboundBypass, decode::inbound_bypass(tuple, value)));
        rows.push((MapKind::SpliceSockets, decode::splice_socket(tuple)));
        if let Some(stats) = SpliceStats::read(tail(SpliceStats::SIZE)) {
            rows.push((MapKind::Spliced, decode::spliced(tuple, &stats)));
        }
    }
    if let (Some(key), Some(verdict)) = (
        DirectKey::read(data),
        DirectVerdict::read(tail(DirectVerdict::SIZE)),
    ) {
        rows.push((MapKind::Direct, decode::direct(&key, verdict)));
    }
    let index = u32::read_front(data).unwrap_or_default();
    let per_cpu: Vec<u64> = data.chunks_exact(8).filter_map(u64::read_front).collect();
    rows.push((MapKind::Counters, decode::counter(index, &per_cpu)));
    for (kind, entry) in &rows {
        assert_eq!(
            entry.cells().len(),
            kind.headers().len(),
            "{kind:?}: a row has one cell per column: {entry:?}"
        );
        serde_json::to_string(entry).expect("an entry serialises");
    }
    for name in map_names::ALL {
        let kind = MapKind::of(name).expect("every map ambit pins has a kind");
        assert_eq!(
            kind == MapKind::SpliceEvents,
            kind.headers().is_empty(),
            "only the ring buffer has no rows"
        );
    }
    let event = SpliceEvent::from_ne_bytes(data);
    assert_eq!(
        event,
        SpliceEvent::read(data),
        "the ring buffer reader reads the layout"
    );
    assert_eq!(decode::splice_flags(0), Vec::<String>::new());
}

/// Values made the way the agent and the eBPF programs make them decode
/// back to what they were made from.
fn written_values_decode_back(w: &Written) {
    enrolled_decodes_back(w);
    let tuple = tuples_decode_back(w);
    direct_and_listener_keys_decode_back(w);
    counters_decode_back(w);
    splices_decode_back(w, tuple);
}

/// `AMBIT_ENROLLED`: the first address of each family (IPv4-mapped ones
/// folded to IPv4) that is not the unspecified one, and the flags.
fn enrolled_decodes_back(w: &Written) {
    let enrolled = EnrolledNetns::for_pod(w.pod_ips.iter().copied())
        .with_strict(w.strict)
        .with_kernel_path(w.kernel_path);
    let enrolled = EnrolledNetns::read(&enrolled.write()).expect("its own size");
    let canonical = || w.pod_ips.iter().map(IpAddr::to_canonical);
    let Entry {
        key: Key::Netns { netns_cookie },
        value:
            Some(Value::Enrolled {
                ipv4,
                ipv6,
                mtls,
                kernel_path,
                ..
            }),
    } = decode::enrolled(w.netns_cookie, &enrolled)
    else {
        panic!("an AMBIT_ENROLLED entry decodes as one");
    };
    assert_eq!(netns_cookie, w.netns_cookie);
    let first_v4 = canonical().find_map(|ip| match ip {
        IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
        _ => None,
    });
    let first_v6 = canonical().find_map(|ip| match ip {
        IpAddr::V6(v6) if !v6.is_unspecified() => Some(v6),
        _ => None,
    });
    assert_eq!(
        (ipv4, ipv6),
        (first_v4, first_v6),
        "pod ips {:?}",
        w.pod_ips
    );
    assert_eq!(mtls, if w.strict { "strict" } else { "permissive" });
    assert_eq!(kernel_path, if w.kernel_path { "on" } else { "off" });
}

/// A tuple as both sides build it (addresses folded to IPv4 where they are
/// IPv4-mapped; the family is the source's), and `AMBIT_ODST_*`'s original
/// destination as connect4/6 record it. Returns the tuple.
fn tuples_decode_back(w: &Written) -> SocketTuple {
    let tuple = SocketTuple::new(w.netns_cookie, w.src, w.dst);
    let tuple = SocketTuple::read(&tuple.write()).expect("its own size");
    let canonical_addr = |addr: SocketAddr| SocketAddr::new(addr.ip().to_canonical(), addr.port());
    let same_family = w.src.ip().to_canonical().is_ipv4() == w.dst.ip().to_canonical().is_ipv4();
    let Key::Tuple(decoded) = decode::splice_socket(&tuple).key else {
        panic!("a tuple key decodes as one");
    };
    assert_eq!(decoded.netns_cookie, w.netns_cookie);
    assert_eq!(decoded.src, Some(canonical_addr(w.src)));
    if same_family {
        assert_eq!(decoded.dst, Some(canonical_addr(w.dst)));
    }

    let (addr, family) = addr_words(w.original.ip().to_canonical());
    let original = OriginalDst {
        addr,
        port: w.original.port(),
        family,
        pad: 0,
        netns_cookie: w.netns_cookie,
    };
    let original = OriginalDst::read(&original.write()).expect("its own size");
    assert_eq!(
        decode::original_dst_by_socket(w.socket_cookie, &original).value,
        Some(Value::OriginalDst {
            original_dst: Some(canonical_addr(w.original)),
            netns_cookie: w.netns_cookie,
        })
    );
    tuple
}

/// `AMBIT_DIRECT`'s same-family pairs (the agent never writes another) and
/// `AMBIT_INBOUND`'s pod addresses.
fn direct_and_listener_keys_decode_back(w: &Written) {
    let direct_src = w.src.ip();
    if direct_src.to_canonical().is_ipv4() == w.direct_dst.to_canonical().is_ipv4() {
        let key = DirectKey::new(direct_src, w.direct_dst, w.direct_port);
        let key = DirectKey::read(&key.write()).expect("its own size");
        let verdict = DirectVerdict {
            allowed: u32::from(w.allowed),
            pad: 0,
        };
        let entry = decode::direct(&key, verdict);
        assert_eq!(
            entry.key,
            Key::Direct {
                src_ip: Some(direct_src.to_canonical()),
                dst_ip: Some(w.direct_dst.to_canonical()),
                dst_port: w.direct_port,
            }
        );
        assert_eq!(
            entry.value,
            Some(Value::Verdict {
                verdict: if w.allowed { "allow" } else { "deny" }
            })
        );
    }

    let key = InboundListenerKey::new(w.dst.ip());
    let key = InboundListenerKey::read(&key.write()).expect("its own size");
    assert_eq!(
        decode::inbound_listener(&key).key,
        Key::PodAddress {
            pod_ip: Some(w.dst.ip().to_canonical())
        }
    );
}

/// `AMBIT_COUNTERS`: the sum over CPUs and the counter's name.
fn counters_decode_back(w: &Written) {
    let Entry {
        key: Key::Counter { index, counter },
        value: Some(Value::Counter { total, per_cpu }),
    } = decode::counter(w.counter, &w.per_cpu)
    else {
        panic!("a counter decodes as one");
    };
    assert_eq!(index, w.counter);
    assert_eq!(
        counter,
        usize::try_from(w.counter)
            .ok()
            .and_then(|i| counters::NAMES.get(i))
            .copied()
    );
    assert_eq!(per_cpu, w.per_cpu);
    assert_eq!(
        total,
        w.per_cpu.iter().fold(0_u64, |sum, v| sum.wrapping_add(*v))
    );
}

/// `AMBIT_SPLICED` and the ring buffer's events: the counts, and flags
/// whose names give the flags back.
fn splices_decode_back(w: &Written, tuple: SocketTuple) {
    let [sent, received, opened_ns, flags, cookie] = w.stats;
    let stats = SpliceStats {
        sent,
        received,
        opened_ns,
        flags,
        cookie,
    };
    let Some(Value::Splice {
        sent: s,
        received: r,
        opened_ns: o,
        flags: names,
        socket_cookie,
    }) = decode::spliced(&tuple, &stats).value
    else {
        panic!("a spliced entry decodes as one");
    };
    assert_eq!(
        (s, r, o, socket_cookie),
        (sent, received, opened_ns, cookie)
    );
    assert_eq!(flags_from_names(&names), flags, "flag names {names:?}");
    let event = SpliceEvent {
        tuple,
        stats,
        kind: w.event_kind,
        pad: 0,
    };
    assert_eq!(SpliceEvent::from_ne_bytes(&event.write()), Some(event));
}

/// The flags that [`decode::splice_flags`] names.
fn flags_from_names(names: &[String]) -> u64 {
    names
        .iter()
        .map(|name| match name.as_str() {
            "via_tcp" => SPLICE_FLAG_VIA_TCP,
            hex => u64::from_str_radix(hex.trim_start_matches("0x"), 16)
                .unwrap_or_else(|_| panic!("{hex} is a flag name or hex")),
        })
        .fold(0, |all, flag| {
            assert_eq!(all & flag, 0, "each flag is named once");
            all | flag
        })
}

/// Plain numbers off the front of bytes, native byte order.
trait ReadFront: Sized {
    fn read_front(bytes: &[u8]) -> Option<Self>;
}

impl ReadFront for u32 {
    fn read_front(bytes: &[u8]) -> Option<Self> {
        Some(Self::from_ne_bytes(bytes.get(..4)?.try_into().ok()?))
    }
}

impl ReadFront for u64 {
    fn read_front(bytes: &[u8]) -> Option<Self> {
        Some(Self::from_ne_bytes(bytes.get(..8)?.try_into().ok()?))
    }
}
