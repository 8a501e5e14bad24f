//! ambit's waypoint: the per-namespace L7 proxy. Node agents send it the
//! HBONE streams of Services that use it; it applies HTTP routing, retries,
//! timeouts, resilience and HTTP authorization, then opens HBONE to the
//! chosen backend pod's node.

pub mod resilience;
