//! Test bed for ambit: simulated Kubernetes nodes and pods on one Linux host.
//!
//! A [`Testbed`] owns a "fabric" network namespace with a bridge, one network
//! namespace per [`Node`] and per [`Pod`], a cgroup v2 subtree, a bpffs per node
//! and a scratch directory. Addresses live only inside those namespaces, and
//! everything is removed when the test bed is dropped, also when a test panics.
//! Processes started with [`Testbed::spawn_in_pod`] run in the pod's network
//! namespace and cgroup, as they would under a kubelet.
//!
//! The `pod-tool` binary of this crate is the workload those tests start in pods.
//!
//! Modules import only downward (`cargo xtask lint` checks it); bottom first,
//! each line using only the lines above it:
//!
//! 1. `command`, [`finding`], `mountinfo`, `naming`, [`netns`], [`proc`], `sys`
//! 2. `cgroup`, [`hbone_client`], [`interrupt`], [`ktls`]
//! 3. `stale`
//! 4. [`testbed`]
//! 5. [`fake_kube`], [`mesh`], [`workload`]
//! 6. [`waypoint`]

pub mod fake_kube;
pub mod finding;
pub mod hbone_client;
pub mod interrupt;
pub mod ktls;
pub mod mesh;
pub mod netns;
pub mod proc;
pub mod testbed;
pub mod waypoint;
pub mod workload;

mod cgroup;
mod command;
mod mountinfo;
mod naming;
mod stale;
mod sys;

pub use proc::{Proc, ProcessLogs};
pub use testbed::{CgroupDriver, Node, Pod, Skip, Testbed, run_in_pod};

/// Creates a [`Testbed`] named after the test, or prints a loud `SKIPPED:`
/// line and returns from the calling test when this machine cannot run it.
///
/// ```no_run
/// #[test]
/// fn echo_between_nodes() {
///     let mut tb = ambit_tests::testbed_or_skip!("echo_between_nodes");
///     let n1 = tb.add_node("n1");
///     # let _ = n1;
/// }
/// ```
#[macro_export]
macro_rules! testbed_or_skip {
    ($name:expr) => {
        match $crate::Testbed::new($name) {
            Ok(testbed) => testbed,
            Err(skip) => {
                skip.report($name);
                return;
            }
        }
    };
}
