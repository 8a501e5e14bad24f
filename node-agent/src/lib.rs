//! ambit's node agent: loads the eBPF programs that capture enrolled pods'
//! traffic, enrolls pods, and proxies their connections.
//!
//! - [`agent`]: start-up, runtimes, shutdown
//! - [`config`]: settings from flags and `AMBIT_*` variables
//! - [`ebpf`]: loading, pinning and attaching the programs; typed maps
//! - [`enrollment`]: making a pod's network namespace meshed, and back
//! - [`flow`]: the proxies' vocabulary (a connection's ends, direction,
//!   security, verdict, byte counts, errors); the bottom module, which the
//!   others import and which imports none of them
//! - [`proxy`]: the outbound and inbound L4 proxies, and the agent's side of
//!   HBONE (`proxy::hbone`; the protocol itself is `mesh_proxy`'s)
//! - [`routing`]: the in-pod return path for transparent inbound connections
//! - [`identity`], [`tls`]: workload certificates and mutual TLS
//! - [`workloads`]: every meshed pod by address
//! - [`authz`]: L4 authorization policies, enforced on the destination's node
//! - [`connections`]: recently closed connections and the access log
//! - [`metrics`]: Prometheus metrics, with Istio's names for traffic
//! - [`telemetry`]: the metrics (15020) and readiness (15021) listeners
//! - [`admin`]: the JSON admin API
//! - [`handoff`]: handing the pods' listeners to a successor agent
//! - [`heap`]: handing the allocator's free memory back to the kernel
//! - [`pod_netns`]: finding a pod's network namespace through its cgroup
//!   (Kubernetes mode; the rest of the Kubernetes side is `mesh-kube`)
//!
//! Modules import only downward (`cargo xtask lint` checks it); bottom first,
//! each line using only the lines above it:
//!
//! 1. `pod_netns`, `routing`, `sync`, `sys`, `workloads`
//! 2. `balancer`, `config`, `ebpf`, `handoff`, `heap`, `identity`, `netns`
//! 3. `flow`
//! 4. `connections`, `metrics`, `stats`
//! 5. `authz`
//! 6. `proxy`
//! 7. `splice`
//! 8. `enrollment`
//! 9. `telemetry`
//! 10. `admin`
//! 11. `agent`

pub mod admin;
pub mod agent;
pub mod authz;
pub mod balancer;
pub mod config;
pub mod connections;
pub mod ebpf;
pub mod enrollment;
pub mod flow;
pub mod handoff;
pub mod heap;
pub mod identity;
pub mod metrics;
pub mod netns;
pub mod pod_netns;
pub mod proxy;
pub use mesh_core::published;
pub mod routing;
pub mod splice;
pub mod stats;
pub mod sync;
mod sys;
pub mod telemetry;
pub use mesh_core::tls;
pub mod workloads;
