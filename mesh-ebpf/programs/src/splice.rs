//! The same-node fast path in the kernel. When policy lets a pod connect
//! straight to a pod of the same node (`AMBIT_DIRECT`, written by the
//! agent), `connect4/6` leave the connection alone and `sock_ops` puts both
//! of its sockets in `AMBIT_SPLICE_SK` as they are established. `sk_msg`,
//! attached to that sock hash, then hands every message straight to the
//! peer socket's receive queue: no TCP, no IP, no veth, no agent.
//!
//! - The client's socket joins first (its side is established first); if it
//!   sends before the server's socket has joined, that message goes through
//!   TCP and so does every later one, so no message can overtake another.
//! - Each direction hands over at most `SPLICE_DIRECTION_BUDGET` bytes; the
//!   rest of it goes through TCP, whose flow control bounds what a slow
//!   reader can have queued (the kernel does not bound a redirected queue).
//! - `sk_msg` counts every message of the connection, spliced or not, in
//!   `AMBIT_SPLICED` (by the client's tuple), and the client's close is
//!   reported with the final counts on `AMBIT_SPLICE_EV`, so the agent's
//!   byte and connection counts stay exact without seeing a byte.
//!
//! The kernel path (a pod opted in with `ambit.dev/kernel-path=enabled`)
//! splices the legs between its applications and the agent the same way:
//! the application's captured socket and the agent's accepted socket on the
//! outbound listener, and the inbound proxy's socket and the application's
//! accepted socket. The agent still reads and writes every byte of those
//! legs (it is one end), so they are flagged `SPLICE_FLAG_POD_LEG` and not
//! reported; what changes is that the bytes skip loopback TCP.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, BPF_SOCK_OPS_STATE_CB_FLAG, sk_action::SK_PASS},
    EbpfContext as _,
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::sk_msg,
    programs::{SkMsgContext, SockOpsContext},
};
use mesh_ebpf_common::{
    SPLICE_CLOSED, SPLICE_DIRECTION_BUDGET, SPLICE_FLAG_POD_LEG, SPLICE_FLAG_VIA_TCP, SPLICE_OPENED, SocketTuple,
    SpliceEvent, SpliceStats, counters,
};

use crate::{
    addr::{fold, is_loopback, read_words},
    maps::{SPLICE_EVENTS, SPLICE_SOCKETS, SPLICED, count, direct_allowed, enrolled},
};

/// Entry point for `sk_msg` on the splice sock hash. Always passes: a
/// message is either redirected or goes through TCP as usual.
#[sk_msg]
pub fn ambit_sk_msg(ctx: SkMsgContext) -> u32 {
    try_sk_msg(&ctx);
    SK_PASS
}

fn try_sk_msg(ctx: &SkMsgContext) {
    let Some(own) = msg_tuple(ctx) else { return };
    let peer = swapped(&own);
    let size = u64::from(ctx.size());
    if let Some(stats) = SPLICED.get_ptr_mut(&own) {
        // The client's side.
        // SAFETY: the pointer comes from the lookup; the socket lock
        // serialises this socket's messages, and the server side only
        // writes `received`.
        let stats = unsafe { &mut *stats };
        stats.sent += size;
        if stats.flags & SPLICE_FLAG_VIA_TCP != 0 || over_budget(stats.sent, size) {
            count(counters::MESSAGES_VIA_TCP);
            return;
        }
        if !redirect(ctx, peer) {
            stats.flags |= SPLICE_FLAG_VIA_TCP;
        }
    } else if let Some(stats) = SPLICED.get_ptr_mut(&peer) {
        // The server's side: the client's socket joined first, so this
        // redirect only fails once the client has gone.
        // SAFETY: as above; this side only writes `received`.
        let received = unsafe {
            (*stats).received += size;
            (*stats).received
        };
        if over_budget(received, size) {
            count(counters::MESSAGES_VIA_TCP);
            return;
        }
        redirect(ctx, peer);
    }
}

/// Whether a direction that has now sent `total` bytes, the last `size` of
/// them in this message, is past its budget: then this message and every
/// later one go through TCP (the total only grows, so no flag is needed).
/// The message that crosses the budget is counted.
#[inline(always)]
fn over_budget(total: u64, size: u64) -> bool {
    if total <= SPLICE_DIRECTION_BUDGET {
        return false;
    }
    if total - size <= SPLICE_DIRECTION_BUDGET {
        count(counters::SPLICE_BUDGET_SPENT);
    }
    true
}

/// Hands the message to `peer`'s receive queue; `false` when `peer` is not
/// in the sock hash (the message then goes through TCP).
fn redirect(ctx: &SkMsgContext, mut peer: SocketTuple) -> bool {
    // SK_PASS (1) means the redirect was set up.
    if SPLICE_SOCKETS.redirect_msg(ctx, &mut peer, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS) {
        count(counters::MESSAGES_SPLICED);
        true
    } else {
        count(counters::MESSAGES_VIA_TCP);
        false
    }
}

/// `sock_ops`, active side established: a direct connection's client
/// socket joins the sock hash, its counters start, and the agent hears of
/// it. `true` when it joined.
pub fn client_established(ctx: &SockOpsContext) -> bool {
    let Some(own) = own_tuple(ctx) else { return false };
    if !direct_allowed(own.family, own.src_addr, own.dst_addr, own.dst_port) {
        return false;
    }
    join_as_client(ctx, own, 0)
}

/// `sock_ops`, active side established, for a socket of a pod whose legs
/// take the kernel path (`netns_cookie`'s entry has the flag): an
/// application's captured socket to the agent's outbound listener, or the
/// inbound proxy's socket to the application. It joins the sock hash as
/// the client of a pod leg; the other end joins when it is established.
///
/// The key must be unique on the node without the netns cookie: a leg
/// whose own address is loopback (a pod without a known address) stays on
/// TCP.
///
/// Inlined: as a call of its own, its frame and `sock_ops`' together
/// exceed the 512 bytes of stack that Linux 6.1's verifier allows.
#[inline(always)]
pub fn pod_leg_established(ctx: &SockOpsContext, netns_cookie: u64) {
    if !enrolled(netns_cookie).is_some_and(|pod| pod.has_kernel_path()) {
        return;
    }
    let Some(own) = own_tuple(ctx) else { return };
    if is_loopback(own.family, own.src_addr) {
        return;
    }
    if join_as_client(ctx, own, SPLICE_FLAG_POD_LEG) {
        count(counters::POD_LEG_SOCKETS);
    }
}

/// Puts a client socket in the sock hash with fresh counters; reports the
/// opening of a direct connection (not of a pod leg: the agent carries
/// those). `true` when it joined.
#[inline(always)]
fn join_as_client(ctx: &SockOpsContext, own: SocketTuple, flags: u64) -> bool {
    // SAFETY: the helper only reads the context it is given.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the helper only reads the context it is given.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let stats = SpliceStats { sent: 0, received: 0, opened_ns: now, flags, cookie };
    if SPLICED.insert(&own, &stats, 0).is_err() {
        return false;
    }
    let mut key = own;
    // SAFETY: ctx.ops points at the kernel's bpf_sock_ops.
    if SPLICE_SOCKETS.update(&mut key, unsafe { &mut *ctx.ops }, 0).is_err() {
        let _ = SPLICED.remove(&own);
        return false;
    }
    count(counters::SOCKETS_SPLICED);
    // Flags are a bit set of u32 values; the helper takes i32.
    let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    if flags & SPLICE_FLAG_POD_LEG == 0 {
        report(SpliceEvent { tuple: own, stats, kind: SPLICE_OPENED, pad: 0 });
    }
    true
}

/// `sock_ops`, passive side established: the server socket of a direct
/// connection, or of a pod leg whose client joined, joins the sock hash.
pub fn server_established(ctx: &SockOpsContext) {
    let Some(own) = own_tuple(ctx) else { return };
    // The server's own tuple has the client as remote.
    let direct = direct_allowed(own.family, own.dst_addr, own.src_addr, own.src_port);
    let pod_leg = !direct && {
        // SAFETY: the value is copied out at once; entries are plain data.
        unsafe { SPLICED.get(&swapped(&own)) }.is_some_and(|client| client.flags & SPLICE_FLAG_POD_LEG != 0)
    };
    if !direct && !pod_leg {
        return;
    }
    let mut key = own;
    // SAFETY: ctx.ops points at the kernel's bpf_sock_ops.
    if SPLICE_SOCKETS.update(&mut key, unsafe { &mut *ctx.ops }, 0).is_ok() {
        count(counters::SOCKETS_SPLICED);
        if pod_leg {
            count(counters::POD_LEG_SOCKETS);
        }
    }
}

/// `sock_ops`, a socket closed: if it was a spliced client, report the
/// final counts. The sock hash drops closed sockets by itself.
pub fn closed(ctx: &SockOpsContext) {
    let Some(own) = own_tuple(ctx) else { return };
    // SAFETY: the value is copied out at once; entries are plain data.
    let Some(stats) = (unsafe { SPLICED.get(&own) }).copied() else { return };
    let _ = SPLICED.remove(&own);
    if stats.flags & SPLICE_FLAG_POD_LEG == 0 {
        report(SpliceEvent { tuple: own, stats, kind: SPLICE_CLOSED, pad: 0 });
    }
}


fn report(event: SpliceEvent) {
    // A full ring loses the event; the counts in the agent are then short,
    // which its ring-loss counter would show.
    let _ = SPLICE_EVENTS.output::<SpliceEvent>(&event, 0);
}

/// The socket's own tuple (local as source), folded, netns cookie 0.
pub fn own_tuple(ctx: &SockOpsContext) -> Option<SocketTuple> {
    let family = u16::try_from(ctx.family()).ok()?;
    let (local, remote) = if family == mesh_ebpf_common::AF_INET {
        ([ctx.local_ip4(), 0, 0, 0], [ctx.remote_ip4(), 0, 0, 0])
    } else {
        // SAFETY: ctx.ops points at the kernel's bpf_sock_ops.
        unsafe { (read_words!(ctx.ops, local_ip6), read_words!(ctx.ops, remote_ip6)) }
    };
    let (folded_family, src_addr) = fold(family, local);
    let (_, dst_addr) = fold(family, remote);
    // local_port is in host order; remote_port keeps the network-order port
    // in its upper 16 bits.
    let src_port = u16::try_from(ctx.local_port()).ok()?;
    let dst_port = u16::from_be((ctx.remote_port() >> 16) as u16);
    Some(SocketTuple { netns_cookie: 0, src_addr, dst_addr, src_port, dst_port, family: folded_family, pad: 0 })
}

/// The message's socket's own tuple (local as source), folded, netns cookie 0.
fn msg_tuple(ctx: &SkMsgContext) -> Option<SocketTuple> {
    // SAFETY: the kernel hands the program a valid sk_msg_md.
    let md = unsafe { &*ctx.msg };
    let family = u16::try_from(md.family).ok()?;
    let (local, remote) = if family == mesh_ebpf_common::AF_INET {
        ([md.local_ip4, 0, 0, 0], [md.remote_ip4, 0, 0, 0])
    } else {
        // SAFETY: ctx.msg points at the kernel's sk_msg_md.
        unsafe { (read_words!(ctx.msg, local_ip6), read_words!(ctx.msg, remote_ip6)) }
    };
    let (folded_family, src_addr) = fold(family, local);
    let (_, dst_addr) = fold(family, remote);
    // As in sock_ops: local_port in host order, remote_port network order
    // in the upper 16 bits.
    let src_port = u16::try_from(md.local_port).ok()?;
    let dst_port = u16::from_be((md.remote_port >> 16) as u16);
    Some(SocketTuple { netns_cookie: 0, src_addr, dst_addr, src_port, dst_port, family: folded_family, pad: 0 })
}

/// The tuple as the other end of the connection sees it.
fn swapped(tuple: &SocketTuple) -> SocketTuple {
    SocketTuple {
        netns_cookie: 0,
        src_addr: tuple.dst_addr,
        dst_addr: tuple.src_addr,
        src_port: tuple.dst_port,
        dst_port: tuple.src_port,
        family: tuple.family,
        pad: 0,
    }
}
