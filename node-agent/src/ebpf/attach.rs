//! Loading programs from the object and attaching them: to the cgroup
//! (each link pinned, or an earlier agent's pinned link adopted) and to the
//! splice sock hash.

use std::{fs::File, os::fd::AsFd as _, path::Path};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, Program, ProgramError, SkMsg,
        links::{FdLink, PinnedLink},
    },
};
use mesh_ebpf_common::program_names;

use super::{EbpfError, MeshMaps};

pub(super) fn program_mut<'a, T>(
    bpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let program = bpf.program_mut(name).ok_or(EbpfError::MissingProgram {
        name,
        source: ProgramError::InvalidName {
            name: name.to_owned(),
        },
    })?;
    program
        .try_into()
        .map_err(|source| EbpfError::MissingProgram { name, source })
}

pub(super) fn load_program(bpf: &mut Ebpf, name: &'static str) -> Result<(), EbpfError> {
    let program = bpf.program_mut(name).ok_or(EbpfError::MissingProgram {
        name,
        source: ProgramError::InvalidName {
            name: name.to_owned(),
        },
    })?;
    let result = match program {
        Program::CgroupSockAddr(p) => p.load(),
        Program::SockOps(p) => p.load(),
        Program::CgroupSockopt(p) => p.load(),
        Program::SkLookup(p) => p.load(),
        Program::SkMsg(p) => p.load(),
        other => {
            return Err(EbpfError::MissingProgram {
                name,
                source: ProgramError::UnexpectedProgramType,
            })
            .inspect_err(
                |_| tracing::error!(kind = ?other.prog_type(), "unexpected program type"),
            );
        }
    };
    result.map_err(|source| EbpfError::Program {
        action: "load",
        name,
        source,
    })
}

/// Loads `sk_msg` and attaches it to the splice sock hash. The attachment
/// lives as long as the map: a restarted agent that reuses the pinned map
/// finds the previous agent's program still attached (`EBUSY`), which is
/// as good.
pub(super) fn attach_sk_msg(bpf: &mut Ebpf, maps: &MeshMaps) -> Result<(), EbpfError> {
    let name = program_names::SK_MSG;
    load_program(bpf, name)?;
    let program: &mut SkMsg = program_mut(bpf, name)?;
    match program.attach(maps.splice_sockets.fd()) {
        Ok(id) => {
            // Owned by the map from now on, not by this process: an agent
            // that keeps its state for an upgrade must leave it attached.
            let link = program.take_link(id).map_err(|source| EbpfError::Program {
                action: "attach",
                name,
                source,
            })?;
            std::mem::forget(link);
            Ok(())
        }
        Err(ProgramError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::EBUSY) =>
        {
            Ok(())
        }
        Err(source) => Err(EbpfError::Program {
            action: "attach",
            name,
            source,
        }),
    }
}

/// Loads a cgroup program, attaches it to `cgroup` and pins the link at `path`.
pub(super) fn attach_to_cgroup(
    bpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
    path: &Path,
) -> Result<PinnedLink, EbpfError> {
    load_program(bpf, name)?;
    let attach_error = |source| EbpfError::Program {
        action: "attach",
        name,
        source,
    };
    let link_error = |action, source: Box<dyn std::error::Error + Send + Sync>| EbpfError::Link {
        action,
        path: path.to_owned(),
        source,
    };
    // Attached as a bpf_link, which the kernel always lets coexist with other
    // programs on the cgroup (a CNI, a profiler); link creation takes no
    // multi-attach flag, so the default mode is the right one.
    let mode = CgroupAttachMode::Single;
    let program = bpf.program_mut(name).expect("loaded just above");
    let link = match program {
        Program::CgroupSockAddr(p) => {
            let id = p.attach(cgroup, mode).map_err(attach_error)?;
            FdLink::try_from(p.take_link(id).map_err(attach_error)?)
        }
        Program::SockOps(p) => {
            let id = p.attach(cgroup, mode).map_err(attach_error)?;
            FdLink::try_from(p.take_link(id).map_err(attach_error)?)
        }
        Program::CgroupSockopt(p) => {
            // aya 0.14 cannot hand out this program's link, so it is created
            // and pinned directly, then adopted like every other pin.
            let program_fd = p.fd().map_err(attach_error)?;
            let link = crate::sys::bpf_link_create_cgroup(
                program_fd.as_fd(),
                cgroup.as_fd(),
                crate::sys::BPF_CGROUP_GETSOCKOPT,
            )
            .map_err(|e| {
                attach_error(ProgramError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_link_create",
                    io_error: e,
                }))
            })?;
            crate::sys::bpf_obj_pin(link.as_fd(), path)
                .map_err(|e| link_error("pin", Box::new(e)))?;
            return adopt_link(path);
        }
        _ => {
            return Err(EbpfError::MissingProgram {
                name,
                source: ProgramError::UnexpectedProgramType,
            });
        }
    };
    let link = link.map_err(|e| link_error("convert", Box::new(e)))?;
    pin_link(link, path)
}

pub(super) fn pin_link(link: FdLink, path: &Path) -> Result<PinnedLink, EbpfError> {
    link.pin(path).map_err(|source| EbpfError::Link {
        action: "pin",
        path: path.to_owned(),
        source: Box::new(source),
    })
}

pub(super) fn adopt_link(path: &Path) -> Result<PinnedLink, EbpfError> {
    PinnedLink::from_pin(path).map_err(|source| EbpfError::Link {
        action: "adopt",
        path: path.to_owned(),
        source: Box::new(source),
    })
}
