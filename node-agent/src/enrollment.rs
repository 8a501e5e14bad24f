//! Pod enrollment: turning a pod's network namespace into a meshed one, and
//! back.
//!
//! Enrolling a pod, in this order so capture never points at nothing:
//! 1. on a worker thread inside the pod's namespace: open the outbound
//!    (15001), inbound (15006) and HBONE (15008) listeners with the mesh mark, read the
//!    namespace cookie, install the return path (`crate::routing`);
//! 2. attach `sk_lookup` to the namespace and register the inbound listener
//!    under each pod address;
//! 3. start the pod's proxies on the data-path runtime;
//! 4. add the namespace cookie to the enrolled map: `connect4/6` start
//!    capturing.
//!
//! Un-enrolling undoes it in reverse. Connections already proxied finish.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use mesh_core::identity::SpiffeId;
use mesh_core::workload::{KernelPath, MtlsMode, Pod, PodMtls};
use tokio_util::sync::CancellationToken;

use crate::{
    authz::Authorizer,
    connections::ConnectionLog,
    ebpf::{EbpfError, KernelSplice, MeshEbpf, SkLookupAttachment, maps::MapOpError},
    flow::Direction,
    handoff::PodListeners,
    identity::CertManager,
    netns::{Netns, NetnsError, NetnsSwitch},
    proxy::hbone,
    proxy::{PodContext, PodProxy},
    published::Published,
    routing::{self, Families, RoutingError},
    splice::{LocalPods, Splicer},
    stats::PodStats,
    workloads::SharedWorkloads,
};

pub mod reconcile;
mod sockets;

use self::sockets::{Family, PodSockets, pod_sockets};

/// Why a pod could not be enrolled or un-enrolled.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The pod's network namespace could not be opened or entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A listener could not be opened inside the pod.
    #[error(
        "cannot listen on {addr} inside the pod: {source} (is another process using the port?)"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The namespace cookie could not be read.
    #[error("cannot read the pod's network namespace cookie (needs Linux 5.14+): {0}")]
    NetnsCookie(#[source] std::io::Error),
    /// The return path could not be installed or removed.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// An eBPF attachment failed.
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    /// The pod is on this node but has no netns path.
    #[error("pod {0} is on this node but its config entry has no netns path")]
    NoNetns(mesh_core::workload::PodKey),
    /// The pod's namespace or service account do not make a SPIFFE id.
    #[error("pod {pod} has no valid identity: {source}")]
    Identity {
        /// The pod.
        pod: mesh_core::workload::PodKey,
        /// Why.
        source: mesh_core::identity::IdentityError,
    },
    /// Its certificate could not be issued.
    #[error(transparent)]
    Certificate(#[from] crate::identity::IdentityError),
    /// An eBPF map refused an update.
    #[error(transparent)]
    Map(#[from] MapOpError),
    /// The pod's connections cannot be looked up (the inbound proxy needs
    /// that to pick its ports).
    #[error(transparent)]
    ConnectionProbe(#[from] crate::proxy::ProbeError),
}

/// A pod that is enrolled: its attachments, its proxies and its counters.
pub struct PodEnrollment {
    /// The pod as configured.
    pub pod: Pod,
    /// The pod's workload identity (its certificate may still be on its
    /// way: see [`crate::identity::CertManager::has_certificate`]).
    pub identity: SpiffeId,
    /// The pod's network namespace cookie.
    pub netns_cookie: u64,
    /// The pod's traffic counters.
    pub stats: Arc<PodStats>,
    /// Whether the `sk_lookup` attachment was adopted from a previous agent.
    pub reused_attachment: bool,
    /// The pod's effective mTLS modes, as its inbound proxy reads them.
    mtls: Arc<Published<PodMtls>>,
    netns: Arc<Netns>,
    sk_lookup: SkLookupAttachment,
    /// Stops the pod's proxies: it left the mesh, or this agent handed it
    /// over (connections under way go on).
    cancel: CancellationToken,
    /// Cancelled only when the pod leaves the mesh (see
    /// [`PodContext::left_mesh`]).
    left_mesh: CancellationToken,
    families: Families,
    /// Copies of the pod's listener sockets, to hand to a successor.
    listeners: PodListeners,
}

/// Enrolls and un-enrolls pods.
pub struct Enroller {
    ebpf: MeshEbpf,
    home_netns: Arc<Netns>,
    data_plane: tokio::runtime::Handle,
    mesh: MeshSettings,
    /// Listener sockets the previous agent handed over, by netns cookie,
    /// until their pods are enrolled with them.
    adopted: HashMap<u64, PodListeners>,
}

/// What every enrolled pod's proxies share.
#[derive(Clone)]
pub struct MeshSettings {
    /// This node's name: pods of other nodes are destinations, not enrolled.
    pub node_name: String,
    /// The trust domain of workload identities.
    pub trust_domain: String,
    /// The cluster's DNS domain, which service host names end in.
    pub cluster_domain: String,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Skip TLS between pods of this node.
    pub same_node_fast_path: bool,
    /// Certificates.
    pub certs: Arc<CertManager>,
    /// Every meshed pod, by address.
    pub workloads: Arc<SharedWorkloads>,
    /// Recently closed connections.
    pub connections: Arc<ConnectionLog>,
    /// Authorization policies, and the connections they let in.
    pub authorizer: Arc<Authorizer>,
    /// The enrolled pods' proxy contexts, by address.
    pub local_pods: Arc<LocalPods>,
    /// The same-node kernel splice: direct-connection map and accounting.
    pub splicer: Arc<Splicer>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Picks the endpoint of each connection to a service's cluster IP.
    pub balancer: Arc<crate::balancer::Balancer>,
}

// === impl PodEnrollment ===

impl PodEnrollment {
    /// New descriptors of the pod's listener sockets, for a successor;
    /// `None` (logged) when they cannot be copied: the successor then
    /// opens its own.
    #[must_use]
    pub fn listeners_for_successor(&self) -> Option<PodListeners> {
        self.listeners
            .try_clone()
            .inspect_err(|error| {
                tracing::warn!(pod = %self.pod.key(), %error, "cannot copy the pod's listeners for the successor; it opens its own");
            })
            .ok()
    }
}

// === impl Enroller ===

impl Enroller {
    /// An enroller that starts proxies on `data_plane`.
    #[must_use]
    pub fn new(
        ebpf: MeshEbpf,
        home_netns: Arc<Netns>,
        data_plane: tokio::runtime::Handle,
        mesh: MeshSettings,
    ) -> Self {
        Self {
            ebpf,
            home_netns,
            data_plane,
            mesh,
            adopted: HashMap::new(),
        }
    }

    /// Listener sockets the previous agent handed over: each pod is
    /// enrolled with its own, which already receive its connections.
    pub fn adopt_listeners(&mut self, listeners: HashMap<u64, PodListeners>) {
        self.adopted = listeners;
    }

    /// Closes the handed-over listeners no pod claimed (pods the previous
    /// agent served that this one is not configured to enroll).
    pub fn drop_unclaimed_listeners(&mut self) {
        for cookie in self.adopted.keys() {
            tracing::info!(
                netns_cookie = cookie,
                "a handed-over pod is not configured here; its listeners close"
            );
        }
        self.adopted.clear();
    }

    /// The settings shared by every pod.
    #[must_use]
    pub fn mesh(&self) -> &MeshSettings {
        &self.mesh
    }

    /// The eBPF state, for inspection.
    #[must_use]
    pub fn ebpf(&self) -> &MeshEbpf {
        &self.ebpf
    }

    /// Enrolls a pod. On error nothing of the pod is left behind.
    pub fn enroll(&mut self, pod: &Pod) -> Result<PodEnrollment, EnrollError> {
        if pod.netns.as_os_str().is_empty() {
            return Err(EnrollError::NoNetns(pod.key()));
        }
        let identity = SpiffeId::new(
            &self.mesh.trust_domain,
            &pod.namespace,
            &pod.service_account,
        )
        .map_err(|source| EnrollError::Identity {
            pod: pod.key(),
            source,
        })?;
        // A certificate on its way does not hold capture back: the pod is
        // captured (fail closed) now, and its mesh connections wait for it.
        match self.mesh.certs.ensure(&identity, &pod.key()) {
            Ok(()) => {}
            Err(error) if error.is_pending() => {
                tracing::info!(pod = %pod.key(), %error, "pod captured before its certificate; its mesh connections wait for it");
            }
            Err(error) => return Err(error.into()),
        }
        let netns = Arc::new(Netns::open(&pod.netns)?);
        let families = Families {
            v4: pod.ips.iter().any(IpAddr::is_ipv4),
            v6: pod.ips.iter().any(IpAddr::is_ipv6),
        };
        let adopted = &mut self.adopted;
        let sockets = netns.run_on_worker(|| pod_sockets(families, adopted))??;
        let netns_cookie = sockets.netns_cookie;
        let handed_over = sockets.handed_over;
        let sk_lookup = match self.ebpf.attach_sk_lookup(netns.file(), netns_cookie) {
            Ok(attachment) => attachment,
            Err(error) => {
                remove_return_path(&netns, families);
                return Err(error.into());
            }
        };
        let reused_attachment = sk_lookup.reused();
        let mut enrollment = PodEnrollment {
            pod: pod.clone(),
            identity: identity.clone(),
            netns_cookie,
            stats: Arc::new(PodStats::default()),
            reused_attachment,
            mtls: Arc::new(Published::new(pod.mtls_modes())),
            netns: netns.clone(),
            sk_lookup,
            cancel: CancellationToken::new(),
            left_mesh: CancellationToken::new(),
            families,
            listeners: PodListeners::default(),
        };
        if let Err(error) = self.start(&mut enrollment, sockets, identity) {
            self.teardown(enrollment);
            return Err(error);
        }
        tracing::info!(pod = %pod.key(), netns = %pod.netns.display(), netns_cookie, reused_attachment, handed_over, "pod enrolled");
        Ok(enrollment)
    }

    fn start(
        &self,
        enrollment: &mut PodEnrollment,
        sockets: PodSockets,
        identity: SpiffeId,
    ) -> Result<(), EnrollError> {
        let maps = self.ebpf.maps();
        for ip in &enrollment.pod.ips {
            let family = if ip.is_ipv4() { Family::V4 } else { Family::V6 };
            if let Some((_, listener)) = sockets.inbound.iter().find(|(f, _)| *f == family) {
                maps.register_inbound_listener(*ip, listener)?;
            }
        }
        let context = Arc::new(PodContext {
            pod: enrollment.pod.key(),
            identity,
            pod_ips: enrollment
                .pod
                .ips
                .iter()
                .map(std::net::IpAddr::to_canonical)
                .collect(),
            mtls: enrollment.mtls.clone(),
            labels: enrollment.pod.labels.clone(),
            authorizer: self.mesh.authorizer.clone(),
            netns_cookie: enrollment.netns_cookie,
            sockets: NetnsSwitch::new(enrollment.netns.clone(), self.home_netns.clone()),
            connection_probe: sockets.connection_probe.clone(),
            maps: maps.clone(),
            stats: enrollment.stats.clone(),
            connect_timeout: self.mesh.connect_timeout,
            left_mesh: enrollment.left_mesh.clone(),
            certs: self.mesh.certs.clone(),
            workloads: self.mesh.workloads.clone(),
            same_node_fast_path: self.mesh.same_node_fast_path,
            kernel_path: self.kernel_path(&enrollment.pod),
            hbone: mesh_proxy::client::HbonePool::default(),
            connections: self.mesh.connections.clone(),
            metrics: self.mesh.metrics.clone(),
            balancer: self.mesh.balancer.clone(),
        });
        self.mesh.local_pods.insert(&context);
        // Once the pod's proxies stop (it left the mesh, or this agent
        // handed it over), its pool opens no more streams: its idle HBONE
        // connections go at once rather than minutes later, and with them
        // their peers' ends.
        let retiring = context.clone();
        let stopped = enrollment.cancel.clone();
        self.data_plane.spawn(async move {
            stopped.cancelled().await;
            retiring.hbone.retire();
        });
        enrollment.listeners = sockets.copies()?;
        let _runtime = self.data_plane.enter();
        let to_tokio = |listener: std::net::TcpListener| {
            let addr = listener
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
            tokio::net::TcpListener::from_std(listener)
                .map_err(|source| EnrollError::Listen { addr, source })
        };
        let outbound = sockets
            .outbound
            .into_iter()
            .map(to_tokio)
            .collect::<Result<Vec<_>, _>>()?;
        let inbound = sockets
            .inbound
            .into_iter()
            .map(|(_, l)| to_tokio(l))
            .collect::<Result<Vec<_>, _>>()?;
        let hbone = sockets
            .hbone
            .into_iter()
            .map(to_tokio)
            .collect::<Result<Vec<_>, _>>()?;
        self.data_plane.spawn(hbone::server::serve(
            context.clone(),
            hbone,
            enrollment.cancel.clone(),
        ));
        self.data_plane.spawn(
            PodProxy::new(
                context.clone(),
                outbound,
                enrollment.cancel.clone(),
                Direction::Outbound,
            )
            .run(),
        );
        self.data_plane.spawn(
            PodProxy::new(
                context,
                inbound,
                enrollment.cancel.clone(),
                Direction::Inbound,
            )
            .run(),
        );
        maps.enroll_netns(
            enrollment.netns_cookie,
            &enrollment.pod.ips,
            enrollment.pod.mtls == MtlsMode::Strict,
            self.kernel_path(&enrollment.pod),
        )?;
        Ok(())
    }

    /// Whether `pod`'s legs take the kernel path: it asked for it and the
    /// kernel took `sk_msg`.
    #[must_use]
    pub fn kernel_path(&self, pod: &Pod) -> bool {
        pod.kernel_path == KernelPath::Requested && *self.ebpf.kernel_splice() == KernelSplice::On
    }

    /// Puts `pod`'s mTLS modes in force for the enrolled pod, which differs
    /// from `pod` in nothing else: its inbound proxy reads them from the
    /// next connection on, and the pinned entry records its mode. No
    /// re-enrollment, so capture never lapses.
    pub fn update_mtls(
        &self,
        enrollment: &mut PodEnrollment,
        pod: &Pod,
    ) -> Result<(), EnrollError> {
        enrollment.mtls.publish(pod.mtls_modes());
        enrollment.pod.clone_from(pod);
        self.ebpf.maps().enroll_netns(
            enrollment.netns_cookie,
            &pod.ips,
            pod.mtls == MtlsMode::Strict,
            self.kernel_path(pod),
        )?;
        tracing::info!(pod = %pod.key(), mtls = %pod.mtls, ports = ?pod.port_mtls, "pod's mTLS modes changed");
        Ok(())
    }

    /// Un-enrolls a pod: capture off, proxies stopped, attachments and the
    /// return path removed. Problems are logged; the pod is gone either way.
    pub fn unenroll(&mut self, enrollment: PodEnrollment) {
        let key = enrollment.pod.key();
        let pod = &enrollment.pod;
        if let Ok(identity) = SpiffeId::new(
            &self.mesh.trust_domain,
            &pod.namespace,
            &pod.service_account,
        ) {
            self.mesh.certs.release(&identity, &key);
        }
        self.teardown(enrollment);
        tracing::info!(pod = %key, "pod un-enrolled");
    }

    fn teardown(&mut self, enrollment: PodEnrollment) {
        let maps = self.ebpf.maps();
        let key = enrollment.pod.key();
        // Before the pod's context goes: its spliced sockets are reset from
        // inside its namespace, so that none stays in the sock hash.
        self.mesh.splicer.reset_pod(&enrollment.pod.ips);
        self.mesh.local_pods.remove(&enrollment.pod.ips);
        if let Err(error) = maps.unenroll_netns(enrollment.netns_cookie) {
            tracing::warn!(pod = %key, %error, "cannot turn capture off");
        }
        // sk_lookup goes before the listeners' entries: it refuses
        // connections to a pod without a registered listener, so the other
        // order would refuse them for a moment instead of letting the pod
        // leave the mesh.
        if let Err(error) = enrollment.sk_lookup.detach() {
            tracing::warn!(pod = %key, %error, "cannot detach sk_lookup");
        }
        // Unregister while the listeners are still open: closing a socket
        // drops its sock-hash entries, after which the delete would fail.
        for ip in &enrollment.pod.ips {
            if let Err(error) = maps.unregister_inbound_listener(*ip) {
                tracing::warn!(pod = %key, %error, "cannot unregister the inbound listener");
            }
        }
        enrollment.cancel.cancel();
        // Connects to the pod's application from a client's address need
        // the return path for their SYN-ACK: they fail now rather than
        // wait out their timeout once it is gone.
        enrollment.left_mesh.cancel();
        remove_return_path(&enrollment.netns, enrollment.families);
    }

    /// Stops the pod's proxies but leaves capture and attachments in place
    /// for the next agent: until it takes over, the pod's connections are
    /// refused (fail closed).
    pub fn stop_proxies(enrollment: &PodEnrollment) {
        enrollment.cancel.cancel();
    }

    /// Removes capture and `sk_lookup` attachments a previous agent left for
    /// namespaces that are not enrolled now.
    pub fn remove_stale(&self, enrolled: &[u64]) {
        let maps = self.ebpf.maps();
        for cookie in maps.enrolled_netns() {
            if !enrolled.contains(&cookie) {
                match maps.unenroll_netns(cookie) {
                    Ok(()) => tracing::info!(
                        netns_cookie = cookie,
                        "removed stale capture of a pod no longer configured"
                    ),
                    Err(error) => {
                        tracing::warn!(netns_cookie = cookie, %error, "cannot remove stale capture");
                    }
                }
            }
        }
        for cookie in self.ebpf.remove_stale_sk_lookups(enrolled) {
            tracing::info!(netns_cookie = cookie, "removed stale sk_lookup attachment");
        }
    }

    /// Gives the eBPF state back for shutdown.
    #[must_use]
    pub fn into_ebpf(self) -> MeshEbpf {
        self.ebpf
    }
}

fn remove_return_path(netns: &Netns, families: Families) {
    match netns.run_on_worker(|| routing::remove(families)) {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(netns = %netns.path().display(), %error, "cannot remove the return path");
        }
        Err(error) => tracing::warn!(%error, "cannot remove the return path"),
    }
}
