//! Removing what crashed runs left behind, and the mount-table reading that
//! both this and normal cleanup need.
//!
//! Only names made by a test bed (`ambit-<pid>-...`) whose process is gone are
//! touched; a test running right now in another process keeps its resources.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};

use crate::naming::{self, RUN_ROOT};
use crate::{cgroup, command};

/// One line of `/proc/self/mountinfo`, the fields we need.
pub(crate) struct MountEntry {
    pub(crate) mount_point: PathBuf,
    pub(crate) fstype: String,
}

// === impl MountEntry ===

impl MountEntry {
    /// Parses `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`.
    pub(crate) fn parse(line: &str) -> Option<Self> {
        let (before, after) = line.split_once(" - ")?;
        let mount_point = before.split(' ').nth(4)?;
        let fstype = after.split(' ').next()?;
        Some(Self {
            mount_point: PathBuf::from(unescape(mount_point)),
            fstype: fstype.to_owned(),
        })
    }
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts every mount at or below `dir`, deepest first. Returns messages for
/// those that failed.
pub(crate) fn unmount_under(dir: &Path) -> Vec<String> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return vec!["cannot read /proc/self/mountinfo".to_owned()];
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(MountEntry::parse)
        .map(|entry| entry.mount_point)
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    points.dedup();
    points
        .iter()
        .filter_map(|point| {
            umount2(point, MntFlags::MNT_DETACH)
                .err()
                .map(|error| format!("cannot unmount {}: {error}", point.display()))
        })
        .collect()
}

/// Whether anything is still mounted at or below `dir`.
pub(crate) fn has_mounts_under(dir: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(MountEntry::parse)
        .any(|entry| entry.mount_point.starts_with(dir))
}

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
        for error in unmount_under(dir) {
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
        if has_mounts_under(dir) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let entry = MountEntry::parse(
            "43 27 0:39 / /run/ambit\\040test/bpffs rw,relatime shared:5 - bpf bpf rw",
        )
        .expect("valid line");
        assert_eq!(entry.mount_point, Path::new("/run/ambit test/bpffs"));
        assert_eq!(entry.fstype, "bpf");
    }
}
