//! `cargo xtask setup`: installs what the build and tests need, skipping what
//! is already present. The recipe is docs/building.md's.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd;

/// Debian packages: Debian's rustc with a prebuilt `core` for BPF targets,
/// the LLVM that bpf-linker links against, and the tools the tests drive.
const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "bpftool",
    "iproute2",
    "iperf3",
    "tcpdump",
    "curl",
    "tshark",
    "openssl",
    // h2load and nghttp: HTTP/2 clients for the waypoint's tests and bench.
    "nghttp2-client",
    // nghttpd: the HTTP/2 server (epoll, non-blocking) of the kernel
    // path's tests.
    "nghttp2-server",
    // HTTP/1.1 load for the waypoint's bench.
    "wrk",
    // The font of the benchmark's latency plot (ambit-bench loads the TTF).
    "fonts-dejavu-core",
    // The OpenMetrics parser the metrics tests check the agent's /metrics with.
    "python3-prometheus-client",
    // The virtual environment kubernetes-validate is installed in.
    "python3-venv",
];

/// Debian's `kubectl` (`kubectl kustomize` builds the manifests in the
/// tests), installed only when no `kubectl` is on the PATH: another
/// package may already provide one.
const KUBECTL_PACKAGE: &str = "kubernetes-client";

/// Where `kubernetes-validate` (from `PyPI`) is installed, in a virtual
/// environment of its own; the manifests tests run it from here, and its
/// Python (which has kubernetes-validate's `jsonschema` and `PyYAML`) runs
/// `tests/scripts/validate_crs.py`.
pub const KUBERNETES_VALIDATE_VENV: &str = "/opt/ambit-tools/kubernetes-validate";

/// The kubernetes-validate release: it carries the schemas up to
/// Kubernetes 1.33, which the manifests are validated against.
const KUBERNETES_VALIDATE_VERSION: &str = "1.33.1";

/// The bpf-linker release that builds against LLVM 22 with our rustc.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where `llvm-22-dev` installs LLVM.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian's rustc (from `rustc-web`), the compiler for the eBPF crate.
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// The prebuilt `core` for the eBPF target (from `libstd-rust-web-dev-bpf`).
const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none";

/// Installs whatever is missing and checks that the toolchain paths exist.
/// Prints one line for everything already present, and a line for each
/// install, so that a machine that is ready costs one line of output.
pub fn run() -> Result<()> {
    let mut present = Vec::new();
    install_debian_packages(DEBIAN_PACKAGES, &mut present)?;
    install_kubectl(&mut present)?;
    install_kubernetes_validate(&mut present)?;
    install_bpf_linker(&mut present)?;
    install_nextest(&mut present)?;
    verify_paths(&mut present)?;
    println!(
        "✓ setup: {} present ({})",
        present.len(),
        present.join(", ")
    );
    Ok(())
}

/// Installs the missing ones of `packages` with one `apt-get update` and one
/// `apt-get install`, adding those already there to `present`.
pub fn install_debian_packages(packages: &[&str], present: &mut Vec<String>) -> Result<()> {
    let mut missing = Vec::new();
    for &package in packages {
        if is_installed(package) {
            present.push(package.to_owned());
        } else {
            println!("· {package}: installing");
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root()? {
        bail!(
            "installing Debian packages needs root; missing: {}.\n\
             hint: run `cargo xtask setup` as root, or `apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Installs Debian's `kubernetes-client` unless a `kubectl` runs.
fn install_kubectl(present: &mut Vec<String>) -> Result<()> {
    if cmd::succeeds(Command::new("kubectl").args(["version", "--client"])) {
        present.push("kubectl".to_owned());
        return Ok(());
    }
    println!("· kubectl: installing {KUBECTL_PACKAGE}");
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", KUBECTL_PACKAGE])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Creates the kubernetes-validate virtual environment unless its
/// command already runs.
fn install_kubernetes_validate(present: &mut Vec<String>) -> Result<()> {
    let spec = format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}");
    install_python_tool(
        Path::new(KUBERNETES_VALIDATE_VENV),
        "kubernetes-validate",
        &spec,
        present,
    )
}

/// Installs `spec` from `PyPI` into a virtual environment of its own at
/// `venv`, unless `venv/bin/<command> --version` already runs.
pub fn install_python_tool(
    venv: &Path,
    command: &str,
    spec: &str,
    present: &mut Vec<String>,
) -> Result<()> {
    if cmd::succeeds(Command::new(venv.join("bin").join(command)).arg("--version")) {
        present.push(command.to_owned());
        return Ok(());
    }
    println!("· {command}: installing {spec} in {}", venv.display());
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .arg(spec),
    )
}

/// Whether dpkg reports `package` as installed.
fn is_installed(package: &str) -> bool {
    cmd::stdout_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

/// Installs bpf-linker from crates.io unless `bpf-linker --version` works.
fn install_bpf_linker(present: &mut Vec<String>) -> Result<()> {
    if cmd::succeeds(Command::new("bpf-linker").arg("--version")) {
        present.push("bpf-linker".to_owned());
        return Ok(());
    }
    println!("· bpf-linker: installing {BPF_LINKER_VERSION}");
    cmd::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            // bpf-linker 0.13's build script reads LLVM_PREFIX; llvm-sys
            // reads its own variable. Both are needed.
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX),
    )
}

/// Installs cargo-nextest, the test runner of `cargo xtask test`, unless
/// `cargo nextest --version` works.
fn install_nextest(present: &mut Vec<String>) -> Result<()> {
    if cmd::succeeds(Command::new("cargo").args(["nextest", "--version"])) {
        present.push("cargo-nextest".to_owned());
        return Ok(());
    }
    println!("· cargo-nextest: installing");
    cmd::run(Command::new("cargo").args(["install", "cargo-nextest", "--locked"]))
}

/// The cargo-fuzz release `cargo xtask fuzz` installs: it drives libFuzzer
/// from crates.io's `libfuzzer-sys`, on the stable toolchain with
/// `RUSTC_BOOTSTRAP=1`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Installs cargo-fuzz, which `cargo xtask fuzz` runs, unless `cargo fuzz
/// --version` works. Not part of [`run`]: only fuzzing needs it.
pub fn install_cargo_fuzz(present: &mut Vec<String>) -> Result<()> {
    if cmd::succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        present.push("cargo-fuzz".to_owned());
        return Ok(());
    }
    println!("· cargo-fuzz: installing {CARGO_FUZZ_VERSION}");
    cmd::run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

/// Checks that the packages put Debian's rustc and the BPF `core` where the
/// eBPF build expects them.
fn verify_paths(present: &mut Vec<String>) -> Result<()> {
    for (path, package) in [
        (DEBIAN_RUSTC, "rustc-web"),
        (BPF_CORE_DIR, "libstd-rust-web-dev-bpf"),
    ] {
        if !Path::new(path).exists() {
            bail!("{path} is missing although {package} is installed; check the package");
        }
        present.push(path.to_owned());
    }
    Ok(())
}
