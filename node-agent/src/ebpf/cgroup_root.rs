//! The cgroup the programs attach to: a directory of a cgroup v2 hierarchy
//! that this process can see. Checked before anything is loaded or pinned,
//! so a wrong setting changes nothing, and refused with a hint that names
//! the usual cause: `ip netns exec`, which remounts `/sys` for the network
//! namespace and so hides the host's cgroup mounts.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{
    CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, FsType, SYSFS_MAGIC, fstatfs, statfs,
};

use super::EbpfError;

/// What to do when no cgroup file system is mounted where the setting
/// points, in this process's mount namespace.
const HIDDEN_BY_IP_NETNS_EXEC: &str = "no cgroup file system is mounted there in this \
     process's mount namespace; `ip netns exec` remounts /sys and hides the host's cgroup \
     mounts, so start the agent with `nsenter --net=/run/netns/NAME` instead, which changes \
     only the network namespace";

/// Opens `path` and checks that it is on cgroup v2.
pub(super) fn open_cgroup_root(path: &Path) -> Result<File, EbpfError> {
    let dir = File::open(path).map_err(|error| EbpfError::Cgroup {
        path: path.to_owned(),
        error,
        hint: missing_hint(path),
    })?;
    let kind = fstatfs(&dir)
        .map_err(|errno| EbpfError::Cgroup {
            path: path.to_owned(),
            error: errno.into(),
            hint: "check that AMBIT_CGROUP_ROOT (--cgroup-root) names a cgroup v2 directory",
        })?
        .filesystem_type();
    if kind == CGROUP2_SUPER_MAGIC {
        return Ok(dir);
    }
    Err(EbpfError::NotCgroup2 {
        path: path.to_owned(),
        hint: not_cgroup2_hint(kind),
    })
}

/// Why `path` may not exist: the nearest directory above it that does tells
/// whether a cgroup hierarchy is mounted there at all.
fn missing_hint(path: &Path) -> &'static str {
    let nearest = nearest_existing(path);
    match statfs(&nearest) {
        Ok(stat) if stat.filesystem_type() == SYSFS_MAGIC => HIDDEN_BY_IP_NETNS_EXEC,
        _ => "check that AMBIT_CGROUP_ROOT (--cgroup-root) names an existing cgroup v2 directory",
    }
}

/// Why a directory that is not on cgroup v2 cannot be used.
fn not_cgroup2_hint(kind: FsType) -> &'static str {
    if kind == CGROUP_SUPER_MAGIC {
        "it is a cgroup v1 hierarchy; the mesh attaches to cgroup v2 (on a hybrid host usually \
         under /sys/fs/cgroup/unified)"
    } else if kind == SYSFS_MAGIC {
        HIDDEN_BY_IP_NETNS_EXEC
    } else {
        "it is not on a cgroup v2 file system; point AMBIT_CGROUP_ROOT (--cgroup-root) at the \
         pods' cgroup under the cgroup v2 mount"
    }
}

/// `path` itself if it exists, else its nearest ancestor that does.
fn nearest_existing(path: &Path) -> PathBuf {
    let mut probe = path.to_owned();
    while !probe.exists() && probe.pop() {}
    probe
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(path: &Path) -> String {
        open_cgroup_root(path).unwrap_err().to_string()
    }

    #[test]
    fn a_directory_outside_any_cgroup_hierarchy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let error = message(dir.path());
        assert!(error.contains("is not a cgroup v2 directory"), "{error}");
        assert!(error.contains("--cgroup-root"), "{error}");
    }

    #[test]
    fn a_missing_cgroup_under_sysfs_names_ip_netns_exec_and_nsenter() {
        // Under /sys with no cgroup mounted there: what an agent started with
        // `ip netns exec` sees in place of the host's cgroup mount.
        let path = Path::new("/sys/ambit-no-such-cgroup/pods");
        let error = message(path);
        assert!(error.contains("cannot open cgroup"), "{error}");
        assert!(
            error.contains("ip netns exec") && error.contains("nsenter --net"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_directory_elsewhere_names_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let error = message(&dir.path().join("pods"));
        assert!(error.contains("AMBIT_CGROUP_ROOT"), "{error}");
        assert!(!error.contains("nsenter"), "{error}");
    }
}
