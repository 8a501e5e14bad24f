//! `cargo xtask soak --minutes N [--out DIR]`: builds the release binaries
//! and hands over to `ambit-bench --soak-minutes N`, the churn soak:
//! traffic, enrolment, policy and route churn, certificate rotation and
//! agent handoffs all at once on a test bed of two nodes and 41 pods,
//! sampled once a minute. It writes `soak.json`, `soak.md` and two plots
//! into `target/soak` (or DIR) and fails when a series grows, a failure has
//! no excuse, a process crashes or a bad object is not rejected (see
//! docs/soak.md).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::{cmd, release};

/// The shortest soak `ambit-bench` accepts: the growth test needs samples
/// in the second half.
pub const MIN_MINUTES: u32 = 2;

/// Checks the length, runs setup and the release build, then execs
/// `ambit-bench --soak-minutes minutes --out out` with `soak_args` after.
pub fn run(root: &Path, minutes: u32, out: Option<PathBuf>, soak_args: &[String]) -> Result<()> {
    if minutes < MIN_MINUTES {
        bail!("a soak runs at least {MIN_MINUTES} minutes (--minutes {minutes})");
    }
    let why = "the soak creates network namespaces and cgroups and loads eBPF programs";
    let (bin_dir, bench) = release::prepare(root, "soak", why, "ambit-bench")?;
    // The soak runs from the workspace root; a relative DIR is the caller's.
    let out = match out {
        Some(dir) => std::env::current_dir()?.join(dir),
        None => root.join("target/soak"),
    };
    let mut command = release::bench_command(root, &bin_dir, &bench);
    command
        .arg("--soak-minutes")
        .arg(minutes.to_string())
        .arg("--out")
        .arg(out)
        .args(soak_args);
    // exec, so Ctrl-C reaches the soak alone and it can tear its test bed
    // down; its exit code becomes ours.
    Err(cmd::exec(&mut command))
}
