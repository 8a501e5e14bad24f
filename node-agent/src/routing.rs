//! The in-pod return path for transparent inbound connections.
//!
//! The inbound proxy connects to the application from the client's own
//! address (`IP_TRANSPARENT`), so the application sees who really called. The
//! application's replies are addressed to that client, which is not local;
//! without help they would leave through the pod's interface. Inside each
//! enrolled pod the agent therefore:
//!
//! - sets `net.ipv4.tcp_fwmark_accept=1`, so a connection accepted from a
//!   marked SYN (the agent's) carries the return mark on every reply;
//! - sets `net.ipv4.fwmark_reflect=1` (and `net.ipv6.fwmark_reflect=1`), so
//!   what the kernel answers for no socket, such as the reset for a SYN to
//!   a closed port, carries the mark too: the agent's connect is refused at
//!   once instead of timing out while the reset leaves the pod;
//! - adds `ip rule fwmark 0x53a lookup 133` and `local default dev lo table 133`
//!   (and the IPv6 twins), so marked packets are delivered locally, to the
//!   agent's transparent socket.
//!
//! Nothing changes in the node's own network namespace. Every function here
//! must run on a thread that has entered the pod's namespace.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::OnceLock,
};

use mesh_ebpf_common::{LOOPBACK_IFINDEX, MESH_RETURN_MARK};
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        route::{RouteMessage, RouteScope, RouteType},
        rule::RuleAction,
    },
};

/// Routing table holding the local-delivery route for marked packets.
pub const MESH_ROUTE_TABLE: u32 = 133;
/// Priority of the fwmark rule: ahead of the `main` table (32766).
pub const MESH_RULE_PRIORITY: u32 = 32_000;
/// Where the network sysctls are written when nothing else is set.
pub const DEFAULT_PROC_SYS_NET: &str = "/proc/sys/net";
const FWMARK_ACCEPT: &str = "ipv4/tcp_fwmark_accept";
const FWMARK_REFLECT_V4: &str = "ipv4/fwmark_reflect";
const FWMARK_REFLECT_V6: &str = "ipv6/fwmark_reflect";

/// The `/proc/sys/net` the agent writes through, set once at start.
static PROC_SYS_NET: OnceLock<PathBuf> = OnceLock::new();

/// Writes the pods' network sysctls through `dir` instead of
/// `/proc/sys/net`: in a container that is not privileged `/proc/sys` is
/// read-only, so the `DaemonSet` mounts the host's `/proc/sys/net` elsewhere.
/// What a write there changes is decided by the writing thread's network
/// namespace (the pod's), not by the mount. Only the first call counts.
pub fn set_proc_sys_net(dir: &Path) {
    let _ = PROC_SYS_NET.set(dir.to_owned());
}

fn sysctl_path(name: &str) -> PathBuf {
    PROC_SYS_NET
        .get()
        .map_or_else(|| Path::new(DEFAULT_PROC_SYS_NET), PathBuf::as_path)
        .join(name)
}

/// Errors setting up or removing the return path.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// No runtime for the netlink conversation.
    #[error("cannot start the netlink runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket in the pod: {0}")]
    Netlink(#[source] std::io::Error),
    /// The kernel refused a rule or route.
    #[error("cannot {action} the mesh {what} in the pod: {source}")]
    Request {
        /// add or delete
        action: &'static str,
        /// which rule or route
        what: &'static str,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// The sysctl could not be written.
    #[error("cannot write {} in the pod: {source} (in a container: is --proc-sys-net a writable mount of the host's /proc/sys/net?)", .path.display())]
    Sysctl {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Which families the pod uses.
#[derive(Clone, Copy, Debug)]
pub struct Families {
    /// The pod has an IPv4 address.
    pub v4: bool,
    /// The pod has an IPv6 address.
    pub v6: bool,
}

/// Installs the return path. Idempotent: what already exists is kept.
pub fn install(families: Families) -> Result<(), RoutingError> {
    write_sysctls(families, "1")?;
    with_netlink(|handle| async move {
        if families.v4 {
            let rule = handle
                .rule()
                .add()
                .v4()
                .fw_mark(MESH_RETURN_MARK)
                .table_id(MESH_ROUTE_TABLE);
            let rule = rule
                .priority(MESH_RULE_PRIORITY)
                .action(RuleAction::ToTable);
            allow_existing(rule.execute().await, "add", "IPv4 fwmark rule")?;
            allow_existing(
                handle.route().add(local_route_v4()).execute().await,
                "add",
                "IPv4 local route",
            )?;
        }
        if families.v6 {
            let rule = handle
                .rule()
                .add()
                .v6()
                .fw_mark(MESH_RETURN_MARK)
                .table_id(MESH_ROUTE_TABLE);
            let rule = rule
                .priority(MESH_RULE_PRIORITY)
                .action(RuleAction::ToTable);
            allow_existing(rule.execute().await, "add", "IPv6 fwmark rule")?;
            allow_existing(
                handle.route().add(local_route_v6()).execute().await,
                "add",
                "IPv6 local route",
            )?;
        }
        Ok(())
    })
}

/// Removes the return path. What is already gone is not an error.
pub fn remove(families: Families) -> Result<(), RoutingError> {
    with_netlink(|handle| async move {
        if families.v4 {
            allow_missing(
                handle.route().del(local_route_v4()).execute().await,
                "local IPv4 route",
            )?;
            let mut rule = handle
                .rule()
                .add()
                .v4()
                .fw_mark(MESH_RETURN_MARK)
                .table_id(MESH_ROUTE_TABLE);
            let message = rule.message_mut().clone();
            allow_missing(
                handle.rule().del(message).execute().await,
                "IPv4 fwmark rule",
            )?;
        }
        if families.v6 {
            allow_missing(
                handle.route().del(local_route_v6()).execute().await,
                "local IPv6 route",
            )?;
            let mut rule = handle
                .rule()
                .add()
                .v6()
                .fw_mark(MESH_RETURN_MARK)
                .table_id(MESH_ROUTE_TABLE);
            let message = rule.message_mut().clone();
            allow_missing(
                handle.rule().del(message).execute().await,
                "IPv6 fwmark rule",
            )?;
        }
        Ok(())
    })?;
    write_sysctls(families, "0")
}

/// Sets the mark-carrying sysctls of the families in use to `value`.
fn write_sysctls(families: Families, value: &str) -> Result<(), RoutingError> {
    let mut names = vec![FWMARK_ACCEPT];
    if families.v4 {
        names.push(FWMARK_REFLECT_V4);
    }
    if families.v6 {
        names.push(FWMARK_REFLECT_V6);
    }
    for name in names {
        let path = sysctl_path(name);
        std::fs::write(&path, value).map_err(|source| RoutingError::Sysctl { path, source })?;
    }
    Ok(())
}

fn local_route_v4() -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .table_id(MESH_ROUTE_TABLE)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .output_interface(LOOPBACK_IFINDEX)
        .build()
}

fn local_route_v6() -> RouteMessage {
    RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
        .table_id(MESH_ROUTE_TABLE)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .output_interface(LOOPBACK_IFINDEX)
        .build()
}

fn with_netlink<F, Fut>(work: F) -> Result<(), RoutingError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<(), RoutingError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(RoutingError::Runtime)?;
    runtime.block_on(async {
        // The socket is opened here, on the calling thread, so it talks to
        // the pod's namespace.
        let (connection, handle, _) = rtnetlink::new_connection().map_err(RoutingError::Netlink)?;
        tokio::spawn(connection);
        work(handle).await
    })
}

fn allow_existing(
    result: Result<(), rtnetlink::Error>,
    action: &'static str,
    what: &'static str,
) -> Result<(), RoutingError> {
    match result {
        Err(rtnetlink::Error::NetlinkError(ref message)) if message.raw_code() == -libc::EEXIST => {
            Ok(())
        }
        other => other.map_err(|source| RoutingError::Request {
            action,
            what,
            source,
        }),
    }
}

fn allow_missing(
    result: Result<(), rtnetlink::Error>,
    what: &'static str,
) -> Result<(), RoutingError> {
    match result {
        Err(rtnetlink::Error::NetlinkError(ref message))
            if message.raw_code() == -libc::ENOENT || message.raw_code() == -libc::ESRCH =>
        {
            Ok(())
        }
        other => other.map_err(|source| RoutingError::Request {
            action: "delete",
            what,
            source,
        }),
    }
}
