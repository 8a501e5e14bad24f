//! Checks that the kernel can load every program type the mesh needs, so a
//! missing feature is reported by name before anything is loaded.

use aya::programs::ProgramType;
use mesh_ebpf_common::program_types::{REQUIRED_PROGRAM_TYPES, program_type_name};

use super::EbpfError;

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
