//! `cargo xtask test`: the one test command of the README and CI. Each step
//! runs only if the ones before it passed. The last boots the oldest kernel
//! the project supports (Debian 12's 6.1) under qemu and runs the preflight
//! and one capture test in it, so that a change that breaks that kernel
//! cannot land; `cargo xtask test-kernels` runs the whole set.

use std::path::Path;

use anyhow::Result;

use crate::cmd::{self, cargo, in_ci};
use crate::{kernels, setup};

/// Number of steps, for the `[n/N]` headers.
const STEPS: usize = 7;

/// Runs setup, fmt, clippy, the debug build, a check of the fuzz targets,
/// the test suite and, unless
/// `skip_kernel_boot`, the quick set under the oldest supported kernel.
pub fn run(root: &Path, nextest_args: &[String], skip_kernel_boot: bool) -> Result<()> {
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
    // All targets in one build: the tests activate dev-dependencies' features,
    // so a `--bins` build alone would be compiled a second time by nextest.
    cmd::run(cargo(root).args(["build", "--workspace", "--all-targets"]))?;

    header(5, "fuzz targets build");
    // The fuzz crate is a workspace of its own (docs/building.md,
    // "Fuzzing"): nothing else compiles it, so an API change that breaks a
    // target would otherwise go unnoticed until someone fuzzes.
    let fuzz_manifest = root.join("fuzz/Cargo.toml");
    cmd::run(
        cargo(root)
            .args(["fmt", "--check", "--manifest-path"])
            .arg(&fuzz_manifest),
    )?;
    cmd::run(
        cargo(root)
            .args(["check", "--all-targets", "--manifest-path"])
            .arg(&fuzz_manifest)
            .arg("--target-dir")
            .arg(root.join("target/fuzz-check")),
    )?;

    header(6, "tests");
    let mut nextest = cargo(root);
    nextest.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    if in_ci() {
        nextest.args(["--profile", "ci"]);
    }
    // The tests start the node agent and their helpers from here; each
    // test that skips appends its reason to the skip log, shown below
    // (nextest hides a passing test's output). In CI a skip fails instead.
    let skip_log = root.join("target/skipped-tests.log");
    let _ = std::fs::remove_file(&skip_log);
    nextest
        .args(nextest_args)
        .env("AMBIT_BIN_DIR", root.join("target/debug"))
        .env("AMBIT_SKIP_LOG", &skip_log);
    let result = cmd::run(&mut nextest);
    report_skips(&skip_log);
    result?;

    header(7, "oldest supported kernel (6.1 under qemu)");
    if skip_kernel_boot {
        println!("skipped (--skip-kernel-boot); CI never skips it");
        return Ok(());
    }
    kernels::run(
        root,
        &kernels::Options {
            kernel: kernels::KernelChoice::V6_1,
            quick: true,
            package: None,
        },
    )
}

/// Prints the `SKIPPED:` lines the tests logged, if any.
fn report_skips(skip_log: &Path) {
    let Ok(text) = std::fs::read_to_string(skip_log) else {
        return;
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    if !lines.is_empty() {
        println!(
            "\n==> {} test(s) skipped what this machine cannot run:",
            lines.len()
        );
        for line in lines {
            println!("    {line}");
        }
    }
}

/// Announces step `n`.
fn header(n: usize, title: &str) {
    println!("\n==> [{n}/{STEPS}] {title}");
}
