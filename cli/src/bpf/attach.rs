//! `ambit bpf cgroup show` and `ambit bpf netns list`: where ambit's
//! programs are attached, from the pinned links, and what the maps say
//! about each enrolled pod network namespace.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use aya::maps::{HashMap, Map, MapData, SockHash};
use mesh_ebpf_common::{EnrolledNetns, InboundListenerKey, map_names};
use serde::Serialize;

use super::{
    BpfError, decode,
    pins::{LinkRole, PinDir},
    programs::Targets,
    table,
};

/// One cgroup attachment in `ambit bpf cgroup show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CgroupAttachment {
    /// The cgroup's path; `null` if no cgroup v2 directory has its id.
    pub cgroup: Option<PathBuf>,
    /// The cgroup's id (its directory's inode number).
    pub cgroup_id: Option<u64>,
    /// The attach type, as libbpf names it (`cgroup_inet4_connect`).
    pub attach_type: Option<String>,
    /// ambit's name of the program.
    pub program: String,
    /// The program's id.
    pub program_id: u32,
    /// The link's id.
    pub link_id: u32,
    /// The link's pin.
    pub pin: PathBuf,
}

/// One pod network namespace in `ambit bpf netns list`: enrolled (in
/// `AMBIT_ENROLLED`), with an `sk_lookup` link pinned, or both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetnsEntry {
    /// The network namespace cookie.
    pub netns_cookie: u64,
    /// Whether `AMBIT_ENROLLED` has it (capture is on).
    pub enrolled: bool,
    /// The pod's IPv4 address from `AMBIT_ENROLLED`.
    pub ipv4: Option<Ipv4Addr>,
    /// The pod's IPv6 address from `AMBIT_ENROLLED`.
    pub ipv6: Option<Ipv6Addr>,
    /// The per-pod flags from `AMBIT_ENROLLED`.
    pub flags: Option<u32>,
    /// Which of the pod's addresses have an inbound listener in
    /// `AMBIT_INBOUND`.
    pub inbound_listeners: Vec<IpAddr>,
    /// The `sk_lookup` link's id.
    pub sk_lookup_link_id: Option<u32>,
    /// The `sk_lookup` program's id.
    pub sk_lookup_program_id: Option<u32>,
    /// The namespace's inode, from the link.
    pub netns_ino: Option<u64>,
    /// The namespace's `ip netns` path, when it has one.
    pub netns_path: Option<PathBuf>,
    /// The link's pin.
    pub pin: Option<PathBuf>,
}

/// Every cgroup attachment, by pin name.
pub fn cgroups(pins: &PinDir) -> Result<Vec<CgroupAttachment>, BpfError> {
    let links = pins.links()?;
    let targets = Targets::resolve(&links);
    Ok(links
        .iter()
        .filter_map(|link| {
            let LinkRole::Cgroup { program } = &link.role else {
                return None;
            };
            let attachment = targets.attachment(link);
            Some(CgroupAttachment {
                cgroup: link.cgroup_id.and_then(|id| targets.cgroup(id).cloned()),
                cgroup_id: link.cgroup_id,
                attach_type: attachment.attach_type,
                program: program.clone(),
                program_id: link.program_id,
                link_id: link.link_id,
                pin: link.path.clone(),
            })
        })
        .collect())
}

/// Every enrolled or `sk_lookup`-attached pod network namespace, by cookie.
pub fn netns(pins: &PinDir) -> Result<Vec<NetnsEntry>, BpfError> {
    let enrolled_map = pins.open_map(map_names::ENROLLED_NETNS)?;
    let path = enrolled_map.path.clone();
    let enrolled: BTreeMap<u64, EnrolledNetns> =
        read_enrolled(enrolled_map.data).map_err(|e| BpfError::object("read", &path, &e))?;
    let inbound_map = pins.open_map(map_names::INBOUND_LISTENERS)?;
    let path = inbound_map.path.clone();
    let listeners: BTreeSet<IpAddr> =
        read_listeners(inbound_map.data).map_err(|e| BpfError::object("read", &path, &e))?;
    let links = pins.links()?;
    let targets = Targets::resolve(&links);
    let sk_lookups: BTreeMap<u64, _> = links
        .iter()
        .filter_map(|l| match l.role {
            LinkRole::SkLookup { netns_cookie } => Some((netns_cookie, l)),
            LinkRole::Cgroup { .. } => None,
        })
        .collect();
    let cookies: BTreeSet<u64> = enrolled.keys().chain(sk_lookups.keys()).copied().collect();
    Ok(cookies
        .into_iter()
        .map(|cookie| {
            let value = enrolled.get(&cookie);
            let ipv4 = value.and_then(decode::enrolled_ipv4);
            let ipv6 = value.and_then(decode::enrolled_ipv6);
            let link = sk_lookups.get(&cookie);
            NetnsEntry {
                netns_cookie: cookie,
                enrolled: value.is_some(),
                ipv4,
                ipv6,
                flags: value.map(|v| v.flags),
                inbound_listeners: [ipv4.map(IpAddr::V4), ipv6.map(IpAddr::V6)]
                    .into_iter()
                    .flatten()
                    .filter(|ip| listeners.contains(ip))
                    .collect(),
                sk_lookup_link_id: link.map(|l| l.link_id),
                sk_lookup_program_id: link.map(|l| l.program_id),
                netns_ino: link.and_then(|l| l.netns_ino),
                netns_path: link
                    .and_then(|l| l.netns_ino)
                    .and_then(|ino| targets.netns(ino).cloned()),
                pin: link.map(|l| l.path.clone()),
            }
        })
        .collect())
}

/// `ambit bpf cgroup show` as a table.
#[must_use]
pub fn cgroups_table(attachments: &[CgroupAttachment]) -> String {
    let rows: Vec<Vec<String>> = attachments
        .iter()
        .map(|a| {
            vec![
                a.cgroup.as_ref().map_or_else(
                    || table::or_dash(a.cgroup_id.map(|id| format!("cgroup id {id}"))),
                    |p| p.display().to_string(),
                ),
                table::or_dash(a.attach_type.as_ref()),
                a.program.clone(),
                a.program_id.to_string(),
                a.link_id.to_string(),
            ]
        })
        .collect();
    table::render(
        &["CGROUP", "ATTACH TYPE", "PROGRAM", "PROG ID", "LINK ID"],
        &rows,
    )
}

/// `ambit bpf netns list` as a table.
#[must_use]
pub fn netns_table(entries: &[NetnsEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|n| {
            vec![
                n.netns_cookie.to_string(),
                if n.enrolled { "yes" } else { "no" }.to_owned(),
                table::or_dash(n.ipv4),
                table::or_dash(n.ipv6),
                if n.inbound_listeners.is_empty() {
                    "-".to_owned()
                } else {
                    n.inbound_listeners
                        .iter()
                        .map(IpAddr::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                },
                table::or_dash(n.sk_lookup_link_id),
                table::or_dash(n.netns_path.as_ref().map(|p| p.display()).map_or_else(
                    || n.netns_ino.map(|ino| format!("ino {ino}")),
                    |p| Some(p.to_string()),
                )),
            ]
        })
        .collect();
    table::render(
        &[
            "NETNS COOKIE",
            "ENROLLED",
            "IPV4",
            "IPV6",
            "INBOUND",
            "SK_LOOKUP LINK",
            "NETNS",
        ],
        &rows,
    )
}

fn read_enrolled(data: MapData) -> Result<BTreeMap<u64, EnrolledNetns>, aya::maps::MapError> {
    let map: HashMap<MapData, u64, EnrolledNetns> = HashMap::try_from(Map::from_map_data(data)?)?;
    map.iter().collect()
}

fn read_listeners(data: MapData) -> Result<BTreeSet<IpAddr>, aya::maps::MapError> {
    let map: SockHash<MapData, InboundListenerKey> = SockHash::try_from(Map::from_map_data(data)?)?;
    Ok(map
        .keys()
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .filter_map(InboundListenerKey::ip)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_table_shows_addresses_listeners_and_link() {
        let entry = NetnsEntry {
            netns_cookie: 4099,
            enrolled: true,
            ipv4: Some(Ipv4Addr::new(10, 10, 1, 11)),
            ipv6: None,
            flags: Some(0),
            inbound_listeners: vec![IpAddr::V4(Ipv4Addr::new(10, 10, 1, 11))],
            sk_lookup_link_id: Some(40),
            sk_lookup_program_id: Some(12),
            netns_ino: Some(4_026_532_000),
            netns_path: None,
            pin: Some("/b/links/sk_lookup_4099".into()),
        };
        let out = netns_table(&[entry]);
        assert_eq!(
            out.lines().nth(1),
            Some(
                "4099          yes       10.10.1.11  -     10.10.1.11  40              ino 4026532000"
            )
        );
    }

    #[test]
    fn cgroup_table_falls_back_to_the_cgroup_id() {
        let out = cgroups_table(&[CgroupAttachment {
            cgroup: None,
            cgroup_id: Some(77),
            attach_type: Some("cgroup_inet4_connect".into()),
            program: mesh_ebpf_common::program_names::CONNECT4.into(),
            program_id: 5,
            link_id: 6,
            pin: "/b/links/ambit_connect4".into(),
        }]);
        assert!(
            out.lines().nth(1).is_some_and(
                |l| l.starts_with("cgroup id 77  cgroup_inet4_connect  ambit_connect4")
            ),
            "{out}"
        );
    }
}
