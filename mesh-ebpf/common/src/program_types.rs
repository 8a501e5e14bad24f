//! The eBPF program types the mesh needs from the kernel (userspace only):
//! the agent refuses to start without them, `ambit check` probes them.

use aya::programs::ProgramType;

/// Each program type the mesh needs, the hooks that use it, and the kernel
/// feature that provides it.
pub const REQUIRED_PROGRAM_TYPES: [(ProgramType, &str, &str); 4] = [
    (
        ProgramType::CgroupSockAddr,
        "cgroup/connect4, connect6, getpeername4, getpeername6, bind4, bind6",
        "needs Linux 5.8 or later with CONFIG_CGROUP_BPF=y and cgroup v2",
    ),
    (
        ProgramType::SockOps,
        "sockops",
        "needs Linux 5.15 or later with CONFIG_CGROUP_BPF=y",
    ),
    (
        ProgramType::CgroupSockopt,
        "cgroup/getsockopt",
        "needs Linux 5.15 or later with CONFIG_CGROUP_BPF=y",
    ),
    (
        ProgramType::SkLookup,
        "sk_lookup",
        "needs Linux 5.17 or later with CONFIG_BPF_SYSCALL=y",
    ),
];

/// The kernel's name of a program type, for error messages.
#[must_use]
pub fn program_type_name(program_type: ProgramType) -> &'static str {
    match program_type {
        ProgramType::CgroupSockAddr => "BPF_PROG_TYPE_CGROUP_SOCK_ADDR",
        ProgramType::SockOps => "BPF_PROG_TYPE_SOCK_OPS",
        ProgramType::CgroupSockopt => "BPF_PROG_TYPE_CGROUP_SOCKOPT",
        ProgramType::SkLookup => "BPF_PROG_TYPE_SK_LOOKUP",
        _ => "an eBPF program type",
    }
}

/// Where the running kernel's release is read from.
pub const KERNEL_RELEASE_FILE: &str = "/proc/sys/kernel/osrelease";

/// The running kernel's release, as `uname -r` prints it.
///
/// # Errors
/// When [`KERNEL_RELEASE_FILE`] cannot be read (no `/proc`).
pub fn kernel_release() -> std::io::Result<String> {
    std::fs::read_to_string(KERNEL_RELEASE_FILE).map(|release| release.trim().to_owned())
}
