//! `cargo xtask test-kernels` on a machine that cannot get the kernel it is
//! asked for: exit 2 ("cannot run here", not a test failure), and an error
//! that names the package and the apt command to try. Runs the real binary
//! and the real `apt-get` (a package that does not exist fails before any
//! download).

use std::process::Command;

#[test]
fn a_kernel_package_that_cannot_be_downloaded_exits_2_and_names_the_apt_command() {
    let package = "linux-image-6.1.0-999999-amd64";
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["test-kernels", "--kernel", "6.1", "--package", package])
        .output()
        .expect("run xtask");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: kernel 6.1: cannot download the kernel package {package}"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "hint: check `apt-get update && apt-get download {package}` works on this machine"
        )),
        "{stderr}"
    );
    // Nothing was booted or built for it.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("booting"), "{stdout}");
}
