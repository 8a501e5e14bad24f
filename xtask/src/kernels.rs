//! `cargo xtask test-kernels`: runs a chosen set of the project's own
//! integration tests under the kernels users have (Debian 12's 6.1 and
//! 6.12), each booted under qemu with software emulation (this VM has no
//! working KVM) by virtme-ng, with the host's root file system shared
//! read-only. The test binaries and the agent are built on the host first;
//! the guest runs them from the shared tree.
//!
//! Progress is shown per kernel and per test, and the run ends with a table
//! of kernel, test, result and time, then a table of two kernel behaviours
//! that shape ambit's design (a spliced socket's spurious `EAGAIN`, kTLS),
//! as recorded on each guest kernel and on this machine's own. Exit status:
//! 0 when every test passed on every kernel, 1 when one failed or hung, 2
//! when this machine cannot run the guests (a kernel package that cannot be
//! downloaded).
//!
//! `--quick` runs only the preflight and one capture test: the step of
//! `cargo xtask test` (and so of CI) that boots 6.1.

mod fetch;
mod guest;

use std::path::Path;

use anyhow::{Context as _, Result, bail};
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

/// What every guest runs; the first [`QUICK_TESTS`] are the quick set.
/// Each agent start also runs the agent's own preflight, which names a
/// missing program type and the kernel version.
pub const GUEST_TESTS: &[GuestTest] = &[
    GuestTest {
        binary: "observe",
        name: "check_passes_on_a_ready_node_and_names_what_is_missing",
        shows: "the preflight (`ambit check`: kernel, BTF, every program type)",
    },
    GuestTest {
        binary: "capture",
        name: "cross_node_connection_is_captured_by_both_agents",
        shows: "connect4 capture across nodes with mTLS, getpeername",
    },
    GuestTest {
        binary: "cli_bpf",
        name: "bpf_commands_decode_a_running_agents_pinned_state",
        shows: "every program loaded and attached, pins decoded",
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
        binary: "kernel_path",
        name: "unenrolment_and_handoff_leave_no_socket_in_the_sock_hash",
        shows: "the kernel path's pod legs (sock_ops netns cookie, sk_msg) across a handoff and an un-enrolment",
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
    BEHAVIOUR_TESTS[0],
    BEHAVIOUR_TESTS[1],
];

/// How many of [`GUEST_TESTS`], from the first, `--quick` runs: the
/// preflight and one capture test.
pub const QUICK_TESTS: usize = 2;

/// The tests that record a kernel behaviour (each as a finding, see
/// `ambit_tests::finding`); they also run on this machine's kernel.
const BEHAVIOUR_TESTS: [GuestTest; 2] = [
    GuestTest {
        binary: "kernel_behaviour",
        name: "a_spliced_blocking_reader_may_see_a_spurious_eagain",
        shows: "records whether tcp_bpf_recvmsg gives a blocking reader a spurious EAGAIN",
    },
    GuestTest {
        binary: "kernel_behaviour",
        name: "ktls_offers_tls13_record_encryption_once_the_tls_module_is_loaded",
        shows: "records whether kTLS (TCP_ULP \"tls\") is offered",
    },
];

/// The findings the behaviour tests record: key, and its column title.
const FINDINGS: &[(&str, &str)] = &[
    (
        "spurious_eagain",
        "spurious `EAGAIN` to a blocking reader of a spliced socket",
    ),
    ("ktls", "kTLS once `tls` is loaded"),
];

/// What `cargo xtask test-kernels` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Which kernels.
    pub kernel: KernelChoice,
    /// Only the first [`QUICK_TESTS`] tests, and no findings.
    pub quick: bool,
    /// A Debian kernel package to boot instead of the series' newest.
    pub package: Option<String>,
}

/// Runs the guest test set under the chosen kernels.
pub fn run(root: &Path, options: &Options) -> Result<()> {
    cmd::require_root(
        "test-kernels",
        "the guests' tests create network namespaces and cgroups and load eBPF programs",
    )?;
    setup::run()?;
    let series: Vec<KernelSeries> = SERIES
        .into_iter()
        .filter(|series| match options.kernel {
            KernelChoice::All => true,
            KernelChoice::V6_1 => series.name == "6.1",
            KernelChoice::V6_12 => series.name == "6.12",
        })
        .collect();
    if options.package.is_some() && series.len() != 1 {
        bail!("--package names one kernel: give --kernel 6.1 or --kernel 6.12 with it");
    }
    // Fetch every kernel first, before anything is built: one that cannot
    // be had means this machine cannot run the matrix, which is not a test
    // failure.
    let mut kernels = Vec::new();
    for series in series {
        let kernel = fetch::kernel(root, series, options.package.as_deref())
            .with_context(|| format!("kernel {}", series.name))?;
        kernels.push(kernel);
    }
    let tools = fetch::install_guest_tools(root)?;
    let tests = if options.quick {
        &GUEST_TESTS[..QUICK_TESTS]
    } else {
        GUEST_TESTS
    };
    println!("▸ each guest runs:");
    for test in tests {
        println!("  {}::{} ({})", test.binary, test.name, test.shows);
    }
    let binaries = guest::build_test_binaries(root, tests)?;
    let mut runs = Vec::new();
    if !options.quick {
        let host = guest::run_on_host(root, &BEHAVIOUR_TESTS, &binaries)?;
        runs.push((guest::HOST.to_owned(), host));
    }
    for kernel in &kernels {
        let run = guest::run_kernel(root, &tools, kernel, tests, &binaries)?;
        runs.push((kernel.series.name.to_owned(), run));
    }
    let results: Vec<&guest::TestResult> = runs.iter().flat_map(|(_, run)| &run.results).collect();
    print!("{}", guest::table(&results));
    if !options.quick {
        let findings: Vec<(String, &guest::KernelRun)> = runs
            .iter()
            .map(|(kernel, run)| (kernel.clone(), run))
            .collect();
        print!("{}", guest::findings_table(&findings, FINDINGS));
    }
    let failed = results
        .iter()
        .filter(|result| !result.outcome.passed())
        .count();
    if failed > 0 {
        bail!("{failed} of {} guest tests did not pass", results.len());
    }
    Ok(())
}
