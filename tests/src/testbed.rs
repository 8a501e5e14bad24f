//! The test bed: a small cluster of simulated nodes and pods, and the
//! processes running in them.
//!
//! Topology (every address lives only inside the test bed's namespaces):
//!
//! ```text
//!  fabric netns: br0 ── n1 ═══ eth0  node n1 netns (172.30.0.1/24, fd00:172:30::1/64)
//!                   │              p1 ═══ eth0  pod netns (10.10.1.11/32, fd00:10:10:1::b/128)
//!                   └─ n2 ═══ eth0  node n2 netns (172.30.0.2/24, ...)
//! ```
//!
//! Pods route everything via `169.254.1.1` (answered by proxy ARP on the
//! node's `p<j>`) and `fe80::1`, as Calico does; nodes route to each other's
//! pod ranges (`10.10.<k>.0/24`, `fd00:10:10:<k>::/64`) over the fabric.

mod topology;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::naming::{self, PREFIX, RUN_ROOT};
use crate::proc::{self, ChildSlot, Proc, ProcessLogs};
use crate::{cgroup, command, mountinfo, stale, sys};

/// Directory of the workspace's binaries, overriding the guess from the test
/// executable's location.
pub const BIN_DIR_ENV: &str = "AMBIT_BIN_DIR";

/// Set to `0` to run as if the machine had no IPv6.
pub const IPV6_ENV: &str = "AMBIT_TEST_IPV6";
/// A file every skipped test appends its `SKIPPED:` line to (set by
/// `cargo xtask test`, which prints it after the run).
pub const SKIP_LOG_ENV: &str = "AMBIT_SKIP_LOG";

/// Numbers test beds made by this process, so parallel tests in one process
/// get distinct names.
static TESTBED_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A simulated cluster for one test. Dropping it removes everything it made,
/// in reverse order: processes, bpffs mounts, network namespaces, cgroups,
/// the run directory.
pub struct Testbed {
    id: String,
    cgroup: PathBuf,
    run_dir: PathBuf,
    fabric_netns: String,
    ipv6: bool,
    nodes: Vec<NodeState>,
    pod_count: u32,
    /// Network namespaces in creation order.
    netns: Vec<String>,
    /// bpffs mount points in creation order.
    mounts: Vec<PathBuf>,
    children: Mutex<Vec<Arc<Mutex<ChildSlot>>>>,
    process_logs: ProcessLogs,
}

/// A simulated node: a network namespace on the fabric, a cgroup subtree
/// playing the kubelet's `kubepods`, and a bpffs of its own.
#[derive(Clone, Debug)]
pub struct Node {
    /// The name given to [`Testbed::add_node`], e.g. `n1`.
    pub name: String,
    /// The `ip netns` name.
    pub netns: String,
    /// `/run/netns/<netns>`, for `setns`.
    pub netns_path: PathBuf,
    /// `<test cgroup>/<node>/kubepods`: the agent attaches its cgroup programs here.
    pub cgroup_root: PathBuf,
    /// `<cgroup_root>/ambit-agent`: where the agent runs, like a `DaemonSet` pod.
    pub agent_cgroup: PathBuf,
    /// A fresh bpffs mounted at `<run_dir>/<node>/bpffs`.
    pub bpffs: PathBuf,
    /// The node's address on the fabric, `172.30.0.<index>`.
    pub underlay_v4: Ipv4Addr,
    /// `fd00:172:30::<index>` when IPv6 is available.
    pub underlay_v6: Option<Ipv6Addr>,
    /// 1-based position among the test bed's nodes.
    pub index: u8,
    /// The fabric-side veth of the node's `eth0`, in the fabric netns
    /// (a place to capture what crosses between nodes).
    pub fabric_ifname: String,
}

/// A simulated pod: a network namespace wired to its node and a cgroup under
/// the node's `kubepods`.
#[derive(Clone, Debug)]
pub struct Pod {
    /// The pod name.
    pub name: String,
    /// The Kubernetes namespace it pretends to live in.
    pub namespace: String,
    /// The name of its node.
    pub node: String,
    /// The `ip netns` name.
    pub netns: String,
    /// `/run/netns/<netns>`, for `setns`.
    pub netns_path: PathBuf,
    /// `<node cgroup_root>/pod<n>-<name>`.
    pub cgroup: PathBuf,
    /// `10.10.<node index>.<10 + j>`.
    pub ipv4: Ipv4Addr,
    /// `fd00:10:10:<node index>::<10 + j>` when IPv6 is available.
    pub ipv6: Option<Ipv6Addr>,
    /// The node-side end of the pod's veth (`p<j>`), in the node's netns.
    pub host_ifname: String,
}

/// How the kubelet names pod cgroups (its `cgroupDriver` setting), for
/// pods that play Kubernetes pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupDriver {
    /// `kubepods/burstable/pod<uid>`.
    Cgroupfs,
    /// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid with _>.slice`.
    Systemd,
}

/// Why a test bed cannot be built on this machine; the test should report it
/// loudly and pass without testing anything.
#[derive(Clone, Debug)]
pub struct Skip {
    /// What is missing.
    pub reason: String,
}

struct NodeState {
    node: Node,
    pods: u8,
}

// === impl Testbed ===

impl Testbed {
    /// Creates a test bed named after the test (a short ASCII name is best).
    ///
    /// Returns [`Skip`] when the machine cannot host one: not root, no cgroup
    /// v2, or no `ip`. Leftovers of earlier crashed runs are removed first.
    pub fn new(test_name: &str) -> Result<Self, Skip> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Skip::new("not running as root"));
        }
        let Some(cgroup2_root) = cgroup::cgroup2_root() else {
            return Err(Skip::new(
                "no cgroup v2 hierarchy mounted (set AMBIT_CGROUP2_ROOT to point at one)",
            ));
        };
        if command::try_ip(&["-V"]).is_err() {
            return Err(Skip::new("the `ip` tool (iproute2) is not installed"));
        }
        stale::clean_stale(&cgroup2_root);

        let short = naming::short_test_name(test_name);
        let pid = std::process::id();
        let existing_netns = stale::netns_names();
        let id = loop {
            let counter = TESTBED_COUNTER.fetch_add(1, Ordering::Relaxed);
            let candidate = format!("{PREFIX}{pid}-{counter}-{short}");
            // A PID reused from a crashed run could meet its leftovers.
            let taken = cgroup2_root.join(&candidate).exists()
                || Path::new(RUN_ROOT).join(&candidate).exists()
                || existing_netns
                    .iter()
                    .any(|name| name.starts_with(&format!("{candidate}-")));
            if !taken {
                break candidate;
            }
        };
        let mut testbed = Self {
            cgroup: cgroup2_root.join(&id),
            run_dir: Path::new(RUN_ROOT).join(&id),
            fabric_netns: format!("{id}-fabric"),
            id,
            ipv6: ipv6_wanted()?,
            nodes: Vec::new(),
            pod_count: 0,
            netns: Vec::new(),
            mounts: Vec::new(),
            children: Mutex::new(Vec::new()),
            process_logs: ProcessLogs::default(),
        };
        std::fs::create_dir_all(&testbed.run_dir)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", testbed.run_dir.display()));
        std::fs::create_dir(&testbed.cgroup).unwrap_or_else(|error| {
            panic!("cannot create cgroup {}: {error}", testbed.cgroup.display())
        });
        testbed.create_fabric();
        Ok(testbed)
    }

    /// The unique id in every name this test bed made: `ambit-<pid>-<n>-<test>`.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The per-test scratch directory `/run/ambit-test/<id>/`.
    #[must_use]
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Where the output of processes started from now on goes, besides
    /// their [`Proc`]: by default echoed to this process's stderr only.
    /// A log directory must exist; it is not removed with the test bed.
    pub fn set_process_logs(&mut self, logs: ProcessLogs) {
        self.process_logs = logs;
    }

    /// The test bed's own cgroup, parent of every node's subtree.
    #[must_use]
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The `ip netns` name of the fabric joining the nodes (bridge `br0`).
    #[must_use]
    pub fn fabric_netns(&self) -> &str {
        &self.fabric_netns
    }

    /// The nodes added so far.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().map(|state| &state.node)
    }

    /// Whether pods and nodes get IPv6 addresses too.
    #[must_use]
    pub fn ipv6_available(&self) -> bool {
        self.ipv6
    }

    /// Starts `cmd` inside `pod`: in its network namespace and its cgroup,
    /// from its very first instruction.
    pub fn spawn_in_pod(&self, pod: &Pod, cmd: Command) -> Proc {
        let name = format!("{}-{}", pod.name, program_name(&cmd));
        self.spawn_inside(&name, &pod.netns_path, &pod.cgroup, cmd)
    }

    /// Starts `cmd` in `node`'s network namespace and in `cgroup`, which must
    /// lie inside this test bed's cgroup (it is created if missing), e.g.
    /// [`Node::agent_cgroup`].
    pub fn spawn_on_node(&self, node: &Node, cgroup: &Path, cmd: Command) -> Proc {
        let name = format!("{}-{}", node.name, program_name(&cmd));
        self.spawn_inside(&name, &node.netns_path, cgroup, cmd)
    }

    /// Runs `cmd` inside `pod` to completion (at most 60 s, then it is killed
    /// and the test panics) and returns its output.
    pub fn run_in_pod(&self, pod: &Pod, mut cmd: Command) -> Output {
        let (procs, netns) = self.open_join_targets(&pod.netns_path, &pod.cgroup);
        sys::join_before_exec(&mut cmd, procs.as_raw_fd(), netns.as_raw_fd());
        let output = command::output_with_timeout(cmd, command::ONE_SHOT_TIMEOUT);
        drop((procs, netns));
        output.unwrap_or_else(|error| panic!("in pod {}: {error}", pod.name))
    }

    /// Runs `ip netns exec NETNS ARGS...` (e.g. `curl`, `ip`, `ss`) in one of
    /// this test bed's namespaces, at most 60 s, and returns its output.
    ///
    /// The command stays in the test's own cgroup, so cgroup eBPF programs
    /// attached to a node's `kubepods` do not see it: to play a pod's
    /// application, use [`run_in_pod`](Self::run_in_pod) instead.
    pub fn exec_in_netns(&self, netns: &str, args: &[&str]) -> Output {
        assert!(
            self.netns.iter().any(|ours| ours == netns),
            "{netns} is not a network namespace of this test bed"
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).args(args);
        command::output_with_timeout(cmd, command::ONE_SHOT_TIMEOUT)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Finds a workspace binary: `$AMBIT_BIN_DIR/<name>`, else next to the
    /// test executable's directory (`target/debug/deps/..`), else beside it.
    #[must_use]
    pub fn bin(name: &str) -> PathBuf {
        if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
            let path = PathBuf::from(dir).join(name);
            assert!(
                path.is_file(),
                "{} does not exist ({BIN_DIR_ENV} is set); run `cargo build --workspace --bins`, or `cargo xtask test`",
                path.display()
            );
            return path;
        }
        let exe = std::env::current_exe().expect("the test executable has a path");
        let exe_dir = exe.parent().expect("an executable lives in a directory");
        let candidates = [
            exe_dir.parent().map(|dir| dir.join(name)),
            Some(exe_dir.join(name)),
        ];
        candidates.into_iter().flatten().find(|path| path.is_file()).unwrap_or_else(|| {
            panic!(
                "binary `{name}` not found near {}; run `cargo build --workspace --bins`, or `cargo xtask test` (or set {BIN_DIR_ENV})",
                exe.display()
            )
        })
    }

    fn spawn_inside(&self, name: &str, netns_path: &Path, cgroup: &Path, mut cmd: Command) -> Proc {
        let (procs, netns) = self.open_join_targets(netns_path, cgroup);
        sys::join_before_exec(&mut cmd, procs.as_raw_fd(), netns.as_raw_fd());
        let proc = Proc::spawn(name, cmd, &self.run_dir, &self.process_logs);
        drop((procs, netns));
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(proc.slot());
        proc
    }

    /// Opens, before forking, what the child joins: the cgroup's
    /// `cgroup.procs` and the netns file.
    fn open_join_targets(&self, netns_path: &Path, cgroup: &Path) -> (File, File) {
        assert!(
            cgroup.starts_with(&self.cgroup),
            "cgroup {} is outside this test bed's {}",
            cgroup.display(),
            self.cgroup.display()
        );
        std::fs::create_dir_all(cgroup)
            .unwrap_or_else(|error| panic!("cannot create cgroup {}: {error}", cgroup.display()));
        let procs_path = cgroup.join("cgroup.procs");
        let procs = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .unwrap_or_else(|error| panic!("cannot open {}: {error}", procs_path.display()));
        let netns = File::open(netns_path)
            .unwrap_or_else(|error| panic!("cannot open {}: {error}", netns_path.display()));
        (procs, netns)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(PoisonError::into_inner));
        proc::stop_all(&children, proc::DROP_GRACE);
        // Grandchildren and anything else that landed in our subtree.
        cgroup::kill_all(&self.cgroup);
        for mount in self.mounts.iter().rev() {
            if let Err(error) = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("ambit-tests: cannot unmount {}: {error}", mount.display());
            }
        }
        for netns in self.netns.iter().rev() {
            if let Err(error) = command::try_ip(&["netns", "del", netns]) {
                eprintln!("ambit-tests: {error}");
            }
        }
        if let Err(error) = cgroup::remove_tree(&self.cgroup) {
            let busy = if cgroup::populated(&self.cgroup) {
                " (processes remain)"
            } else {
                ""
            };
            eprintln!(
                "ambit-tests: cannot remove cgroup {}{busy}: {error}",
                self.cgroup.display()
            );
        }
        if mountinfo::has_mounts_under(&self.run_dir) {
            eprintln!(
                "ambit-tests: {} still has mounts, left in place",
                self.run_dir.display()
            );
        } else if let Err(error) = std::fs::remove_dir_all(&self.run_dir) {
            eprintln!(
                "ambit-tests: cannot remove {}: {error}",
                self.run_dir.display()
            );
        }
    }
}

/// Runs `cmd` inside `pod` to completion; see [`Testbed::run_in_pod`].
pub fn run_in_pod(testbed: &Testbed, pod: &Pod, cmd: Command) -> Output {
    testbed.run_in_pod(pod, cmd)
}

/// The file name of the program `cmd` runs, for process names.
fn program_name(cmd: &Command) -> String {
    Path::new(cmd.get_program()).file_name().map_or_else(
        || "proc".to_owned(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// Whether pods get IPv6 addresses: when the kernel has IPv6, unless
/// [`IPV6_ENV`] is `0`. Without IPv6 the dual-stack halves of the tests
/// would not run, so under `CI` that is a [`Skip`] (which fails there).
fn ipv6_wanted() -> Result<bool, Skip> {
    let turned_off = std::env::var(IPV6_ENV).is_ok_and(|value| value == "0");
    let available = Path::new("/proc/sys/net/ipv6").exists();
    if in_ci() && (turned_off || !available) {
        return Err(Skip::new(if turned_off {
            "IPv6 is turned off (AMBIT_TEST_IPV6=0), so the IPv6 halves of the tests would not run"
        } else {
            "the kernel has no IPv6 (/proc/sys/net/ipv6 is missing), so the IPv6 halves of the tests cannot run"
        }));
    }
    Ok(available && !turned_off)
}

/// Whether this runs in CI (`CI` set and not empty), where nothing may be
/// skipped: `.ci/run` must prove the machine ran every test.
#[must_use]
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|ci| !ci.is_empty())
}

// === impl Skip ===

impl Skip {
    /// A skip for this reason.
    #[must_use]
    pub fn new(reason: &str) -> Self {
        Self {
            reason: reason.to_owned(),
        }
    }

    /// Prints the loud `SKIPPED: <test>: <reason>` line, on stderr and stdout
    /// so it shows whichever the runner keeps, and appends it to the file
    /// named by [`SKIP_LOG_ENV`] (`cargo xtask test` prints that file after
    /// the run, so skips are seen although nextest hides a passing test's
    /// output). Under `CI` it panics instead: a skipped test there would
    /// hide a machine that did not run everything.
    pub fn report(&self, test_name: &str) {
        let line = format!("SKIPPED: {test_name}: {}", self.reason);
        assert!(
            !in_ci(),
            "{test_name} cannot run on this machine and CI=true forbids skipping: {}",
            self.reason
        );
        eprintln!("{line}");
        println!("{line}");
        if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
            use std::io::Write as _;
            if let Ok(mut log) = OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(log, "{line}");
            }
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Skip {}
