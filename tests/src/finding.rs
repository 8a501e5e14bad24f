//! Findings: facts about the kernel a test ran on, recorded rather than
//! asserted, for the docs' table of how ambit behaves on each kernel.
//!
//! A test that measures a kernel behaviour (for example whether a spliced
//! socket returns a spurious `EAGAIN`) passes either way and records what it
//! saw with [`record`]. `cargo xtask test-kernels` sets [`FINDINGS_ENV`] in
//! each guest and collects the file into its report.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;

/// A file every finding is appended to, one `key<TAB>value` line each, when
/// set (it is created if missing).
pub const FINDINGS_ENV: &str = "AMBIT_FINDINGS";

/// Records the finding `key` (e.g. `spurious_eagain`) with `value`, a short
/// sentence for a docs table cell that starts with `yes` or `no`, e.g.
/// `no: 0 of 40 spliced exchanges`.
///
/// Prints `FINDING {key}: {value}` on stdout and, when [`FINDINGS_ENV`]
/// names a file, appends `{key}\t{value}\n` to it.
///
/// # Panics
///
/// When the key or value cannot be written as one line (a tab or a line
/// break in it), when the value does not start with `yes` or `no`, or when
/// the file that [`FINDINGS_ENV`] names cannot be written: the run asked
/// for the findings, so losing one is a failure.
pub fn record(key: &str, value: &str) {
    assert!(
        !key.is_empty() && !key.contains(['\t', '\n', '\r', ' ']),
        "a finding's key is one word without tabs or line breaks: {key:?}"
    );
    assert!(
        !value.contains(['\t', '\n', '\r']),
        "finding {key}: the value must fit on one line without tabs: {value:?}"
    );
    assert!(
        value.starts_with("yes") || value.starts_with("no"),
        "finding {key}: the value must start with `yes` or `no`: {value:?}"
    );
    println!("FINDING {key}: {value}");
    let Some(path) = std::env::var_os(FINDINGS_ENV).map(PathBuf::from) else {
        return;
    };
    let appended = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(format!("{key}\t{value}\n").as_bytes()));
    if let Err(error) = appended {
        panic!(
            "cannot append finding {key} to {} ({FINDINGS_ENV}): {error}",
            path.display()
        );
    }
}
