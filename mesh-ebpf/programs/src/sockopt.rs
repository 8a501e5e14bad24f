//! `cgroup/getsockopt`: answer `SO_ORIGINAL_DST` (`SOL_IP`) and
//! `IP6T_SO_ORIGINAL_DST` (`SOL_IPV6`) on a socket accepted from a
//! redirected connection, for proxies that ask the kernel the iptables way.
//!
//! `get_socket_cookie` is not allowed here, so the record is found by the
//! 4-tuple: the accepted socket's peer is the application's side.

use aya_ebpf::{EbpfContext as _, helpers::bpf_get_netns_cookie, macros::cgroup_sockopt, programs::SockoptContext};
use mesh_ebpf_common::{AF_INET, AF_INET6, OriginalDst, SOL_IP, SOL_IPV6, SO_ORIGINAL_DST, SocketTuple, counters};

use crate::{
    addr::{SockaddrIn, SockaddrIn6, fold, mapped, read_words},
    maps::{ORIG_DST_BY_TUPLE, count},
};

/// Entry point for `cgroup/getsockopt`. Leaves every other option alone.
#[cgroup_sockopt(getsockopt)]
pub fn ambit_getsockopt(ctx: SockoptContext) -> i32 {
    try_getsockopt(&ctx);
    1
}

fn try_getsockopt(ctx: &SockoptContext) {
    // SAFETY: the kernel hands the program a valid bpf_sockopt.
    let so = unsafe { &mut *ctx.sockopt };
    if so.optname != SO_ORIGINAL_DST || (so.level != SOL_IP && so.level != SOL_IPV6) {
        return;
    }
    let Some(original) = original_dst(ctx) else { return };
    // SAFETY: union members of the context as the kernel lays them out.
    let (optval, optval_end) = unsafe { (so.__bindgen_anon_2.optval.cast::<u8>(), so.__bindgen_anon_3.optval_end.cast::<u8>()) };
    let written = if so.level == SOL_IP && original.family == AF_INET {
        let len = core::mem::size_of::<SockaddrIn>();
        // SAFETY: only compared with optval_end, never dereferenced past it.
        if unsafe { optval.add(len) } > optval_end {
            return;
        }
        let out = optval.cast::<SockaddrIn>();
        // SAFETY: bounds checked against optval_end just above.
        unsafe {
            (*out).family = AF_INET;
            (*out).port = original.port.to_be();
            (*out).addr = original.addr[0];
            (*out).zero = [0; 8];
        }
        len
    } else if so.level == SOL_IPV6 {
        let addr = if original.family == AF_INET { mapped(original.addr[0]) } else { original.addr };
        let len = core::mem::size_of::<SockaddrIn6>();
        // SAFETY: only compared with optval_end, never dereferenced past it.
        if unsafe { optval.add(len) } > optval_end {
            return;
        }
        let out = optval.cast::<SockaddrIn6>();
        // SAFETY: bounds checked against optval_end just above.
        unsafe {
            (*out).family = AF_INET6;
            (*out).port = original.port.to_be();
            (*out).flowinfo = 0;
            (*out).addr = addr;
            (*out).scope_id = 0;
        }
        len
    } else {
        return;
    };
    // Separate 32-bit stores: a merged 64-bit store to optlen and retval is
    // rejected by the verifier ("invalid bpf_context access").
    // SAFETY: both fields are writable parts of the context.
    unsafe {
        core::ptr::write_volatile(&raw mut so.optlen, written as i32);
        core::ptr::write_volatile(&raw mut so.retval, 0);
    }
    count(counters::ORIGINAL_DST_ANSWERED);
}

fn original_dst(ctx: &SockoptContext) -> Option<OriginalDst> {
    // SAFETY: the kernel hands the program a valid bpf_sockopt.
    let sk = unsafe { (*ctx.sockopt).__bindgen_anon_1.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null sk in a sockopt context points to the socket; each
    // field is read at its own constant offset, as the verifier requires.
    let (family, local_ip, remote_ip, local_port, remote_port) = unsafe {
        let family = u16::try_from(core::ptr::read_volatile(&raw const (*sk).family)).ok()?;
        let (local, remote) = if family == AF_INET {
            (
                [core::ptr::read_volatile(&raw const (*sk).src_ip4), 0, 0, 0],
                [core::ptr::read_volatile(&raw const (*sk).dst_ip4), 0, 0, 0],
            )
        } else {
            (read_words!(sk, src_ip6), read_words!(sk, dst_ip6))
        };
        (family, local, remote, core::ptr::read_volatile(&raw const (*sk).src_port), core::ptr::read_volatile(&raw const (*sk).dst_port))
    };
    // SAFETY: the helper only reads the context it is given.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // The accepted socket's peer is the application; its local end is the
    // address the application was redirected to.
    let (folded_family, src_addr) = fold(family, remote_ip);
    let (_, dst_addr) = fold(family, local_ip);
    let tuple = SocketTuple {
        netns_cookie,
        src_addr,
        dst_addr,
        src_port: u16::from_be(remote_port),
        dst_port: u16::try_from(local_port).ok()?,
        family: folded_family,
        pad: 0,
    };
    // SAFETY: the value is copied out at once; entries are plain data.
    unsafe { ORIG_DST_BY_TUPLE.get(&tuple) }.copied()
}
