//! Checks that the kernel can load every program type the mesh needs, so a
//! missing feature is reported by name before anything is loaded.

use aya::programs::ProgramType;

use super::{EbpfError, program_type_name};

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

/// Fails with the first program type `supported` says the kernel lacks.
pub fn preflight(supported: impl Fn(ProgramType) -> bool) -> Result<(), EbpfError> {
    for (program_type, hook, feature) in REQUIRED_PROGRAM_TYPES {
        if !supported(program_type) {
            return Err(EbpfError::MissingKernelFeature {
                program_type: program_type_name(program_type),
                hook,
                feature,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_supported_passes() {
        preflight(|_| true).unwrap();
    }

    #[test]
    fn missing_program_type_is_named_with_its_kernel_feature() {
        let err = preflight(|t| t != ProgramType::SkLookup)
            .unwrap_err()
            .to_string();
        assert!(err.contains("BPF_PROG_TYPE_SK_LOOKUP"), "{err}");
        assert!(err.contains("sk_lookup"), "{err}");
        assert!(err.contains("Linux 5.17"), "{err}");
        let err = preflight(|t| t != ProgramType::CgroupSockAddr)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BPF_PROG_TYPE_CGROUP_SOCK_ADDR") && err.contains("connect4"),
            "{err}"
        );
    }
}
