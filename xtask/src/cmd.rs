//! Running external commands: each is printed as `$ cmd args` before it runs,
//! and a failure becomes an error that carries the child's exit code.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context as _, Result, bail};

/// A command that ran and failed; `main` exits with its `code`.
#[derive(Debug)]
pub struct CommandFailed {
    /// The command line, as printed before it ran.
    pub command: String,
    /// The exit code to propagate (128 + signal number when killed by a signal).
    pub code: u8,
}

// === impl CommandFailed ===

impl CommandFailed {
    /// Builds the error for `command`, which exited with `status`.
    fn new(command: String, status: ExitStatus) -> Self {
        let code = status
            .code()
            .or_else(|| status.signal().map(|signal| 128 + signal))
            .and_then(|code| u8::try_from(code).ok())
            .filter(|&code| code != 0)
            .unwrap_or(1);
        Self { command, code }
    }
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed with exit code {}", self.command, self.code)
    }
}

impl std::error::Error for CommandFailed {}

// === running commands ===

/// Prints `$ cmd args`, runs the command with inherited stdio and fails with
/// [`CommandFailed`] unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = command_line(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if status.success() {
        Ok(())
    } else {
        Err(CommandFailed::new(line, status).into())
    }
}

/// Prints `$ cmd args` and replaces this process with the command, so its
/// exit code and signals are the caller's. Returns only if exec fails.
pub fn exec(cmd: &mut Command) -> anyhow::Error {
    let line = command_line(cmd);
    println!("$ {line}");
    anyhow::Error::new(cmd.exec()).context(format!("cannot start `{line}`"))
}

/// Runs a probe such as `bpf-linker --version` silently; true if it started
/// and exited successfully.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs a probe silently and returns its stdout, or `None` if it could not
/// start or failed.
pub fn stdout_of(cmd: &mut Command) -> Option<String> {
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A `cargo` command that runs in the workspace root. In CI, incremental
/// compilation is off: a fresh clone builds once, and its caches would
/// take gigabytes of a disk that the build has to share. Every cargo
/// invocation of one task goes through here, so that all of them share one
/// profile and none rebuilds what another built.
pub fn cargo(root: &Path) -> Command {
    let mut cargo = Command::new("cargo");
    cargo.current_dir(root);
    if in_ci() {
        cargo.env("CARGO_INCREMENTAL", "0");
    }
    cargo
}

/// Whether this runs in CI (`CI` set and not empty).
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|ci| !ci.is_empty())
}

// === privileges ===

/// Whether this process runs with effective uid 0 (read from
/// `/proc/self/status`, which needs no unsafe code).
pub fn is_root() -> Result<bool> {
    let status =
        fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let effective_uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        .context("/proc/self/status has no effective uid")?;
    Ok(effective_uid == "0")
}

/// Fails with a hint on how to rerun as root unless this process is root.
pub fn require_root(task: &str, why: &str) -> Result<()> {
    if !is_root()? {
        bail!(
            "`cargo xtask {task}` must run as root: {why}.\n\
             hint: sudo -E env \"PATH=$PATH\" cargo xtask {task}"
        );
    }
    Ok(())
}

// === display ===

/// The command as a shell would read it: environment assignments, program, arguments.
pub fn command_line(cmd: &Command) -> String {
    let assignments = cmd.get_envs().filter_map(|(key, value)| {
        value.map(|value| format!("{}={}", key.to_string_lossy(), shell_quote(value)))
    });
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(shell_quote);
    assignments.chain(words).collect::<Vec<_>>().join(" ")
}

/// Quotes a word for a POSIX shell when it contains anything beyond a safe set.
fn shell_quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_quotes_only_what_needs_it() {
        let mut cmd = Command::new("dpkg-query");
        cmd.args(["-W", "-f=${Status}", "it's"]).env("A", "b c");
        assert_eq!(
            command_line(&cmd),
            r"A='b c' dpkg-query -W '-f=${Status}' 'it'\''s'"
        );
    }
}
