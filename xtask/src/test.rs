//! `cargo xtask test`: the one test command of the README and CI. Each step
//! runs only if the ones before it passed.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::{cmd, setup};

/// Number of steps, for the `[n/N]` headers.
const STEPS: usize = 5;

/// Runs setup, fmt, clippy, the debug build and the test suite.
pub fn run(root: &Path, nextest_args: &[String]) -> Result<()> {
    cmd::require_root(
        "test",
        "the tests create network namespaces and cgroups and load eBPF programs",
    )?;

    header(1, "setup");
    setup::run()?;

    header(2, "format");
    cmd::run(cargo(root).args(["fmt", "--all", "--check"]))?;

    header(3, "clippy");
    cmd::run(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    header(4, "build");
    cmd::run(cargo(root).args(["build", "--workspace", "--bins"]))?;

    header(5, "tests");
    let mut nextest = cargo(root);
    nextest.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
        nextest.args(["--profile", "ci"]);
    }
    // The tests start the node agent and their helpers from here.
    nextest
        .args(nextest_args)
        .env("AMBIT_BIN_DIR", root.join("target/debug"));
    cmd::run(&mut nextest)
}

/// A `cargo` command that runs in the workspace root.
fn cargo(root: &Path) -> Command {
    let mut cargo = Command::new("cargo");
    cargo.current_dir(root);
    cargo
}

/// Announces step `n`.
fn header(n: usize, title: &str) {
    println!("\n==> [{n}/{STEPS}] {title}");
}
