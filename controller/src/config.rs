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
    /// Lifetime of the workload certificates it signs: seconds (`86400`)
    /// or a number with a unit, `s`, `m`, `h` or `d` (`24h`); at least 2 s.
    /// Agents reissue at half-life.
    #[arg(long, env = "AMBIT_CERT_LIFETIME", default_value = "24h", value_parser = mesh_core::ca::parse_lifetime)]
    pub cert_lifetime: Duration,
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("ambit-controller").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_the_manifests_values() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen, "0.0.0.0:15012".parse().unwrap());
        assert_eq!(config.namespace, "ambit-system");
        assert_eq!(config.ca_secret, "ambit-ca");
        assert_eq!(config.trust_domain, "cluster.local");
        assert_eq!(config.cert_lifetime, Duration::from_hours(24));
        assert_eq!(config.service_name, "ambit-controller");
        assert_eq!(
            config.agent_user(),
            "system:serviceaccount:ambit-system:ambit-node-agent"
        );
        assert!(config.serving_ips.is_empty() && config.kube_api_url.is_none());
    }

    #[test]
    fn lifetimes_take_seconds_or_a_unit() {
        for (text, secs) in [
            ("86400", 86_400),
            ("90s", 90),
            ("30m", 1_800),
            ("12h", 43_200),
            ("2d", 172_800),
        ] {
            let config = parse(&["--cert-lifetime", text]).unwrap();
            assert_eq!(config.cert_lifetime, Duration::from_secs(secs), "{text}");
        }
        for bad in ["", "1", "h", "10w", "-5", "1.5h", "99999999999999999999d"] {
            let flag = format!("--cert-lifetime={bad}");
            let error = parse(&[&flag]).unwrap_err().to_string();
            assert!(error.contains("--cert-lifetime"), "{bad}: {error}");
        }
    }

    #[test]
    fn serving_ips_repeat() {
        let config = parse(&["--serving-ip", "10.0.0.1", "--serving-ip", "fd00::1"]).unwrap();
        assert_eq!(config.serving_ips.len(), 2);
    }
}
