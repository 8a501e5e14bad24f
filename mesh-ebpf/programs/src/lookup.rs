//! `sk_lookup`, attached to each enrolled pod's network namespace: a TCP
//! connection arriving from outside the pod for one of the pod's addresses is
//! handed to the agent's inbound listener, whatever the destination port.
//!
//! Left alone: connections that arrive over loopback (from inside the pod),
//! the inbound proxy's own connections to the application on behalf of a
//! client (listed in the bypass map: they come from the client's address
//! over loopback, but the kernel reports the pod interface as their ingress
//! because the destination is the pod's address), and connections to the
//! mesh ports, so the agent's listeners there receive their own traffic,
//! and direct connections from a same-node pod that policy allows (they are
//! spliced in the kernel instead, see `splice`).
//!
//! Fail closed: this program is attached only to enrolled pods' namespaces,
//! and its attachment is pinned, so it outlives the agent. When no agent
//! listener is registered for the pod's address (the agent stopped, crashed
//! or has not taken the pod over yet: its sockets left the sock hash when
//! they closed), the connection is refused with `SK_DROP`, which makes the
//! TCP lookup fail and the kernel answer the SYN with a reset. A reset rather
//! than a silent drop: the client learns at once that the pod cannot be
//! reached and retries or fails fast, instead of waiting out SYN
//! retransmissions for a minute. Nothing reaches the application around the
//! mesh.

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use mesh_ebpf_common::{
    AF_INET, IPPROTO_TCP, InboundListenerKey, LOOPBACK_IFINDEX, RESERVED_POD_PORTS, SocketTuple, counters,
};

use crate::{
    addr::read_words,
    maps::{INBOUND_BYPASS, INBOUND_LISTENERS, count, direct_allowed},
};

/// What `sk_lookup` decided for one arriving connection.
enum Lookup {
    /// Not the mesh's to steer, or steered: the kernel goes on (with the
    /// selected socket, if one was).
    Pass,
    /// An enrolled pod without an agent listener: refused with a reset.
    Refuse,
}

/// Entry point for `sk_lookup`: passes with the agent's listener selected,
/// passes what the mesh leaves alone, and refuses what it should steer but
/// cannot (fail closed).
#[sk_lookup]
pub fn ambit_sk_lookup(ctx: SkLookupContext) -> u32 {
    match try_sk_lookup(&ctx) {
        Lookup::Pass => SK_PASS,
        Lookup::Refuse => SK_DROP,
    }
}

fn try_sk_lookup(ctx: &SkLookupContext) -> Lookup {
    // SAFETY: the kernel hands the program a valid bpf_sk_lookup.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP || lookup.ingress_ifindex == LOOPBACK_IFINDEX {
        return Lookup::Pass;
    }
    let Ok(port) = u16::try_from(lookup.local_port) else { return Lookup::Refuse };
    if RESERVED_POD_PORTS.contains(&port) {
        return Lookup::Pass;
    }
    let Ok(family) = u16::try_from(lookup.family) else { return Lookup::Refuse };
    let addr = if family == AF_INET {
        [lookup.local_ip4, 0, 0, 0]
    } else {
        // SAFETY: ctx.lookup points at the kernel's bpf_sk_lookup.
        unsafe { read_words!(ctx.lookup, local_ip6) }
    };
    let remote = if family == AF_INET {
        [lookup.remote_ip4, 0, 0, 0]
    } else {
        // SAFETY: ctx.lookup points at the kernel's bpf_sk_lookup.
        unsafe { read_words!(ctx.lookup, remote_ip6) }
    };
    let own = SocketTuple {
        netns_cookie: 0,
        src_addr: remote,
        dst_addr: addr,
        src_port: u16::from_be(lookup.remote_port),
        dst_port: port,
        family,
        pad: 0,
    };
    if INBOUND_BYPASS.get_ptr(&own).is_some() {
        count(counters::INBOUND_BYPASSED);
        return Lookup::Pass;
    }
    if direct_allowed(family, remote, addr, port) {
        // A same-node pod that policy lets connect directly.
        count(counters::INBOUND_DIRECT);
        return Lookup::Pass;
    }
    let key = InboundListenerKey { addr, family, pad: 0 };
    if INBOUND_LISTENERS.redirect_sk_lookup(ctx, key, 0).is_ok() {
        count(counters::INBOUND_STEERED);
        return Lookup::Pass;
    }
    count(counters::INBOUND_REFUSED_NO_AGENT);
    Lookup::Refuse
}
