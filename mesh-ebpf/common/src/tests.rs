//! Layout checks of the shared types, against what the kernel and the
//! eBPF side expect.

use super::*;

#[test]
fn ipv4_round_trips_through_kernel_layout() {
    let ip: IpAddr = "10.10.1.20".parse().unwrap();
    let (words, family) = addr_words(ip);
    assert_eq!(family, AF_INET);
    // The kernel stores 10.10.1.20 as the bytes 0a 0a 01 14 in memory.
    assert_eq!(words[0].to_ne_bytes(), [10, 10, 1, 20]);
    assert_eq!(ip_from_words(words, family), Some(ip));
}

#[test]
fn ipv6_round_trips_through_kernel_layout() {
    let ip: IpAddr = "fd00:10:1::20".parse().unwrap();
    let (words, family) = addr_words(ip);
    assert_eq!(family, AF_INET6);
    assert_eq!(words[0].to_ne_bytes(), [0xfd, 0, 0, 0x10]);
    assert_eq!(ip_from_words(words, family), Some(ip));
}

#[test]
fn mapped_ipv4_folds_to_ipv4_in_tuples() {
    let src: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
    let dst: SocketAddr = "[::ffff:127.0.0.1]:15001".parse().unwrap();
    let folded = SocketTuple::new(7, src, dst);
    let plain = SocketTuple::new(
        7,
        "127.0.0.1:40000".parse().unwrap(),
        "127.0.0.1:15001".parse().unwrap(),
    );
    assert_eq!(folded, plain);
    assert_eq!(folded.family, AF_INET);
}

#[test]
fn splice_events_read_back_as_written() {
    let event = SpliceEvent {
        tuple: SocketTuple::new(
            0,
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
        ),
        stats: SpliceStats {
            sent: 1 << 40,
            received: 7,
            opened_ns: 123_456_789,
            flags: SPLICE_FLAG_VIA_TCP,
            cookie: 0x1234_5678_9abc,
        },
        kind: SPLICE_CLOSED,
        pad: 0,
    };
    // SAFETY: SpliceEvent is repr(C), made of integers, with explicit
    // padding; viewing it as bytes is what the kernel's ring does.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            (&raw const event).cast::<u8>(),
            core::mem::size_of::<SpliceEvent>(),
        )
    };
    assert_eq!(SpliceEvent::from_ne_bytes(bytes), Some(event));
    assert_eq!(SpliceEvent::from_ne_bytes(&bytes[..10]), None);
}

#[test]
fn unknown_family_is_rejected() {
    let od = OriginalDst {
        family: 99,
        ..OriginalDst::default()
    };
    assert_eq!(od.socket_addr(), None);
}
