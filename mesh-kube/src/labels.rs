//! The label and annotation names ambit reads and writes on Kubernetes
//! objects: the user-facing conventions (opting in, waypoints, mTLS) and
//! the one Kubernetes label the translation reads.

/// The label of an `EndpointSlice` that names its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The label that opts a namespace or a pod into the mesh (`enabled`) or a
/// pod out of it (`disabled`).
pub const MESH_LABEL: &str = "ambit.dev/mesh";
/// The label that asks for a namespace's or a pod's mTLS mode (see
/// [`mesh_core::peer_authn`]).
pub use mesh_core::peer_authn::MTLS_LABEL;
/// The label on a Service that names the waypoint its traffic goes
/// through (`none`: no waypoint).
pub const USE_WAYPOINT_LABEL: &str = "ambit.dev/use-waypoint";
/// The label on a waypoint's own objects (its Service, pods, account),
/// naming it; a Service so labelled never goes through a waypoint.
pub const WAYPOINT_LABEL: &str = "ambit.dev/waypoint";

/// The prefix of the annotations ambit reads.
pub const AMBIT_ANNOTATION_PREFIX: &str = "ambit.dev/";
