//! ambit's control plane in Kubernetes (one Deployment):
//!
//! - **The CA** ([`signing`], [`ca_store`]). Node agents ask it for their
//!   pods' workload certificates over HTTPS (TLS 1.3; the serving
//!   certificate is issued at start by the CA itself for
//!   `<--service-name>.<--namespace>.svc`, the same with `.cluster.local`,
//!   and every `--serving-ip`, so agents verify it with the mesh's trust
//!   bundle):
//!
//!   ```text
//!   POST /v1/certificates
//!   Authorization: Bearer <projected service-account token, audience ambit-ca>
//!   {"pod": {"namespace": "shop", "name": "web-1"},
//!    "csr": "-----BEGIN CERTIFICATE REQUEST-----..."}
//!
//!   200 {"certificateChain": "<PEM leaf + CA>", "trustBundle": "<PEM roots>"}
//!   400 bad JSON, unknown field, a CSR that is not PEM, not signed by its
//!       key, not P-256, or not for exactly one SPIFFE id
//!   401 no token, or the TokenReview does not authenticate it for ambit-ca
//!   403 not the agents' service account (--agent-service-account) nor a
//!       waypoint's, no node in the token, pod on another node, SPIFFE id
//!       not the pod's
//!   404 no such pod · 500 the CA could not sign a request in order
//!   503 the API server could not be asked
//!   every error: {"error": "<why, with what to check>"}
//!   ```
//!
//!   The token is checked with a `TokenReview` (audience `ambit-ca`); it
//!   must belong to the agents' service account and, being bound to the
//!   agent's pod, name that pod's node
//!   (`authentication.kubernetes.io/node-name`). The pod asked about must be
//!   scheduled on that node (`spec.nodeName`), and the CSR's one URI SAN
//!   must be `spiffe://<trust-domain>/ns/<pod namespace>/sa/<service
//!   account, or default>`. An optional `"identity"` field, when sent, must
//!   repeat the CSR's. Every decision is logged with the pod and node.
//!
//!   A waypoint asks for its own certificate with its own token: any other
//!   service account's token must be bound to a pod
//!   (`authentication.kubernetes.io/pod-name`), the request must name that
//!   pod, the pod must run as that account and carry
//!   `ambit.dev/waypoint=<account>`; the identity granted is the account's.
//!   Workloads' own tokens are refused: their agents ask for them.
//! - **The CA key** comes from a Secret (`ca.crt`, `ca.key`, optional
//!   `trust-bundle.pem`), watched: a new CA signs from the moment the Secret
//!   changes, and the trust bundle (the CA plus the extra roots,
//!   deduplicated) is published in the `ConfigMap` `ambit-trust-bundle`
//!   (`ca.crt`), which the agents mount; it is checked every few seconds and
//!   rewritten if it differs. Rotation: add the new root to
//!   `trust-bundle.pem`, wait for the agents to trust it, then switch
//!   `ca.crt`/`ca.key`. A Secret that does not load is logged and the last
//!   good CA stays.
//! - **Policy status** ([`policy_status`]): every `AuthorizationPolicy`
//!   gets an `Accepted` condition, `True`, or `False` (reason `Invalid`)
//!   with the reason the policy is rejected; written only when it changes.
//! - **Peer authentication status** ([`peer_authn_status`]): every
//!   `PeerAuthentication` gets an `Accepted` condition the same way, its
//!   port-level modes checked against the ports of the pods it selects;
//!   re-checked when Services or Pods change.
//! - **Route status** ([`route_status`]): every `HTTPRoute` gets, per
//!   parent, `Accepted` and `ResolvedRefs` conditions with Gateway API's
//!   reasons, re-checked when Services change; written only when it changes.
//! - `GET /healthz` on the same port answers 200. The port opens only once
//!   the CA is loaded, so it is also the readiness probe.
//!
//! Modules import only downward (`cargo xtask lint` checks it). Bottom
//! first, each line using only the lines above it:
//!
//! 1. [`config`], [`policy_status`], [`route_status`].
//! 2. [`ca_store`], [`peer_authn_status`] (writes conditions the way
//!    `policy_status` does).
//! 3. [`signing`] (signs with the CA store's key).
//! 4. [`server`] (serves the signer), then this crate root, which starts
//!    them all.

pub mod ca_store;
pub mod config;
pub mod peer_authn_status;
pub mod policy_status;
pub mod route_status;
pub mod server;
pub mod signing;

use std::sync::Arc;

use mesh_core::logging::{LogControl, LogFormat, LoggingError};

use crate::config::Config;

/// Why the controller could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// No usable Kubernetes client.
    #[error(transparent)]
    KubeClient(#[from] mesh_kube::client::KubeClientError),
    /// The CA could not be loaded at start.
    #[error(transparent)]
    Ca(#[from] ca_store::CaStoreError),
    /// The HTTPS API could not start.
    #[error(transparent)]
    Server(#[from] server::ServerError),
}

/// Sets up logging as every ambit binary does (`AMBIT_LOG`, default
/// `info`; one JSON shape) in the chosen format. An invalid filter is an
/// error.
pub fn logging(config: &Config) -> Result<LogControl, LoggingError> {
    let format = if config.log_format == "json" {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    LogControl::install_from_env("ambit-controller", format)
}

/// Loads the CA, then serves the API and follows the Secret and the
/// policies until the process ends.
pub async fn run(config: Config) -> Result<(), ControllerError> {
    let client = mesh_kube::client::client(config.kube_api_url.as_deref()).await?;
    let store = Arc::new(ca_store::CaStore::load(client.clone(), &config).await?);
    tracing::info!(
        namespace = %config.namespace,
        secret = %config.ca_secret,
        listen = %config.listen,
        "CA loaded; serving"
    );
    tokio::spawn(ca_store::follow(
        store.clone(),
        client.clone(),
        config.clone(),
    ));
    tokio::spawn(policy_status::run(client.clone()));
    tokio::spawn(peer_authn_status::run(client.clone()));
    tokio::spawn(route_status::run(client.clone()));
    let signer = Arc::new(signing::Signer::new(client, store.clone(), &config));
    server::serve(&config, store, signer).await?;
    Ok(())
}
