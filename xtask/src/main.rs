//! `cargo xtask`: the project's developer tasks, written in Rust so that they
//! need nothing but cargo.
//!
//! - `setup` installs the Debian packages and tools the build and tests need.
//! - `build-ebpf` builds the eBPF object with Debian's rustc.
//! - `test` is the README's (and CI's) test command: setup, fmt, clippy, build, nextest.
//! - `demo` builds everything and runs `ambit-demo`.
//! - `bench` builds everything and runs `ambit-bench`, the mesh-vs-direct benchmark.
//! - `soak` builds everything and runs `ambit-bench --soak-minutes N`, the
//!   churn soak.
//! - `test-kernels` runs a set of the integration tests under Debian 12's
//!   kernels, each booted under qemu.
//! - `lint` checks the structure: no import cycle between a crate's top-level
//!   modules, no product file over 600 lines.
//! - `fuzz` runs the fuzz targets of `fuzz/` (cargo-fuzz, libFuzzer), one
//!   after the other, and prints what each reached.
//!
//! Modules import only downward (`cargo xtask lint` checks it); bottom first,
//! each line using only the lines above it:
//!
//! 1. `cmd`, `lint`
//! 2. `setup`
//! 3. `build_ebpf`, `fuzz`, `kernels`, `release`, `test`
//! 4. `bench`, `demo`, `soak`

#![forbid(unsafe_code)]

mod bench;
mod build_ebpf;
mod cmd;
mod demo;
mod fuzz;
mod kernels;
mod lint;
mod release;
mod setup;
mod soak;
mod test;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::cmd::CommandFailed;

/// Command line of `cargo xtask`.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, setup and test tasks for ambit"
)]
struct Cli {
    /// The task to run.
    #[command(subcommand)]
    task: Task,
}

/// The tasks `cargo xtask` knows.
#[derive(Debug, Subcommand)]
enum Task {
    /// Install what the build and tests need (Debian packages, bpf-linker), skipping what is present.
    Setup,
    /// Build the eBPF programs into `target/ebpf/bpfel-unknown-none/<profile>/ambit-ebpf`.
    BuildEbpf {
        /// Build the debug profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Run setup, fmt, clippy, build and the test suite, then the preflight
    /// and one capture test under the 6.1 kernel in qemu (as root).
    Test {
        /// Leave out the last step, the 6.1 kernel under qemu (for local
        /// runs of part of the suite; CI always runs it).
        #[arg(long)]
        skip_kernel_boot: bool,
        /// Extra arguments for `cargo nextest run`, given after `--`.
        #[arg(last = true)]
        nextest_args: Vec<String>,
    },
    /// Run setup, build the release binaries and run `ambit-demo` (as root).
    Demo {
        /// Extra arguments for `ambit-demo`, given after `--` (e.g.
        /// `--every-command`).
        #[arg(last = true)]
        demo_args: Vec<String>,
    },
    /// Run setup, build the release binaries and run `ambit-bench`, which
    /// measures the mesh against direct traffic (as root; see docs/benchmark.md).
    Bench {
        /// Short tests (0.7 s each, median of 3 runs): the whole run takes about 2½ minutes.
        #[arg(long)]
        quick: bool,
        /// Extra arguments for `ambit-bench`, given after `--`.
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
    /// Run setup, build the release binaries and run the churn soak for
    /// N minutes: traffic, enrolment, policy and route churn, certificate
    /// rotation and handoffs at once (as root; see docs/soak.md).
    Soak {
        /// Minutes of churn (at least 2; 30 is the acceptance run).
        #[arg(long, default_value_t = 30)]
        minutes: u32,
        /// Directory for soak.json, soak.md, the plots and soak.log
        /// [default: target/soak].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Extra arguments for `ambit-bench`, given after `--` (e.g.
        /// `--sample-secs 15`).
        #[arg(last = true)]
        soak_args: Vec<String>,
    },
    /// Run a set of the integration tests under Debian 12's kernels (6.1,
    /// 6.12), each booted under qemu (as root; see docs/building.md).
    TestKernels {
        /// Which kernel: 6.1, 6.12 or all.
        #[arg(long, value_enum, default_value = "all")]
        kernel: kernels::KernelChoice,
        /// Only the preflight and one capture test, as `cargo xtask test`
        /// runs them under 6.1; no findings.
        #[arg(long)]
        quick: bool,
        /// Boot this Debian kernel package (e.g. `linux-image-6.1.0-40-amd64`)
        /// instead of the newest of the series; needs `--kernel 6.1` or `6.12`.
        #[arg(long, value_name = "DEBIAN_PACKAGE")]
        package: Option<String>,
    },
    /// Check the structure of every workspace crate: no import cycle between
    /// top-level modules, no product file over 600 lines.
    Lint {
        /// First print each crate's modules in dependency order, bottom first.
        #[arg(long)]
        order: bool,
    },
    /// Run fuzz targets (`fuzz/`, cargo-fuzz with libFuzzer) for `--time`
    /// seconds each; print executions per second, corpus and coverage of
    /// each, and exit 1 with the input's path on a crash (see
    /// docs/building.md).
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// The exit code for a task that failed with `err`. A machine that cannot
/// run a task (test-kernels without its kernel package) exits 2: nothing
/// was tested. Otherwise a failed child command decides, so CI sees the
/// same code that cargo, clippy or nextest returned; anything else is 1.
fn exit_code(err: &anyhow::Error) -> u8 {
    if err
        .chain()
        .any(<dyn std::error::Error>::is::<kernels::CannotRunHere>)
    {
        return kernels::CannotRunHere::EXIT_CODE;
    }
    err.chain()
        .find_map(|cause| cause.downcast_ref::<CommandFailed>())
        .map_or(1, |failed| failed.code)
}

/// Runs one task from the workspace root.
fn run(task: Task) -> Result<()> {
    let root = workspace_root()?;
    match task {
        Task::Setup => setup::run(),
        Task::BuildEbpf { debug } => {
            let object = build_ebpf::run(&root, build_ebpf::Profile::from_debug_flag(debug))?;
            println!("eBPF object: {}", object.display());
            Ok(())
        }
        Task::Test {
            skip_kernel_boot,
            nextest_args,
        } => test::run(&root, &nextest_args, skip_kernel_boot),
        Task::Demo { demo_args } => demo::run(&root, &demo_args),
        Task::Bench { quick, bench_args } => bench::run(&root, quick, &bench_args),
        Task::Soak {
            minutes,
            out,
            soak_args,
        } => soak::run(&root, minutes, out, &soak_args),
        Task::Lint { order } => lint::run(&root, order),
        Task::Fuzz(args) => fuzz::run(&root, &args),
        Task::TestKernels {
            kernel,
            quick,
            package,
        } => kernels::run(
            &root,
            &kernels::Options {
                kernel,
                quick,
                package,
            },
        ),
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_that_cannot_run_a_task_exits_2_and_a_failed_command_passes_its_code_on() {
        let cannot = anyhow::Error::new(kernels::CannotRunHere {
            reason: "cannot download the kernel package x".to_owned(),
        })
        .context("kernel 6.1");
        assert_eq!(exit_code(&cannot), 2);
        let failed = anyhow::Error::new(CommandFailed {
            command: "cargo nextest run".to_owned(),
            code: 100,
        });
        assert_eq!(exit_code(&failed), 100);
        assert_eq!(exit_code(&anyhow::anyhow!("anything else")), 1);
    }
}
