//! Resilience primitives of the waypoint.
