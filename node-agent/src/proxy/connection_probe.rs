//! Asking a pod's kernel whether a TCP connection with a given 4-tuple is
//! open there (`NETLINK_SOCK_DIAG`, the lookup `ss` makes for one socket).
//!
//! The inbound proxy needs it to pick the port of its connection to the
//! application. That connection starts from the client's address and a
//! port the agent picks (`bind_any_port` in `upstream`), inside the
//! pod's namespace. The client's own connection was accepted in the same
//! namespace, by this agent or by one draining before it, with the
//! application's address and port as its local end and the client's address
//! and port as its remote end. Had the agent picked the client's port, its
//! SYN (client address and port to the application) would match that open
//! connection in the kernel's lookup, ahead of every listener: the kernel
//! takes it for a stray segment of that connection, answers with an ACK the
//! agent's socket cannot use, and the connect times out. `connect` does not
//! catch the clash, since it only compares sockets with the same local end;
//! this probe does.

use std::{io, net::SocketAddr, sync::Mutex};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, TCP_LISTEN, TCP_TIME_WAIT},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use crate::sync::lock;

/// The loopback interface's index. The lookup names it as the ingress so
/// that the pod's `sk_lookup` program leaves the lookup alone, as it does
/// every connection from inside the pod, and counts nothing.
const LOOPBACK_IFINDEX: u32 = 1;
/// A cookie of all ones: look the socket up by its tuple alone.
const ANY_COOKIE: [u8; 8] = [0xff; 8];
/// Room for one reply: an `inet_diag_msg` and its header, no attributes.
const REPLY_BUFFER: usize = 512;

/// Why the kernel could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The netlink socket could not be opened.
    #[error("cannot open a sock_diag netlink socket (is CONFIG_INET_DIAG set?): {0}")]
    Open(#[source] io::Error),
    /// The request or its reply failed.
    #[error("sock_diag lookup of {local} <- {remote} failed: {source}")]
    Lookup {
        /// The connection's local end.
        local: SocketAddr,
        /// Its remote end.
        remote: SocketAddr,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The reply did not parse.
    #[error("sock_diag lookup of {local} <- {remote}: malformed reply: {detail}")]
    Reply {
        /// The connection's local end.
        local: SocketAddr,
        /// Its remote end.
        remote: SocketAddr,
        /// What was wrong with it.
        detail: String,
    },
}

impl From<ProbeError> for io::Error {
    fn from(error: ProbeError) -> Self {
        match error {
            ProbeError::Open(source) | ProbeError::Lookup { source, .. } => source,
            reply @ ProbeError::Reply { .. } => io::Error::other(reply),
        }
    }
}

/// Looks up TCP connections in the network namespace it was opened in.
pub struct ConnectionProbe {
    /// One request and its reply at a time: replies are matched to requests
    /// by order.
    socket: Mutex<Socket>,
}

impl std::fmt::Debug for ConnectionProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionProbe").finish_non_exhaustive()
    }
}

// === impl ConnectionProbe ===

impl ConnectionProbe {
    /// Opens a probe of the calling thread's network namespace; it keeps
    /// looking there whichever thread uses it later.
    pub fn open() -> Result<Self, ProbeError> {
        let socket = Socket::new(NETLINK_SOCK_DIAG).map_err(ProbeError::Open)?;
        socket
            .connect(&NetlinkAddr::new(0, 0))
            .map_err(ProbeError::Open)?;
        Ok(Self {
            socket: Mutex::new(socket),
        })
    }

    /// Whether a SYN from `remote` to `local` would land in an open
    /// connection: a socket whose own ends are `local` and `remote`, in any
    /// state but listening and `TIME_WAIT` (a SYN newer than a `TIME_WAIT`
    /// socket's connection opens a new connection).
    pub fn is_open(&self, local: SocketAddr, remote: SocketAddr) -> Result<bool, ProbeError> {
        let request = lookup_request(local, remote);
        let socket = lock(&self.socket);
        let failed = |source| ProbeError::Lookup {
            local,
            remote,
            source,
        };
        socket.send(&request, 0).map_err(failed)?;
        let mut reply = Vec::with_capacity(REPLY_BUFFER);
        socket.recv(&mut reply, 0).map_err(failed)?;
        drop(socket);
        let malformed = |detail: String| ProbeError::Reply {
            local,
            remote,
            detail,
        };
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&reply)
            .map_err(|error| malformed(error.to_string()))?;
        match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                Ok(!matches!(response.header.state, TCP_LISTEN | TCP_TIME_WAIT))
            }
            NetlinkPayload::Error(error) if error.to_io().raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            NetlinkPayload::Error(error) => Err(failed(error.to_io())),
            other => Err(malformed(format!("unexpected message {other:?}"))),
        }
    }
}

/// The bytes of a `SOCK_DIAG_BY_FAMILY` request for the one TCP socket with
/// ends `local` and `remote`.
fn lookup_request(local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let (local_ip, remote_ip) = (local.ip().to_canonical(), remote.ip().to_canonical());
    let family = if local_ip.is_ipv4() && remote_ip.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    };
    let as_family = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) if family == AF_INET6 => v4.to_ipv6_mapped().into(),
        ip => ip,
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: local.port(),
                destination_port: remote.port(),
                source_address: as_family(local_ip),
                destination_address: as_family(remote_ip),
                interface_id: LOOPBACK_IFINDEX,
                cookie: ANY_COOKIE,
            },
        })
        .into(),
    );
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{Ipv4Addr, TcpListener, TcpStream},
    };

    use super::*;

    #[test]
    fn an_open_connection_is_found_by_its_ends_and_nothing_else_is() {
        let probe = ConnectionProbe::open().expect("sock_diag");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let server = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(server).unwrap();
        let (mut accepted, peer) = listener.accept().unwrap();
        assert!(probe.is_open(server, peer).unwrap(), "the accepted end");
        assert!(
            probe.is_open(peer, server).unwrap(),
            "the client's end, seen from its side"
        );
        let unused = SocketAddr::from((Ipv4Addr::LOCALHOST, peer.port().wrapping_add(1).max(1)));
        assert!(
            !probe.is_open(server, unused).unwrap(),
            "another client port: only the listener answers"
        );
        assert!(
            !probe
                .is_open(SocketAddr::from((Ipv4Addr::LOCALHOST, 1)), peer)
                .unwrap(),
            "nothing at all"
        );
        // The accepted end closes first and waits out TIME_WAIT: a new SYN
        // on the tuple would open a new connection.
        accepted.write_all(b"x").unwrap();
        drop(accepted);
        let mut byte = [0; 1];
        client.read_exact(&mut byte).unwrap();
        assert_eq!(client.read(&mut byte).unwrap(), 0);
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!probe.is_open(server, peer).unwrap(), "TIME_WAIT");
    }

    #[test]
    fn ipv6_and_v4_mapped_ends_are_looked_up_too() {
        let probe = ConnectionProbe::open().expect("sock_diag");
        let Ok(listener) = TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)) else {
            eprintln!("SKIPPED: no IPv6 loopback on this machine");
            return;
        };
        let server = listener.local_addr().unwrap();
        let _client = TcpStream::connect(server).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        assert!(probe.is_open(server, peer).unwrap());
        assert!(
            !probe
                .is_open(server, SocketAddr::new(peer.ip(), peer.port() ^ 1))
                .unwrap()
        );
    }
}
