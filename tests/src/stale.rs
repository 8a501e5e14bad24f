//! Removing what crashed runs left behind.
//!
//! Only names made by a test bed (`ambit-<pid>-...`) whose process is gone are
//! touched; a test running right now in another process keeps its resources.

use std::fs;
use std::path::{Path, PathBuf};

use crate::naming::{self, RUN_ROOT};
use crate::{cgroup, command, mountinfo};

/// Names of the network namespaces under `/run/netns`, as `ip netns list`
/// prints them.
pub(crate) fn netns_names() -> Vec<String> {
    command::try_ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Removes the leftovers of test beds whose process no longer exists: kills
/// the processes in their cgroups, unmounts their bpffs, deletes their
/// network namespaces, cgroups and run directories.
pub(crate) fn clean_stale(cgroup2_root: &Path) {
    let stale_cgroups = stale_children(cgroup2_root);
    let stale_run_dirs = stale_children(Path::new(RUN_ROOT));
    let stale_netns: Vec<String> = netns_names()
        .into_iter()
        .filter(|name| naming::is_stale(name))
        .collect();
    if stale_cgroups.is_empty() && stale_run_dirs.is_empty() && stale_netns.is_empty() {
        return;
    }
    eprintln!(
        "ambit-tests: removing leftovers of crashed runs: cgroups {stale_cgroups:?}, run dirs {stale_run_dirs:?}, netns {stale_netns:?}"
    );
    for dir in &stale_cgroups {
        cgroup::kill_all(dir);
    }
    for dir in &stale_run_dirs {
        for error in mountinfo::unmount_under(dir) {
            eprintln!("ambit-tests: stale cleanup: {error}");
        }
    }
    for name in &stale_netns {
        if let Err(error) = command::try_ip(&["netns", "del", name]) {
            eprintln!("ambit-tests: stale cleanup: {error}");
        }
    }
    for dir in &stale_cgroups {
        if let Err(error) = cgroup::remove_tree(dir) {
            eprintln!(
                "ambit-tests: stale cleanup: cannot remove cgroup {}: {error}",
                dir.display()
            );
        }
    }
    for dir in &stale_run_dirs {
        if mountinfo::has_mounts_under(dir) {
            eprintln!(
                "ambit-tests: stale cleanup: {} still has mounts, left in place",
                dir.display()
            );
        } else if let Err(error) = fs::remove_dir_all(dir) {
            eprintln!(
                "ambit-tests: stale cleanup: cannot remove {}: {error}",
                dir.display()
            );
        }
    }
}

/// Subdirectories of `parent` named by a test bed whose process is gone.
fn stale_children(parent: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .filter(|entry| entry.file_name().to_str().is_some_and(naming::is_stale))
        .map(|entry| entry.path())
        .collect()
}
