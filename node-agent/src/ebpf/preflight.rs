//! Checks that the kernel can load every program type the mesh needs, so a
//! missing feature is reported by name before anything is loaded.

use aya::programs::ProgramType;
use mesh_ebpf_common::program_types::{self, REQUIRED_PROGRAM_TYPES, program_type_name};

use super::EbpfError;

/// Fails with the first program type `supported` says the kernel lacks,
/// naming the running kernel's release (`kernel_release`) beside the
/// version the program type needs.
pub fn preflight(
    supported: impl Fn(ProgramType) -> bool,
    kernel_release: &str,
) -> Result<(), EbpfError> {
    for (program_type, hook, feature) in REQUIRED_PROGRAM_TYPES {
        if !supported(program_type) {
            return Err(EbpfError::MissingKernelFeature {
                kernel_release: kernel_release.to_owned(),
                program_type: program_type_name(program_type),
                hook,
                feature,
            });
        }
    }
    Ok(())
}

/// The running kernel's release, as `uname -r` prints it, or why it is
/// unknown.
#[must_use]
pub fn kernel_release() -> String {
    program_types::kernel_release().unwrap_or_else(|error| format!("release unknown: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_supported_passes() {
        preflight(|_| true, "6.1.0-57-amd64").unwrap();
    }

    #[test]
    fn missing_program_type_is_named_with_its_kernel_feature_and_the_running_release() {
        let err = preflight(|t| t != ProgramType::SkLookup, "5.15.0-100-generic")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("this kernel (Linux 5.15.0-100-generic) cannot load"),
            "{err}"
        );
        assert!(err.contains("BPF_PROG_TYPE_SK_LOOKUP"), "{err}");
        assert!(err.contains("sk_lookup"), "{err}");
        assert!(err.contains("Linux 5.17"), "{err}");
        let err = preflight(|t| t != ProgramType::CgroupSockAddr, "5.4.0")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BPF_PROG_TYPE_CGROUP_SOCK_ADDR") && err.contains("connect4"),
            "{err}"
        );
    }
}
