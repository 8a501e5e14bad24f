//! `ambit ca init` as a user runs it: the binary, its output and exit codes.

use std::process::{Command, Output};

fn ambit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(args)
        .output()
        .expect("run the ambit binary")
}

#[test]
fn ca_init_writes_files_and_refuses_to_overwrite() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("ca");
    let dir_arg = dir.to_str().unwrap();

    let first = ambit(&["ca", "init", "--dir", dir_arg]);
    assert!(first.status.success(), "{first:?}");
    let stdout = String::from_utf8(first.stdout).unwrap();
    let cert = dir.join("ca.pem");
    let key = dir.join("ca-key.pem");
    assert!(stdout.contains(&cert.display().to_string()), "{stdout}");
    assert!(stdout.contains(&key.display().to_string()), "{stdout}");
    assert!(stdout.contains("SHA-256 fingerprint"), "{stdout}");
    mesh_core::ca::CertificateAuthority::load(&cert, &key).expect("the files load back");

    let again = ambit(&["ca", "init", "--dir", dir_arg]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let stderr = String::from_utf8(again.stderr).unwrap();
    assert!(stderr.contains(&cert.display().to_string()), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");

    let forced = ambit(&["ca", "init", "--dir", dir_arg, "--force", "-o", "json"]);
    assert!(forced.status.success(), "{forced:?}");
    let report: serde_json::Value = serde_json::from_slice(&forced.stdout).unwrap();
    assert_eq!(report["trustDomain"], "cluster.local");
    assert_ne!(
        report["sha256Fingerprint"].as_str().unwrap(),
        "",
        "{report}"
    );
}

#[test]
fn bad_usage_exits_2() {
    let output = ambit(&["ca", "init"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}
