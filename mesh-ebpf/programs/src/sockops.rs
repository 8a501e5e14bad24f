//! `sockops`: follow redirected connections through their life.
//!
//! - When a redirected socket starts connecting, ask for state-change
//!   callbacks so its record can be dropped when it closes, even if the
//!   connect fails.
//! - When it is established, copy the original destination to the key the
//!   agent can build from an accepted socket: the application side's 4-tuple
//!   in its network namespace. The agent takes that entry when it accepts.
//! - When it closes, drop the socket-cookie entry (`getpeername` needed it
//!   until then).
//! - For direct same-node connections, splice both sockets (`splice`).

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use mesh_ebpf_common::{AF_INET, SocketTuple, counters};

use crate::{
    addr::{fold, read_words},
    maps::{ORIG_DST_BY_COOKIE, ORIG_DST_BY_TUPLE, count},
    splice,
};

/// Entry point for `sockops`.
#[sock_ops]
pub fn ambit_sock_ops(ctx: SockOpsContext) -> u32 {
    try_sock_ops(&ctx);
    1
}

fn try_sock_ops(ctx: &SockOpsContext) {
    let op = ctx.op();
    match op {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => splice::client_established(ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            splice::server_established(ctx);
            return;
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => splice::closed(ctx),
        BPF_SOCK_OPS_TCP_CONNECT_CB | BPF_SOCK_OPS_STATE_CB => {}
        _ => return,
    }
    // SAFETY: the helper only reads the context it is given.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once; entries are plain data.
    let Some(original) = (unsafe { ORIG_DST_BY_COOKIE.get(&cookie) }).copied() else { return };
    match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            // Flags are a bit set of u32 values; the helper takes i32.
            let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            let Some(tuple) = application_tuple(ctx, original.netns_cookie) else { return };
            if ORIG_DST_BY_TUPLE.insert(&tuple, &original, 0).is_ok() {
                count(counters::TUPLE_RECORDED);
            }
        }
        _ => {
            // STATE_CB: arg 1 is the new state.
            if ctx.arg(1) == BPF_TCP_CLOSE {
                let _ = ORIG_DST_BY_COOKIE.remove(&cookie);
            }
        }
    }
}

/// The connecting socket's 4-tuple, folded like `SocketTuple::new` folds it.
fn application_tuple(ctx: &SockOpsContext, netns_cookie: u64) -> Option<SocketTuple> {
    let family = u16::try_from(ctx.family()).ok()?;
    let (local, remote) = if family == AF_INET {
        ([ctx.local_ip4(), 0, 0, 0], [ctx.remote_ip4(), 0, 0, 0])
    } else {
        // SAFETY: ctx.ops points at the kernel's bpf_sock_ops.
        unsafe { (read_words!(ctx.ops, local_ip6), read_words!(ctx.ops, remote_ip6)) }
    };
    let (family, src_addr) = fold(family, local);
    let (_, dst_addr) = fold(u16::try_from(ctx.family()).ok()?, remote);
    // local_port is in host order; remote_port keeps the network-order port
    // in its upper 16 bits.
    let src_port = u16::try_from(ctx.local_port()).ok()?;
    let dst_port = u16::from_be((ctx.remote_port() >> 16) as u16);
    Some(SocketTuple { netns_cookie, src_addr, dst_addr, src_port, dst_port, family, pad: 0 })
}
