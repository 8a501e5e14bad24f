//! Names of everything a test bed creates. Each carries the creating process's
//! PID, so a later run can tell the leftovers of a crashed run (PID gone) from
//! the resources of a test running right now.

use std::path::Path;

/// Prefix of every netns, cgroup and run directory name: `ambit-<pid>-...`.
pub(crate) const PREFIX: &str = "ambit-";

/// Parent of the per-test scratch directories.
pub(crate) const RUN_ROOT: &str = "/run/ambit-test";

/// Longest node or pod name accepted, to keep namespace names readable.
const MAX_NAME_LEN: usize = 24;

/// Turns a test name into a short id fragment: lowercase ASCII letters, digits
/// and dashes, at most 16 characters, never empty.
pub(crate) fn short_test_name(test_name: &str) -> String {
    let mut short: String = test_name
        .rsplit("::")
        .next()
        .unwrap_or(test_name)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(16)
        .collect();
    while short.ends_with('-') {
        short.pop();
    }
    let short = short.trim_start_matches('-');
    if short.is_empty() {
        "t".to_owned()
    } else {
        short.to_owned()
    }
}

/// Panics unless `name` is a valid node or pod name: lowercase ASCII letters,
/// digits and inner dashes, as Kubernetes names are.
pub(crate) fn check_object_name(kind: &str, name: &str) {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    assert!(
        valid,
        "invalid {kind} name {name:?}: use 1..={MAX_NAME_LEN} lowercase letters, digits and inner dashes"
    );
}

/// The PID encoded in a name made by a test bed (`ambit-<pid>-<rest>`), or
/// `None` for names that are not ours.
pub(crate) fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, tail) = rest.split_once('-')?;
    if pid.is_empty() || tail.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether a process with this PID exists (zombies included).
pub(crate) fn pid_alive(pid: i32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Whether `name` was made by a test bed whose process is gone.
pub(crate) fn is_stale(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| !pid_alive(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_safe_for_namespaces() {
        assert_eq!(short_test_name("testbed::echo_over_ipv4"), "echo-over-ipv4");
        assert_eq!(short_test_name("__"), "t");
        assert_eq!(
            short_test_name("A very long test name indeed"),
            "a-very-long-test"
        );
    }

    #[test]
    fn owner_pid_only_parses_our_names() {
        assert_eq!(owner_pid("ambit-123-0-echo-fabric"), Some(123));
        assert_eq!(owner_pid("ambit-demo-n1"), None);
        assert_eq!(owner_pid("ambit-123"), None);
        assert_eq!(owner_pid("other-123-x"), None);
    }
}
