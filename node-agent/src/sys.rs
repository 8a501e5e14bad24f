//! The agent's few system calls that have no safe wrapper in its libraries:
//! switching network namespaces, reading a socket's netns cookie,
//! `IPV6_TRANSPARENT`, and owning descriptors received from the kernel. Every unsafe block of the agent lives here.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `SO_NETNS_COOKIE` (Linux 5.14+), not yet in every libc release.
const SO_NETNS_COOKIE: libc::c_int = 71;
/// `NS_GET_NSTYPE` ioctl: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Hands the allocator's free pages back to the kernel (glibc's
/// `malloc_trim`). The agent calls it once start-up is done: loading the
/// eBPF programs parses the kernel's BTF (about 15 MB on Linux 6.18) and
/// frees it again, and glibc would otherwise keep several MiB of those
/// freed pages resident for the agent's whole life.
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointers; it only walks the allocator's
    // own free lists, under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Fixes glibc's two allocator thresholds (`mallopt`): an allocation of at
/// least `mmap_bytes` is mapped on its own and unmapped when freed, and an
/// arena whose free top grows past `trim_bytes` hands the excess back.
/// Setting them turns off glibc's own adjustment, which raises both after
/// every large mapped allocation is freed. `false` if glibc refused or the
/// allocator is not glibc's.
pub fn fix_allocator_thresholds(mmap_bytes: usize, trim_bytes: usize) -> bool {
    #[cfg(target_env = "gnu")]
    {
        let (Ok(mmap), Ok(trim)) = (
            libc::c_int::try_from(mmap_bytes),
            libc::c_int::try_from(trim_bytes),
        ) else {
            return false;
        };
        // SAFETY: mallopt takes two integers and changes only the
        // allocator's parameters, under its own lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, mmap) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 1
        }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        let _ = (mmap_bytes, trim_bytes);
        false
    }
}

/// Caps how many arenas glibc's allocator makes (`M_ARENA_MAX`): threads
/// that start allocating once `arenas` exist share them instead of each
/// taking one of their own. `false` if glibc refused or the allocator is
/// not glibc's.
pub fn limit_allocator_arenas(arenas: usize) -> bool {
    #[cfg(target_env = "gnu")]
    {
        let Ok(value) = libc::c_int::try_from(arenas) else {
            return false;
        };
        // SAFETY: as in fix_allocator_thresholds.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, value) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        let _ = arenas;
        false
    }
}

/// What the allocator's arenas hold: bytes in live allocations and bytes
/// free (whether or not their pages are still resident).
#[derive(Clone, Copy, Debug)]
pub struct HeapUsage {
    /// In allocations not yet freed: in the arenas (glibc's `uordblks`)
    /// and large ones mapped on their own (`hblkhd`).
    pub in_use: usize,
    /// Free in the arenas (glibc's `fordblks`).
    pub free: usize,
}

/// The allocator's [`HeapUsage`]; `None` where it is not glibc's.
#[cfg_attr(
    target_env = "gnu",
    expect(clippy::unnecessary_wraps, reason = "None on other allocators")
)]
pub fn heap_usage() -> Option<HeapUsage> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct
        // of counters, read under the allocator's locks.
        let info = unsafe { libc::mallinfo2() };
        Some(HeapUsage {
            in_use: info.uordblks + info.hblkhd,
            free: info.fordblks,
        })
    }
    #[cfg(not(target_env = "gnu"))]
    {
        None
    }
}

/// Takes ownership of a descriptor the kernel has just installed for this
/// process (returned by `accept`, or received with `SCM_RIGHTS`), so that
/// it is closed when dropped.
pub fn own_new_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    // SAFETY: callers pass only descriptors the kernel just created for
    // this process, which nothing else owns or closes.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

/// Moves the calling thread into the network namespace `netns`.
pub fn setns_net(netns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor, which the borrow keeps open.
    let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `fd` refers to a network namespace.
pub fn is_network_namespace(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        // ENOTTY: not a namespace file at all.
        return if err.raw_os_error() == Some(libc::ENOTTY) {
            Ok(false)
        } else {
            Err(err)
        };
    }
    Ok(rc == libc::CLONE_NEWNET)
}

/// The cookie of the network namespace a socket lives in: the value
/// `bpf_get_netns_cookie()` returns for sockets there.
pub fn netns_cookie(socket: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len =
        libc::socklen_t::try_from(std::mem::size_of::<u64>()).expect("8 fits in socklen_t");
    // SAFETY: cookie and len are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets `IPV6_TRANSPARENT` so an IPv6 socket may bind a foreign address.
pub fn set_ipv6_transparent(socket: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    let len =
        libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).expect("4 fits in socklen_t");
    // SAFETY: on is valid for reads of len bytes.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
            (&raw const on).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `BPF_OBJ_PIN` command of `bpf(2)`.
const BPF_OBJ_PIN: libc::c_long = 6;
/// `BPF_LINK_CREATE` command of `bpf(2)`.
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_CGROUP_GETSOCKOPT` from `enum bpf_attach_type`.
pub const BPF_CGROUP_GETSOCKOPT: u32 = 21;

/// Creates a cgroup link (`BPF_LINK_CREATE`) for a loaded program. Used where
/// aya 0.14 keeps the link to itself (cgroup/getsockopt), so it can be pinned.
pub fn bpf_link_create_cgroup(
    program: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // union bpf_attr, link_create member: prog_fd, target_fd, attach_type,
    // flags; the rest stays zero. 128 bytes covers every member we use.
    let mut attr = [0u32; 32];
    attr[0] = u32::try_from(program.as_raw_fd())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    attr[1] = u32::try_from(cgroup.as_raw_fd())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    attr[2] = attach_type;
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd =
        i32::try_from(fd).map_err(|_| io::Error::other("bpf() returned an out-of-range fd"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Pins a BPF object (`BPF_OBJ_PIN`) at `path` on a bpffs.
pub fn bpf_obj_pin(object: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // union bpf_attr, obj member: pathname (u64), bpf_fd, file_flags, path_fd.
    let mut attr = [0u64; 16];
    attr[0] = c_path.as_ptr() as u64;
    attr[1] = u64::from(
        u32::try_from(object.as_raw_fd())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
    );
    // SAFETY: attr is a valid, zero-padded bpf_attr; c_path outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Registers a descriptor-owning value with the tokio reactor for reads.
pub fn async_readable<T: AsRawFd>(inner: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor and is moved into the AsyncFd, so
    // the descriptor stays open and unchanged for the AsyncFd's lifetime.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
}

#[cfg(all(test, target_env = "gnu"))]
mod tests {
    /// The heaps of glibc's arenas other than the main one: anonymous
    /// mappings aligned to their 64 MiB reservation.
    fn arena_heaps() -> usize {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|line| {
                let mut fields = line.split_whitespace();
                let start = fields.next().and_then(|range| range.split('-').next());
                let start = start.and_then(|hex| u64::from_str_radix(hex, 16).ok());
                start.is_some_and(|start| start % (64 << 20) == 0) && fields.nth(4).is_none()
            })
            .count()
    }

    #[test]
    fn threads_share_the_arenas_once_the_cap_is_reached() {
        assert!(super::limit_allocator_arenas(1));
        let before = arena_heaps();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    let held = std::hint::black_box(vec![1_u8; 16 << 10]);
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    held.len()
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), 16 << 10);
        }
        assert_eq!(arena_heaps(), before, "no thread made an arena of its own");
    }

    /// Bytes in allocations mapped on their own (glibc's `hblkhd`).
    fn mapped_bytes() -> usize {
        // SAFETY: as in heap_usage.
        unsafe { libc::mallinfo2() }.hblkhd
    }

    #[test]
    fn a_freed_large_allocation_no_longer_pulls_the_next_ones_into_the_arenas() {
        assert!(super::fix_allocator_thresholds(512 << 10, 1 << 20));
        // By glibc's default, freeing this raises the mapping threshold to
        // 4 MiB, and the 1 MiB buffer below would come from an arena.
        let start_up_peak = vec![1_u8; 4 << 20];
        drop(std::hint::black_box(start_up_peak));
        let before = mapped_bytes();
        let buffer = std::hint::black_box(vec![1_u8; 1 << 20]);
        let mapped = mapped_bytes() - before;
        assert!(
            mapped >= 1 << 20,
            "the buffer is mapped on its own: {mapped} bytes"
        );
        drop(buffer);
        let small = std::hint::black_box(vec![1_u8; 256 << 10]);
        assert_eq!(
            mapped_bytes(),
            before,
            "unmapped when freed; 256 KiB is not mapped"
        );
        drop(small);
        assert_eq!(mapped_bytes(), before, "and unmapped when freed");
    }
}
