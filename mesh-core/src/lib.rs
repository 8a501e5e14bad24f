//! ambit's userspace core, shared by every binary: identity and the CA, TLS
//! for HBONE, the workload, service, policy, peer-authentication and route models, and the loader
//! for the local (non-Kubernetes) configuration file, logging set-up (one JSON shape for every
//! binary), and metric series that go once idle (the agent's and the waypoint's).
//!
//! Modules import only downward (`cargo xtask lint` checks it). Bottom
//! first, each line using only the lines above it:
//!
//! 1. [`agent_settings`] (the agent's setting names the CLI shares),
//!    [`identity`], [`logging`], [`metrics_retention`], `object` (the
//!    raw-object envelope), [`published`], [`workload`]: the shared
//!    vocabulary.
//! 2. [`ca`], [`policy`], [`route`], [`service`]: the models and their
//!    compilers.
//! 3. [`peer_authn`] (reads policy and workload), [`tls`] (reads the CA).
//! 4. [`local_config`]: the local configuration file, which uses them all.
//!
//! HBONE itself is `mesh-proxy`'s; Kubernetes is `mesh-kube`'s.

#![forbid(unsafe_code)]

pub mod agent_settings;
pub mod ca;
pub mod identity;
pub mod local_config;
pub mod logging;
pub mod metrics_retention;
mod object;
pub mod peer_authn;
pub mod policy;
pub mod published;
pub mod route;
pub mod service;
pub mod tls;
pub mod workload;
