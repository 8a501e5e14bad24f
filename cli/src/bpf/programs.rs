//! `ambit bpf prog list` and `ambit bpf prog show`: the programs behind
//! ambit's pinned links, plus those that use its pinned maps without a
//! link of their own (`sk_msg`, attached to its sock hash; `sk_lookup`
//! while no pod is enrolled).

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::PathBuf,
    time::SystemTime,
};

use aya::{
    maps::MapInfo,
    programs::{ProgramInfo, loaded_programs},
};
use mesh_ebpf_common::{map_names, program_names};
use serde::Serialize;

use super::{
    BpfError, host,
    pins::{LinkPin, LinkRole, PinDir, PinnedMap},
    table,
};

/// The kernel keeps this many bytes of a program's name (plus a NUL).
const KERNEL_NAME_LEN: usize = 15;

/// One of ambit's programs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgramEntry {
    /// The kernel's id.
    pub id: u32,
    /// ambit's name for it (`ambit_getpeername4`).
    pub name: String,
    /// The name the kernel keeps, cut to 15 bytes (`ambit_getpeerna`).
    pub kernel_name: String,
    /// The program type as bpftool names it (`cgroup_sock_addr`).
    #[serde(rename = "type")]
    pub program_type: String,
    /// The kernel's tag (hash of the instructions), 16 hex digits.
    pub tag: String,
    /// When it was loaded, RFC 3339 UTC.
    pub loaded_at: Option<String>,
    /// How often it ran; `null` while the kernel does not count
    /// (`sysctl kernel.bpf_stats_enabled=0`).
    pub run_count: Option<u64>,
    /// Total run time in nanoseconds; `null` like `run_count`.
    pub run_time_ns: Option<u64>,
    /// Size of the translated instructions in bytes.
    pub xlated_bytes: Option<u32>,
    /// Size of the JIT-compiled code in bytes.
    pub jited_bytes: u32,
    /// Instructions the verifier processed.
    pub verified_insns: Option<u32>,
    /// Ids of the maps it uses.
    pub map_ids: Vec<u32>,
    /// Names of those maps, in the same order.
    pub maps: Vec<String>,
    /// Where it is attached.
    pub attachments: Vec<Attachment>,
}

/// Where a program is attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// The attach type, as libbpf names it (`cgroup_inet4_connect`,
    /// `sk_lookup`, `sk_msg_verdict`); `null` if the kernel does not say.
    pub attach_type: Option<String>,
    /// The target for people: a cgroup path, `netns <cookie>`, `map <NAME>`.
    pub target: String,
    /// The cgroup's id (cgroup attachments).
    pub cgroup_id: Option<u64>,
    /// The network namespace's cookie (`sk_lookup` attachments).
    pub netns_cookie: Option<u64>,
    /// The network namespace's inode (`sk_lookup` attachments).
    pub netns_ino: Option<u64>,
    /// The link's id; `null` for `sk_msg`, which is attached to its map
    /// rather than through a link.
    pub link_id: Option<u32>,
    /// The link's pin.
    pub pin: Option<PathBuf>,
}

/// Every one of ambit's programs, by id.
pub fn list(pins: &PinDir) -> Result<Vec<ProgramEntry>, BpfError> {
    let maps = pins.open_all_maps()?;
    let links = pins.links()?;
    let targets = Targets::resolve(&links);
    let ours: HashMap<u32, &'static str> = maps.iter().map(|m| (m.info.id(), m.name)).collect();
    let linked: HashSet<u32> = links.iter().map(|l| l.program_id).collect();
    let stats = host::bpf_stats_enabled();
    let mut entries = Vec::new();
    for program in loaded_programs() {
        let program = match program {
            Ok(program) => program,
            // Unloaded between listing its id and opening it.
            Err(e) if super::is_not_found(&e) => continue,
            Err(e) => return Err(BpfError::kernel("list the loaded eBPF programs", &e)),
        };
        let map_ids = program.map_ids().ok().flatten().unwrap_or_default();
        if !linked.contains(&program.id()) && !map_ids.iter().any(|id| ours.contains_key(id)) {
            continue;
        }
        entries.push(entry(&program, map_ids, &maps, &links, &targets, stats));
    }
    entries.sort_by_key(|e| e.id);
    Ok(entries)
}

/// The program a user means: its id, ambit's name or the kernel's.
pub fn show(pins: &PinDir, query: &str, dir: &std::path::Path) -> Result<ProgramEntry, BpfError> {
    let programs = list(pins)?;
    let matches: Vec<&ProgramEntry> = if let Ok(id) = query.parse::<u32>() {
        programs.iter().filter(|p| p.id == id).collect()
    } else {
        let exact: Vec<&ProgramEntry> = programs.iter().filter(|p| p.name == query).collect();
        if exact.is_empty() {
            programs.iter().filter(|p| p.kernel_name == query).collect()
        } else {
            exact
        }
    };
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(BpfError::UnknownProgram {
            query: query.to_owned(),
            dir: dir.to_owned(),
            known: programs
                .iter()
                .map(|p| format!("{} ({})", p.name, p.id))
                .collect(),
        }),
        many => Err(BpfError::AmbiguousProgram {
            query: query.to_owned(),
            matches: many
                .iter()
                .map(|p| format!("{} ({})", p.name, p.id))
                .collect(),
        }),
    }
}

/// `ambit bpf prog list` as a table.
#[must_use]
pub fn list_table(programs: &[ProgramEntry]) -> String {
    let rows: Vec<Vec<String>> = programs
        .iter()
        .map(|p| {
            vec![
                p.id.to_string(),
                p.program_type.clone(),
                p.name.clone(),
                attachments_text(&p.attachments),
                p.tag.clone(),
                table::or_dash(p.loaded_at.as_ref()),
                table::or_dash(p.run_count),
                table::or_dash(p.run_time_ns),
                p.map_ids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    table::render(
        &[
            "ID",
            "TYPE",
            "NAME",
            "ATTACHED",
            "TAG",
            "LOADED AT",
            "RUNS",
            "RUN NS",
            "MAPS",
        ],
        &rows,
    )
}

/// `ambit bpf prog show` as `field: value` lines, then the attachments.
#[must_use]
pub fn show_table(p: &ProgramEntry) -> String {
    let maps: Vec<String> = p
        .map_ids
        .iter()
        .zip(&p.maps)
        .map(|(id, name)| format!("{id} {name}"))
        .collect();
    let fields = [
        ("id", p.id.to_string()),
        ("name", p.name.clone()),
        ("kernel name", p.kernel_name.clone()),
        ("type", p.program_type.clone()),
        ("tag", p.tag.clone()),
        ("loaded at", table::or_dash(p.loaded_at.as_ref())),
        (
            "run count",
            p.run_count.map_or_else(
                || "- (the kernel counts runs while kernel.bpf_stats_enabled=1)".to_owned(),
                |n| n.to_string(),
            ),
        ),
        ("run time ns", table::or_dash(p.run_time_ns)),
        ("xlated bytes", table::or_dash(p.xlated_bytes)),
        ("jited bytes", p.jited_bytes.to_string()),
        ("verified insns", table::or_dash(p.verified_insns)),
        ("maps", maps.join(", ")),
    ];
    let mut out = String::new();
    for (field, value) in fields {
        let _ = writeln!(out, "{:<15} {value}", format!("{field}:"));
    }
    out.push_str("attachments:\n");
    if p.attachments.is_empty() {
        out.push_str("  (none)\n");
        return out;
    }
    let rows: Vec<Vec<String>> = p
        .attachments
        .iter()
        .map(|a| {
            vec![
                table::or_dash(a.attach_type.as_ref()),
                a.target.clone(),
                table::or_dash(a.link_id),
                table::or_dash(a.pin.as_ref().map(|p| p.display())),
            ]
        })
        .collect();
    for line in table::render(&["ATTACH TYPE", "TARGET", "LINK", "PIN"], &rows).lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// ambit's full name for a program the kernel calls `kernel_name`, when
/// only one of ambit's names cuts down to it.
#[must_use]
pub fn full_name(kernel_name: &str) -> Option<&'static str> {
    let mut candidates = program_names::ALL
        .into_iter()
        .filter(|name| name.get(..KERNEL_NAME_LEN).unwrap_or(name) == kernel_name);
    let first = candidates.next()?;
    candidates.next().is_none().then_some(first)
}

/// The paths behind cgroup ids and namespace inodes.
pub struct Targets {
    cgroups: HashMap<u64, PathBuf>,
    netns: HashMap<u64, PathBuf>,
}

// === impl Targets ===

impl Targets {
    /// Looks up the cgroups and namespaces these links attach to.
    #[must_use]
    pub fn resolve(links: &[LinkPin]) -> Self {
        Self {
            cgroups: host::cgroup_paths(&links.iter().filter_map(|l| l.cgroup_id).collect()),
            netns: host::named_netns_by_inode(),
        }
    }

    /// A cgroup's path, if found.
    #[must_use]
    pub fn cgroup(&self, id: u64) -> Option<&PathBuf> {
        self.cgroups.get(&id)
    }

    /// A named network namespace's path, if found.
    #[must_use]
    pub fn netns(&self, ino: u64) -> Option<&PathBuf> {
        self.netns.get(&ino)
    }

    /// Where `link` attaches, as an [`Attachment`].
    #[must_use]
    pub fn attachment(&self, link: &LinkPin) -> Attachment {
        let target = match (&link.role, link.cgroup_id) {
            (LinkRole::SkLookup { netns_cookie }, _) => format!("netns {netns_cookie}"),
            (LinkRole::Cgroup { .. }, Some(id)) => self
                .cgroup(id)
                .map_or_else(|| format!("cgroup id {id}"), |p| p.display().to_string()),
            (LinkRole::Cgroup { .. }, None) => "-".to_owned(),
        };
        Attachment {
            attach_type: link.attach_type.map(host::attach_type_name),
            target,
            cgroup_id: link.cgroup_id,
            netns_cookie: match link.role {
                LinkRole::SkLookup { netns_cookie } => Some(netns_cookie),
                LinkRole::Cgroup { .. } => None,
            },
            netns_ino: link.netns_ino,
            link_id: Some(link.link_id),
            pin: Some(link.path.clone()),
        }
    }
}

fn entry(
    program: &ProgramInfo,
    map_ids: Vec<u32>,
    maps: &[PinnedMap],
    links: &[LinkPin],
    targets: &Targets,
    stats: bool,
) -> ProgramEntry {
    let kernel_name = String::from_utf8_lossy(program.name()).into_owned();
    let own_links: Vec<&LinkPin> = links
        .iter()
        .filter(|l| l.program_id == program.id())
        .collect();
    let name = own_links
        .iter()
        .map(|l| match &l.role {
            LinkRole::Cgroup { program } => program.clone(),
            LinkRole::SkLookup { .. } => program_names::SK_LOOKUP.to_owned(),
        })
        .next()
        .or_else(|| full_name(&kernel_name).map(str::to_owned))
        .unwrap_or_else(|| kernel_name.clone());
    let program_type = format!("{:?}", program.program_type());
    let program_type = program_type
        .strip_prefix("BPF_PROG_TYPE_")
        .unwrap_or(&program_type)
        .to_ascii_lowercase();
    let mut attachments: Vec<Attachment> =
        own_links.iter().map(|l| targets.attachment(l)).collect();
    let splice_sockets = maps
        .iter()
        .find(|m| m.name == map_names::SPLICE_SOCKETS)
        .map(|m| m.info.id());
    if program_type == "sk_msg" && splice_sockets.is_some_and(|id| map_ids.contains(&id)) {
        attachments.push(Attachment {
            attach_type: Some(host::attach_type_name(7)),
            target: format!("map {}", map_names::SPLICE_SOCKETS),
            cgroup_id: None,
            netns_cookie: None,
            netns_ino: None,
            link_id: None,
            pin: None,
        });
    }
    let counted = stats || program.run_count() != 0;
    let map_names: Vec<String> = map_ids
        .iter()
        .map(|id| {
            maps.iter()
                .find(|m| m.info.id() == *id)
                .map(|m| m.name.to_owned())
                .or_else(|| {
                    MapInfo::from_id(*id)
                        .ok()
                        .and_then(|i| i.name_as_str().map(str::to_owned))
                })
                .unwrap_or_else(|| "?".to_owned())
        })
        .collect();
    ProgramEntry {
        id: program.id(),
        name,
        kernel_name,
        program_type,
        tag: format!("{:016x}", program.tag()),
        loaded_at: program.loaded_at().and_then(rfc3339),
        run_count: counted.then(|| program.run_count()),
        run_time_ns: counted
            .then(|| u64::try_from(program.run_time().as_nanos()).unwrap_or(u64::MAX)),
        xlated_bytes: program.size_translated(),
        jited_bytes: program.size_jitted(),
        verified_insns: program.verified_instruction_count(),
        map_ids,
        maps: map_names,
        attachments,
    }
}

fn attachments_text(attachments: &[Attachment]) -> String {
    if attachments.is_empty() {
        return "-".to_owned();
    }
    attachments
        .iter()
        .map(|a| match &a.attach_type {
            Some(t) => format!("{t} {}", a.target),
            None => a.target.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn rfc3339(at: SystemTime) -> Option<String> {
    time::OffsetDateTime::from(at)
        .replace_nanosecond(0)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_map_back_to_full_names_unless_ambiguous() {
        assert_eq!(full_name("ambit_connect4"), Some(program_names::CONNECT4));
        assert_eq!(full_name("ambit_sk_lookup"), Some(program_names::SK_LOOKUP));
        assert_eq!(
            full_name("ambit_getsockop"),
            Some(program_names::GETSOCKOPT)
        );
        // getpeername4 and getpeername6 both cut down to this.
        assert_eq!(full_name("ambit_getpeerna"), None);
        assert_eq!(full_name("other"), None);
    }

    #[test]
    fn load_times_are_rfc3339_utc_to_the_second() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_250);
        assert_eq!(rfc3339(at).as_deref(), Some("2023-11-14T22:13:20Z"));
    }

    #[test]
    fn show_table_lists_attachments() {
        let entry = ProgramEntry {
            id: 12,
            name: program_names::SK_LOOKUP.into(),
            kernel_name: program_names::SK_LOOKUP.into(),
            program_type: "sk_lookup".into(),
            tag: "00112233aabbccdd".into(),
            loaded_at: None,
            run_count: None,
            run_time_ns: None,
            xlated_bytes: Some(100),
            jited_bytes: 80,
            verified_insns: None,
            map_ids: vec![3],
            maps: vec![map_names::INBOUND_LISTENERS.into()],
            attachments: vec![Attachment {
                attach_type: Some("sk_lookup".into()),
                target: "netns 4099".into(),
                cgroup_id: None,
                netns_cookie: Some(4099),
                netns_ino: Some(4_026_532_000),
                link_id: Some(40),
                pin: Some("/b/links/sk_lookup_4099".into()),
            }],
        };
        let out = show_table(&entry);
        assert!(out.contains("maps:           3 AMBIT_INBOUND"), "{out}");
        assert!(
            out.contains("  sk_lookup    netns 4099  40    /b/links/sk_lookup_4099"),
            "{out}"
        );
        let list = list_table(&[entry]);
        assert!(list.contains("sk_lookup netns 4099"), "{list}");
    }
}
