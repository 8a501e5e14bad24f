//! `sk_lookup`, attached to each enrolled pod's network namespace: a TCP
//! connection arriving from outside the pod for one of the pod's addresses is
//! handed to the agent's inbound listener, whatever the destination port.
//!
//! Connections that arrive over loopback are left alone: they come from
//! inside the pod, including the agent's own connection to the application
//! on behalf of an inbound client. The mesh ports are left alone so the
//! agent's listeners there receive their own traffic.

use aya_ebpf::{bindings::sk_action::SK_PASS, macros::sk_lookup, programs::SkLookupContext};
use mesh_ebpf_common::{AF_INET, InboundListenerKey, IPPROTO_TCP, LOOPBACK_IFINDEX, RESERVED_POD_PORTS, counters};

use crate::maps::{INBOUND_LISTENERS, count};

/// Entry point for `sk_lookup`. Always passes: either a socket was selected
/// or the regular lookup goes on.
#[sk_lookup]
pub fn ambit_sk_lookup(ctx: SkLookupContext) -> u32 {
    try_sk_lookup(&ctx);
    SK_PASS
}

fn try_sk_lookup(ctx: &SkLookupContext) {
    // SAFETY: the kernel hands the program a valid bpf_sk_lookup.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP || lookup.ingress_ifindex == LOOPBACK_IFINDEX {
        return;
    }
    let Ok(port) = u16::try_from(lookup.local_port) else { return };
    if RESERVED_POD_PORTS.contains(&port) {
        return;
    }
    let Ok(family) = u16::try_from(lookup.family) else { return };
    let addr = if family == AF_INET { [lookup.local_ip4, 0, 0, 0] } else { lookup.local_ip6 };
    let key = InboundListenerKey { addr, family, _pad: 0 };
    if INBOUND_LISTENERS.redirect_sk_lookup(ctx, key, 0).is_ok() {
        count(counters::INBOUND_STEERED);
    }
}
