//! pod-tool's only unsafe code: reading `SO_ORIGINAL_DST`, which no safe
//! wrapper offers into a `sockaddr_storage`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::SockAddr;

/// `SO_ORIGINAL_DST` (IPv4, level `SOL_IP`) and `IP6T_SO_ORIGINAL_DST`
/// (IPv6, level `SOL_IPV6`) share the number 80.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// Asks the kernel (netfilter, or ambit's `cgroup/getsockopt` program) where
/// the connection on `socket` was originally headed, as proxies do.
pub(crate) fn original_dst(socket: BorrowedFd<'_>, ipv6: bool) -> io::Result<SocketAddr> {
    let level = if ipv6 { libc::SOL_IPV6 } else { libc::SOL_IP };
    let fd = socket.as_raw_fd();
    // SAFETY: try_init hands us a zeroed sockaddr_storage and its length;
    // getsockopt writes at most `len` bytes there and updates `len`, and the
    // descriptor is borrowed, so open, for the whole call.
    let ((), addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            if libc::getsockopt(fd, level, SO_ORIGINAL_DST, storage.cast(), len) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        })
    }?;
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_ORIGINAL_DST returned a non-IP address",
        )
    })
}
