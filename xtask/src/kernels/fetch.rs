//! What the guests need: qemu and virtme-ng on the host, and each kernel's
//! Debian package, downloaded and unpacked (never installed) under
//! `target/kernels/`, where later runs find it again.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use super::KernelSeries;
use crate::{cmd, setup};

/// Debian packages the guests need: the emulator; `depmod` (kmod), which
/// virtme-ng runs over the unpacked modules; and a static busybox, which
/// virtme-ng puts in the initramfs it builds for a kernel whose modules
/// are not built in.
const GUEST_PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "busybox-static"];

/// virtme-ng, from `PyPI`: boots a kernel on a read-only view of the host's
/// root file system and runs one command in it.
const VIRTME_NG: &str = "virtme-ng==1.42";

/// This machine cannot run the guests: a kernel package cannot be had.
/// `cargo xtask` exits 2 for it, not 1: nothing was tested.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct CannotRunHere {
    /// What is missing, and what to try.
    pub reason: String,
}

// === impl CannotRunHere ===

impl CannotRunHere {
    /// The exit code of `cargo xtask` for it: "cannot run here", not a test
    /// failure.
    pub const EXIT_CODE: u8 = 2;
}

/// The host tools a guest is started with.
#[derive(Debug)]
pub struct GuestTools {
    /// virtme-ng's `vng`.
    pub vng: PathBuf,
    /// `PATH` for it: its venv first, and `/usr/sbin` for `depmod`.
    pub path: String,
}

/// A kernel ready to boot.
#[derive(Debug)]
pub struct Kernel {
    /// Its series, e.g. `6.1`.
    pub series: KernelSeries,
    /// The Debian package it came from.
    pub package: String,
    /// Its image; its modules are beside it, under `lib/modules`.
    pub vmlinuz: PathBuf,
}

/// Installs qemu, kmod, busybox and virtme-ng where they are missing.
pub fn install_guest_tools(root: &Path) -> Result<GuestTools> {
    let mut present = Vec::new();
    setup::install_debian_packages(GUEST_PACKAGES, &mut present)?;
    let venv = cache_dir(root).join("virtme-ng");
    setup::install_python_tool(&venv, "vng", VIRTME_NG, &mut present)?;
    println!("✓ guest tools: {}", present.join(", "));
    let host_path = std::env::var("PATH").unwrap_or_default();
    Ok(GuestTools {
        vng: venv.join("bin/vng"),
        path: format!("{}:/usr/sbin:/sbin:{host_path}", venv.join("bin").display()),
    })
}

/// The kernel of `series`, unpacked under `target/kernels/`: `package`
/// when given, else the newest package of the series.
pub fn kernel(root: &Path, series: KernelSeries, package: Option<&str>) -> Result<Kernel> {
    let package = match package {
        Some(package) => package.to_owned(),
        None => newest_package(series)?,
    };
    let unpacked = cache_dir(root).join(&package);
    if let Some(vmlinuz) = find_vmlinuz(&unpacked) {
        println!("✓ kernel {}: {package} (cached)", series.name);
        return Ok(Kernel {
            series,
            package,
            vmlinuz,
        });
    }
    println!("· kernel {}: downloading {package}", series.name);
    let deb = download(&package, &cache_dir(root).join("downloads"))?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let vmlinuz = find_vmlinuz(&unpacked)
        .with_context(|| format!("{package} holds no boot/vmlinuz-* image"))?;
    Ok(Kernel {
        series,
        package,
        vmlinuz,
    })
}

/// Downloads `package`'s `.deb` into `downloads` with `apt-get download`
/// and returns its path; [`CannotRunHere`] when apt cannot get it.
fn download(package: &str, downloads: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;
    let fetched = Command::new("apt-get")
        // Root downloads into target/ itself: apt's `_apt` sandbox user
        // could not write there (and would warn that it cannot).
        .args(["download", "-qq", "-o", "APT::Sandbox::User=root", package])
        .current_dir(downloads)
        .status()
        .is_ok_and(|status| status.success());
    let deb = std::fs::read_dir(downloads)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&format!("{package}_")))
        });
    deb.filter(|_| fetched).ok_or_else(|| {
        CannotRunHere {
            reason: format!(
                "cannot download the kernel package {package}\n\
                 hint: check `apt-get update && apt-get download {package}` works on this machine"
            ),
        }
        .into()
    })
}

/// Where the kernels and virtme-ng are kept between runs.
fn cache_dir(root: &Path) -> PathBuf {
    root.join("target/kernels")
}

/// The newest package whose name matches the series' pattern, updating
/// apt's lists once if nothing matches.
fn newest_package(series: KernelSeries) -> Result<String> {
    for refresh in [false, true] {
        if refresh {
            cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
        }
        let listing = cmd::stdout_of(Command::new("apt-cache").args([
            "search",
            "--names-only",
            series.package_pattern,
        ]))
        .unwrap_or_default();
        let newest = listing
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .max_by_key(|name| version_key(name));
        if let Some(name) = newest {
            return Ok(name.to_owned());
        }
    }
    Err(CannotRunHere {
        reason: format!(
            "no Debian package matches {} for kernel {}\n\
             hint: check `apt-cache search --names-only '{}'` after `apt-get update`",
            series.package_pattern, series.name, series.package_pattern
        ),
    }
    .into())
}

/// The numbers in a package name, in order, for picking the newest:
/// `linux-image-6.1.0-50-amd64` sorts after `linux-image-6.1.0-47-amd64`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .collect()
}

/// `boot/vmlinuz-*` of an unpacked package.
fn find_vmlinuz(unpacked: &Path) -> Option<PathBuf> {
    std::fs::read_dir(unpacked.join("boot"))
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("vmlinuz-"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_apt_cannot_get_is_a_cannot_run_here_error_naming_it_and_the_apt_command() {
        let downloads = std::env::temp_dir().join(format!("xtask-download-{}", std::process::id()));
        let package = "linux-image-6.1.0-999999-amd64";
        let err = download(package, &downloads).expect_err("no such package");
        let _ = std::fs::remove_dir_all(&downloads);
        let cannot = err
            .downcast_ref::<CannotRunHere>()
            .unwrap_or_else(|| panic!("not CannotRunHere: {err:#}"));
        assert!(
            cannot
                .reason
                .starts_with(&format!("cannot download the kernel package {package}\n")),
            "{cannot}"
        );
        assert!(
            cannot.reason.contains(&format!(
                "hint: check `apt-get update && apt-get download {package}`"
            )),
            "{cannot}"
        );
    }

    #[test]
    fn the_newest_package_has_the_largest_numbers() {
        let mut names = [
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-50-amd64",
            "linux-image-6.1.0-47-amd64",
        ];
        names.sort_by_key(|name| version_key(name));
        assert_eq!(names[2], "linux-image-6.1.0-50-amd64");
        assert!(
            version_key("linux-image-6.12.101+deb12-amd64")
                > version_key("linux-image-6.12.100+deb12-amd64")
        );
    }
}
