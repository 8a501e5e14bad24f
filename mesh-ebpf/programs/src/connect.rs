//! `cgroup/connect4` and `cgroup/connect6`: capture an enrolled pod's
//! outbound TCP connections into the agent's outbound listener.
//!
//! A connect is captured when the socket is TCP, lives in an enrolled network
//! namespace, does not carry the mesh mark (the agent's own sockets do) and is
//! not addressed to loopback (traffic inside the pod stays inside the pod).
//! The original destination is recorded by socket cookie before the address
//! is rewritten; `sock_ops` re-keys it once the connection is established.
//!
//! Fail closed: a connect that should be captured but cannot be (the
//! original destination cannot be recorded) is refused with `EPERM`, never
//! let through unredirected. With no agent running, a captured connect
//! reaches no listener and is refused by the kernel.

use aya_ebpf::{
    EbpfContext as _,
    bindings::sockaddr,
    helpers::{bpf_bind, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use mesh_ebpf_common::{
    AF_INET, AF_INET6, EnrolledNetns, IPPROTO_TCP, OUTBOUND_PORT, OriginalDst, counters, is_mesh_mark,
};

use crate::{
    addr::{
        LOCALHOST_V4, LOCALHOST_V6, SockaddrIn, SockaddrIn6, fold, host_to_user_port, is_loopback, is_loopback_v4, mapped,
        read_words, user_port_to_host,
    },
    maps::{ORIG_DST_BY_COOKIE, count, direct_allowed, enrolled},
};

/// A connect the program refuses: the application sees `EPERM`.
struct Refused;

/// Entry point for `cgroup/connect4`: 1 lets the (possibly rewritten)
/// connect go ahead, 0 refuses it.
#[cgroup_sock_addr(connect4)]
pub fn ambit_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Ok(()) => 1,
        Err(Refused) => 0,
    }
}

/// Entry point for `cgroup/connect6`: as `connect4`.
#[cgroup_sock_addr(connect6)]
pub fn ambit_connect6(ctx: SockAddrContext) -> i32 {
    match try_connect6(&ctx) {
        Ok(()) => 1,
        Err(Refused) => 0,
    }
}

fn try_connect4(ctx: &SockAddrContext) -> Result<(), Refused> {
    // SAFETY: the kernel hands the program a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP || is_loopback_v4(sa.user_ip4) {
        return Ok(());
    }
    let port = user_port_to_host(sa.user_port);
    let Some((netns_cookie, pod)) = capture_decision(ctx) else { return Ok(()) };
    if pod.ipv4 != 0 && direct_allowed(AF_INET, [pod.ipv4, 0, 0, 0], [sa.user_ip4, 0, 0, 0], port) {
        // A same-node destination policy allows: straight there, from the
        // pod's address, to be spliced by sock_ops and sk_msg.
        let mut local = SockaddrIn { family: AF_INET, port: 0, addr: pod.ipv4, zero: [0; 8] };
        bind_to_pod(ctx, (&raw mut local).cast(), core::mem::size_of::<SockaddrIn>());
        count(counters::CONNECT_DIRECT);
        return Ok(());
    }
    let original = OriginalDst { addr: [sa.user_ip4, 0, 0, 0], port, family: AF_INET, pad: 0, netns_cookie };
    record(ctx, &original)?;
    if pod.ipv4 != 0 {
        let mut local = SockaddrIn { family: AF_INET, port: 0, addr: pod.ipv4, zero: [0; 8] };
        bind_to_pod(ctx, (&raw mut local).cast(), core::mem::size_of::<SockaddrIn>());
    }
    sa.user_ip4 = LOCALHOST_V4;
    sa.user_port = host_to_user_port(OUTBOUND_PORT);
    count(counters::CONNECT_REDIRECTED);
    Ok(())
}

fn try_connect6(ctx: &SockAddrContext) -> Result<(), Refused> {
    // SAFETY: the kernel hands the program a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP {
        return Ok(());
    }
    // SAFETY: ctx.sock_addr points at the kernel's bpf_sock_addr.
    let dst = unsafe { read_words!(ctx.sock_addr, user_ip6) };
    let (family, folded) = fold(AF_INET6, dst);
    if is_loopback(family, folded) {
        return Ok(());
    }
    let port = user_port_to_host(sa.user_port);
    let Some((netns_cookie, pod)) = capture_decision(ctx) else { return Ok(()) };
    let pod_addr = if family == AF_INET { [pod.ipv4, 0, 0, 0] } else { pod.ipv6 };
    if pod_addr != [0; 4] && direct_allowed(family, pod_addr, folded, port) {
        // As for IPv4; the socket keeps the address the kernel picks (the
        // pod's own: it has one interface).
        count(counters::CONNECT_DIRECT);
        return Ok(());
    }
    let original = OriginalDst { addr: folded, port, family, pad: 0, netns_cookie };
    record(ctx, &original)?;
    let local_addr = if family == AF_INET { (pod.ipv4 != 0).then(|| mapped(pod.ipv4)) } else { (pod.ipv6 != [0; 4]).then_some(pod.ipv6) };
    if let Some(addr) = local_addr {
        let mut local = SockaddrIn6 { family: AF_INET6, port: 0, flowinfo: 0, addr, scope_id: 0 };
        bind_to_pod(ctx, (&raw mut local).cast(), core::mem::size_of::<SockaddrIn6>());
    }
    // A dual-stack socket aimed at an IPv4 peer travels as IPv4, so it goes
    // to the IPv4 listener; each word is stored on its own because the
    // verifier only accepts 32-bit stores to user_ip6.
    let target = if family == AF_INET { mapped(LOCALHOST_V4) } else { LOCALHOST_V6 };
    for (i, word) in target.iter().enumerate() {
        // SAFETY: i < 4 and the field is a writable part of the context.
        unsafe { core::ptr::write_volatile(&raw mut sa.user_ip6[i], *word) };
    }
    sa.user_port = host_to_user_port(OUTBOUND_PORT);
    count(counters::CONNECT_REDIRECTED);
    Ok(())
}

/// The socket's netns cookie and its pod's entry when the connect should be
/// captured.
fn capture_decision(ctx: &SockAddrContext) -> Option<(u64, EnrolledNetns)> {
    // SAFETY: the helper only reads the context it is given.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(pod) = enrolled(netns_cookie) else {
        count(counters::CONNECT_SKIPPED_NOT_ENROLLED);
        return None;
    };
    // SAFETY: the kernel hands the program a valid bpf_sock_addr.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    // SAFETY: a non-null sk in a sock_addr context points to the socket.
    if !sk.is_null() && is_mesh_mark(unsafe { (*sk).mark }) {
        count(counters::CONNECT_SKIPPED_MESH_MARK);
        return None;
    }
    Some((netns_cookie, pod))
}

/// Binds a captured socket to its pod's own address (port 0: the kernel
/// picks one when connecting) before the destination becomes loopback, so
/// the application's `getsockname()` shows the pod and the agent sees the
/// pod's address as its peer. A socket the application bound itself keeps
/// its address: the helper then fails, harmlessly.
fn bind_to_pod(ctx: &SockAddrContext, addr: *mut sockaddr, len: usize) {
    // SAFETY: addr points at a sockaddr of len bytes on this program's stack.
    let _ = unsafe { bpf_bind(ctx.sock_addr, addr, len as i32) };
}

/// Records the original destination; refuses the connect when the map
/// refuses the record (it must not go ahead unredirected).
fn record(ctx: &SockAddrContext, original: &OriginalDst) -> Result<(), Refused> {
    // SAFETY: the helper only reads the context it is given.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if ORIG_DST_BY_COOKIE.insert(&cookie, original, 0).is_err() {
        count(counters::CONNECT_RECORD_FAILED);
        aya_log_ebpf::warn!(ctx, "ambit: could not record the original destination of socket {}; connect refused", cookie);
        return Err(Refused);
    }
    Ok(())
}
