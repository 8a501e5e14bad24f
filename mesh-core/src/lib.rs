//! ambit's userspace core, shared by every binary: identity and the CA, TLS
//! for HBONE, the workload, service, policy, peer-authentication and route models, and the loader
//! for the local (non-Kubernetes) configuration file, and logging set-up (one JSON shape for every
//! binary).

#![forbid(unsafe_code)]

pub mod ca;
pub mod hbone;
pub mod identity;
pub mod local_config;
pub mod logging;
mod object;
pub mod peer_authn;
pub mod policy;
pub mod published;
pub mod route;
pub mod service;
pub mod tls;
pub mod workload;
