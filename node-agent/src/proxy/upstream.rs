//! The proxies' connections onwards from inside a pod: to a destination
//! from the pod's own address, or to the pod's application from the
//! client's address (transparent), with the source port picked so that no
//! two connections in the pod share a 4-tuple.

use std::{
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    sync::atomic::{AtomicU64, Ordering},
};

use mesh_ebpf_common::{MESH_MARK, MESH_RETURN_MARK};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use super::{ConnectionProbe, PodContext};
use crate::flow::ProxyError;

// === impl PodContext ===

impl PodContext {
    /// Connects to `dst` from inside the pod. Every mesh socket carries a
    /// mesh mark, so the connection is not captured again.
    pub async fn connect_upstream(
        &self,
        dst: SocketAddr,
        from: UpstreamSource,
    ) -> Result<TcpStream, ProxyError> {
        // A port this agent picked may still be in TIME_WAIT towards the
        // same destination (the pod's tcp_tw_reuse decides), or the kernel's
        // pick may be a port an open connection from the client uses: pick
        // again, and in the end let the kernel search for a port nothing
        // holds.
        for _ in 1..CONNECT_ATTEMPTS {
            match self
                .connect_upstream_once(dst, from, PortChoice::Random)
                .await
            {
                Err(ProxyError::Connect { source, .. } | ProxyError::Socket(source))
                    if source.kind() == std::io::ErrorKind::AddrNotAvailable => {}
                other => return other,
            }
        }
        self.connect_upstream_once(dst, from, PortChoice::Kernel)
            .await
    }

    async fn connect_upstream_once(
        &self,
        dst: SocketAddr,
        from: UpstreamSource,
        port: PortChoice,
    ) -> Result<TcpStream, ProxyError> {
        let socket = self
            .sockets
            .run(|| mesh_socket(dst, from, port, &self.connection_probe))?
            .map_err(ProxyError::Socket)?;
        // A connection that sk_lookup must not steer into the destination
        // pod's inbound listener is listed in the bypass map while its
        // handshake is in flight.
        let bypass = match from {
            UpstreamSource::Pod => None,
            UpstreamSource::Client(_) | UpstreamSource::PodBypassingInbound(_) => {
                let bound = socket.local_addr().map_err(ProxyError::Socket)?;
                self.maps.add_inbound_bypass(bound, dst)?;
                Some(bound)
            }
        };
        let needs_return_path = matches!(from, UpstreamSource::Client(_));
        let connect = tokio::select! {
            connect = tokio::time::timeout(self.connect_timeout, socket.connect(dst)) => Some(connect),
            () = self.left_mesh.cancelled(), if needs_return_path => None,
        };
        if let Some(bound) = bypass {
            self.maps.remove_inbound_bypass(bound, dst);
        }
        let stream = connect
            .ok_or_else(|| ProxyError::LeftMesh {
                pod: self.pod.clone(),
                dst,
            })?
            .map_err(|_| ProxyError::ConnectTimeout(dst))?
            .map_err(|source| ProxyError::Connect { dst, source })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Where an upstream connection starts from.
#[derive(Clone, Copy, Debug)]
pub enum UpstreamSource {
    /// The pod's own address, chosen by the kernel: outbound traffic.
    Pod,
    /// The client's address (`IP_TRANSPARENT`, return mark): the inbound
    /// proxy's connection to its application, which must see its real caller.
    Client(IpAddr),
    /// The pod's address, and the destination pod's inbound proxy is skipped:
    /// the same-node fast path, where this agent holds both identities.
    PodBypassingInbound(IpAddr),
}

/// A TCP socket of the family of `dst`, marked, non-blocking, bound as
/// `from` says. Runs inside the pod's namespace; `probe` looks there.
fn mesh_socket(
    dst: SocketAddr,
    from: UpstreamSource,
    port: PortChoice,
    probe: &ConnectionProbe,
) -> std::io::Result<TcpSocket> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    match from {
        UpstreamSource::Pod => socket.set_mark(MESH_MARK)?,
        UpstreamSource::Client(client) => {
            // Replies to this socket are routed back to it (crate::routing).
            socket.set_mark(MESH_RETURN_MARK)?;
            if client.is_ipv4() {
                socket.set_ip_transparent_v4(true)?;
            } else {
                crate::sys::set_ipv6_transparent(std::os::fd::AsFd::as_fd(&socket))?;
            }
            // The client's own connection to `dst` was accepted in this
            // namespace: a port it or any other open connection from the
            // client to `dst` uses is not ours to take (see ConnectionProbe).
            let taken = |port| Ok(probe.is_open(dst, SocketAddr::new(client, port))?);
            bind_any_port(&socket, client, ports(port, CLIENT_SIDE_PORTS), taken)?;
        }
        UpstreamSource::PodBypassingInbound(pod_ip) => {
            socket.set_mark(MESH_MARK)?;
            bind_any_port(&socket, pod_ip, ports(port, EPHEMERAL_PORTS), |_| Ok(false))?;
        }
    }
    socket.set_nonblocking(true)?;
    Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(
        socket,
    )))
}

/// The ports a bind tries, in order, before leaving the choice to the
/// kernel: a few random ones of `range`, or none.
fn ports(choice: PortChoice, range: RangeInclusive<u16>) -> impl Iterator<Item = u16> {
    let count = match choice {
        PortChoice::Random => BIND_ATTEMPTS,
        PortChoice::Kernel => 0,
    };
    std::iter::repeat_with(move || random_port(&range)).take(count)
}

/// Source ports of the inbound proxy's connections to its application,
/// bound to the client's address inside the pod: below the ephemeral ranges
/// clients take their own ports from (Linux's 32768-60999, IANA's
/// 49152-65535).
///
/// While such a connection is open, the application holds a socket whose
/// remote end is the client's address and this port. A new connection the
/// client opened from the same port to the same application would land in
/// that socket, its SYN taken for a stray segment, and time out; the client
/// cannot know the port is in use, since the agent's socket lives in the
/// pod. A client whose own range reaches below 32768 can still meet such a
/// clash, at a chance of (open connections from it to that port) / 31,744
/// per new connection.
const CLIENT_SIDE_PORTS: RangeInclusive<u16> = 1_024..=32_767;
/// Linux's default ephemeral range: ports for the pod's own address, which
/// the kernel of the same namespace keeps apart from the pod's own.
const EPHEMERAL_PORTS: RangeInclusive<u16> = 32_768..=60_999;

/// Binds `socket` to `ip` and the first of `candidates` that is free, else
/// to a port the kernel picks.
///
/// The bypass map needs the port before `connect`, so the port cannot be
/// left to `connect` (`IP_BIND_ADDRESS_NO_PORT`); and the kernel's own
/// `bind(ip, 0)` searches the range for a port no socket holds, `TIME_WAIT`
/// included, which slows to milliseconds once the agent's closed
/// connections hold half of it (thousands of connections a second), so the
/// agent picks at random first. With `SO_REUSEADDR`, a port held only by
/// `TIME_WAIT` sockets (which inherit the option) is free to bind; `connect`
/// then checks the 4-tuple as for any client.
///
/// What neither `bind` nor `connect` sees is a port that `taken` reports:
/// such a port is passed over, and when the kernel's own pick is one, the
/// bind fails with `AddrNotAvailable` (the caller picks again).
fn bind_any_port(
    socket: &Socket,
    ip: IpAddr,
    candidates: impl Iterator<Item = u16>,
    taken: impl Fn(u16) -> std::io::Result<bool>,
) -> std::io::Result<()> {
    let mut candidates = candidates.peekable();
    if candidates.peek().is_some() {
        socket.set_reuse_address(true)?;
    }
    for port in candidates {
        if taken(port)? {
            continue;
        }
        match socket.bind(&SocketAddr::new(ip, port).into()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            other => return other,
        }
    }
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    let port = socket
        .local_addr()?
        .as_socket()
        .map_or(0, |bound| bound.port());
    if taken(port)? {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("the kernel picked port {port}, which an open connection from {ip} uses"),
        ));
    }
    Ok(())
}

/// A port of `range`, spread by a counter through a multiplicative hash
/// (unpredictability is not needed).
fn random_port(range: &RangeInclusive<u16>) -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (first, last) = (u64::from(*range.start()), u64::from(*range.end()));
    let seed = NEXT.fetch_add(1, Ordering::Relaxed) ^ u64::from(std::process::id());
    let spread = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    u16::try_from(first + spread % (last - first + 1)).unwrap_or(*range.start())
}

/// How many random ports a bind tries before leaving it to the kernel.
const BIND_ATTEMPTS: usize = 8;
/// How many times a connect is tried when its 4-tuple is taken, the last
/// time with the kernel's choice of port.
const CONNECT_ATTEMPTS: usize = 16;

/// Who picks the local port of an upstream socket bound to an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortChoice {
    /// The agent, at random (see [`bind_any_port`]).
    Random,
    /// The kernel: slower with many `TIME_WAIT` sockets, but it finds a port
    /// nothing holds if there is one.
    Kernel,
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn loopback_socket() -> Socket {
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap()
    }

    fn bound_port(socket: &Socket) -> u16 {
        socket.local_addr().unwrap().as_socket().unwrap().port()
    }

    #[test]
    fn a_port_an_open_connection_uses_is_passed_over() {
        let ip = IpAddr::from(Ipv4Addr::LOCALHOST);
        // Two different ports, both free to bind once the listeners that
        // found them close: only `taken` tells them apart.
        let (first, second) = (
            std::net::TcpListener::bind((ip, 0)).unwrap(),
            std::net::TcpListener::bind((ip, 0)).unwrap(),
        );
        let taken_port = first.local_addr().unwrap().port();
        let free_port = second.local_addr().unwrap().port();
        drop((first, second));
        let socket = loopback_socket();
        let asked = std::cell::RefCell::new(Vec::new());
        bind_any_port(&socket, ip, [taken_port, free_port].into_iter(), |port| {
            asked.borrow_mut().push(port);
            Ok(port == taken_port)
        })
        .unwrap();
        assert_eq!(bound_port(&socket), free_port);
        assert_eq!(*asked.borrow(), [taken_port, free_port]);
    }

    #[test]
    fn the_kernels_pick_is_checked_too_and_refused_if_taken() {
        let ip = IpAddr::from(Ipv4Addr::LOCALHOST);
        let socket = loopback_socket();
        let error = bind_any_port(
            &socket,
            ip,
            ports(PortChoice::Kernel, EPHEMERAL_PORTS),
            |_| Ok(true),
        )
        .expect_err("every port is taken");
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::AddrNotAvailable,
            "{error}"
        );
        let socket = loopback_socket();
        bind_any_port(
            &socket,
            ip,
            ports(PortChoice::Random, CLIENT_SIDE_PORTS),
            |_| Ok(false),
        )
        .unwrap();
        assert!(CLIENT_SIDE_PORTS.contains(&bound_port(&socket)));
    }

    #[test]
    fn a_failed_lookup_fails_the_bind() {
        let ip = IpAddr::from(Ipv4Addr::LOCALHOST);
        let socket = loopback_socket();
        let error = bind_any_port(
            &socket,
            ip,
            ports(PortChoice::Random, EPHEMERAL_PORTS),
            |_| Err(std::io::Error::other("no sock_diag")),
        )
        .expect_err("the lookup failed");
        assert!(error.to_string().contains("no sock_diag"), "{error}");
    }
}
