//! ambit's userspace core, shared by every binary: the workload model and the
//! loader for the local (non-Kubernetes) configuration file.

#![forbid(unsafe_code)]

pub mod ca;
pub mod identity;
pub mod local_config;
pub mod policy;
pub mod workload;
