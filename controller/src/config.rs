//! The controller's settings: flags, each with an environment variable.

use std::{net::IpAddr, net::SocketAddr, time::Duration};

/// How the controller runs.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "ambit-controller",
    about = "ambit's control plane: signs node agents' workload certificates and reports AuthorizationPolicy status"
)]
pub struct Config {
    /// Where the HTTPS API listens.
    #[arg(long, env = "AMBIT_CONTROLLER_LISTEN", default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,
    /// The controller's own namespace: its CA Secret and trust-bundle
    /// `ConfigMap` live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ambit-system")]
    pub namespace: String,
    /// The Secret holding the CA: `ca.crt`, `ca.key` (PKCS#8 PEM) and,
    /// during a rotation, `trust-bundle.pem` with the other roots.
    #[arg(long, env = "AMBIT_CA_SECRET", default_value = "ambit-ca")]
    pub ca_secret: String,
    /// The trust domain of workload identities.
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Lifetime of the workload certificates it signs, in seconds.
    #[arg(long, env = "AMBIT_CERT_LIFETIME_SECS", default_value_t = 86_400)]
    pub cert_lifetime_secs: u64,
    /// The controller's Service name: its serving certificate is for
    /// `<name>.<namespace>.svc` and `<name>.<namespace>.svc.cluster.local`.
    #[arg(long, env = "AMBIT_SERVICE_NAME", default_value = "ambit-controller")]
    pub service_name: String,
    /// An address the serving certificate also names (repeatable), for
    /// clients that dial an IP.
    #[arg(long = "serving-ip", env = "AMBIT_SERVING_IPS", value_delimiter = ',')]
    pub serving_ips: Vec<IpAddr>,
    /// The service account (`namespace/name`) node agents run as: only its
    /// tokens may ask for certificates.
    #[arg(
        long,
        env = "AMBIT_AGENT_SERVICE_ACCOUNT",
        default_value = "ambit-system/ambit-node-agent"
    )]
    pub agent_service_account: String,
    /// The API server's URL; without it, in-cluster config or `KUBECONFIG`.
    #[arg(long, env = "AMBIT_KUBE_API_URL")]
    pub kube_api_url: Option<String>,
    /// `text` or `json` logs.
    #[arg(long, env = "AMBIT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

// === impl Config ===

impl Config {
    /// The workload certificates' lifetime.
    #[must_use]
    pub fn cert_lifetime(&self) -> Duration {
        Duration::from_secs(self.cert_lifetime_secs)
    }

    /// The user name the API server gives the agents' tokens:
    /// `system:serviceaccount:<namespace>:<name>`.
    #[must_use]
    pub fn agent_user(&self) -> String {
        format!(
            "system:serviceaccount:{}",
            self.agent_service_account.replacen('/', ":", 1)
        )
    }
}
