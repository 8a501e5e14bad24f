//! Helpers shared by ambit's fuzz targets (`fuzz_targets/`, one per input
//! a peer or an API object controls; `cargo xtask fuzz --list` names
//! them). Each target feeds its bytes to the project's own parser and
//! asserts what must hold beyond "no panic".
//!
//! Modules, bottom first; none imports another:
//!
//! - [`layout`]: the eBPF map types read from and written to bytes, as
//!   the kernel and aya hand them over.
//! - [`runtime`]: one paused single-threaded runtime per input, so that
//!   timeouts pass at once and nothing outlives the input.
//! - [`pki`]: a throwaway CA made once per process, and workload keys and
//!   CSRs.
//! - [`text`]: fuzz input as YAML or as text, with the limits every target
//!   shares.

pub mod layout;
pub mod pki;
pub mod runtime;
pub mod text;

/// Whether `AMBIT_FUZZ_DEBUG` is set: the targets then print what each
/// input got (a stream's status, an answer), to check what seeds reach
/// and to read a crash's input. Read once per process.
#[must_use]
pub fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("AMBIT_FUZZ_DEBUG").is_some())
}
