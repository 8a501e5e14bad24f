//! Resetting a socket the agent does not own: `SOCK_DESTROY` over
//! `NETLINK_SOCK_DIAG` (what `ss -K` does), sent from inside the socket's
//! network namespace. The kernel aborts the connection: the owner's calls
//! fail with `ECONNABORTED` and the peer gets a reset.

use std::{
    io::{self, Read as _},
    net::SocketAddr,
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::NetnsSwitch;

/// `SOCK_DESTROY`, the `sock_diag` message that aborts a socket.
const SOCK_DESTROY: u16 = 21;
/// `NLMSG_ERROR`: the kernel's answer (an error code, 0 for success).
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// Every TCP state.
const ALL_STATES: u32 = u32::MAX;
/// `nlmsghdr` (16 bytes) + `inet_diag_req_v2` (56 bytes).
const REQUEST_LEN: usize = 72;
/// [`REQUEST_LEN`] as the header's length field.
const REQUEST_LEN_FIELD: u32 = 72;

/// Aborts the TCP socket with this `cookie`, bound to `local` and connected
/// to `remote`, in the namespace `netns`. The cookie matters: without it the
/// kernel's lookup falls back to a listening socket when the connection is
/// already gone (and `sk_lookup` would hand it the agent's own listener);
/// with it, any other socket is refused (`ESTALE`).
pub fn destroy(
    netns: &NetnsSwitch,
    local: SocketAddr,
    remote: SocketAddr,
    cookie: u64,
) -> io::Result<()> {
    netns
        .run(|| destroy_here(local, remote, cookie))
        .map_err(io::Error::other)?
}

fn destroy_here(local: SocketAddr, remote: SocketAddr, cookie: u64) -> io::Result<()> {
    let socket = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(libc::NETLINK_SOCK_DIAG)),
    )?;
    socket.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
    socket.send(&request(local, remote, cookie))?;
    let mut reply = [0u8; 512];
    let len = (&socket).read(&mut reply)?;
    match parse_ack(&reply[..len]) {
        Some(0) => Ok(()),
        Some(errno) => Err(io::Error::from_raw_os_error(-errno)),
        None => Err(io::Error::other("malformed sock_diag reply")),
    }
}

/// The `SOCK_DESTROY` request for the socket `local` → `remote` with this
/// cookie.
fn request(local: SocketAddr, remote: SocketAddr, cookie: u64) -> [u8; REQUEST_LEN] {
    let mut message = [0u8; REQUEST_LEN];
    let family: u8 = if local.ip().to_canonical().is_ipv4() {
        2
    } else {
        10
    };
    // nlmsghdr: length, type, flags, sequence, port id.
    message[0..4].copy_from_slice(&REQUEST_LEN_FIELD.to_ne_bytes());
    message[4..6].copy_from_slice(&SOCK_DESTROY.to_ne_bytes());
    message[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    message[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, extensions, pad, states.
    message[16] = family;
    message[17] = 6; // IPPROTO_TCP
    message[20..24].copy_from_slice(&ALL_STATES.to_ne_bytes());
    // inet_diag_sockid: ports (network order), addresses, interface, cookie.
    message[24..26].copy_from_slice(&local.port().to_be_bytes());
    message[26..28].copy_from_slice(&remote.port().to_be_bytes());
    message[28..44].copy_from_slice(&address_bytes(local));
    message[44..60].copy_from_slice(&address_bytes(remote));
    // The cookie as two u32 words, low word first.
    message[64..68].copy_from_slice(&((cookie & 0xffff_ffff) as u32).to_ne_bytes());
    message[68..72].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    message
}

fn address_bytes(addr: SocketAddr) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    match addr.ip().to_canonical() {
        std::net::IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => bytes.copy_from_slice(&v6.octets()),
    }
    bytes
}

/// The error code of an `NLMSG_ERROR` reply (0: success).
fn parse_ack(reply: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    Some(i32::from_ne_bytes(reply.get(16..20)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_the_socket_in_the_kernels_layout() {
        let message = request(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
            0x0000_0002_0000_0001,
        );
        assert_eq!(u32::from_ne_bytes(message[0..4].try_into().unwrap()), 72);
        assert_eq!(
            u16::from_ne_bytes(message[4..6].try_into().unwrap()),
            SOCK_DESTROY
        );
        assert_eq!((message[16], message[17]), (2, 6));
        assert_eq!(message[24..26], 40000u16.to_be_bytes());
        assert_eq!(message[26..28], 8080u16.to_be_bytes());
        assert_eq!(message[28..32], [10, 0, 0, 1]);
        assert_eq!(message[44..48], [10, 0, 0, 2]);
        assert_eq!(u32::from_ne_bytes(message[64..68].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(message[68..72].try_into().unwrap()), 2);
    }

    #[test]
    fn acks_are_read_and_anything_else_is_refused() {
        let mut ack = [0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_ack(&ack), Some(-libc::ENOENT));
        assert_eq!(parse_ack(&ack[..8]), None);
        ack[4..6].copy_from_slice(&3u16.to_ne_bytes());
        assert_eq!(parse_ack(&ack), None);
    }
}
