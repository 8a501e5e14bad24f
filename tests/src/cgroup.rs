//! The cgroup v2 subtree of a test bed: finding the hierarchy, and emptying
//! and removing a subtree. Nothing here touches a cgroup outside the subtrees
//! the test beds created.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Overrides where the cgroup v2 hierarchy is mounted.
pub(crate) const CGROUP2_ROOT_ENV: &str = "AMBIT_CGROUP2_ROOT";

/// How long removal waits for killed processes to leave a cgroup.
const REMOVE_PATIENCE: Duration = Duration::from_secs(5);

/// The cgroup v2 mount point: `$AMBIT_CGROUP2_ROOT`, else the first `cgroup2`
/// mount in `/proc/self/mountinfo` (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub(crate) fn cgroup2_root() -> Option<PathBuf> {
    if let Some(root) = std::env::var_os(CGROUP2_ROOT_ENV) {
        let root = PathBuf::from(root);
        return root.join("cgroup.procs").exists().then_some(root);
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let entry = crate::mountinfo::MountEntry::parse(line)?;
        (entry.fstype == "cgroup2").then_some(entry.mount_point)
    })
}

/// Kills every process in `cgroup` and its descendants.
///
/// Uses `cgroup.kill` where the kernel has it (5.14+), which also catches
/// processes that fork while being killed.
pub(crate) fn kill_all(cgroup: &Path) {
    if !cgroup.exists() {
        return;
    }
    if fs::write(cgroup.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for pid in procs_recursive(cgroup) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Whether any process is left in `cgroup` or below.
pub(crate) fn populated(cgroup: &Path) -> bool {
    fs::read_to_string(cgroup.join("cgroup.events")).map_or_else(
        |_| !procs_recursive(cgroup).is_empty(),
        |events| events.lines().any(|line| line == "populated 1"),
    )
}

/// Removes `cgroup` and everything below it, deepest first, retrying while
/// killed processes are still on their way out (`EBUSY`).
pub(crate) fn remove_tree(cgroup: &Path) -> io::Result<()> {
    if !cgroup.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + REMOVE_PATIENCE;
    loop {
        match remove_depth_first(cgroup) {
            Err(error)
                if error.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                kill_all(cgroup);
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

fn remove_depth_first(cgroup: &Path) -> io::Result<()> {
    for entry in fs::read_dir(cgroup)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_depth_first(&entry.path())?;
        }
    }
    match fs::remove_dir(cgroup) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

fn procs_recursive(cgroup: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    if let Ok(entries) = fs::read_dir(cgroup) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pids.extend(procs_recursive(&entry.path()));
            }
        }
    }
    pids
}
