//! The agent's side of the pin directory: it must be on a bpffs and hold
//! state of this agent's layout version, or nothing at all (the layout
//! itself is `mesh_ebpf_common::pins`, which the CLI reads too).

use std::path::Path;

use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use mesh_ebpf_common::{
    PIN_LAYOUT_VERSION,
    pins::{layout_marker, pinned_layout},
};

use super::EbpfError;

/// Makes sure `pin_dir` is on a bpffs and holds no state of another
/// layout, and creates its `maps`, `links` and layout marker directories.
pub(super) fn prepare_pin_dir(pin_dir: &Path) -> Result<(), EbpfError> {
    let mut probe = pin_dir.to_owned();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let stat = statfs(&probe).map_err(|errno| EbpfError::PinDir {
        dir: probe.clone(),
        source: errno.into(),
    })?;
    if stat.filesystem_type() != BPF_FS_MAGIC {
        return Err(EbpfError::NotBpffs {
            dir: pin_dir.to_owned(),
            mount: probe,
        });
    }
    check_pin_layout(pin_dir)?;
    for sub in ["maps", "links", &layout_marker(PIN_LAYOUT_VERSION)] {
        std::fs::create_dir_all(pin_dir.join(sub)).map_err(|source| EbpfError::PinDir {
            dir: pin_dir.join(sub),
            source,
        })?;
    }
    Ok(())
}

/// Refuses pinned state of another layout version before anything is
/// loaded, so the agent that pinned it is left alone.
fn check_pin_layout(pin_dir: &Path) -> Result<(), EbpfError> {
    match pinned_layout(pin_dir) {
        Some(pinned) if pinned != PIN_LAYOUT_VERSION => Err(EbpfError::PinLayout {
            dir: pin_dir.to_owned(),
            pinned,
            ours: PIN_LAYOUT_VERSION,
        }),
        _ => Ok(()),
    }
}
