//! ambit's Kubernetes side, shared by the node agent, the waypoint, the
//! controller and the CLI: what the mesh reads from the API server and how
//! it names things there. Nothing here is one binary's own; the node agent
//! brings what only it does (finding a pod's network namespace on its node)
//! through [`snapshot::PodNetnsFinder`].
//!
//! Modules, bottom first (each imports only those above it):
//!
//! - [`labels`]: label and annotation names (opting in, waypoints, mTLS)
//! - [`label_sets`]: one shared copy of each distinct label set
//! - [`resources`]: the custom resources watched, by group, version, kind
//!   and plural
//! - [`client`]: the Kubernetes client from `--kube-api-url` or the
//!   environment
//! - [`controller_client`]: asking the controller's CA for certificates,
//!   and how long to wait after a failed request
//! - [`translate`]: Kubernetes objects to mesh-core's models, pure functions
//! - [`watch`]: watchers and their stores, waking a rebuild on each event
//! - [`snapshot`]: a node's snapshot built from the watched objects
//! - [`local_source`]: the local file, polled, as the same snapshots
//! - [`source`]: the snapshot `Source`, the file or the API server

#![forbid(unsafe_code)]

pub mod client;
pub mod controller_client;
pub mod label_sets;
pub mod labels;
pub mod local_source;
pub mod resources;
pub mod snapshot;
pub mod source;
pub mod translate;
pub mod watch;
