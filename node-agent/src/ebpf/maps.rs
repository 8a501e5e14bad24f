//! Typed wrappers over the pinned maps. The data path calls these; it never
//! sees an aya type.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::Mutex,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf, SockHash},
};
use mesh_ebpf_common::{
    DirectKey, DirectVerdict, EnrolledNetns, InboundListenerKey, OriginalDst, SPLICE_FLAG_POD_LEG,
    SocketTuple, SpliceStats, counters, map_names,
};

use super::EbpfError;
use crate::sync::lock;

/// A failed map operation.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} in eBPF map {map}: {source}")]
pub struct MapOpError {
    action: &'static str,
    map: &'static str,
    source: MapError,
}

/// The maps the agent reads and writes while running.
pub struct MeshMaps {
    enrolled: Mutex<HashMap<MapData, u64, EnrolledNetns>>,
    original_dst: Mutex<HashMap<MapData, SocketTuple, OriginalDst>>,
    inbound_listeners: Mutex<SockHash<MapData, InboundListenerKey>>,
    inbound_bypass: Mutex<HashMap<MapData, SocketTuple, u32>>,
    counters: PerCpuArray<MapData, u64>,
    direct: Mutex<HashMap<MapData, DirectKey, DirectVerdict>>,
    spliced: Mutex<HashMap<MapData, SocketTuple, SpliceStats>>,
    /// Kept for attaching `sk_msg`, which attaches to the map itself.
    pub(super) splice_sockets: SockHash<MapData, SocketTuple>,
}

// === impl MeshMaps ===

impl MeshMaps {
    pub(super) fn take_from(bpf: &mut Ebpf) -> Result<Self, EbpfError> {
        Ok(Self {
            enrolled: Mutex::new(take(bpf, map_names::ENROLLED_NETNS)?),
            original_dst: Mutex::new(take(bpf, map_names::ORIG_DST_BY_TUPLE)?),
            inbound_listeners: Mutex::new(take(bpf, map_names::INBOUND_LISTENERS)?),
            inbound_bypass: Mutex::new(take(bpf, map_names::INBOUND_BYPASS)?),
            counters: take(bpf, map_names::COUNTERS)?,
            direct: Mutex::new(take(bpf, map_names::DIRECT)?),
            spliced: Mutex::new(take(bpf, map_names::SPLICED)?),
            splice_sockets: take(bpf, map_names::SPLICE_SOCKETS)?,
        })
    }

    /// Makes the direct-connection map equal to `entries`: what is no longer
    /// there is removed first, so a pair policy now denies stops being
    /// spliced before anything new is allowed.
    pub fn set_direct(
        &self,
        entries: &std::collections::HashMap<DirectKey, DirectVerdict>,
    ) -> Result<(), MapOpError> {
        let mut map = lock(&self.direct);
        let stale: Vec<DirectKey> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, value)| entries.get(key) != Some(value))
            .map(|(key, _)| key)
            .collect();
        for key in &stale {
            ignore_missing(map.remove(key)).map_err(|source| MapOpError {
                action: "remove",
                map: map_names::DIRECT,
                source,
            })?;
        }
        for (key, value) in entries {
            if map.get(key, 0).ok().as_ref() != Some(value) {
                map.insert(key, value, 0).map_err(|source| MapOpError {
                    action: "insert",
                    map: map_names::DIRECT,
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// The open spliced same-node direct connections: the client's tuple
    /// and the counts so far (the kernel path's pod legs are left out: the
    /// agent carries those itself).
    #[must_use]
    pub fn open_splices(&self) -> Vec<(SocketTuple, SpliceStats)> {
        self.every_splice()
            .into_iter()
            .filter(|(_, stats)| stats.flags & SPLICE_FLAG_POD_LEG == 0)
            .collect()
    }

    /// Every spliced connection, pod legs included.
    #[must_use]
    pub fn every_splice(&self) -> Vec<(SocketTuple, SpliceStats)> {
        lock(&self.spliced).iter().filter_map(Result::ok).collect()
    }

    /// The kernel-path record of the pod leg whose client side has this
    /// tuple; `None` when the leg is not in the sock hash.
    #[must_use]
    pub fn pod_leg(&self, client: &SocketTuple) -> Option<SpliceStats> {
        lock(&self.spliced)
            .get(client, 0)
            .ok()
            .filter(|stats| stats.flags & SPLICE_FLAG_POD_LEG != 0)
    }

    /// Turns capture on for the network namespace with this cookie, whose
    /// pod has these addresses; `strict` records its mTLS mode in the
    /// pinned state, `kernel_path` whether its legs go through `sk_msg`.
    pub fn enroll_netns(
        &self,
        netns_cookie: u64,
        pod_ips: &[IpAddr],
        strict: bool,
        kernel_path: bool,
    ) -> Result<(), MapOpError> {
        let entry = EnrolledNetns::for_pod(pod_ips.iter().copied())
            .with_strict(strict)
            .with_kernel_path(kernel_path);
        lock(&self.enrolled)
            .insert(netns_cookie, entry, 0)
            .map_err(|source| MapOpError {
                action: "insert",
                map: map_names::ENROLLED_NETNS,
                source,
            })
    }

    /// Turns capture off for the network namespace with this cookie.
    pub fn unenroll_netns(&self, netns_cookie: u64) -> Result<(), MapOpError> {
        ignore_missing(lock(&self.enrolled).remove(&netns_cookie)).map_err(|source| MapOpError {
            action: "remove",
            map: map_names::ENROLLED_NETNS,
            source,
        })
    }

    /// Cookies of every enrolled network namespace.
    #[must_use]
    pub fn enrolled_netns(&self) -> Vec<u64> {
        lock(&self.enrolled).keys().filter_map(Result::ok).collect()
    }

    /// Takes (reads and deletes) the original destination recorded for an
    /// application socket with this tuple.
    #[must_use]
    pub fn take_original_dst(&self, tuple: &SocketTuple) -> Option<SocketAddr> {
        let mut map = lock(&self.original_dst);
        let original = map.get(tuple, 0).ok()?;
        let _ = map.remove(tuple);
        original.socket_addr()
    }

    /// Makes `listener` the inbound listener for connections to `pod_ip`.
    pub fn register_inbound_listener(
        &self,
        pod_ip: IpAddr,
        listener: &impl AsRawFd,
    ) -> Result<(), MapOpError> {
        lock(&self.inbound_listeners)
            .insert(InboundListenerKey::new(pod_ip), listener.as_raw_fd(), 0)
            .map_err(|source| MapOpError {
                action: "insert",
                map: map_names::INBOUND_LISTENERS,
                source,
            })
    }

    /// Forgets the inbound listener for `pod_ip`.
    pub fn unregister_inbound_listener(&self, pod_ip: IpAddr) -> Result<(), MapOpError> {
        ignore_missing(lock(&self.inbound_listeners).remove(&InboundListenerKey::new(pod_ip)))
            .map_err(|source| MapOpError {
                action: "remove",
                map: map_names::INBOUND_LISTENERS,
                source,
            })
    }

    /// Tells `sk_lookup` to leave the connection from `source` to `dst` alone:
    /// it is the inbound proxy's own connection to the application.
    pub fn add_inbound_bypass(
        &self,
        source: SocketAddr,
        dst: SocketAddr,
    ) -> Result<(), MapOpError> {
        lock(&self.inbound_bypass)
            .insert(SocketTuple::new(0, source, dst), 1, 0)
            .map_err(|source| MapOpError {
                action: "insert",
                map: map_names::INBOUND_BYPASS,
                source,
            })
    }

    /// Removes an entry added by [`Self::add_inbound_bypass`].
    pub fn remove_inbound_bypass(&self, source: SocketAddr, dst: SocketAddr) {
        let _ = lock(&self.inbound_bypass).remove(&SocketTuple::new(0, source, dst));
    }

    /// Every eBPF counter, summed over CPUs, with its name.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, MapOpError> {
        (0..counters::COUNT)
            .map(|index| {
                let per_cpu = self.counters.get(&index, 0).map_err(|source| MapOpError {
                    action: "read",
                    map: map_names::COUNTERS,
                    source,
                })?;
                Ok((counters::NAMES[index as usize], per_cpu.iter().sum()))
            })
            .collect()
    }
}

/// Takes the map `name` out of the loaded object, typed.
pub(super) fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    bpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, EbpfError> {
    let map = bpf.take_map(name).ok_or(EbpfError::Map {
        name,
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    })?;
    T::try_from(map).map_err(|source| EbpfError::Map { name, source })
}

/// The ring of spliced-connection events, for the one task that reads it.
pub(super) fn take_splice_events(bpf: &mut Ebpf) -> Result<RingBuf<MapData>, EbpfError> {
    take(bpf, map_names::SPLICE_EVENTS)
}

fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}
