//! `ambit-waypoint`: the per-namespace L7 proxy.

fn main() {}
