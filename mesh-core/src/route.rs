//! L7 routing: Gateway API `HTTPRoute` objects with a Service as parent,
//! checked once when they are loaded and compiled for the waypoint.
