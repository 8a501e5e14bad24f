//! The agent's settings. Each comes from a command-line flag or from an
//! `AMBIT_*` environment variable (the flag wins); a bad value fails at
//! start-up with an error that names the variable, the value and the reason.
//! The effective configuration is logged at start.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum, builder::BoolishValueParser};
use serde::Serialize;

/// Environment variable names, one prefix.
pub mod env {
    /// See [`super::Config::config`].
    pub const CONFIG: &str = "AMBIT_CONFIG";
    /// See [`super::Config::node_name`].
    pub const NODE_NAME: &str = "AMBIT_NODE_NAME";
    /// See [`super::Config::bpffs_dir`].
    pub const BPFFS_DIR: &str = "AMBIT_BPFFS_DIR";
    /// See [`super::Config::cgroup_root`].
    pub const CGROUP_ROOT: &str = "AMBIT_CGROUP_ROOT";
    /// See [`super::Config::keep_bpf_state`].
    pub const KEEP_BPF_STATE: &str = "AMBIT_KEEP_BPF_STATE";
    /// See [`super::Config::admin_addr`].
    pub const ADMIN_ADDR: &str = "AMBIT_ADMIN_ADDR";
    /// See [`super::Config::worker_threads`].
    pub const WORKER_THREADS: &str = "AMBIT_WORKER_THREADS";
    /// See [`super::Config::log_format`].
    pub const LOG_FORMAT: &str = "AMBIT_LOG_FORMAT";
    /// See [`super::Config::connect_timeout_ms`].
    pub const CONNECT_TIMEOUT_MS: &str = "AMBIT_CONNECT_TIMEOUT_MS";
    /// See [`super::Config::config_poll_ms`].
    pub const CONFIG_POLL_MS: &str = "AMBIT_CONFIG_POLL_MS";
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
    /// Local configuration file listing the pods to enroll; re-read when it changes.
    #[arg(long, env = env::CONFIG)]
    pub config: PathBuf,
    /// This node's name, shown in logs and the admin API.
    #[arg(long, env = env::NODE_NAME, default_value = "local")]
    pub node_name: String,
    /// Directory on a bpffs where programs' links and maps are pinned.
    #[arg(long, env = env::BPFFS_DIR, default_value = "/sys/fs/bpf/ambit")]
    pub bpffs_dir: PathBuf,
    /// cgroup v2 directory whose processes are candidates for capture (the
    /// pods' cgroup root, e.g. `/sys/fs/cgroup/kubepods.slice`).
    #[arg(long, env = env::CGROUP_ROOT, default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// On exit, leave programs attached and maps pinned so the next agent
    /// takes over without a gap in capture (upgrades).
    #[arg(long, env = env::KEEP_BPF_STATE, default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub keep_bpf_state: bool,
    /// Address of the admin API (JSON) in the agent's own network namespace.
    #[arg(long, env = env::ADMIN_ADDR, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
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
    /// How often the local configuration file is checked for changes.
    #[arg(long, env = env::CONFIG_POLL_MS, default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub config_poll_ms: u64,
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

// === impl Config ===

impl Config {
    /// Upstream connect timeout.
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// Interval between checks of the local configuration file.
    #[must_use]
    pub fn config_poll_interval(&self) -> Duration {
        Duration::from_millis(self.config_poll_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("ambit-node-agent").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let config = parse(&["--config", "/etc/ambit/mesh.yaml"]).unwrap();
        assert_eq!(config.bpffs_dir, PathBuf::from("/sys/fs/bpf/ambit"));
        assert_eq!(config.admin_addr, "127.0.0.1:15000".parse().unwrap());
        assert!(!config.keep_bpf_state);
        assert_eq!(config.worker_threads, 2);
    }

    #[test]
    fn keep_state_accepts_bare_flag_and_boolish_values() {
        assert!(
            parse(&["--config", "x", "--keep-bpf-state"])
                .unwrap()
                .keep_bpf_state
        );
        assert!(
            parse(&["--config", "x", "--keep-bpf-state", "yes"])
                .unwrap()
                .keep_bpf_state
        );
        assert!(
            !parse(&["--config", "x", "--keep-bpf-state=false"])
                .unwrap()
                .keep_bpf_state
        );
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
    }
}
