//! The waypoint's command line.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

/// `ambit-waypoint`: the L7 proxy of one namespace.
#[derive(Clone, Debug, Parser)]
#[command(name = "ambit-waypoint", version, about)]
pub struct Config {
    /// The waypoint's name: Services that use it carry
    /// `ambit.dev/use-waypoint=<name>` (or `waypoint: <name>` in the local
    /// file). Its identity is the service account of that name.
    #[arg(long, env = "AMBIT_WAYPOINT_NAME")]
    pub name: String,
    /// The namespace it serves.
    #[arg(long, env = "AMBIT_WAYPOINT_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The mesh's trust domain.
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The local configuration file (services, pods, policies, routes), the
    /// same file the node agents read; re-read when it changes.
    #[arg(
        long,
        env = "AMBIT_CONFIG",
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub config: Option<PathBuf>,
    /// Reads Services, `EndpointSlices`, Pods, `AuthorizationPolicy` and
    /// `HTTPRoute` objects from the Kubernetes API server instead of a file.
    #[arg(long)]
    pub kubernetes: bool,
    /// The API server's URL; default: in-cluster, or `KUBECONFIG`.
    #[arg(long, env = "AMBIT_KUBE_API_URL", requires = "kubernetes")]
    pub kube_api_url: Option<String>,
    /// How often the configuration file is checked for changes (a Gateway
    /// API duration: `200ms`, `1s`).
    #[arg(long, default_value = "200ms", value_parser = mesh_core::route::parse_duration)]
    pub config_poll: Duration,
    /// The mesh CA certificate (PEM), for signing locally: the waypoint's
    /// own certificate is signed with it and peers are verified against it.
    #[arg(
        long,
        env = "AMBIT_CA_CERT",
        requires = "ca_key",
        required_unless_present = "ca_address"
    )]
    pub ca_cert: Option<PathBuf>,
    /// The mesh CA key (PEM), for signing locally.
    #[arg(
        long,
        env = "AMBIT_CA_KEY",
        requires = "ca_cert",
        conflicts_with = "ca_address"
    )]
    pub ca_key: Option<PathBuf>,
    /// The controller that signs the waypoint's certificate
    /// (`https://host[:port]`), instead of a local CA.
    #[arg(long, env = "AMBIT_CA_ADDRESS", requires_all = ["trust_bundle", "pod_name"])]
    pub ca_address: Option<String>,
    /// The projected service-account token (audience `ambit-ca`) sent to
    /// the controller; re-read for each request.
    #[arg(
        long,
        env = "AMBIT_CA_TOKEN_FILE",
        default_value = "/var/run/secrets/ambit/ca-token"
    )]
    pub ca_token_file: PathBuf,
    /// The mesh's trust bundle (PEM roots), with `--ca-address`.
    #[arg(long, env = "AMBIT_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
    /// The waypoint's own pod (the downward API's `metadata.name`), which
    /// its token is bound to; with `--ca-address`.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Lifetime of the waypoint's certificate; it is renewed at half-life.
    #[arg(long, default_value = "24h", value_parser = mesh_core::ca::parse_lifetime)]
    pub cert_lifetime: Duration,
    /// Where HBONE is served.
    #[arg(long, default_value = "0.0.0.0:15008")]
    pub listen: SocketAddr,
    /// Threads serving HBONE connections and their requests, each with its
    /// own event loop and backend connections; 0: one per CPU the process
    /// may use.
    #[arg(long, env = "AMBIT_WAYPOINT_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Where metrics (`/stats/prometheus`, `/metrics`) and readiness
    /// (`/healthz/ready`) are served: on the pod's address, for Prometheus
    /// and the kubelet.
    #[arg(long, env = "AMBIT_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// How long a request metric series (a client, service, backend,
    /// status and flags) stays in `/metrics` once it stops changing; at
    /// least 10 s.
    #[arg(long, env = "AMBIT_METRICS_RETAIN_IDLE_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub metrics_retain_idle_secs: u64,
    /// Where the admin views (`/config`: routes, rejected routes, endpoint
    /// health) are served: localhost, as the node agent's admin API.
    #[arg(long, env = "AMBIT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Log format: `text` or `json`.
    #[arg(long, env = "AMBIT_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Whether each request gets an access log line.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// How long the first bytes of a stream may take before it is treated
    /// as opaque TCP (server-first protocols send nothing first).
    #[arg(long, default_value = "300ms", value_parser = mesh_core::route::parse_duration)]
    pub detect_timeout: Duration,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser as _;

    use super::Config;

    #[test]
    fn defaults_and_durations_read_as_routes_and_lifetimes_as_the_controllers() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(
                [
                    "ambit-waypoint",
                    "--name",
                    "wp",
                    "--config",
                    "m.yaml",
                    "--ca-cert",
                    "c",
                    "--ca-key",
                    "k",
                ]
                .iter()
                .chain(args),
            )
        };
        let config = parse(&[]).unwrap();
        assert_eq!(config.metrics_addr, "0.0.0.0:15020".parse().unwrap());
        assert_eq!(config.admin_addr, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(config.config_poll, Duration::from_millis(200));
        assert_eq!(config.detect_timeout, Duration::from_millis(300));
        assert_eq!(config.cert_lifetime, Duration::from_hours(24));
        assert_eq!(config.metrics_retain_idle_secs, 600);
        assert!(parse(&["--metrics-retain-idle-secs", "9"]).is_err());
        let config = parse(&["--detect-timeout", "1s500ms", "--cert-lifetime", "2d"]).unwrap();
        assert_eq!(config.detect_timeout, Duration::from_millis(1500));
        assert_eq!(config.cert_lifetime, Duration::from_hours(48));
        assert!(parse(&["--detect-timeout", "1.5s"]).is_err());
        assert!(parse(&["--cert-lifetime", "1s"]).is_err());
    }
}
