//! Address tests and constants in the kernel's layout (network byte order,
//! read as native-endian `u32` words).

use mesh_ebpf_common::{AF_INET, AF_INET6};

/// `struct sockaddr_in`.
#[repr(C)]
pub struct SockaddrIn {
    pub family: u16,
    pub port: u16,
    pub addr: u32,
    pub zero: [u8; 8],
}

/// `struct sockaddr_in6`.
#[repr(C)]
pub struct SockaddrIn6 {
    pub family: u16,
    pub port: u16,
    pub flowinfo: u32,
    pub addr: [u32; 4],
    pub scope_id: u32,
}

/// 127.0.0.1.
pub const LOCALHOST_V4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// ::1.
pub const LOCALHOST_V6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
/// The third word of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
pub const MAPPED_V4_PREFIX: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Whether an IPv4 address is in 127.0.0.0/8.
#[inline(always)]
pub fn is_loopback_v4(ip: u32) -> bool {
    ip.to_ne_bytes()[0] == 127
}

/// Whether a folded address (see [`fold`]) is loopback: 127.0.0.0/8, or
/// `::1`.
#[inline(always)]
pub fn is_loopback(family: u16, ip: [u32; 4]) -> bool {
    if family == AF_INET {
        is_loopback_v4(ip[0])
    } else {
        ip == LOCALHOST_V6
    }
}

/// Whether an IPv6 address is `::ffff:a.b.c.d`.
#[inline(always)]
pub fn is_mapped_v4(ip: [u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == MAPPED_V4_PREFIX
}

/// Folds an address to the family it really travels as: IPv4-mapped IPv6
/// becomes IPv4, so both ends of a connection build the same key.
#[inline(always)]
pub fn fold(family: u16, ip: [u32; 4]) -> (u16, [u32; 4]) {
    if family == AF_INET6 && is_mapped_v4(ip) {
        (AF_INET, [ip[3], 0, 0, 0])
    } else {
        (family, ip)
    }
}

/// `::ffff:` + an IPv4 address.
#[inline(always)]
pub fn mapped(ip4: u32) -> [u32; 4] {
    [0, 0, MAPPED_V4_PREFIX, ip4]
}

/// Host-order port from the network-order value the kernel keeps in the low
/// 16 bits of a `user_port` field.
#[inline(always)]
pub fn user_port_to_host(user_port: u32) -> u16 {
    // Truncation intended: the port lives in the low 16 bits.
    u16::from_be(user_port as u16)
}

/// The `user_port` value for a host-order port.
#[inline(always)]
pub fn host_to_user_port(port: u16) -> u32 {
    u32::from(port.to_be())
}

/// Reads a `[u32; 4]` address field of a context word by word. The verifier
/// only accepts context loads at a constant offset from the context pointer
/// itself, so each word gets its own volatile load and the compiler cannot
/// turn them into a load through a computed pointer.
///
/// Use inside an `unsafe` block: `$base` must point at a valid context.
macro_rules! read_words {
    ($base:expr, $($field:tt)+) => {
        [
            core::ptr::read_volatile(&raw const (*$base).$($field)+[0]),
            core::ptr::read_volatile(&raw const (*$base).$($field)+[1]),
            core::ptr::read_volatile(&raw const (*$base).$($field)+[2]),
            core::ptr::read_volatile(&raw const (*$base).$($field)+[3]),
        ]
    };
}
pub(crate) use read_words;
