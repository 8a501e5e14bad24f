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
    /// How often the configuration file is checked for changes.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
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
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub cert_lifetime: Duration,
    /// Where HBONE is served.
    #[arg(long, default_value = "0.0.0.0:15008")]
    pub listen: SocketAddr,
    /// Where metrics (`/stats/prometheus`) and readiness (`/healthz/ready`)
    /// are served.
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub admin: SocketAddr,
    /// Log format: `text` or `json`.
    #[arg(long, env = "AMBIT_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Whether each request gets an access log line.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// How long the first bytes of a stream may take before it is treated
    /// as opaque TCP (server-first protocols send nothing first).
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
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

/// A duration such as `200ms`, `5s`, `30m`, `24h` or `2d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (use ms, s, m, h or d)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let seconds = |factor: u64| Duration::from_secs(number.saturating_mul(factor));
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(seconds(1)),
        "m" => Ok(seconds(60)),
        "h" => Ok(seconds(3600)),
        "d" => Ok(seconds(86_400)),
        _ => Err(format!(
            "{text:?} has an unknown unit (use ms, s, m, h or d)"
        )),
    }
}
