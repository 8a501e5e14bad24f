//! ambit's userspace core, shared by every binary: the workload and service
//! models and the loader for the local (non-Kubernetes) configuration file.

#![forbid(unsafe_code)]

pub mod ca;
pub mod identity;
pub mod local_config;
pub mod policy;
pub mod service;
pub mod workload;
