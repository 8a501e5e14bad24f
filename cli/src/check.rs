//! `ambit check`: is this node ready for the mesh, and is the agent healthy?
//! One line per check, ✓ or ✗, a hint under each failure, exit code 1 when
//! any required check fails.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use clap::Args;
use mesh_core::{
    agent_settings::{DEFAULT_BPFFS_DIR, DEFAULT_CGROUP_ROOT, env},
    ca::TrustBundle,
};
use mesh_ebpf_common::program_types::{self, KERNEL_RELEASE_FILE, REQUIRED_PROGRAM_TYPES};
use serde::Serialize;

use crate::{admin, bpf::host, table::Output};

/// The oldest kernel every program type the mesh needs is known to load on.
const MIN_KERNEL: (u32, u32) = (5, 17);

/// Options of `ambit check`.
#[derive(Clone, Debug, Args)]
pub struct CheckArgs {
    /// The agent's pin directory, which must be on a bpffs.
    #[arg(long, env = env::BPFFS_DIR, default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
    /// The cgroup the agent attaches to, which must be on cgroup v2.
    #[arg(long, env = env::CGROUP_ROOT, default_value = DEFAULT_CGROUP_ROOT)]
    pub cgroup_root: PathBuf,
    /// The CA certificate (or trust bundle) to check; by default the one the
    /// running agent names in its configuration.
    #[arg(long, env = env::CA_CERT)]
    pub ca_cert: Option<PathBuf>,
    /// The least remaining validity a workload certificate may have.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub min_cert_validity: u64,
}

/// The outcome of one check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Whether a failure fails the whole check (optional features do not).
    pub required: bool,
    /// What was found.
    pub detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Every check's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Whether every required check passed.
    pub ok: bool,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

/// Runs every check.
#[must_use]
pub fn run(args: &CheckArgs, admin_addr: SocketAddr) -> Report {
    let mut checks = vec![
        kernel_version(),
        btf(),
        filesystem(
            "cgroup v2",
            &args.cgroup_root,
            "cgroup2",
            "mount cgroup v2 (`mount -t cgroup2 none /sys/fs/cgroup`) or pass --cgroup-root",
        ),
        filesystem(
            "bpffs",
            &args.bpffs_dir,
            "bpf",
            "mount bpffs (`mount -t bpf bpf /sys/fs/bpf`) or pass the agent's --bpffs-dir",
        ),
    ];
    checks.extend(program_types());
    checks.push(agent_ready(admin_addr));
    checks.push(certificates(admin_addr, args.min_cert_validity));
    // The running agent's CA file (its trust bundle when the controller
    // signs), unless one was named.
    let ca_path = args.ca_cert.clone().or_else(|| {
        admin::get_json(admin_addr, "/config")
            .ok()
            .and_then(|config| {
                config["ca_cert"]
                    .as_str()
                    .or_else(|| config["trust_bundle"].as_str())
                    .map(PathBuf::from)
            })
    });
    checks.push(ca_bundle(ca_path.as_deref()));
    Report {
        ok: checks.iter().all(|c| c.ok || !c.required),
        checks,
    }
}

// === impl Report ===

impl Report {
    /// The report in `output`'s format.
    #[must_use]
    pub fn render(&self, output: Output) -> String {
        match output {
            Output::Json => serde_json::to_string_pretty(self).unwrap_or_default() + "\n",
            Output::Yaml => serde_yaml::to_string(self).unwrap_or_default(),
            Output::Table => {
                let mut out = String::new();
                for check in &self.checks {
                    let mark = match (check.ok, check.required) {
                        (true, _) => "✓",
                        (false, true) => "✗",
                        (false, false) => "!",
                    };
                    let _ = writeln!(out, "{mark} {}: {}", check.name, check.detail);
                    if let (false, Some(hint)) = (check.ok, &check.hint) {
                        let _ = writeln!(out, "    hint: {hint}");
                    }
                }
                let failed = self.checks.iter().filter(|c| !c.ok && c.required).count();
                if failed == 0 {
                    out.push_str("all checks passed\n");
                } else {
                    let _ = writeln!(out, "{failed} check(s) failed");
                }
                out
            }
        }
    }
}

fn passed(name: &str, detail: String) -> Check {
    Check {
        name: name.to_owned(),
        ok: true,
        required: true,
        detail,
        hint: None,
    }
}

fn failed(name: &str, detail: String, hint: &str) -> Check {
    Check {
        name: name.to_owned(),
        ok: false,
        required: true,
        detail,
        hint: Some(hint.to_owned()),
    }
}

fn kernel_version() -> Check {
    let name = "kernel version";
    let release = match program_types::kernel_release() {
        Ok(release) => release,
        Err(error) => {
            return failed(
                name,
                format!("cannot read {KERNEL_RELEASE_FILE}: {error}"),
                "is /proc mounted?",
            );
        }
    };
    let version = parse_release(&release);
    match version {
        Some(version) if version >= MIN_KERNEL => passed(
            name,
            format!("{release} (≥ {}.{})", MIN_KERNEL.0, MIN_KERNEL.1),
        ),
        _ => failed(
            name,
            format!("{release} (need ≥ {}.{})", MIN_KERNEL.0, MIN_KERNEL.1),
            "upgrade the node's kernel: sk_lookup needs 5.17",
        ),
    }
}

/// `6.18.0-foo` → (6, 18).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn btf() -> Check {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    if path.exists() {
        passed("BTF", format!("{} present", path.display()))
    } else {
        failed(
            "BTF",
            format!("{} missing", path.display()),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    }
}

/// Whether `path` (or, if it does not exist yet, its nearest existing
/// parent) is on a file system of type `fstype`.
fn filesystem(name: &str, path: &Path, fstype: &str, hint: &str) -> Check {
    let mounts = host::mounts();
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .and_then(|p| p.canonicalize().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    match host::mount_of(&mounts, &existing) {
        Some(mount) if mount.fstype == fstype => passed(
            name,
            format!(
                "{} is on {fstype} (mounted at {})",
                path.display(),
                mount.mount_point.display()
            ),
        ),
        Some(mount) => failed(
            name,
            format!(
                "{} is on {} (mounted at {}), not {fstype}",
                path.display(),
                mount.fstype,
                mount.mount_point.display()
            ),
            hint,
        ),
        None => failed(
            name,
            format!("no mount holds {} (is /proc mounted?)", path.display()),
            hint,
        ),
    }
}

fn program_types() -> Vec<Check> {
    let mut checks: Vec<Check> = REQUIRED_PROGRAM_TYPES
        .iter()
        .map(|(program_type, hook, feature)| {
            let name = format!("program type {hook}");
            match aya::sys::is_program_supported(*program_type) {
                Ok(true) => passed(&name, "loads".to_owned()),
                Ok(false) => failed(&name, "the kernel refuses it".to_owned(), feature),
                Err(error) => failed(
                    &name,
                    format!("cannot probe: {error}"),
                    "run ambit check as root (probing loads a test program)",
                ),
            }
        })
        .collect();
    // The kernel splice is optional: without it same-node traffic goes
    // through the agent.
    let splice = aya::sys::is_program_supported(aya::programs::ProgramType::SkMsg);
    checks.push(Check {
        name: "program type sk_msg (optional kernel splice)".to_owned(),
        ok: matches!(splice, Ok(true)),
        required: false,
        detail: match splice {
            Ok(true) => "loads".to_owned(),
            Ok(false) => {
                "the kernel refuses it; same-node traffic goes through the agent".to_owned()
            }
            Err(error) => format!("cannot probe: {error}"),
        },
        hint: Some("needs CONFIG_NET_SOCK_MSG=y".to_owned()),
    });
    checks
}

fn agent_ready(addr: SocketAddr) -> Check {
    let name = "agent ready";
    match admin::get_text(addr, "/ready") {
        Ok(answer) => passed(name, format!("admin API at {addr}: {}", answer.trim())),
        Err(error @ admin::AdminError::Status { .. }) => failed(
            name,
            error.to_string(),
            "the agent is up but not ready: `ambit pods` and `ambit certs` show which pod or certificate holds it back",
        ),
        Err(error) => failed(
            name,
            error.to_string(),
            "start the agent (ambit-node-agent), or run ambit in its network namespace, or pass --admin",
        ),
    }
}

fn certificates(addr: SocketAddr, min_validity: u64) -> Check {
    let name = "workload certificates";
    let certificates = match admin::get_json(addr, "/certificates") {
        Ok(certificates) => certificates,
        Err(error) => {
            return failed(
                name,
                format!("cannot list them: {error}"),
                "the agent must be running to hold certificates",
            );
        }
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let remaining: Vec<(String, u64)> = certificates
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["identity"].as_str().unwrap_or("?").to_owned(),
                c["not_after"].as_u64().unwrap_or(0).saturating_sub(now),
            )
        })
        .collect();
    let short: Vec<&(String, u64)> = remaining
        .iter()
        .filter(|(_, r)| *r < min_validity)
        .collect();
    if short.is_empty() {
        let soonest = remaining.iter().map(|(_, r)| *r).min();
        passed(
            name,
            match soonest {
                Some(secs) => format!(
                    "{} valid for at least {min_validity} s more (soonest expiry in {secs} s)",
                    remaining.len()
                ),
                None => "none issued yet (no enrolled pod)".to_owned(),
            },
        )
    } else {
        let names: Vec<String> = short
            .iter()
            .map(|(identity, secs)| format!("{identity} ({secs} s left)"))
            .collect();
        failed(
            name,
            format!("expiring within {min_validity} s: {}", names.join(", ")),
            "the agent rotates at half-life: check its log for signing errors and that the CA is still valid",
        )
    }
}

fn ca_bundle(path: Option<&Path>) -> Check {
    let name = "CA bundle";
    let Some(path) = path else {
        return failed(
            name,
            "no CA file to check: the agent is not running and --ca-cert was not given".to_owned(),
            "pass --ca-cert (or set AMBIT_CA_CERT); `ambit ca init` makes one",
        );
    };
    match TrustBundle::load(path) {
        Ok(bundle) => passed(
            name,
            format!(
                "{}: {} certificate(s)",
                path.display(),
                bundle.roots().len()
            ),
        ),
        Err(error) => failed(
            name,
            error.to_string(),
            "`ambit ca init --dir DIR` makes a CA; give the agent --ca-cert DIR/ca.pem",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.0"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn a_failed_required_check_fails_the_report_and_shows_its_hint() {
        let report = Report {
            ok: false,
            checks: vec![
                passed("kernel version", "6.18".to_owned()),
                failed("bpffs", "not mounted".to_owned(), "mount bpffs"),
            ],
        };
        let out = report.render(Output::Table);
        assert!(out.contains("✓ kernel version: 6.18"), "{out}");
        assert!(
            out.contains("✗ bpffs: not mounted\n    hint: mount bpffs"),
            "{out}"
        );
        assert!(out.ends_with("1 check(s) failed\n"), "{out}");
    }
}
