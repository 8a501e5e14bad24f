//! The crate's only unsafe code: moving a freshly forked child into a cgroup
//! and a network namespace before it executes the program, signal handlers,
//! and socket options that no safe wrapper offers (kTLS keys).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the child of `cmd` join the cgroup whose `cgroup.procs` file is open
/// as `cgroup_procs`, then the network namespace open as `netns`, between fork
/// and exec. Both descriptors belong to the caller and must stay open until
/// `cmd` has been spawned.
///
/// Joining in the child itself, rather than moving it afterwards from the
/// parent, means the program never runs a single instruction outside the pod:
/// eBPF programs attached to the pod's cgroup see its very first socket.
pub(crate) fn join_before_exec(cmd: &mut Command, cgroup_procs: RawFd, netns: RawFd) {
    let hook = move || -> io::Result<()> {
        // "0" stands for the writing process itself.
        // SAFETY: write(2) on a descriptor the parent opened and keeps open
        // until spawn returns; the buffer is a static byte string. write is
        // async-signal-safe and allocates nothing.
        let written = unsafe { libc::write(cgroup_procs, b"0".as_ptr().cast(), 1) };
        if written != 1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: setns(2) on a descriptor of a /run/netns file that the
        // parent opened and keeps open; async-signal-safe, no allocation.
        if unsafe { libc::setns(netns, libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child, where only async-signal-safe
    // calls are allowed: it makes two system calls and allocates nothing
    // (io::Error::last_os_error stores the errno inline).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Runs `handler` on SIGINT and SIGTERM; after the first signal the default
/// action returns, so a second one stops the process at once.
pub(crate) fn on_interrupt(handler: extern "C" fn(libc::c_int)) -> nix::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(handler),
        SaFlags::SA_RESTART | SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: callers pass handlers that only store to an atomic, which
        // is async-signal-safe, and nothing else in the process handles
        // these signals.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// `setsockopt(2)` with `value` as the option's bytes, for options that
/// take a kernel structure (`T` is a `#[repr(C)]` type from `libc`, such as
/// `tls12_crypto_info_aes_gcm_128`) or a byte string (`[u8]`, such as the
/// name `tls` for `TCP_ULP`).
pub(crate) fn set_socket_option<T: ?Sized>(
    socket: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of_val(value))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "socket option too long"))?;
    // SAFETY: the pointer and length describe `value`, a live borrow the
    // kernel only reads (copies in) during the call; the descriptor is
    // borrowed, so it stays open for the call.
    let status = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            len,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
