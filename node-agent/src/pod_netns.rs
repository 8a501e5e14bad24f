//! Finding a pod's network namespace without a CNI plugin: the kubelet puts
//! every pod in a cgroup named after its UID, so the agent finds that
//! cgroup under the pod cgroup root, takes a process in it (or in one of
//! its containers' cgroups) and opens `/proc/<pid>/ns/net`.
//!
//! | kubelet cgroup driver | the pod's cgroup |
//! | --- | --- |
//! | cgroupfs | `kubepods[/burstable\|/besteffort]/pod<uid>` |
//! | systemd | `kubepods.slice[/kubepods-burstable.slice]/kubepods[-burstable]-pod<uid with _ for ->.slice` |

use std::{
    fs,
    path::{Path, PathBuf},
};

use mesh_kube::snapshot::PodNetnsFinder;

/// How deep below the cgroup root a pod's cgroup may be (`QoS` level, pod).
const POD_DEPTH: usize = 3;
/// How deep below the pod's cgroup its processes may be (container, and a
/// sandbox's own child).
const CONTAINER_DEPTH: usize = 2;

/// Why a pod's network namespace was not found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodNetnsError {
    /// No cgroup of that pod under the root.
    #[error(
        "no cgroup named after pod {uid} under {root} (is --cgroup-root the kubelet's pod cgroup root?)"
    )]
    NoCgroup {
        /// The pod's UID.
        uid: String,
        /// Where it was looked for.
        root: PathBuf,
    },
    /// The cgroup exists but holds no process yet (the pod is starting).
    #[error("pod {uid}'s cgroup {cgroup} holds no process yet")]
    NoProcess {
        /// The pod's UID.
        uid: String,
        /// Its cgroup.
        cgroup: PathBuf,
    },
}

/// Finds this node's pods' network namespaces through their cgroups under
/// the kubelet's pod cgroup root (`--cgroup-root`).
#[derive(Clone, Debug)]
pub struct CgroupPodNetns {
    /// The kubelet's pod cgroup root.
    pub cgroup_root: PathBuf,
}

// === impl CgroupPodNetns ===

impl PodNetnsFinder for CgroupPodNetns {
    fn find(&self, uid: &str) -> Result<PathBuf, mesh_kube::snapshot::PodNetnsError> {
        Ok(find(&self.cgroup_root, uid)?)
    }
}

/// `/proc/<pid>/ns/net` of a process of the pod with `uid`, found under
/// `cgroup_root`.
pub fn find(cgroup_root: &Path, uid: &str) -> Result<PathBuf, PodNetnsError> {
    let cgroup =
        find_pod_cgroup(cgroup_root, uid, POD_DEPTH).ok_or_else(|| PodNetnsError::NoCgroup {
            uid: uid.to_owned(),
            root: cgroup_root.to_owned(),
        })?;
    first_process(&cgroup, CONTAINER_DEPTH)
        .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")))
        .ok_or(PodNetnsError::NoProcess {
            uid: uid.to_owned(),
            cgroup,
        })
}

/// Whether a cgroup directory's name is the pod's, under either driver.
fn names_pod(name: &str, uid: &str) -> bool {
    if name == format!("pod{uid}") {
        return true;
    }
    let systemd = format!("pod{}.slice", uid.replace('-', "_"));
    name.ends_with(&systemd) && name.starts_with("kubepods")
}

fn find_pod_cgroup(dir: &Path, uid: &str, depth: usize) -> Option<PathBuf> {
    let entries = fs::read_dir(dir).ok()?;
    let mut children = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| names_pod(name, uid))
        {
            return Some(path);
        }
        children.push(path);
    }
    if depth <= 1 {
        return None;
    }
    children
        .iter()
        .find_map(|child| find_pod_cgroup(child, uid, depth - 1))
}

/// A live process of the cgroup or of its children, up to `depth` below.
fn first_process(cgroup: &Path, depth: usize) -> Option<u32> {
    let own = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    let alive = own
        .lines()
        .filter_map(|line| line.trim().parse::<u32>().ok())
        .find(|pid| Path::new(&format!("/proc/{pid}/ns/net")).exists());
    if alive.is_some() || depth == 0 {
        return alive;
    }
    let mut children: Vec<PathBuf> = fs::read_dir(cgroup)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    children.sort();
    children
        .iter()
        .find_map(|child| first_process(child, depth - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f1c2b7e-0a4d-4a8e-9d1f-2c3b4a5d6e7f";

    /// A cgroup-like tree in a temporary directory: `cgroup.procs` files
    /// naming this test's own process.
    fn tree(dirs: &[&str], procs_in: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for dir in dirs {
            fs::create_dir_all(root.path().join(dir)).unwrap();
            fs::write(root.path().join(dir).join("cgroup.procs"), "").unwrap();
        }
        fs::write(
            root.path().join(procs_in).join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        root
    }

    #[test]
    fn both_cgroup_drivers_lead_to_the_pods_netns() {
        let own = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
        let cgroupfs = format!("burstable/pod{UID}");
        let container = format!("{cgroupfs}/cri-containerd-abc");
        let root = tree(&["burstable", &cgroupfs, &container], &container);
        assert_eq!(find(root.path(), UID), Ok(own.clone()));

        let slice = format!(
            "kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            UID.replace('-', "_")
        );
        let root = tree(&["kubepods-besteffort.slice", &slice], &slice);
        assert_eq!(find(root.path(), UID), Ok(own));
    }

    #[test]
    fn a_missing_or_empty_cgroup_is_named() {
        let root = tree(&["burstable", "burstable/podother"], "burstable/podother");
        assert!(matches!(
            find(root.path(), UID),
            Err(PodNetnsError::NoCgroup { .. })
        ));
        let pod = format!("pod{UID}");
        let root = tree(&[&pod, "elsewhere"], "elsewhere");
        let error = find(root.path(), UID).unwrap_err();
        assert!(matches!(error, PodNetnsError::NoProcess { .. }));
        assert!(
            error.to_string().contains("holds no process yet"),
            "{error}"
        );
    }
}
