//! `ambit bpf map list` and `ambit bpf map dump`: ambit's pinned maps, read
//! through aya's typed wrappers and decoded by [`super::decode`].

use std::path::PathBuf;

use aya::{
    Pod,
    maps::{HashMap, Map, MapData, MapError, MapType, PerCpuArray, SockHash},
};
use mesh_ebpf_common::{
    DirectKey, DirectVerdict, EnrolledNetns, InboundListenerKey, OriginalDst, SocketTuple,
    SpliceStats, map_names,
};
use serde::Serialize;

use super::{
    BpfError,
    decode::{self, Entry, MapKind},
    pins::{PinDir, PinnedMap},
    table,
};

/// Why a ring buffer has no entries to show.
const RING_BUFFER_NOTE: &str = "a ring buffer holds events for the agent to consume; reading them here would take them from the agent, so none are shown";

/// One map in `ambit bpf map list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapSummary {
    /// The map's name (its pin's file name).
    pub name: &'static str,
    /// The kernel's id for it.
    pub id: u32,
    /// Its type, as bpftool names it: `hash`, `lru_hash`, `percpu_array`,
    /// `sockhash`, `ringbuf`.
    #[serde(rename = "type")]
    pub map_type: String,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (per CPU for per-CPU maps).
    pub value_size: u32,
    /// Capacity (for a ring buffer: its size in bytes).
    pub max_entries: u32,
    /// Entries in use; every slot for an array, `null` for a ring buffer.
    pub entries: Option<u64>,
    /// The pin.
    pub pin: PathBuf,
}

/// `ambit bpf map dump`.
#[derive(Clone, Debug, Serialize)]
pub struct MapDump {
    /// The map.
    pub map: MapSummary,
    /// Its entries, decoded, in key order.
    pub entries: Vec<Entry>,
    /// Why `entries` is empty though the map is not (a ring buffer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

/// Every one of ambit's maps.
pub fn list(pins: &PinDir) -> Result<Vec<MapSummary>, BpfError> {
    pins.open_all_maps()?
        .into_iter()
        .map(|map| {
            let name = map.name;
            Ok(read(map, name)?.map)
        })
        .collect()
}

/// One map and its entries.
pub fn dump(pins: &PinDir, query: &str) -> Result<MapDump, BpfError> {
    let name = resolve_name(query)?;
    read(pins.open_map(name)?, name)
}

/// The map a user means: its exact name, any case, with or without the
/// `AMBIT_` prefix.
pub fn resolve_name(query: &str) -> Result<&'static str, BpfError> {
    let wanted = query.to_ascii_uppercase();
    map_names::ALL
        .into_iter()
        .find(|name| *name == wanted || name.strip_prefix("AMBIT_") == Some(wanted.as_str()))
        .ok_or_else(|| BpfError::UnknownMap {
            name: query.to_owned(),
            known: map_names::ALL.to_vec(),
        })
}

/// `ambit bpf map list` as a table.
#[must_use]
pub fn list_table(maps: &[MapSummary]) -> String {
    let rows: Vec<Vec<String>> = maps
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.name.to_owned(),
                m.map_type.clone(),
                m.key_size.to_string(),
                m.value_size.to_string(),
                m.max_entries.to_string(),
                table::or_dash(m.entries),
            ]
        })
        .collect();
    table::render(
        &[
            "ID",
            "NAME",
            "TYPE",
            "KEY",
            "VALUE",
            "MAX ENTRIES",
            "ENTRIES",
        ],
        &rows,
    )
}

/// `ambit bpf map dump` as a table: a line about the map, then its entries.
#[must_use]
pub fn dump_table(dump: &MapDump) -> String {
    let m = &dump.map;
    let mut out = format!(
        "{} (id {}, {}, {} of {} entries, pinned at {})\n",
        m.name,
        m.id,
        m.map_type,
        table::or_dash(m.entries),
        m.max_entries,
        m.pin.display()
    );
    if let Some(note) = dump.note {
        out.push_str(note);
        out.push('\n');
        return out;
    }
    let headers = MapKind::of(m.name).map_or(&[][..], MapKind::headers);
    let rows: Vec<Vec<String>> = dump.entries.iter().map(Entry::cells).collect();
    out.push_str(&table::render(headers, &rows));
    out
}

/// Reads a map's entries and summary.
fn read(map: PinnedMap, name: &'static str) -> Result<MapDump, BpfError> {
    let PinnedMap {
        path, info, data, ..
    } = map;
    let map_type = info.map_type().ok();
    let kind = MapKind::of(name).ok_or_else(|| BpfError::UnknownMap {
        name: name.to_owned(),
        known: map_names::ALL.to_vec(),
    })?;
    let read_error = |e: MapError| BpfError::object("read", &path, &e);
    let mut note = None;
    let mut entries = match kind {
        MapKind::Enrolled => hash::<u64, EnrolledNetns>(data)
            .map_err(read_error)?
            .iter()
            .map(|(k, v)| decode::enrolled(*k, v))
            .collect(),
        MapKind::OriginalDstBySocket => hash::<u64, OriginalDst>(data)
            .map_err(read_error)?
            .iter()
            .map(|(k, v)| decode::original_dst_by_socket(*k, v))
            .collect(),
        MapKind::OriginalDstByTuple => hash::<SocketTuple, OriginalDst>(data)
            .map_err(read_error)?
            .iter()
            .map(|(k, v)| decode::original_dst_by_tuple(k, v))
            .collect(),
        MapKind::InboundListeners => sock_hash_keys::<InboundListenerKey>(data)
            .map_err(read_error)?
            .iter()
            .map(decode::inbound_listener)
            .collect(),
        MapKind::Counters => per_cpu_counters(data).map_err(read_error)?,
        MapKind::InboundBypass => hash::<SocketTuple, u32>(data)
            .map_err(read_error)?
            .iter()
            .map(|(k, v)| decode::inbound_bypass(k, *v))
            .collect(),
        MapKind::Direct => hash::<DirectKey, DirectVerdict>(data)
            .map_err(read_error)?
            .iter()
            .map(|(k, v)| decode::direct(k, *v))
            .collect(),
        MapKind::SpliceSockets => sock_hash_keys::<SocketTuple>(data)
            .map_err(read_error)?
            .iter()
            .map(decode::splice_socket)
            .collect(),
        MapKind::Spliced => hash::<SocketTuple, SpliceStats>(data)
            .map_err(read_error)?
            .iter()
            .map(|(k, v)| decode::spliced(k, v))
            .collect(),
        MapKind::SpliceEvents => {
            note = Some(RING_BUFFER_NOTE);
            Vec::new()
        }
    };
    entries.sort_by(|a: &Entry, b: &Entry| a.key.cmp(&b.key));
    let count = match kind {
        MapKind::SpliceEvents => None,
        _ => u64::try_from(entries.len()).ok(),
    };
    Ok(MapDump {
        map: MapSummary {
            name,
            id: info.id(),
            map_type: map_type.map_or_else(|| "unknown".to_owned(), map_type_name),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            entries: count,
            pin: path,
        },
        entries,
        note,
    })
}

/// Every entry of a hash (or LRU hash) map. Entries deleted while the map
/// is walked are skipped.
fn hash<K: Pod, V: Pod>(data: MapData) -> Result<Vec<(K, V)>, MapError> {
    let map: HashMap<MapData, K, V> = HashMap::try_from(Map::from_map_data(data)?)?;
    map.iter().collect()
}

/// The keys of a sock hash; its values are sockets, which the kernel does
/// not hand out (for 4-byte values not even as cookies).
fn sock_hash_keys<K: Pod>(data: MapData) -> Result<Vec<K>, MapError> {
    let map: SockHash<MapData, K> = SockHash::try_from(Map::from_map_data(data)?)?;
    map.keys().collect()
}

/// Every counter, per CPU.
fn per_cpu_counters(data: MapData) -> Result<Vec<Entry>, MapError> {
    let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::from_map_data(data)?)?;
    (0..map.len())
        .map(|index| Ok(decode::counter(index, &map.get(&index, 0)?)))
        .collect()
}

/// bpftool's name for a map type.
fn map_type_name(map_type: MapType) -> String {
    match map_type {
        MapType::Hash => "hash".to_owned(),
        MapType::Array => "array".to_owned(),
        MapType::PerCpuHash => "percpu_hash".to_owned(),
        MapType::PerCpuArray => "percpu_array".to_owned(),
        MapType::LruHash => "lru_hash".to_owned(),
        MapType::LruPerCpuHash => "lru_percpu_hash".to_owned(),
        MapType::SockMap => "sockmap".to_owned(),
        MapType::SockHash => "sockhash".to_owned(),
        MapType::RingBuf => "ringbuf".to_owned(),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_names_resolve_in_any_case_with_or_without_prefix() {
        assert_eq!(resolve_name("AMBIT_COUNTERS").unwrap(), map_names::COUNTERS);
        assert_eq!(resolve_name("counters").unwrap(), map_names::COUNTERS);
        assert_eq!(
            resolve_name("ambit_enrolled").unwrap(),
            map_names::ENROLLED_NETNS
        );
    }

    #[test]
    fn an_unknown_map_lists_the_known_ones() {
        let error = resolve_name("AMBIT_NOPE").unwrap_err().to_string();
        assert!(error.contains("AMBIT_NOPE"), "{error}");
        for name in map_names::ALL {
            assert!(error.contains(name), "{error}");
        }
    }

    #[test]
    fn map_list_table_shows_sizes_and_usage() {
        let summary = MapSummary {
            name: map_names::SPLICE_EVENTS,
            id: 7,
            map_type: "ringbuf".into(),
            key_size: 0,
            value_size: 0,
            max_entries: 262_144,
            entries: None,
            pin: PathBuf::from("/sys/fs/bpf/ambit/maps/AMBIT_SPLICE_EV"),
        };
        let out = list_table(std::slice::from_ref(&summary));
        assert_eq!(
            out.lines().nth(1),
            Some("7   AMBIT_SPLICE_EV  ringbuf  0    0      262144       -")
        );
        let dump = dump_table(&MapDump {
            map: summary,
            entries: Vec::new(),
            note: Some(RING_BUFFER_NOTE),
        });
        assert!(dump.contains("ring buffer"), "{dump}");
    }
}
