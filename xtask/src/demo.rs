//! `cargo xtask demo`: builds the release binaries and hands over to
//! `ambit-demo`, which sets up a small meshed cluster of pods in network
//! namespaces on this host. Arguments after `--` go to the demo:
//! `--verbose` (stream every process's log), `--log-dir DIR`,
//! `--every-command`, `--output json`.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::{cmd, release};

/// Runs setup, the release build, then execs `ambit-demo` with `demo_args`.
pub fn run(root: &Path, demo_args: &[String]) -> Result<()> {
    let why = "the demo creates network namespaces and cgroups and loads eBPF programs";
    let (bin_dir, demo) = release::prepare(root, "demo", why, "ambit-demo")?;
    // exec, so Ctrl-C reaches the demo alone and it can tear its cluster
    // down; its exit code becomes ours.
    Err(cmd::exec(
        Command::new(&demo)
            .args(demo_args)
            .env("AMBIT_BIN_DIR", &bin_dir)
            .current_dir(root),
    ))
}
