//! `cgroup/bind4/6`: inside an enrolled pod, only the mesh (sockets with the
//! mesh mark) may bind the mesh ports. Anyone else gets `EPERM`.

use aya_ebpf::{EbpfContext as _, helpers::bpf_get_netns_cookie, macros::cgroup_sock_addr, programs::SockAddrContext};
use mesh_ebpf_common::{IPPROTO_TCP, is_mesh_mark, RESERVED_POD_PORTS, counters};

use crate::{
    addr::user_port_to_host,
    maps::{count, is_enrolled},
};

/// Entry point for `cgroup/bind4`.
#[cgroup_sock_addr(bind4)]
pub fn ambit_bind4(ctx: SockAddrContext) -> i32 {
    verdict(&ctx)
}

/// Entry point for `cgroup/bind6`.
#[cgroup_sock_addr(bind6)]
pub fn ambit_bind6(ctx: SockAddrContext) -> i32 {
    verdict(&ctx)
}

/// 1 allows the bind, 0 refuses it with `EPERM`.
fn verdict(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands the program a valid bpf_sock_addr.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP || !RESERVED_POD_PORTS.contains(&user_port_to_host(sa.user_port)) {
        return 1;
    }
    // SAFETY: the helper only reads the context it is given.
    if !is_enrolled(unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }) {
        return 1;
    }
    // SAFETY: the kernel hands the program a valid bpf_sock_addr.
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    // SAFETY: a non-null sk in a sock_addr context points to the socket.
    if !sk.is_null() && is_mesh_mark(unsafe { (*sk).mark }) {
        return 1;
    }
    count(counters::BIND_DENIED);
    0
}
