//! Reading the mount table (`/proc/self/mountinfo`) and unmounting what a
//! test bed mounted: needed by normal cleanup, by the cgroup root lookup and
//! by the removal of what crashed runs left behind.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};

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
