//! `cgroup/getpeername4/6`: a redirected socket is really connected to the
//! agent's outbound listener; the application is shown the peer it asked for.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use mesh_ebpf_common::{AF_INET, AF_INET6, OUTBOUND_PORT, OriginalDst, counters};

use crate::{
    addr::{LOCALHOST_V4, LOCALHOST_V6, host_to_user_port, mapped, read_words, user_port_to_host},
    maps::{ORIG_DST_BY_COOKIE, count},
};

/// Entry point for `cgroup/getpeername4`.
#[cgroup_sock_addr(getpeername4)]
pub fn ambit_getpeername4(ctx: SockAddrContext) -> i32 {
    try_getpeername4(&ctx);
    1
}

/// Entry point for `cgroup/getpeername6`.
#[cgroup_sock_addr(getpeername6)]
pub fn ambit_getpeername6(ctx: SockAddrContext) -> i32 {
    try_getpeername6(&ctx);
    1
}

fn try_getpeername4(ctx: &SockAddrContext) {
    // SAFETY: the kernel hands the program a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_ip4 != LOCALHOST_V4 || user_port_to_host(sa.user_port) != OUTBOUND_PORT {
        return;
    }
    let Some(original) = original_dst(ctx) else { return };
    if original.family == AF_INET {
        sa.user_ip4 = original.addr[0];
        sa.user_port = host_to_user_port(original.port);
        count(counters::GETPEERNAME_TRANSLATED);
    }
}

fn try_getpeername6(ctx: &SockAddrContext) {
    // SAFETY: the kernel hands the program a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    if user_port_to_host(sa.user_port) != OUTBOUND_PORT {
        return;
    }
    // SAFETY: ctx.sock_addr points at the kernel's bpf_sock_addr.
    let peer = unsafe { read_words!(ctx.sock_addr, user_ip6) };
    let Some(original) = original_dst(ctx) else { return };
    let shown = if original.family == AF_INET6 && peer == LOCALHOST_V6 {
        original.addr
    } else if original.family == AF_INET && peer == mapped(LOCALHOST_V4) {
        mapped(original.addr[0])
    } else {
        return;
    };
    for (i, word) in shown.iter().enumerate() {
        // SAFETY: i < 4 and the field is a writable part of the context.
        unsafe { core::ptr::write_volatile(&raw mut sa.user_ip6[i], *word) };
    }
    sa.user_port = host_to_user_port(original.port);
    count(counters::GETPEERNAME_TRANSLATED);
}

fn original_dst(ctx: &SockAddrContext) -> Option<OriginalDst> {
    // SAFETY: the helper only reads the context it is given.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once; entries are plain data.
    unsafe { ORIG_DST_BY_COOKIE.get(&cookie) }.copied()
}
