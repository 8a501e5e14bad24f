//! `cargo xtask demo`: builds the release binaries and hands over to
//! `ambit-demo`, which sets up a small meshed cluster of pods in network
//! namespaces on this host.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::{cmd, setup};

/// Runs setup, the release build, then execs `ambit-demo`.
pub fn run(root: &Path) -> Result<()> {
    cmd::require_root(
        "demo",
        "the demo creates network namespaces and cgroups and loads eBPF programs",
    )?;
    setup::run()?;
    cmd::run(
        Command::new("cargo")
            .args(["build", "--release", "--workspace", "--bins"])
            .current_dir(root),
    )?;

    let bin_dir = root.join("target/release");
    let demo = bin_dir.join("ambit-demo");
    if !demo.is_file() {
        bail!(
            "{} is missing after the build; it comes from the tests crate",
            demo.display()
        );
    }
    // exec, so Ctrl-C reaches the demo alone and it can tear its cluster
    // down; its exit code becomes ours.
    Err(cmd::exec(
        Command::new(&demo)
            .env("AMBIT_BIN_DIR", &bin_dir)
            .current_dir(root),
    ))
}
