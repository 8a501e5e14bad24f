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
//! - For direct same-node connections, splice both sockets (`splice`); for
//!   pods on the kernel path, also the legs between their applications and
//!   the agent.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use mesh_ebpf_common::{MESH_RETURN_MARK, SocketTuple, counters};

use crate::{
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
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            if !splice::client_established(ctx) && is_inbound_delivery(ctx) {
                // The inbound proxy's socket to its application.
                // SAFETY: the helper only reads the context it is given.
                splice::pod_leg_established(ctx, unsafe { bpf_get_netns_cookie(ctx.as_ptr()) });
                return;
            }
        }
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
            // Without the tuple record the agent finds no original
            // destination and closes the connection: it fails closed, and
            // the failure is counted.
            let recorded = application_tuple(ctx, original.netns_cookie)
                .is_some_and(|tuple| ORIG_DST_BY_TUPLE.insert(&tuple, &original, 0).is_ok());
            count(if recorded { counters::TUPLE_RECORDED } else { counters::TUPLE_RECORD_FAILED });
            // The application's leg to the outbound listener.
            if recorded {
                splice::pod_leg_established(ctx, original.netns_cookie);
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

/// Whether the socket is the inbound proxy's connection to an application
/// (it carries the return mark).
fn is_inbound_delivery(ctx: &SockOpsContext) -> bool {
    // SAFETY: ctx.ops points at the kernel's bpf_sock_ops; sk is set for
    // the established callbacks and checked for null.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    // SAFETY: a non-null sk in sock_ops points to the full socket.
    !sk.is_null() && unsafe { (*sk).mark } == MESH_RETURN_MARK
}

/// The connecting socket's 4-tuple, folded like `SocketTuple::new` folds it,
/// in the network namespace with this cookie.
fn application_tuple(ctx: &SockOpsContext, netns_cookie: u64) -> Option<SocketTuple> {
    splice::own_tuple(ctx).map(|tuple| SocketTuple { netns_cookie, ..tuple })
}
