//! The agent's settings. Each comes from a command-line flag or from an
//! `AMBIT_*` environment variable (the flag wins); a bad value fails at
//! start-up with an error that names the variable, the value and the reason.
//! The effective configuration is logged at start.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::{Parser, ValueEnum, builder::BoolishValueParser};
use mesh_kube::{snapshot::KubeSettings, source::Source};
use serde::Serialize;

use crate::pod_netns::CgroupPodNetns;

pub use mesh_core::agent_settings::{DEFAULT_BPFFS_DIR, DEFAULT_CGROUP_ROOT};

/// The handoff socket unless told otherwise.
pub const DEFAULT_HANDOFF_SOCKET: &str = "/run/ambit/handoff.sock";

/// Environment variable names, one prefix.
pub mod env {
    /// See [`super::Config::bpffs_dir`], [`super::Config::cgroup_root`] and
    /// [`super::Config::ca_cert`]: shared with the CLI.
    pub use mesh_core::agent_settings::env::{BPFFS_DIR, CA_CERT, CGROUP_ROOT};
    /// See [`super::Config::config`].
    pub const CONFIG: &str = "AMBIT_CONFIG";
    /// See [`super::Config::kubernetes`].
    pub const KUBERNETES: &str = "AMBIT_KUBERNETES";
    /// See [`super::Config::kube_api_url`].
    pub const KUBE_API_URL: &str = "AMBIT_KUBE_API_URL";
    /// See [`super::Config::node_name`].
    pub const NODE_NAME: &str = "AMBIT_NODE_NAME";
    /// See [`super::Config::admin_addr`].
    pub const ADMIN_ADDR: &str = "AMBIT_ADMIN_ADDR";
    /// See [`super::Config::metrics_addr`].
    pub const METRICS_ADDR: &str = "AMBIT_METRICS_ADDR";
    /// See [`super::Config::readiness_addr`].
    pub const READINESS_ADDR: &str = "AMBIT_READINESS_ADDR";
    /// See [`super::Config::cluster_domain`].
    pub const CLUSTER_DOMAIN: &str = "AMBIT_CLUSTER_DOMAIN";
    /// See [`super::Config::worker_threads`].
    pub const WORKER_THREADS: &str = "AMBIT_WORKER_THREADS";
    /// See [`super::Config::log_format`].
    pub const LOG_FORMAT: &str = "AMBIT_LOG_FORMAT";
    /// See [`super::Config::connect_timeout_ms`].
    pub const CONNECT_TIMEOUT_MS: &str = "AMBIT_CONNECT_TIMEOUT_MS";
    /// See [`super::Config::config_poll_ms`].
    pub const CONFIG_POLL_MS: &str = "AMBIT_CONFIG_POLL_MS";
    /// See [`super::Config::ca_key`].
    pub const CA_KEY: &str = "AMBIT_CA_KEY";
    /// See [`super::Config::proc_sys_net`].
    pub const PROC_SYS_NET: &str = "AMBIT_PROC_SYS_NET";
    /// See [`super::Config::ca_address`].
    pub const CA_ADDRESS: &str = "AMBIT_CA_ADDRESS";
    /// See [`super::Config::ca_token_file`].
    pub const CA_TOKEN_FILE: &str = "AMBIT_CA_TOKEN_FILE";
    /// See [`super::Config::trust_bundle`].
    pub const TRUST_BUNDLE: &str = "AMBIT_TRUST_BUNDLE";
    /// See [`super::Config::trust_domain`].
    pub const TRUST_DOMAIN: &str = "AMBIT_TRUST_DOMAIN";
    /// See [`super::Config::cert_lifetime_secs`].
    pub const CERT_LIFETIME_SECS: &str = "AMBIT_CERT_LIFETIME_SECS";
    /// See [`super::Config::same_node_fast_path`].
    pub const SAME_NODE_FAST_PATH: &str = "AMBIT_SAME_NODE_FAST_PATH";
    /// See [`super::Config::root_namespace`].
    pub const ROOT_NAMESPACE: &str = "AMBIT_ROOT_NAMESPACE";
    /// See [`super::Config::handoff_socket`].
    pub const HANDOFF_SOCKET: &str = "AMBIT_HANDOFF_SOCKET";
    /// See [`super::Config::drain_timeout_secs`].
    pub const DRAIN_TIMEOUT_SECS: &str = "AMBIT_DRAIN_TIMEOUT_SECS";
    /// See [`super::Config::exit_after_handoff`].
    pub const EXIT_AFTER_HANDOFF: &str = "AMBIT_EXIT_AFTER_HANDOFF";
    /// See [`super::Config::metrics_retain_idle_secs`].
    pub const METRICS_RETAIN_IDLE_SECS: &str = "AMBIT_METRICS_RETAIN_IDLE_SECS";
    /// Log filter, `tracing-subscriber` `EnvFilter` syntax.
    pub const LOG: &str = "AMBIT_LOG";
}

/// The node agent's settings.
#[derive(Clone, Debug, Parser, Serialize)]
#[command(
    name = "ambit-node-agent",
    version,
    about = "ambit's per-node agent: captures enrolled pods' traffic with eBPF and proxies it"
)]
pub struct Config {
    /// Local configuration file listing the pods to enroll; re-read when it
    /// changes (local mode; or `--kubernetes`).
    #[arg(long, env = env::CONFIG, required_unless_present = "kubernetes", conflicts_with = "kubernetes")]
    pub config: Option<PathBuf>,
    /// Kubernetes mode: pods (of this node), services and authorization
    /// policies come from the API server.
    #[arg(long, env = env::KUBERNETES, default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub kubernetes: bool,
    /// The API server's URL in Kubernetes mode (e.g. `http://10.0.0.1:6443`);
    /// by default the in-cluster service account, else `KUBECONFIG`.
    #[arg(long, env = env::KUBE_API_URL, requires = "kubernetes")]
    pub kube_api_url: Option<String>,
    /// This node's name, shown in logs and the admin API.
    #[arg(long, env = env::NODE_NAME, default_value = "local")]
    pub node_name: String,
    /// Directory on a bpffs where programs' links and maps are pinned.
    #[arg(long, env = env::BPFFS_DIR, default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
    /// cgroup v2 directory whose processes are candidates for capture (the
    /// pods' cgroup root, e.g. `/sys/fs/cgroup/kubepods.slice`).
    #[arg(long, env = env::CGROUP_ROOT, default_value = DEFAULT_CGROUP_ROOT)]
    pub cgroup_root: PathBuf,
    /// Unix socket through which a new agent takes the pods over from the
    /// running one (their listener sockets change hands, so no connection
    /// is refused). Agents that share a bpffs directory must share it;
    /// `<path>.lock` beside it marks the active agent.
    #[arg(long, env = env::HANDOFF_SOCKET, default_value = DEFAULT_HANDOFF_SOCKET)]
    pub handoff_socket: PathBuf,
    /// After handing the pods over, how long established connections may
    /// go on before they are cut. In Kubernetes the pod's
    /// `terminationGracePeriodSeconds` bounds it too.
    #[arg(long, env = env::DRAIN_TIMEOUT_SECS, default_value_t = 3600)]
    pub drain_timeout_secs: u64,
    /// Exit once drained after a handoff. Off in Kubernetes: a container
    /// that exits is restarted, and would take the pods back; it waits for
    /// its SIGTERM instead.
    #[arg(long, env = env::EXIT_AFTER_HANDOFF, default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub exit_after_handoff: bool,
    /// Address of the admin API (JSON) in the agent's own network namespace.
    #[arg(long, env = env::ADMIN_ADDR, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Address of the Prometheus metrics listener (`/metrics`) in the
    /// agent's own network namespace.
    #[arg(long, env = env::METRICS_ADDR, default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Address of the readiness probe listener (`/healthz/ready`) in the
    /// agent's own network namespace.
    #[arg(long, env = env::READINESS_ADDR, default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// The cluster's DNS domain: services are named
    /// `<name>.<namespace>.svc.<cluster-domain>` (the `destination_service`
    /// metric label).
    #[arg(long, env = env::CLUSTER_DOMAIN, default_value = mesh_core::service::DEFAULT_CLUSTER_DOMAIN,
          value_parser = parse_cluster_domain)]
    pub cluster_domain: String,
    /// Worker threads of the data-path runtime.
    #[arg(long, env = env::WORKER_THREADS, default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
    /// Log line format.
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// How long an upstream connect may take before the client is refused.
    #[arg(long, env = env::CONNECT_TIMEOUT_MS, default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,
    /// How long a metric series naming workloads, identities or policies
    /// stays in `/metrics` once it stops changing (an open connection
    /// keeps its own series); at least 10 s.
    #[arg(long, env = env::METRICS_RETAIN_IDLE_SECS, default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub metrics_retain_idle_secs: u64,
    /// How often the local configuration file is checked for changes.
    #[arg(long, env = env::CONFIG_POLL_MS, default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub config_poll_ms: u64,
    /// The mesh CA's certificate (PEM), from `ambit ca init`; not with
    /// `--ca-address`.
    #[arg(long, env = env::CA_CERT, required_unless_present = "ca_address", conflicts_with = "ca_address")]
    pub ca_cert: Option<PathBuf>,
    /// The mesh CA's private key (PEM, PKCS#8); the agent signs its pods'
    /// certificates with it (local mode).
    #[arg(long, env = env::CA_KEY, required_unless_present = "ca_address", conflicts_with = "ca_address")]
    pub ca_key: Option<PathBuf>,
    /// Where the pods' network sysctls are written: a writable mount of the
    /// host's `/proc/sys/net` (a container's own `/proc/sys` is read-only
    /// unless it is privileged). The pod's value changes, not the host's:
    /// the writing thread is in the pod's network namespace.
    #[arg(long, env = env::PROC_SYS_NET, default_value = crate::routing::DEFAULT_PROC_SYS_NET)]
    pub proc_sys_net: PathBuf,
    /// The controller's CA, e.g.
    /// `https://ambit-controller.ambit-system.svc:15012`: it signs the
    /// pods' certificates instead (Kubernetes mode). Needs
    /// `--trust-bundle`, which it is verified with.
    #[arg(long, env = env::CA_ADDRESS, requires = "trust_bundle")]
    pub ca_address: Option<String>,
    /// The projected service-account token (audience `ambit-ca`) sent to
    /// the controller; read again for every request.
    #[arg(long, env = env::CA_TOKEN_FILE, default_value = "/var/run/secrets/ambit/ca-token")]
    pub ca_token_file: PathBuf,
    /// More trusted roots (PEM, any number of certificates), for rotating the
    /// CA; the CA certificate itself is always trusted.
    #[arg(long, env = env::TRUST_BUNDLE)]
    pub trust_bundle: Option<PathBuf>,
    /// Trust domain of workload identities (`spiffe://<trust-domain>/ns/..`).
    #[arg(long, env = env::TRUST_DOMAIN, default_value = mesh_core::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Lifetime of workload certificates; they are reissued at half-life.
    #[arg(long, env = env::CERT_LIFETIME_SECS, default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(2..))]
    pub cert_lifetime_secs: u64,
    /// Skip TLS between two meshed pods of this node (the agent holds both
    /// identities and the bytes never leave the node).
    #[arg(long, env = env::SAME_NODE_FAST_PATH, default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub same_node_fast_path: bool,
    /// The mesh's root namespace: its authorization policies apply to every
    /// workload of the mesh.
    #[arg(long, env = env::ROOT_NAMESPACE, default_value = mesh_core::policy::DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A DNS name: dot-separated labels of lowercase letters, digits and `-`.
fn parse_cluster_domain(value: &str) -> Result<String, String> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if value.len() <= 253 && value.split('.').all(label_ok) {
        Ok(value.to_owned())
    } else {
        Err(
            "expected a DNS name such as cluster.local (lowercase labels joined by dots)"
                .to_owned(),
        )
    }
}

// === impl Config ===

impl Config {
    /// After a handoff, how long established connections may drain.
    #[must_use]
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    /// How long an idle metric series stays.
    #[must_use]
    pub fn metrics_retain_idle(&self) -> Duration {
        Duration::from_secs(self.metrics_retain_idle_secs)
    }

    /// Upstream connect timeout.
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// Lifetime of workload certificates.
    #[must_use]
    pub fn cert_lifetime(&self) -> Duration {
        Duration::from_secs(self.cert_lifetime_secs)
    }

    /// Interval between checks of the local configuration file.
    #[must_use]
    pub fn config_poll_interval(&self) -> Duration {
        Duration::from_millis(self.config_poll_ms)
    }

    /// The configuration source these settings name (clap makes sure
    /// exactly one is given): the local file, or the API server for this
    /// node, whose pods' network namespaces are found through their cgroups.
    #[must_use]
    pub fn source(&self) -> Source {
        match &self.config {
            Some(path) if !self.kubernetes => Source::File {
                path: path.clone(),
                poll: self.config_poll_interval(),
                root_namespace: self.root_namespace.clone(),
            },
            _ => Source::Kubernetes(KubeSettings {
                node: self.node_name.clone(),
                pod_netns: Arc::new(CgroupPodNetns {
                    cgroup_root: self.cgroup_root.clone(),
                }),
                api_url: self.kube_api_url.clone(),
                root_namespace: self.root_namespace.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let required = ["--ca-cert", "/ca.pem", "--ca-key", "/ca-key.pem"];
        Config::try_parse_from(
            std::iter::once("ambit-node-agent")
                .chain(required)
                .chain(args.iter().copied()),
        )
    }

    #[test]
    fn defaults() {
        let config = parse(&["--config", "/etc/ambit/mesh.yaml"]).unwrap();
        assert_eq!(config.bpffs_dir, PathBuf::from("/sys/fs/bpf/ambit"));
        assert_eq!(config.admin_addr, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(config.metrics_addr, "0.0.0.0:15020".parse().unwrap());
        assert_eq!(config.readiness_addr, "0.0.0.0:15021".parse().unwrap());
        assert_eq!(config.cluster_domain, "cluster.local");
        assert_eq!(config.worker_threads, 2);
    }

    #[test]
    fn the_old_keep_state_flag_is_gone() {
        // Keeping the eBPF state is what every exit does now; a leftover
        // flag must not be read as a way to turn it off.
        assert!(parse(&["--config", "x", "--keep-bpf-state"]).is_err());
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = parse(&["--config", "x", "--worker-threads", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--worker-threads"), "{err}");
        let err = parse(&["--config", "x", "--admin-addr", "nowhere"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--admin-addr") && err.contains("nowhere"),
            "{err}"
        );
        for (flag, value) in [
            ("--metrics-addr", "15020"),
            ("--readiness-addr", "localhost:15021"),
            ("--cluster-domain", "Cluster.Local"),
            ("--cluster-domain", "a..b"),
        ] {
            let err = parse(&["--config", "x", flag, value])
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag) && err.contains(value), "{err}");
        }
    }

    #[test]
    fn telemetry_settings_come_from_flags_or_their_variables() {
        let config = parse(&[
            "--config",
            "x",
            "--metrics-addr",
            "127.0.0.1:9020",
            "--readiness-addr",
            "[::1]:9021",
            "--cluster-domain",
            "corp.example",
        ])
        .unwrap();
        assert_eq!(config.metrics_addr, "127.0.0.1:9020".parse().unwrap());
        assert_eq!(config.readiness_addr, "[::1]:9021".parse().unwrap());
        assert_eq!(config.cluster_domain, "corp.example");
        // The variables' names, as operators set them.
        let arg = |id: &str| {
            <Config as clap::CommandFactory>::command()
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        };
        assert_eq!(arg("metrics_addr").as_deref(), Some(env::METRICS_ADDR));
        assert_eq!(arg("readiness_addr").as_deref(), Some(env::READINESS_ADDR));
        assert_eq!(arg("cluster_domain").as_deref(), Some(env::CLUSTER_DOMAIN));
    }
}
