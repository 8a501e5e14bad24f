//! The CA, loaded from its Secret and followed: a new `ca.crt`/`ca.key`
//! signs from the moment it arrives, and the trust bundle (the CA and the
//! extra roots of `trust-bundle.pem`) is published in the `ConfigMap` the
//! agents mount, in the controller's namespace and in every namespace that
//! holds a waypoint (a `ServiceAccount` labelled `ambit.dev/waypoint`), where
//! the waypoint mounts it. A bad Secret is logged and the last good CA stays.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    pin::pin,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::{
    Api, Client,
    api::{ListParams, PartialObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use mesh_core::ca::{CaError, CertificateAuthority, TrustBundle, sha256_fingerprint};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use mesh_kube::labels::WAYPOINT_LABEL;

use crate::config::Config;

/// The `ConfigMap` the trust bundle is published in, key [`BUNDLE_KEY`].
pub const BUNDLE_CONFIGMAP: &str = "ambit-trust-bundle";
/// The key of the bundle in [`BUNDLE_CONFIGMAP`], and of the CA in the Secret.
pub const BUNDLE_KEY: &str = "ca.crt";
/// The CA key's key in the Secret.
pub const KEY_KEY: &str = "ca.key";
/// Extra trusted roots in the Secret (CA rotation).
pub const EXTRA_ROOTS_KEY: &str = "trust-bundle.pem";
/// How often the published bundle is compared with the current one.
pub const BUNDLE_CHECK: Duration = Duration::from_secs(10);
/// How long the serving certificate is valid; it is reissued with each CA.
const SERVING_VALIDITY: Duration = Duration::from_hours(365 * 24);

/// Why the CA could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaStoreError {
    /// The Secret could not be read.
    #[error(
        "cannot read the CA Secret {namespace}/{name}: {source} (create it from `ambit ca init`: see docs/install.md)"
    )]
    Read {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// A key is missing from the Secret.
    #[error("the CA Secret {secret} has no {key:?} (it needs ca.crt and ca.key)")]
    Missing {
        /// namespace/name.
        secret: String,
        /// The missing key.
        key: &'static str,
    },
    /// The CA or a root does not load.
    #[error("the CA Secret {secret} does not hold a usable CA: {source}")]
    Ca {
        /// namespace/name.
        secret: String,
        /// Why.
        source: Box<CaError>,
    },
    /// The serving certificate could not be made or used.
    #[error("cannot make the controller's serving certificate: {0}")]
    Serving(String),
}

/// One generation of the CA: it, the roots agents must trust, and the
/// certificate the API serves.
pub struct CaState {
    /// Signs workload certificates.
    pub ca: CertificateAuthority,
    /// The CA and the extra roots.
    pub bundle: TrustBundle,
    /// The HTTPS API's certificate, issued by `ca`.
    pub serving: Arc<CertifiedKey>,
}

/// The current [`CaState`], replaced whole when the Secret changes.
pub struct CaStore {
    current: RwLock<Arc<CaState>>,
}

// === impl CaStore ===

impl CaStore {
    /// Reads the Secret and builds the first state; publishes the bundle.
    pub async fn load(client: Client, config: &Config) -> Result<Self, CaStoreError> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
        let secret = secrets
            .get(&config.ca_secret)
            .await
            .map_err(|source| CaStoreError::Read {
                namespace: config.namespace.clone(),
                name: config.ca_secret.clone(),
                source,
            })?;
        let state = state_from_secret(&secret, config)?;
        publish_everywhere(&client, config, &state.bundle).await;
        Ok(Self {
            current: RwLock::new(Arc::new(state)),
        })
    }

    /// The state new requests use.
    #[must_use]
    pub fn current(&self) -> Arc<CaState> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, state: CaState) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
    }
}

/// Builds a state from the Secret's data.
pub fn state_from_secret(secret: &Secret, config: &Config) -> Result<CaState, CaStoreError> {
    let name = format!("{}/{}", config.namespace, config.ca_secret);
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let get = |key: &'static str| {
        data.get(key)
            .map(|bytes| bytes.0.as_slice())
            .ok_or_else(|| CaStoreError::Missing {
                secret: name.clone(),
                key,
            })
    };
    let origin = |key: &str| PathBuf::from(format!("secret {name} key {key}"));
    let bad = |source: CaError| CaStoreError::Ca {
        secret: name.clone(),
        source: Box::new(source),
    };
    let ca = CertificateAuthority::from_pem(
        get(BUNDLE_KEY)?,
        &origin(BUNDLE_KEY),
        get(KEY_KEY)?,
        &origin(KEY_KEY),
    )
    .map_err(bad)?;
    let mut bundle = match data.get(EXTRA_ROOTS_KEY) {
        Some(extra) => TrustBundle::from_pem(&extra.0, &origin(EXTRA_ROOTS_KEY)).map_err(bad)?,
        None => TrustBundle::new(),
    };
    bundle.add(ca.certificate_der().clone());
    let serving = serving_certificate(&ca, config)?;
    Ok(CaState {
        ca,
        bundle,
        serving,
    })
}

fn serving_certificate(
    ca: &CertificateAuthority,
    config: &Config,
) -> Result<Arc<CertifiedKey>, CaStoreError> {
    let service = format!("{}.{}.svc", config.service_name, config.namespace);
    let names = [service.clone(), format!("{service}.cluster.local")];
    let issued = ca
        .issue_server_certificate(&names, &config.serving_ips, SERVING_VALIDITY)
        .map_err(|e| CaStoreError::Serving(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_der));
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CaStoreError::Serving(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(issued.chain, signing_key)))
}

/// Publishes the bundle in the controller's namespace and in every
/// namespace that holds a waypoint's `ServiceAccount`. A failed list of the
/// accounts is logged; the own namespace is published regardless.
async fn publish_everywhere(client: &Client, config: &Config, bundle: &TrustBundle) {
    publish_bundle(client, &config.namespace, bundle).await;
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    match accounts
        .list_metadata(&ListParams::default().labels(WAYPOINT_LABEL))
        .await
    {
        Ok(list) => {
            let namespaces: std::collections::BTreeSet<String> = list
                .items
                .into_iter()
                .filter_map(|account| account.metadata.namespace)
                .filter(|namespace| *namespace != config.namespace)
                .collect();
            for namespace in namespaces {
                publish_bundle(client, &namespace, bundle).await;
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot list waypoint service accounts; their namespaces keep the last bundle; retrying");
        }
    }
}

/// Writes the bundle into the `ConfigMap` in `namespace`, creating it if
/// needed, unless it already holds it. Failures are logged: the CA still
/// signs, and the next check ([`BUNDLE_CHECK`]) tries again.
async fn publish_bundle(client: &Client, namespace: &str, bundle: &TrustBundle) {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let pem = bundle.to_pem();
    let data = BTreeMap::from([(BUNDLE_KEY.to_owned(), pem)]);
    let result = match configmaps.get_opt(BUNDLE_CONFIGMAP).await {
        Ok(Some(existing)) if existing.data.as_ref() == Some(&data) => return,
        Ok(Some(_)) => configmaps
            .patch(
                BUNDLE_CONFIGMAP,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "data": data })),
            )
            .await
            .map(drop),
        Ok(None) => {
            let configmap = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(BUNDLE_CONFIGMAP.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/part-of".to_owned(),
                        "ambit".to_owned(),
                    )])),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            configmaps
                .create(&PostParams::default(), &configmap)
                .await
                .map(drop)
        }
        Err(error) => Err(error),
    };
    let configmap = format!("{namespace}/{BUNDLE_CONFIGMAP}");
    match result {
        Ok(()) => {
            tracing::info!(%configmap, roots = bundle.roots().len(), "trust bundle published");
        }
        Err(error) => {
            tracing::warn!(%configmap, %error, "cannot publish the trust bundle; agents keep the last one; retrying");
        }
    }
}

/// Follows the Secret: each change that loads replaces the CA and
/// republishes the bundle; one that does not is logged and ignored. A new
/// waypoint `ServiceAccount` gets the bundle in its namespace at once. Every
/// [`BUNDLE_CHECK`] each `ConfigMap` is compared with the current bundle and
/// rewritten if it differs (a failed write, or someone's edit).
pub async fn follow(store: Arc<CaStore>, client: Client, config: Config) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let selector =
        watcher::Config::default().fields(&format!("metadata.name={}", config.ca_secret));
    let mut events = pin!(
        watcher(secrets, selector)
            .default_backoff()
            .applied_objects()
    );
    let accounts: Api<PartialObjectMeta<ServiceAccount>> = Api::all(client.clone());
    let mut waypoint_accounts = pin!(
        watcher(accounts, watcher::Config::default().labels(WAYPOINT_LABEL))
            .default_backoff()
            .applied_objects()
    );
    let mut check = tokio::time::interval(BUNDLE_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
            _ = check.tick() => {
                publish_everywhere(&client, &config, &store.current().bundle).await;
                continue;
            }
            Some(account) = waypoint_accounts.next() => {
                match account {
                    Ok(account) => {
                        if let Some(namespace) = account.metadata.namespace {
                            publish_bundle(&client, &namespace, &store.current().bundle).await;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "watching waypoint service accounts failed; retrying");
                    }
                }
                continue;
            }
        };
        match event {
            Ok(secret) => match state_from_secret(&secret, &config) {
                Ok(state) => {
                    let current = store.current();
                    let changed = state.bundle.roots() != current.bundle.roots()
                        || state.ca.certificate_der() != current.ca.certificate_der();
                    if changed {
                        publish_everywhere(&client, &config, &state.bundle).await;
                        store.replace(state);
                        tracing::info!(
                            ca_sha256 = %sha256_fingerprint(store.current().ca.certificate_der()),
                            "CA Secret changed; new certificates come from the new CA"
                        );
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "the CA Secret changed but does not load; keeping the last CA");
                }
            },
            Err(error) => tracing::warn!(%error, "watching the CA Secret failed; retrying"),
        }
    }
}
