//! `cargo xtask bench`: builds the release binaries and hands over to
//! `ambit-bench`, which measures the mesh against direct pod-to-pod traffic
//! on a test bed of network namespaces on this host, three interleaved runs
//! by default, and writes `target/bench/report.{json,md}` and `latency.png`
//! (see docs/benchmark.md). Setup installs its tools: `iperf3`, and
//! `fonts-dejavu-core` for the plot's labels.

use std::path::Path;

use anyhow::Result;

use crate::release;

/// Runs setup, the release build, then execs `ambit-bench` with `--quick`
/// when asked and `bench_args` after it.
pub fn run(root: &Path, quick: bool, bench_args: &[String]) -> Result<()> {
    let why = "the benchmark creates network namespaces and cgroups and loads eBPF programs";
    let (bin_dir, bench) = release::prepare(root, "bench", why, "ambit-bench")?;
    let mut command = release::bench_command(root, &bin_dir, &bench);
    if quick {
        command.arg("--quick");
    }
    command
        .args(bench_args)
        .env("AMBIT_BENCH_OUT", root.join("target/bench"));
    // exec, so Ctrl-C reaches the bench alone and it can tear its test bed
    // down; its exit code becomes ours.
    Err(crate::cmd::exec(&mut command))
}
