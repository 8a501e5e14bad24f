//! The listeners an enrolled pod's proxies serve (outbound, inbound
//! plaintext, HBONE), opened inside the pod's network namespace with the
//! mesh mark, or taken over from the previous agent; and copies of them to
//! hand to a successor.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::OwnedFd,
    sync::Arc,
};

use mesh_ebpf_common::{INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, MESH_MARK, OUTBOUND_PORT};
use socket2::{Domain, Protocol, Socket, Type};

use super::EnrollError;
use crate::{
    handoff::PodListeners,
    proxy::ConnectionProbe,
    routing::{self, Families},
};

/// The sockets opened inside a pod at enrollment.
pub(super) struct PodSockets {
    pub(super) netns_cookie: u64,
    pub(super) outbound: Vec<std::net::TcpListener>,
    pub(super) inbound: Vec<(Family, std::net::TcpListener)>,
    pub(super) hbone: Vec<std::net::TcpListener>,
    /// Handed over by the previous agent rather than opened here.
    pub(super) handed_over: bool,
    /// Looks up connections in the pod's namespace.
    pub(super) connection_probe: Arc<ConnectionProbe>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

/// Runs inside the pod's namespace: the pod's listeners (those the previous
/// agent handed over for this namespace, else new ones) and the return path.
pub(super) fn pod_sockets(
    families: Families,
    adopted: &mut HashMap<u64, PodListeners>,
) -> Result<PodSockets, EnrollError> {
    let probe = Socket::new(Domain::IPV4, Type::DGRAM, None).map_err(EnrollError::NetnsCookie)?;
    let netns_cookie = crate::sys::netns_cookie(std::os::fd::AsFd::as_fd(&probe))
        .map_err(EnrollError::NetnsCookie)?;
    let connection_probe = Arc::new(ConnectionProbe::open()?);
    let sockets = match adopted.remove(&netns_cookie) {
        Some(handed) => PodSockets::handed_over(handed, connection_probe),
        None => open_pod_sockets(netns_cookie, families, connection_probe)?,
    };
    if sockets.outbound.is_empty() {
        return Err(EnrollError::NetnsCookie(std::io::Error::other(
            "the pod has no addresses",
        )));
    }
    routing::install(families)?;
    Ok(sockets)
}

fn open_pod_sockets(
    netns_cookie: u64,
    families: Families,
    connection_probe: Arc<ConnectionProbe>,
) -> Result<PodSockets, EnrollError> {
    let mut outbound = Vec::new();
    let mut inbound = Vec::new();
    let mut hbone = Vec::new();
    for (wanted, any, localhost, family) in [
        (
            families.v4,
            IpAddr::from(Ipv4Addr::UNSPECIFIED),
            IpAddr::from(Ipv4Addr::LOCALHOST),
            Family::V4,
        ),
        (
            families.v6,
            IpAddr::from(Ipv6Addr::UNSPECIFIED),
            IpAddr::from(Ipv6Addr::LOCALHOST),
            Family::V6,
        ),
    ] {
        if !wanted {
            continue;
        }
        hbone.push(mesh_listener(SocketAddr::new(any, INBOUND_HBONE_PORT))?);
        outbound.push(mesh_listener(SocketAddr::new(localhost, OUTBOUND_PORT))?);
        inbound.push((
            family,
            mesh_listener(SocketAddr::new(any, INBOUND_PLAINTEXT_PORT))?,
        ));
    }
    Ok(PodSockets {
        netns_cookie,
        outbound,
        inbound,
        hbone,
        handed_over: false,
        connection_probe,
    })
}

// === impl PodSockets ===

impl PodSockets {
    /// The sockets a previous agent handed over.
    fn handed_over(handed: PodListeners, connection_probe: Arc<ConnectionProbe>) -> Self {
        let listener = std::net::TcpListener::from;
        let inbound = handed
            .inbound
            .into_iter()
            .map(|fd| {
                let listener = listener(fd);
                let family = match listener.local_addr() {
                    Ok(addr) if addr.is_ipv6() => Family::V6,
                    _ => Family::V4,
                };
                (family, listener)
            })
            .collect();
        Self {
            netns_cookie: handed.netns_cookie,
            outbound: handed.outbound.into_iter().map(listener).collect(),
            inbound,
            hbone: handed.hbone.into_iter().map(listener).collect(),
            handed_over: true,
            connection_probe,
        }
    }

    /// New descriptors of the same sockets, kept to hand to a successor.
    pub(super) fn copies(&self) -> Result<PodListeners, EnrollError> {
        let copy = |listener: &std::net::TcpListener| -> Result<OwnedFd, EnrollError> {
            listener
                .try_clone()
                .map(OwnedFd::from)
                .map_err(|source| EnrollError::Listen {
                    addr: listener
                        .local_addr()
                        .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
                    source,
                })
        };
        Ok(PodListeners {
            netns_cookie: self.netns_cookie,
            outbound: self.outbound.iter().map(copy).collect::<Result<_, _>>()?,
            inbound: self
                .inbound
                .iter()
                .map(|(_, l)| copy(l))
                .collect::<Result<_, _>>()?,
            hbone: self.hbone.iter().map(copy).collect::<Result<_, _>>()?,
        })
    }
}

fn mesh_listener(addr: SocketAddr) -> Result<std::net::TcpListener, EnrollError> {
    let open = || -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // The mark comes first: bind4/6 only lets marked sockets take mesh ports.
        socket.set_mark(MESH_MARK)?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    open().map_err(|source| EnrollError::Listen { addr, source })
}
