//! The crate's one system call without a safe wrapper: a `recv` into a
//! buffer's uninitialised spare capacity. Every unsafe block of the crate
//! lives here.

use std::{io, os::fd::BorrowedFd};

/// Receives from `socket` into the spare capacity of `buf` and extends
/// `buf` by what arrived; returns how many bytes that was (0 at end of
/// stream). Reads straight into the buffer, without zeroing it first.
pub fn recv_into_spare(socket: BorrowedFd<'_>, buf: &mut bytes::BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let received = socket2::SockRef::from(&socket).recv(spare)?;
    // SAFETY: recv initialised the first `received` bytes of the spare
    // capacity, and `received` is at most its length.
    unsafe { buf.set_len(buf.len() + received) };
    Ok(received)
}
