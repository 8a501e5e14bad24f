use mesh_ebpf_common::{SPLICE_FLAG_VIA_TCP, addr_words};
use serde_json::json;

use super::*;

fn sock(addr: &str) -> SocketAddr {
    addr.parse().unwrap()
}

#[test]
fn enrolled_netns_shows_the_pods_addresses() {
    let value = EnrolledNetns::for_pod([
        "10.10.1.11".parse().unwrap(),
        "fd00:10:10:1::11".parse().unwrap(),
    ]);
    let entry = enrolled(4099, &value);
    assert_eq!(
        serde_json::to_value(&entry).unwrap(),
        json!({"key": {"netns_cookie": 4099},
               "value": {"ipv4": "10.10.1.11", "ipv6": "fd00:10:10:1::11", "flags": 0, "mtls": "permissive", "kernel_path": "off"}})
    );
    assert_eq!(
        entry.cells(),
        [
            "4099",
            "10.10.1.11",
            "fd00:10:10:1::11",
            "permissive",
            "off"
        ]
    );
    // The strict mode outlives the agent in the pinned entry.
    let strict = enrolled(4099, &value.with_strict(true));
    assert_eq!(strict.cells()[3], "strict");
    assert_eq!(serde_json::to_value(&strict).unwrap()["value"]["flags"], 1);
    // So does the kernel path, in a flag of its own.
    let kernel = enrolled(4099, &value.with_strict(true).with_kernel_path(true));
    assert_eq!(kernel.cells()[3..], ["strict", "on"]);
    assert_eq!(serde_json::to_value(&kernel).unwrap()["value"]["flags"], 3);
    assert_eq!(entry.cells().len(), MapKind::Enrolled.headers().len());
}

#[test]
fn a_pod_without_ipv6_shows_null_not_the_unspecified_address() {
    let value = EnrolledNetns::for_pod(["10.0.0.1".parse().unwrap()]);
    let Some(Value::Enrolled { ipv4, ipv6, .. }) = enrolled(1, &value).value else {
        panic!("enrolled value");
    };
    assert_eq!(ipv4, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(ipv6, None);
    assert_eq!(enrolled(1, &value).cells()[2], "-");
}

#[test]
fn original_destinations_decode_to_socket_addresses() {
    let (addr, family) = addr_words("10.10.2.11".parse().unwrap());
    let value = OriginalDst {
        addr,
        port: 8080,
        family,
        pad: 0,
        netns_cookie: 7,
    };
    let by_socket = original_dst_by_socket(0xdead_beef, &value);
    assert_eq!(
        serde_json::to_value(&by_socket).unwrap(),
        json!({"key": {"socket_cookie": 0xdead_beef_u64},
               "value": {"original_dst": "10.10.2.11:8080", "netns_cookie": 7}})
    );
    let tuple_key = SocketTuple::new(7, sock("10.10.1.11:40000"), sock("127.0.0.1:15001"));
    let by_tuple = original_dst_by_tuple(&tuple_key, &value);
    assert_eq!(
        by_tuple.cells(),
        [
            "7",
            "10.10.1.11:40000",
            "127.0.0.1:15001",
            "10.10.2.11:8080",
            "7"
        ]
    );
    assert_eq!(
        by_tuple.cells().len(),
        MapKind::OriginalDstByTuple.headers().len()
    );
}

#[test]
fn ipv6_tuples_keep_brackets_and_ports() {
    let key = SocketTuple::new(0, sock("[fd00::1]:40000"), sock("[fd00::2]:80"));
    let entry = splice_socket(&key);
    assert_eq!(
        serde_json::to_value(&entry).unwrap(),
        json!({"key": {"netns_cookie": 0, "src": "[fd00::1]:40000", "dst": "[fd00::2]:80"}, "value": null})
    );
}

#[test]
fn a_corrupt_family_is_shown_as_unknown_not_as_garbage() {
    let mut key = SocketTuple::new(0, sock("10.0.0.1:1"), sock("10.0.0.2:2"));
    key.family = 99;
    let entry = inbound_bypass(&key, 1);
    assert_eq!(entry.cells(), ["0", "?", "?", "1"]);
    assert_eq!(
        serde_json::to_value(&entry).unwrap()["key"]["src"],
        json!(null)
    );
}

#[test]
fn counters_are_named_summed_and_kept_per_cpu() {
    let entry = counter(counters::CONNECT_REDIRECTED, &[1, 0, 2, 4]);
    assert_eq!(
        serde_json::to_value(&entry).unwrap(),
        json!({"key": {"index": 0, "counter": "connect_redirected"},
               "value": {"total": 7, "per_cpu": [1, 0, 2, 4]}})
    );
    assert_eq!(entry.cells(), ["0", "connect_redirected", "7"]);
    assert_eq!(entry.cells().len(), MapKind::Counters.headers().len());
    let unknown = counter(counters::COUNT, &[3]);
    assert_eq!(
        unknown.cells(),
        [counters::COUNT.to_string(), "?".into(), "3".into()]
    );
}

#[test]
fn direct_verdicts_and_the_any_port_entry() {
    let any = DirectKey::new("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), 0);
    let entry = direct(&any, DirectVerdict { allowed: 1, pad: 0 });
    assert_eq!(entry.cells(), ["10.0.0.1", "10.0.0.2", "*", "allow"]);
    let exact = DirectKey::new(
        "10.0.0.1".parse().unwrap(),
        "10.0.0.2".parse().unwrap(),
        443,
    );
    let entry = direct(&exact, DirectVerdict { allowed: 0, pad: 0 });
    assert_eq!(
        serde_json::to_value(&entry).unwrap(),
        json!({"key": {"src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "dst_port": 443},
               "value": {"verdict": "deny"}})
    );
}

#[test]
fn inbound_listener_keys_are_pod_addresses() {
    let entry = inbound_listener(&InboundListenerKey::new("10.10.1.11".parse().unwrap()));
    assert_eq!(entry.cells(), ["10.10.1.11"]);
    assert_eq!(entry.value, None);
    assert_eq!(
        entry.cells().len(),
        MapKind::InboundListeners.headers().len()
    );
}

#[test]
fn splice_stats_name_their_flags() {
    let key = SocketTuple::new(0, sock("10.0.0.1:40000"), sock("10.0.0.2:80"));
    let stats = SpliceStats {
        sent: 10,
        received: 20,
        opened_ns: 5,
        flags: SPLICE_FLAG_VIA_TCP,
        cookie: 42,
    };
    let entry = spliced(&key, &stats);
    assert_eq!(
        entry.cells(),
        [
            "0",
            "10.0.0.1:40000",
            "10.0.0.2:80",
            "10",
            "20",
            "5",
            "via_tcp",
            "42"
        ]
    );
    assert_eq!(entry.cells().len(), MapKind::Spliced.headers().len());
    assert_eq!(splice_flags(0), Vec::<String>::new());
    assert_eq!(splice_flags(0b110), ["0x6"]);
}

#[test]
fn every_map_name_has_a_kind() {
    for name in map_names::ALL {
        assert!(MapKind::of(name).is_some(), "{name}");
    }
    assert_eq!(MapKind::of("AMBIT_NOPE"), None);
}
