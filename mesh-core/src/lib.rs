//! ambit's userspace core, shared by every binary: identity and the CA, TLS
//! for HBONE, the workload, service, policy, peer-authentication and route models, and the loader
//! for the local (non-Kubernetes) configuration file, and logging set-up (one JSON shape for every
//! binary).
//!
//! Modules import only downward (`cargo xtask lint` checks it). Bottom
//! first, each line using only the lines above it:
//!
//! 1. [`identity`], `object` (the raw-object envelope), [`published`],
//!    [`workload`]: the shared vocabulary; [`logging`], which uses none.
//! 2. [`ca`], [`policy`], [`route`], [`service`]: the models and their
//!    compilers.
//! 3. [`peer_authn`] (reads policy and workload), [`tls`] (reads the CA).
//! 4. [`hbone`], [`local_config`]: what puts the models to work.

#![forbid(unsafe_code)]

pub mod agent_settings;
pub mod ca;
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
