//! `ambit-waypoint`: the per-namespace L7 proxy.

use std::{process::ExitCode, sync::Arc, time::Duration};

use clap::Parser as _;
use mesh_core::{
    identity::SpiffeId,
    logging::{self, LogControl, LoggingError},
    published::Published,
    route::RouteTable,
};
use mesh_kube::{
    controller_client::{ControllerClient, TRUST_BUNDLE_POLL},
    snapshot::{KubeSettings, NoPodNetns},
    source::Source,
};
use tokio_util::sync::CancellationToken;
use waypoint::{
    Waypoint, admin,
    config::{Config, LogFormat},
    identity::{self, WaypointIdentity, WaypointIdentityError},
    metrics,
    readiness::Readiness,
    runtime, state, upstream, worker_stats, workers,
};

fn main() -> ExitCode {
    let config = Config::parse();
    let _logging = match install_logging(config.log_format) {
        Ok(logging) => logging,
        Err(error) => {
            eprintln!("error: {error} (set {})", logging::LOG_ENV);
            return ExitCode::FAILURE;
        }
    };
    // The control plane (configuration, certificates, admin, signals) runs
    // on the main thread; the data path on the workers' threads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let name = state::WaypointName {
        namespace: config.namespace.clone(),
        name: config.name.clone(),
        trust_domain: config.trust_domain.clone(),
    };
    let id = SpiffeId::new(&config.trust_domain, &config.namespace, &config.name)?;
    let cancel = CancellationToken::new();
    // Metrics and readiness answer from the start: the kubelet sees 503,
    // and why, until the waypoint can serve.
    let metrics = Arc::new(metrics::Metrics::new());
    let readiness = Arc::new(Readiness::default());
    let metrics_listener = bind(
        config.metrics_addr,
        "metrics and readiness",
        "--metrics-addr",
    )
    .await?;
    tokio::spawn(admin::serve_telemetry(
        metrics.clone(),
        readiness.clone(),
        metrics_listener,
        cancel.clone(),
    ));
    tokio::spawn(metrics.clone().evict_idle_until_cancelled(
        Duration::from_secs(config.metrics_retain_idle_secs),
        cancel.clone(),
    ));
    let start = async {
        tokio::try_join!(identity(&config, id, &readiness), async {
            let state = configuration(&config, &name, &cancel).await?;
            readiness.configuration_applied();
            Ok(state)
        })
    };
    let (identity, state) = tokio::select! {
        started = start => started?,
        () = shutdown_signal() => {
            cancel.cancel();
            anyhow::bail!("interrupted before the waypoint could serve");
        }
    };
    let identity = Arc::new(identity);
    let hbone = bind(config.listen, "HBONE", "--listen").await?;
    let admin_listener = bind(config.admin_addr, "the admin views", "--admin-addr").await?;
    let runtime = Arc::new(runtime::Runtime::default());
    let worker_count = workers::count(config.workers);
    // The workers' copies carry the connections to backends; this one
    // serves the admin views.
    let waypoint = Arc::new(Waypoint {
        name: name.clone(),
        upstreams: upstream::Upstreams::new(
            identity.clone(),
            state.clone(),
            runtime.breakers(),
            metrics.backend_connections.clone(),
        ),
        identity: identity.clone(),
        state: state.clone(),
        runtime,
        metrics,
        config: Arc::new(config.clone()),
        worker: 0,
        workers: Arc::new(worker_stats::WorkerStats::new(worker_count)),
    });
    let workers = workers::Workers::start(&waypoint, worker_count, &cancel)?;
    tokio::spawn(renew(identity.clone(), readiness.clone(), cancel.clone()));
    tokio::spawn(admin::serve_admin(
        waypoint.clone(),
        admin_listener,
        cancel.clone(),
    ));
    readiness.listening();
    tracing::info!(
        identity = %identity.id,
        hbone = %config.listen,
        metrics = %config.metrics_addr,
        admin = %config.admin_addr,
        workers = worker_count,
        "waypoint ready"
    );
    tokio::select! {
        () = workers.serve(hbone, cancel.clone()) => {}
        () = shutdown_signal() => {}
    }
    tracing::info!("shutting down");
    cancel.cancel();
    workers.join();
    Ok(())
}

/// A listener on `addr` for `what`, or an error naming the flag.
async fn bind(
    addr: std::net::SocketAddr,
    what: &str,
    flag: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr} ({flag}): {e}"))
}

/// The configuration, from the file or the API server as the node agents
/// read it (in Kubernetes mode no pod is on the waypoint's "node": it
/// enrolls nothing and sees every pod as a destination); waits for the
/// first complete view, then follows every change.
async fn configuration(
    config: &Config,
    name: &state::WaypointName,
    cancel: &CancellationToken,
) -> anyhow::Result<state::SharedState> {
    // The waypoint's policies use the default root namespace (see
    // state.rs); so do the pods' mTLS modes, which it does not read.
    let root_namespace = mesh_core::policy::DEFAULT_ROOT_NAMESPACE.to_owned();
    let source = match &config.config {
        Some(path) => Source::File {
            path: path.clone(),
            poll: config.config_poll,
            root_namespace,
        },
        None => Source::Kubernetes(KubeSettings {
            node: String::new(),
            pod_netns: Arc::new(NoPodNetns),
            api_url: config.kube_api_url.clone(),
            root_namespace,
        }),
    };
    let hint = match source {
        Source::File { .. } => "the waypoint reads the same file as the node agents (--config)",
        Source::Kubernetes(_) => "check --kube-api-url, or the pod's service account",
    };
    let (publish, mut snapshots) = source
        .initial()
        .map_err(|error| anyhow::anyhow!("{error}\nhint: {hint}"))?;
    source
        .clone()
        .start(publish, cancel.clone())
        .await
        .map_err(|error| anyhow::anyhow!("{error}\nhint: {hint}"))?;
    source.wait_for_first(&snapshots, cancel).await;
    let first = snapshots.borrow_and_update().as_ref().clone();
    let state = Arc::new(Published::new(state::State::build(
        first,
        name,
        &RouteTable::default(),
    )));
    tokio::spawn(state::follow(
        snapshots,
        name.clone(),
        state.clone(),
        cancel.clone(),
    ));
    Ok(state)
}

/// The waypoint's first certificate: from the local CA files, or from the
/// controller; asked for until it is issued, each failure shown by
/// readiness.
async fn identity(
    config: &Config,
    id: SpiffeId,
    readiness: &Readiness,
) -> anyhow::Result<WaypointIdentity> {
    let failed = |error: &WaypointIdentityError| readiness.certificate_failed(error);
    let identity = match (&config.ca_cert, &config.ca_key, &config.ca_address) {
        (Some(cert), Some(key), _) => {
            let issue = || {
                std::future::ready(WaypointIdentity::new(
                    id.clone(),
                    cert,
                    key,
                    config.cert_lifetime,
                ))
            };
            identity::until_issued(issue, failed).await
        }
        (_, _, Some(address)) => {
            let client = ControllerClient::new(address, config.ca_token_file.clone())?;
            let pod = mesh_core::workload::PodKey {
                namespace: config.namespace.clone(),
                name: config.pod_name.clone().unwrap_or_default(),
            };
            let bundle = config.trust_bundle.clone().unwrap_or_default();
            let issue = || {
                WaypointIdentity::from_controller(id.clone(), client.clone(), pod.clone(), &bundle)
            };
            identity::until_issued(issue, failed).await
        }
        _ => anyhow::bail!("give --ca-cert and --ca-key, or --ca-address"),
    };
    readiness.certificate_issued(identity.expires_at());
    Ok(identity)
}

/// Renews the certificate half-way from its issue to its end (checked
/// every tenth of its lifetime, at most every 30 s) and
/// follows the trust bundle file (checked every 5 s, as the node agents
/// do). Readiness follows the certificate: ready while one is valid.
async fn renew(
    identity: Arc<WaypointIdentity>,
    readiness: Arc<Readiness>,
    cancel: CancellationToken,
) {
    // Often enough that the certificate never lives past its renewal time
    // by more than a tenth of its lifetime (a 60 s one would otherwise
    // wait for a check that comes as it expires).
    let lifetime = identity
        .expires_at()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    let period = (lifetime / 10).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut renewals = tokio::time::interval(period);
    let mut bundle_checks = tokio::time::interval(TRUST_BUNDLE_POLL);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = renewals.tick() => match identity.renew_if_due(std::time::SystemTime::now()).await {
                Ok(true) => {
                    readiness.certificate_issued(identity.expires_at());
                    tracing::info!(identity = %identity.id, "certificate renewed");
                }
                Ok(false) => {}
                Err(error) => {
                    readiness.certificate_failed(&error);
                    tracing::error!(%error, retry_in = ?period, "certificate renewal failed; retrying");
                }
            },
            _ = bundle_checks.tick() => match identity.follow_trust_bundle() {
                Ok(Some(roots)) => {
                    tracing::info!(roots, "trust bundle changed; new connections trust its roots");
                }
                Ok(None) => {}
                // Reported once per change of the file.
                Err(error) => {
                    tracing::warn!(%error, "the trust bundle changed but cannot be used; keeping the roots in use");
                }
            },
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Logging as every ambit binary sets it up (`AMBIT_LOG`, one JSON shape);
/// an invalid filter stops the start.
fn install_logging(format: LogFormat) -> Result<LogControl, LoggingError> {
    let format = match format {
        LogFormat::Text => logging::LogFormat::Text,
        LogFormat::Json => logging::LogFormat::Json,
    };
    LogControl::install_from_env("ambit-waypoint", format)
}
