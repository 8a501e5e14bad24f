//! The node agent's settings that other binaries also read: the CLI's
//! `ambit bpf`, `ambit check` and `ambit uninstall` look where the agent
//! on their node looks, by the same `AMBIT_*` variables and defaults.

/// Where the agent pins its maps and links unless told otherwise.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/ambit";
/// The cgroup the agent attaches its cgroup programs to unless told otherwise.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Environment variable names shared with the agent, one prefix.
pub mod env {
    /// The agent's pin directory on bpffs (`--bpffs-dir`).
    pub const BPFFS_DIR: &str = "AMBIT_BPFFS_DIR";
    /// The cgroup the agent attaches to (`--cgroup-root`).
    pub const CGROUP_ROOT: &str = "AMBIT_CGROUP_ROOT";
    /// The mesh's CA certificate (`--ca-cert`).
    pub const CA_CERT: &str = "AMBIT_CA_CERT";
}
