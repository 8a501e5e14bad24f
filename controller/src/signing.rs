//! Deciding and signing a node agent's certificate request (see the crate
//! docs for the API). The checks, in order: the request parses; the token
//! is accepted by a `TokenReview` for the audience [`AUDIENCE`]; it belongs
//! to the agents' service account and names the agent's node; the CSR is a
//! PEM request for one SPIFFE id; the pod exists, runs on that node, and
//! the CSR's id is the one the pod's service account gives; the CSR is
//! signed by its own ECDSA P-256 key. Then the current CA signs. Every
//! decision is logged with the pod and the caller's node.
//!
//! A **waypoint** asks for its own certificate: its token (audience
//! [`AUDIENCE`], bound to its pod) must belong to the service account the
//! waypoint is named after, the request must name the token's own pod, and
//! that pod must carry `ambit.dev/waypoint=<its service account>`. Any
//! other workload's token is refused: workloads get certificates through
//! their node agent.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    core::v1::Pod,
};
use kube::{Api, Client, api::PostParams};
use mesh_core::{ca::csr_spiffe_id, identity::SpiffeId};
use mesh_kube::labels::WAYPOINT_LABEL;
use serde::{Deserialize, Serialize};

use crate::{ca_store::CaStore, config::Config};

/// The audience agents' projected tokens are made for.
pub const AUDIENCE: &str = "ambit-ca";
/// Where a pod-bound token names its pod's node in a review's `extra`.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// Where a pod-bound token names its pod in a review's `extra`.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// Who asks, from the `TokenReview` of its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A node agent, on this node.
    Agent {
        /// The agent's node.
        node: String,
    },
    /// Some other service account's pod: only a waypoint may be granted.
    Pod {
        /// The service account's namespace.
        namespace: String,
        /// The service account.
        account: String,
        /// The pod the token is bound to.
        pod: String,
    },
}

/// A certificate request, as agents send it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    /// The pod the certificate is for.
    pub pod: PodRef,
    /// The PEM `CERTIFICATE REQUEST`; its one URI SAN is the SPIFFE id
    /// asked for.
    pub csr: String,
    /// Optional: the SPIFFE id the requester expects; when given it must be
    /// the CSR's.
    #[serde(default)]
    pub identity: Option<String>,
}

/// A pod's namespace and name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// The answer to a granted request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    /// The leaf then the CA, PEM.
    pub certificate_chain: String,
    /// Every root agents must trust, PEM.
    pub trust_bundle: String,
}

/// Why a request is refused; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// 400: the request or its CSR is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 401: no token, or the API server did not accept it for [`AUDIENCE`].
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// 403: authenticated, but not allowed this certificate.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404: the pod does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// 503: the API server could not be asked.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// 500: the CA could not sign a request that was in order (its key,
    /// the configured lifetime, the random number generator).
    #[error("internal error: {0}")]
    Internal(String),
}

// === impl SignError ===

impl SignError {
    /// The HTTP status code.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthenticated(_) => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::Unavailable(_) => 503,
            Self::Internal(_) => 500,
        }
    }

    /// Why the CA did not sign: the caller's fault only when it is the
    /// CSR's.
    fn of_ca(error: &mesh_core::ca::CaError) -> Self {
        use mesh_core::ca::CaError;
        match error {
            CaError::Csr { .. } | CaError::CsrIdentity { .. } => {
                Self::BadRequest(error.to_string())
            }
            _ => Self::Internal(error.to_string()),
        }
    }
}

/// A request that parses: its pod, its CSR (DER) and the SPIFFE id the CSR
/// asks for.
#[derive(Debug)]
pub struct ValidRequest {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The CSR, DER.
    pub csr_der: Vec<u8>,
    /// The one URI SAN of the CSR.
    pub identity: SpiffeId,
}

/// What a request revealed before it was decided, for the log.
#[derive(Default)]
struct Seen {
    pod: Option<String>,
    node: Option<String>,
}

/// Decides and signs requests.
pub struct Signer {
    client: Client,
    store: Arc<CaStore>,
    agent_user: String,
    trust_domain: String,
    lifetime: Duration,
}

// === impl Signer ===

impl Signer {
    /// A signer asking `client`'s API server, signing with `store`'s CA.
    #[must_use]
    pub fn new(client: Client, store: Arc<CaStore>, config: &Config) -> Self {
        Self {
            client,
            store,
            agent_user: config.agent_user(),
            trust_domain: config.trust_domain.clone(),
            lifetime: config.cert_lifetime,
        }
    }

    /// Handles one request: `bearer` is the `Authorization` header's token.
    /// The decision is logged.
    pub async fn sign(
        &self,
        bearer: Option<&str>,
        body: &[u8],
    ) -> Result<CertificateResponse, SignError> {
        let mut seen = Seen::default();
        let decided = self.decide(bearer, body, &mut seen).await;
        let pod = seen.pod.as_deref().unwrap_or("-");
        let node = seen.node.as_deref().unwrap_or("-");
        match &decided {
            Ok((identity, serial, _)) => {
                tracing::info!(%pod, %node, %identity, %serial, "certificate signed");
            }
            Err(error) => {
                tracing::warn!(%pod, %node, status = error.status(), %error, "certificate request refused");
            }
        }
        decided.map(|(_, _, response)| response)
    }

    async fn decide(
        &self,
        bearer: Option<&str>,
        body: &[u8],
        seen: &mut Seen,
    ) -> Result<(SpiffeId, String, CertificateResponse), SignError> {
        let request = ValidRequest::parse(body)?;
        let pod_name = format!("{}/{}", request.namespace, request.name);
        seen.pod = Some(pod_name.clone());
        let token = bearer.filter(|t| !t.is_empty()).ok_or_else(|| {
            SignError::Unauthenticated(
                "no bearer token (send the agent's projected token with audience ambit-ca)".into(),
            )
        })?;
        let caller = self.review(token).await?;
        if let Caller::Pod { namespace, pod, .. } = &caller
            && (*namespace != request.namespace || *pod != request.name)
        {
            return Err(SignError::Forbidden(format!(
                "the token is bound to pod {namespace}/{pod}; a waypoint may only ask for its own certificate"
            )));
        }
        seen.node = Some(match &caller {
            Caller::Agent { node } => node.clone(),
            Caller::Pod { .. } => "(waypoint)".to_owned(),
        });
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &request.namespace);
        let pod = pods
            .get_opt(&request.name)
            .await
            .map_err(|e| SignError::Unavailable(format!("cannot read pod {pod_name}: {e}")))?
            .ok_or_else(|| SignError::NotFound(format!("pod {pod_name} does not exist")))?;
        let identity = match &caller {
            Caller::Agent { node } => authorize(&pod, node, &request.identity, &self.trust_domain)?,
            Caller::Pod { account, .. } => {
                authorize_waypoint(&pod, account, &request.identity, &self.trust_domain)?
            }
        };
        let state = self.store.current();
        let certificate = state
            .ca
            .sign_csr(&request.csr_der, &identity, self.lifetime)
            .map_err(|e| SignError::of_ca(&e))?;
        let serial = certificate.serial.clone();
        Ok((
            identity,
            serial,
            CertificateResponse {
                certificate_chain: certificate.chain_pem(),
                trust_bundle: state.bundle.to_pem(),
            },
        ))
    }

    /// Who the caller is, from a `TokenReview` of its token.
    async fn review(&self, token: &str) -> Result<Caller, SignError> {
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let reviewed = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| SignError::Unavailable(format!("the TokenReview failed: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(SignError::Unauthenticated(format!(
                "the API server did not accept the token for audience {AUDIENCE}: {}",
                status.error.as_deref().unwrap_or("no reason given")
            )));
        }
        if let Some(audiences) = &status.audiences
            && !audiences.iter().any(|a| a == AUDIENCE)
        {
            return Err(SignError::Unauthenticated(format!(
                "the token is for {audiences:?}, not {AUDIENCE}"
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let extra = |key: &str| {
            user.extra
                .as_ref()
                .and_then(|extra| extra.get(key))
                .and_then(|values| values.first())
                .cloned()
        };
        if username == self.agent_user {
            return extra(NODE_NAME_EXTRA)
                .map(|node| Caller::Agent { node })
                .ok_or_else(|| {
                    SignError::Forbidden(
                        "the token names no node: use a projected token bound to the agent's pod (Kubernetes 1.30 or later)".into(),
                    )
                });
        }
        let Some((namespace, account)) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(SignError::Forbidden(format!(
                "{username} is neither the node agents' service account ({}) nor a waypoint's",
                self.agent_user
            )));
        };
        let pod = extra(POD_NAME_EXTRA).ok_or_else(|| {
            SignError::Forbidden(format!(
                "{username} is not the node agents' service account ({}), and its token is not bound to a pod, as a waypoint's must be",
                self.agent_user
            ))
        })?;
        Ok(Caller::Pod {
            namespace: namespace.to_owned(),
            account: account.to_owned(),
            pod,
        })
    }
}

// === impl ValidRequest ===

impl ValidRequest {
    /// Parses a body: JSON of the expected shape (no unknown fields), a PEM
    /// CSR asking for exactly one SPIFFE id, which the optional `identity`
    /// must repeat. Anything else is a 400 naming what is wrong.
    pub fn parse(body: &[u8]) -> Result<Self, SignError> {
        let request: CertificateRequest = serde_json::from_slice(body).map_err(|e| {
            SignError::BadRequest(format!(
                "the body is not a certificate request ({{\"pod\": {{\"namespace\", \"name\"}}, \"csr\"}}): {e}"
            ))
        })?;
        if request.pod.namespace.is_empty() || request.pod.name.is_empty() {
            return Err(SignError::BadRequest(
                "pod.namespace and pod.name must not be empty".into(),
            ));
        }
        let csr = pem::parse(request.csr.as_bytes())
            .ok()
            .filter(|block| block.tag() == "CERTIFICATE REQUEST")
            .ok_or_else(|| {
                SignError::BadRequest("csr is not a PEM CERTIFICATE REQUEST block".into())
            })?;
        let identity =
            csr_spiffe_id(csr.contents()).map_err(|e| SignError::BadRequest(e.to_string()))?;
        if let Some(expected) = &request.identity
            && *expected != identity.to_string()
        {
            return Err(SignError::BadRequest(format!(
                "identity {expected} is not the one the CSR asks for ({identity})"
            )));
        }
        Ok(Self {
            namespace: request.pod.namespace,
            name: request.pod.name,
            csr_der: csr.into_contents(),
            identity,
        })
    }
}

/// The identity `pod` may get when `caller_node`'s agent asks for
/// `requested`: refused unless the pod runs on that node and `requested` is
/// the identity its service account gives.
pub fn authorize(
    pod: &Pod,
    caller_node: &str,
    requested: &SpiffeId,
    trust_domain: &str,
) -> Result<SpiffeId, SignError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let spec = pod.spec.as_ref();
    match spec.and_then(|s| s.node_name.as_deref()) {
        Some(node) if node == caller_node => {}
        Some(node) => {
            return Err(SignError::Forbidden(format!(
                "pod {namespace}/{name} runs on node {node}, not on the caller's node {caller_node}"
            )));
        }
        None => {
            return Err(SignError::Forbidden(format!(
                "pod {namespace}/{name} is not scheduled on any node yet"
            )));
        }
    }
    let account = spec
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let identity = SpiffeId::new(trust_domain, namespace, account).map_err(|e| {
        SignError::BadRequest(format!("pod {namespace}/{name} has no valid identity: {e}"))
    })?;
    if identity != *requested {
        return Err(SignError::Forbidden(format!(
            "pod {namespace}/{name} runs as {identity}, not {requested}"
        )));
    }
    Ok(identity)
}

/// The identity a waypoint's `pod`, whose token belongs to `account`, may
/// get for `requested`: refused unless the pod runs as `account`, carries
/// `ambit.dev/waypoint=<account>`, and `requested` is that account's id.
pub fn authorize_waypoint(
    pod: &Pod,
    account: &str,
    requested: &SpiffeId,
    trust_domain: &str,
) -> Result<SpiffeId, SignError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let runs_as = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    if runs_as != account {
        return Err(SignError::Forbidden(format!(
            "pod {namespace}/{name} runs as service account {runs_as}, not the token's {account}"
        )));
    }
    let label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(WAYPOINT_LABEL));
    if label.map(String::as_str) != Some(account) {
        return Err(SignError::Forbidden(format!(
            "pod {namespace}/{name} is not a waypoint (label {WAYPOINT_LABEL}={account}); workloads get certificates through their node agent"
        )));
    }
    let identity = SpiffeId::new(trust_domain, namespace, account).map_err(|e| {
        SignError::BadRequest(format!("pod {namespace}/{name} has no valid identity: {e}"))
    })?;
    if identity != *requested {
        return Err(SignError::Forbidden(format!(
            "waypoint {namespace}/{name} is {identity}, not {requested}"
        )));
    }
    Ok(identity)
}

#[cfg(test)]
mod tests;
