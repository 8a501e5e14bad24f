//! What the kernel tells through procfs and the filesystem rather than
//! through aya: a link's attach type and target (`/proc/self/fdinfo`), the
//! mounts (`/proc/self/mountinfo`), cgroup and network namespace paths by
//! inode, and whether run-time statistics are collected.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Where run-time statistics of eBPF programs are switched on.
const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// Named network namespaces (`ip netns`).
const NAMED_NETNS_DIR: &str = "/run/netns";
/// How deep to look for a cgroup below a cgroup v2 mount.
const MAX_CGROUP_DEPTH: usize = 32;

/// What `/proc/self/fdinfo/<fd>` says about an open bpf link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkFdInfo {
    /// `link_type`, e.g. `cgroup`, `netns`.
    pub link_type: Option<String>,
    /// `link_id`.
    pub link_id: Option<u32>,
    /// `prog_id`.
    pub prog_id: Option<u32>,
    /// `attach_type`, the kernel's `enum bpf_attach_type`.
    pub attach_type: Option<u32>,
    /// `cgroup_id` of a cgroup link.
    pub cgroup_id: Option<u64>,
    /// `netns_ino` of a network namespace link.
    pub netns_ino: Option<u64>,
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type, e.g. `bpf`, `cgroup2`.
    pub fstype: String,
}

/// Parses the `key:\tvalue` lines of a bpf link's fdinfo.
#[must_use]
pub fn parse_link_fdinfo(text: &str) -> LinkFdInfo {
    let mut info = LinkFdInfo::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "link_type" => info.link_type = Some(value.to_owned()),
            "link_id" => info.link_id = value.parse().ok(),
            "prog_id" => info.prog_id = value.parse().ok(),
            // Some kernels print it twice (generic and per link type); the
            // values agree, so the first one stands.
            "attach_type" if info.attach_type.is_none() => info.attach_type = value.parse().ok(),
            "cgroup_id" => info.cgroup_id = value.parse().ok(),
            "netns_ino" => info.netns_ino = value.parse().ok(),
            _ => {}
        }
    }
    info
}

/// The fdinfo of every bpf link this process has open, by link id.
///
/// aya hands out a link's id and program but not its attach type or
/// target; the kernel prints those in the descriptor's fdinfo.
#[must_use]
pub fn open_link_fdinfo() -> HashMap<u32, LinkFdInfo> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fdinfo") else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .map(|text| parse_link_fdinfo(&text))
        .filter_map(|info| info.link_id.map(|id| (id, info)))
        .collect()
}

/// Parses `/proc/self/mountinfo`.
#[must_use]
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            let fstype = after.split(' ').next()?;
            Some(Mount {
                mount_point: PathBuf::from(unescape_octal(mount_point)),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// This process's mounts; empty if procfs cannot be read.
#[must_use]
pub fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse_mountinfo(&text))
        .unwrap_or_default()
}

/// The mount `path` lives on: the longest mount point above it.
#[must_use]
pub fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        // The last of equally long mount points is the one on top.
        .max_by_key(|m| m.mount_point.components().count())
}

/// Finds the cgroup directories with these ids (a cgroup v2 id is its
/// directory's inode number) below every cgroup v2 mount.
#[must_use]
pub fn cgroup_paths(ids: &HashSet<u64>) -> HashMap<u64, PathBuf> {
    let mut found = HashMap::new();
    if ids.is_empty() {
        return found;
    }
    let mut seen_roots = HashSet::new();
    for mount in mounts().into_iter().filter(|m| m.fstype == "cgroup2") {
        let mut queue = VecDeque::from([(mount.mount_point, 0)]);
        while let Some((dir, depth)) = queue.pop_front() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            // The same hierarchy may be mounted twice; walk it once.
            if depth == 0 && !seen_roots.insert((meta.dev(), meta.ino())) {
                break;
            }
            if ids.contains(&meta.ino()) {
                found.entry(meta.ino()).or_insert_with(|| dir.clone());
                if found.len() == ids.len() {
                    return found;
                }
            }
            if depth >= MAX_CGROUP_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    queue.push_back((entry.path(), depth + 1));
                }
            }
        }
    }
    found
}

/// Named network namespaces (`/run/netns/*`) by inode number.
#[must_use]
pub fn named_netns_by_inode() -> HashMap<u64, PathBuf> {
    let Ok(entries) = std::fs::read_dir(NAMED_NETNS_DIR) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let meta = std::fs::metadata(entry.path()).ok()?;
            Some((meta.ino(), entry.path()))
        })
        .collect()
}

/// Whether the kernel counts program runs and run time now
/// (`sysctl kernel.bpf_stats_enabled`, also on while a process holds a
/// `BPF_ENABLE_STATS` descriptor).
#[must_use]
pub fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string(BPF_STATS_SYSCTL).is_ok_and(|v| v.trim() != "0")
}

/// The name of a `enum bpf_attach_type` value, as libbpf spells it
/// (`BPF_CGROUP_INET4_CONNECT` is `cgroup_inet4_connect`).
#[must_use]
pub fn attach_type_name(attach_type: u32) -> String {
    const NAMES: [&str; 41] = [
        "cgroup_inet_ingress",
        "cgroup_inet_egress",
        "cgroup_inet_sock_create",
        "cgroup_sock_ops",
        "sk_skb_stream_parser",
        "sk_skb_stream_verdict",
        "cgroup_device",
        "sk_msg_verdict",
        "cgroup_inet4_bind",
        "cgroup_inet6_bind",
        "cgroup_inet4_connect",
        "cgroup_inet6_connect",
        "cgroup_inet4_post_bind",
        "cgroup_inet6_post_bind",
        "cgroup_udp4_sendmsg",
        "cgroup_udp6_sendmsg",
        "lirc_mode2",
        "flow_dissector",
        "cgroup_sysctl",
        "cgroup_udp4_recvmsg",
        "cgroup_udp6_recvmsg",
        "cgroup_getsockopt",
        "cgroup_setsockopt",
        "trace_raw_tp",
        "trace_fentry",
        "trace_fexit",
        "modify_return",
        "lsm_mac",
        "trace_iter",
        "cgroup_inet4_getpeername",
        "cgroup_inet6_getpeername",
        "cgroup_inet4_getsockname",
        "cgroup_inet6_getsockname",
        "xdp_devmap",
        "cgroup_inet_sock_release",
        "xdp_cpumap",
        "sk_lookup",
        "xdp",
        "sk_skb_verdict",
        "sk_reuseport_select",
        "sk_reuseport_select_or_migrate",
    ];
    usize::try_from(attach_type)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("attach_type_{attach_type}"), |n| (*n).to_owned())
}

/// Undoes the `\ooo` escapes the kernel writes for spaces, tabs, newlines
/// and backslashes in mount points.
fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_link_fdinfo_gives_target_and_attach_type() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1056\nlink_type:\tcgroup\nlink_id:\t31\nprog_tag:\t2fd9d3f0a1c4f3a6\nprog_id:\t120\ncgroup_id:\t8812\nattach_type:\t10\n";
        assert_eq!(
            parse_link_fdinfo(text),
            LinkFdInfo {
                link_type: Some("cgroup".into()),
                link_id: Some(31),
                prog_id: Some(120),
                attach_type: Some(10),
                cgroup_id: Some(8812),
                netns_ino: None,
            }
        );
    }

    #[test]
    fn netns_link_fdinfo_gives_the_namespace_inode() {
        let text = "link_type:\tnetns\nlink_id:\t40\nprog_id:\t130\nattach_type:\t36\nnetns_ino:\t4026532999\nattach_type:\t36\n";
        let info = parse_link_fdinfo(text);
        assert_eq!(info.netns_ino, Some(4_026_532_999));
        assert_eq!(info.attach_type, Some(36));
        assert_eq!(attach_type_name(36), "sk_lookup");
    }

    #[test]
    fn attach_type_names_follow_the_kernel_enum() {
        assert_eq!(attach_type_name(3), "cgroup_sock_ops");
        assert_eq!(attach_type_name(8), "cgroup_inet4_bind");
        assert_eq!(attach_type_name(11), "cgroup_inet6_connect");
        assert_eq!(attach_type_name(21), "cgroup_getsockopt");
        assert_eq!(attach_type_name(30), "cgroup_inet6_getpeername");
        assert_eq!(attach_type_name(999), "attach_type_999");
    }

    #[test]
    fn mountinfo_gives_mount_points_and_types() {
        let text = "\
25 1 0:23 / /sys rw,nosuid - sysfs sysfs rw
33 25 0:29 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw
40 25 0:35 / /sys/fs/bpf rw - bpf bpf rw,mode=700
51 40 0:36 / /run/ambit\\040test/bpffs rw - bpf bpf rw
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[1].fstype, "cgroup2");
        assert_eq!(mounts[1].mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(mounts[3].mount_point, Path::new("/run/ambit test/bpffs"));
        let on = |p: &str| mount_of(&mounts, Path::new(p)).map(|m| m.fstype.as_str());
        assert_eq!(on("/sys/fs/bpf/ambit/maps"), Some("bpf"));
        assert_eq!(on("/sys/kernel"), Some("sysfs"));
        assert_eq!(on("/run/ambit test/bpffs/ambit"), Some("bpf"));
        assert_eq!(on("/tmp/x"), None);
    }
}
