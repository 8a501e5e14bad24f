//! `cargo xtask test-kernels`: runs a chosen set of the project's own
//! integration tests under the kernels users have (Debian 12's 6.1 and
//! 6.12), each booted under qemu with software emulation (this VM has no
//! working KVM) by virtme-ng, with the host's root file system shared
//! read-only. The test binaries and the agent are built on the host first;
//! the guest runs them from the shared tree.
//!
//! Progress is shown per kernel and per test, and the run ends with a table
//! of kernel, test, result and time. Exit status: 0 when every test passed on
//! every kernel, 1 when one failed or hung, 2 when this machine cannot run
//! the guests (a kernel package that cannot be downloaded).

mod fetch;
mod guest;

use std::path::Path;

use anyhow::{Result, bail};
use clap::ValueEnum;

use crate::{cmd, setup};

pub use fetch::CannotRunHere;

/// A kernel to test under, by the Debian package series it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KernelChoice {
    /// Debian 12's own kernel, 6.1.
    #[value(name = "6.1")]
    V6_1,
    /// Debian 12's backports kernel, 6.12.
    #[value(name = "6.12")]
    V6_12,
    /// Both.
    All,
}

/// One kernel series: how it is shown and how its package is named.
#[derive(Clone, Copy, Debug)]
pub struct KernelSeries {
    /// `6.1`, `6.12`.
    pub name: &'static str,
    /// The package name pattern (`apt-cache search --names-only`); the
    /// newest match is used.
    pub package_pattern: &'static str,
}

/// The kernels `--kernel all` runs, oldest first.
const SERIES: [KernelSeries; 2] = [
    KernelSeries {
        name: "6.1",
        package_pattern: r"^linux-image-6\.1\.0-[0-9]+-amd64$",
    },
    KernelSeries {
        name: "6.12",
        package_pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",
    },
];

/// A test of the set each guest runs: the integration-test binary (its
/// `tests/tests/<binary>.rs`) and the test's name in it.
#[derive(Clone, Copy, Debug)]
pub struct GuestTest {
    /// The test target's name.
    pub binary: &'static str,
    /// The test function.
    pub name: &'static str,
    /// What it shows about the kernel.
    pub shows: &'static str,
}

// === impl GuestTest ===

impl GuestTest {
    /// `binary::name`, as the guest reports it and the table shows it.
    #[must_use]
    pub fn id(&self) -> String {
        format!("{}::{}", self.binary, self.name)
    }
}

/// What every guest runs. Each agent start also runs the preflight, which
/// names a missing program type and the kernel version.
pub const GUEST_TESTS: &[GuestTest] = &[
    GuestTest {
        binary: "cli_bpf",
        name: "bpf_commands_decode_a_running_agents_pinned_state",
        shows: "preflight, every program loaded and attached, pins decoded",
    },
    GuestTest {
        binary: "capture",
        name: "cross_node_connection_is_captured_by_both_agents",
        shows: "connect4 capture across nodes with mTLS, getpeername",
    },
    GuestTest {
        binary: "mtls",
        name: "strict_pods_refuse_plaintext_from_outside_the_mesh_and_permissive_pods_accept_it",
        shows: "sk_lookup inbound steering",
    },
    GuestTest {
        binary: "capture",
        name: "third_party_proxy_reads_original_dst_with_getsockopt",
        shows: "SO_ORIGINAL_DST through cgroup/getsockopt",
    },
    GuestTest {
        binary: "splice",
        name: "same_node_connections_are_spliced_in_the_kernel_with_exact_byte_counts",
        shows: "the same-node splice (sk_msg, sock_ops)",
    },
    GuestTest {
        binary: "lifecycle",
        name: "restarted_agent_reuses_pinned_state_without_attaching_twice",
        shows: "pinning, and adoption by a restarted agent",
    },
    GuestTest {
        binary: "fail_closed",
        name: "sigkill_fails_closed",
        shows: "fail closed with no agent (SK_DROP, refused connects)",
    },
];

/// Runs the guest test set under `choice`'s kernels.
pub fn run(root: &Path, choice: KernelChoice) -> Result<()> {
    cmd::require_root(
        "test-kernels",
        "the guests' tests create network namespaces and cgroups and load eBPF programs",
    )?;
    setup::run()?;
    let tools = fetch::install_guest_tools(root)?;
    println!("▸ each guest runs:");
    for test in GUEST_TESTS {
        println!("  {}::{} ({})", test.binary, test.name, test.shows);
    }
    let binaries = guest::build_test_binaries(root, GUEST_TESTS)?;
    let series: Vec<KernelSeries> = SERIES
        .into_iter()
        .filter(|series| match choice {
            KernelChoice::All => true,
            KernelChoice::V6_1 => series.name == "6.1",
            KernelChoice::V6_12 => series.name == "6.12",
        })
        .collect();
    // Fetch every kernel first: one that cannot be had means this machine
    // cannot run the matrix, which is not a test failure.
    let mut kernels = Vec::new();
    for series in series {
        kernels.push(fetch::kernel(root, series)?);
    }
    let mut results = Vec::new();
    for kernel in &kernels {
        results.extend(guest::run_kernel(root, &tools, kernel, &binaries)?);
    }
    print!("{}", guest::table(&results));
    let failed = results
        .iter()
        .filter(|result| !result.outcome.passed())
        .count();
    if failed > 0 {
        bail!("{failed} of {} guest tests did not pass", results.len());
    }
    Ok(())
}
