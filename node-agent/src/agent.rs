//! The agent's life: start-up, the two runtimes, and an orderly shutdown.
//!
//! The control side (configuration, enrollment, admin API) runs on a small
//! single-threaded runtime on the main thread; the proxies run on a
//! multi-threaded data-path runtime. The control side publishes snapshots;
//! the data path only reads them.

use std::{path::Path, sync::Arc};

use mesh_core::logging::LogControl;
use mesh_kube::source::SourceError;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, AdminState},
    authz::Authorizer,
    config::Config,
    connections::ConnectionLog,
    ebpf::{EbpfError, KernelSplice, MeshEbpf},
    enrollment::{
        Enroller, MeshSettings,
        reconcile::{self, Ending, HandoffHooks, PodStatusBoard, Reconciler},
    },
    handoff::{self, Start},
    identity::{CaFiles, CertManager},
    metrics::Metrics,
    netns::{Netns, NetnsError},
    splice::{LocalPods, Splicer},
    telemetry,
    workloads::SharedWorkloads,
};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Neither `--ca-address` nor both `--ca-cert` and `--ca-key`.
    #[error("no CA: give --ca-cert and --ca-key (local mode) or --ca-address (the controller)")]
    NoCa,
    /// The configuration source (the local file or Kubernetes) could not start.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The eBPF programs could not be loaded or attached.
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    /// The CA or trust bundle could not be loaded.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The agent's own network namespace could not be opened.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The handoff socket or the active-agent lock could not be used, or
    /// the running agent refused to hand over.
    #[error(transparent)]
    Handoff(#[from] crate::handoff::HandoffError),
    /// A runtime could not be started.
    #[error("cannot start the {0} runtime: {1}")]
    Runtime(&'static str, #[source] std::io::Error),
    /// The metrics or readiness port could not listen.
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    /// The admin API could not listen.
    #[error(
        "cannot listen on the admin address {addr}: {source} (is another agent running? set AMBIT_ADMIN_ADDR)"
    )]
    Admin {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Runs the agent until SIGTERM or SIGINT; `logging` is the log filter the
/// admin API can change.
pub fn run(config: &Config, logging: LogControl) -> Result<(), AgentError> {
    crate::heap::tune_allocator();
    let effective = serde_json::to_string(&config).unwrap_or_default();
    tracing::info!(config = %effective, "ambit node agent starting");
    let source = config.source();
    let (publish, snapshots) = source.initial()?;
    let source_kind = source.clone();
    let home_netns = Arc::new(Netns::current()?);
    let (data_plane, control) = runtimes(config)?;

    // The CA comes first: a bad CA file must stop the agent before anything
    // is attached.
    let certs = cert_manager(config)?;
    crate::routing::set_proc_sys_net(&config.proc_sys_net);
    let (mut ebpf, start) = load_and_take_over(config)?;
    let log_forwarder = ebpf.take_log_forwarder();
    let splice_events = ebpf.take_splice_events();
    let maps = ebpf.maps().clone();
    let workloads = Arc::new(SharedWorkloads::default());
    let connections = Arc::new(ConnectionLog::new(&config.node_name, workloads.clone()));
    let metrics = Arc::new(Metrics::for_runtimes(data_plane.handle(), control.handle()));
    let authorizer = Arc::new(Authorizer::new(
        &config.node_name,
        &config.root_namespace,
        metrics.clone(),
    ));
    let admin_workloads = workloads.clone();
    let kernel_splice = ebpf.kernel_splice().to_string();
    let local_pods = Arc::new(LocalPods::default());
    let kernel_path = *ebpf.kernel_splice() == KernelSplice::On;
    let splicer = Arc::new(Splicer::new(
        kernel_path && config.same_node_fast_path,
        maps.clone(),
        authorizer.clone(),
        workloads.clone(),
        local_pods.clone(),
        connections.clone(),
        metrics.clone(),
    ));
    let mesh = MeshSettings {
        node_name: config.node_name.clone(),
        trust_domain: config.trust_domain.clone(),
        cluster_domain: config.cluster_domain.clone(),
        connect_timeout: config.connect_timeout(),
        same_node_fast_path: config.same_node_fast_path,
        certs: certs.clone(),
        workloads,
        connections: connections.clone(),
        authorizer: authorizer.clone(),
        local_pods,
        splicer: splicer.clone(),
        metrics: metrics.clone(),
        balancer: Arc::default(),
    };
    let connections_log = connections.clone();
    let mut enroller = Enroller::new(ebpf, home_netns, data_plane.handle().clone(), mesh);
    let start = adopt_handed_over(start, &mut enroller);
    let board = Arc::new(PodStatusBoard::default());
    let shutdown = CancellationToken::new();
    let uninstall = CancellationToken::new();

    let result: Result<(Enroller, Ending), AgentError> = control.block_on(async {
        let admin_listener = tokio::net::TcpListener::bind(config.admin_addr)
            .await
            .map_err(|source| AgentError::Admin { addr: config.admin_addr, source })?;
        let readiness =
            telemetry::start(config, &metrics, &maps, &certs, board.clone(), &shutdown).await?;
        let admin_state =
            Arc::new(AdminState {
                config: config.clone(),
                board: board.clone(),
                maps,
                certs: certs.clone(),
                connections,
                authorizer,
                metrics,
                workloads: admin_workloads,
                splicer: splicer.clone(),
                kernel_splice,
                logging,
                readiness,
                uninstall: uninstall.clone(),
            });
        tokio::spawn(crate::identity::rotate_until_cancelled(certs.clone(), shutdown.clone()));
        tokio::spawn(admin::serve(admin_listener, admin_state, shutdown.clone()));
        source.start(publish, shutdown.clone()).await?;
        tokio::spawn(stop_on_signal(shutdown.clone()));
        if let Some(forwarder) = log_forwarder {
            tokio::spawn(forwarder.run());
        }
        if let Some(ring) = splice_events {
            tokio::spawn(splicer.run_events(ring));
        }
        tracing::info!(admin = %config.admin_addr, metrics = %config.metrics_addr, readiness = %config.readiness_addr, node = %config.node_name, "ambit node agent ready");
        // Start-up's garbage (the kernel's BTF above all) is freed by now.
        tokio::spawn(crate::heap::release_until_cancelled(shutdown.clone()));
        source_kind.wait_for_first(&snapshots, &shutdown).await;
        let reconciler = Reconciler::new(enroller, board);
        let stop = Stop { shutdown, uninstall };
        Ok(serve_pods(config, start, reconciler, snapshots, &stop, &connections_log).await)
    });
    let (enroller, ending) = result?;
    shut_down(data_plane, enroller, ending == Ending::Uninstalled);
    Ok(())
}

/// Loads (or adopts) the eBPF state, then finds the running agent, if any,
/// which hands its pods' listeners over before anything is enrolled here.
fn load_and_take_over(config: &Config) -> Result<(MeshEbpf, Start), AgentError> {
    let ebpf = MeshEbpf::load(&config.bpffs_dir, &config.cgroup_root)?;
    let start = Start::begin(&config.handoff_socket, mesh_ebpf_common::PIN_LAYOUT_VERSION)?;
    Ok((ebpf, start))
}

/// What ends the agent's work: a signal, an uninstall, or a handoff (each
/// pod's proxies stopping then asks its HBONE peers to move on).
struct Stop {
    shutdown: CancellationToken,
    uninstall: CancellationToken,
}

/// Gives the enroller the listeners a previous agent handed over.
fn adopt_handed_over(start: Start, enroller: &mut Enroller) -> Start {
    match start {
        Start::Successor(mut successor) => {
            enroller.adopt_listeners(successor.take_pods());
            Start::Successor(successor)
        }
        active @ Start::Active(_) => active,
    }
}

/// Keeps the pods enrolled until the agent stops, is uninstalled or hands
/// its pods to a successor (then drains what it carries).
async fn serve_pods(
    config: &Config,
    start: Start,
    reconciler: Reconciler,
    mut snapshots: tokio::sync::watch::Receiver<Arc<mesh_core::local_config::LocalSnapshot>>,
    stop: &Stop,
    connections: &ConnectionLog,
) -> (Enroller, Ending) {
    let (requests, handoff_requests) = tokio::sync::mpsc::channel(1);
    let (first_reconcile, first_reconciled) = tokio::sync::oneshot::channel();
    tokio::spawn(become_active(start, first_reconciled, requests));
    let hooks = HandoffHooks {
        requests: handoff_requests,
        first_reconcile: Some(first_reconcile),
    };
    let (enroller, ending) = reconciler
        .run(
            &mut snapshots,
            stop.shutdown.clone(),
            stop.uninstall.clone(),
            hooks,
        )
        .await;
    if ending == Ending::HandedOff {
        tokio::select! {
            () = drain_connections(connections, config.drain_timeout()) => {}
            () = reconcile::follow_policies(enroller.mesh(), &mut snapshots) => {}
        }
        if !config.exit_after_handoff {
            tracing::info!("drained; waiting for SIGTERM (--exit-after-handoff=false)");
            stop.shutdown.cancelled().await;
        }
    }
    (enroller, ending)
}

/// Makes this agent the one successors hand over from: at once when no
/// agent ran, else once its first reconcile has enrolled the pods with the
/// handed-over listeners (it tells the previous agent, which lets go).
async fn become_active(
    start: Start,
    first_reconciled: tokio::sync::oneshot::Receiver<()>,
    requests: tokio::sync::mpsc::Sender<handoff::Request>,
) {
    let active = match start {
        Start::Active(active) => active,
        Start::Successor(successor) => {
            if first_reconciled.await.is_err() {
                return;
            }
            match tokio::task::spawn_blocking(move || successor.complete()).await {
                Ok(Ok(active)) => {
                    tracing::info!("took the pods over from the previous agent, which now drains");
                    active
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "the handoff did not complete; this agent serves its pods but no successor can take over from it without a gap");
                    return;
                }
                Err(_) => return,
            }
        }
    };
    if let Err(error) = active.serve(mesh_ebpf_common::PIN_LAYOUT_VERSION, requests) {
        tracing::error!(%error, "cannot start the handoff thread; no successor can take over without a gap");
    }
}

/// Waits until every connection this agent carries has ended, or
/// `deadline` has passed (the rest are cut when the data path stops).
async fn drain_connections(connections: &ConnectionLog, deadline: std::time::Duration) {
    let started = tokio::time::Instant::now();
    let mut report = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        let open = connections.open_count();
        if open == 0 {
            tracing::info!(
                took_ms = started.elapsed().as_millis(),
                "drained: every connection this agent carried has ended"
            );
            return;
        }
        if started.elapsed() >= deadline {
            tracing::warn!(
                open,
                "drain deadline reached; the remaining connections are cut"
            );
            return;
        }
        tokio::select! {
            _ = report.tick() => tracing::info!(open, "draining after the handoff"),
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
    }
}

/// Stops the data path, then leaves the eBPF state to the next agent, so
/// enrolled pods stay captured and fail closed until it takes over; with
/// `uninstall` (`ambit uninstall`), removes it.
fn shut_down(data_plane: tokio::runtime::Runtime, enroller: Enroller, uninstall: bool) {
    data_plane.shutdown_timeout(std::time::Duration::from_secs(5));
    let ebpf = enroller.into_ebpf();
    if uninstall {
        ebpf.detach_and_unpin();
    } else {
        ebpf.keep_for_next_agent();
    }
    tracing::info!("ambit node agent stopped");
}

/// The data path's multi-threaded runtime and the control side's
/// single-threaded one.
fn runtimes(
    config: &Config,
) -> Result<(tokio::runtime::Runtime, tokio::runtime::Runtime), AgentError> {
    let data_plane = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(config.worker_threads))
        .thread_name("ambit-data")
        .enable_all()
        .build()
        .map_err(|e| AgentError::Runtime("data-path", e))?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AgentError::Runtime("control", e))?;
    Ok((data_plane, control))
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}

/// The certificate manager: the controller's CA with `--ca-address`, else
/// the local CA files.
fn cert_manager(config: &Config) -> Result<Arc<CertManager>, AgentError> {
    Ok(
        match (&config.ca_address, &config.ca_cert, &config.ca_key) {
            (Some(address), _, _) => CertManager::with_controller(
                address,
                config.trust_bundle.as_deref().unwrap_or(Path::new("")),
                config.ca_token_file.clone(),
                config.cert_lifetime(),
            )?,
            (None, Some(cert), Some(key)) => {
                let ca_files = CaFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    trust_bundle: config.trust_bundle.clone(),
                };
                CertManager::load(&ca_files, config.cert_lifetime())?
            }
            // clap requires both without --ca-address.
            _ => return Err(AgentError::NoCa),
        },
    )
}
