//! ambit's eBPF programs. Each program is a thin entry point that calls a
//! `try_*` function holding the logic; the programs share the maps in
//! [`maps`] and the types in `mesh-ebpf-common`.
//!
//! | program | hook | job |
//! | --- | --- | --- |
//! | `ambit_connect4/6` | `cgroup/connect4/6` | send an enrolled pod's outbound TCP connects to the agent's outbound listener, recording the original destination |
//! | `ambit_sock_ops` | `sockops` | key that record by the connection's 4-tuple once established; drop it when the socket closes |
//! | `ambit_getpeername4/6` | `cgroup/getpeername4/6` | show the application its real peer |
//! | `ambit_bind4/6` | `cgroup/bind4/6` | keep applications off the mesh ports |
//! | `ambit_getsockopt` | `cgroup/getsockopt` | answer `SO_ORIGINAL_DST` |
//! | `ambit_sk_lookup` | `sk_lookup` (per pod netns) | steer connections arriving at a pod to the agent's inbound listener |
//! | `ambit_sk_msg` | `sk_msg` on `AMBIT_SPLICE_SK` | splice direct same-node connections socket to socket |

#![no_std]
#![no_main]

mod addr;
mod bind;
mod connect;
mod lookup;
mod maps;
mod peer;
mod sockopt;
mod sockops;
mod splice;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects programs that could panic.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
