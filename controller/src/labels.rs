//! The label names the controller reads on Kubernetes objects: the bottom
//! of the controller's modules, shared by the CA store and the signer.

/// The label that marks a waypoint's pods (and its service account), with
/// the waypoint's name.
pub const WAYPOINT_LABEL: &str = "ambit.dev/waypoint";
