//! Building the test bed's network: the fabric, nodes and pods, with `ip`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use super::{CgroupDriver, Node, NodeState, Pod, Testbed};
use crate::command::{ip, ip_in};
use crate::naming;
use crate::netns::write_sysctls;

/// Next hop every pod routes through; the node answers for it by proxy ARP.
const POD_GATEWAY_V4: &str = "169.254.1.1";
/// Next hop every pod routes IPv6 through, on the node side of its veth.
const POD_GATEWAY_V6: &str = "fe80::1";

// === impl Testbed ===

impl Testbed {
    /// Adds a node (e.g. `"n1"`) on the fabric, routed to and from every
    /// existing node, with its cgroup subtree and bpffs.
    pub fn add_node(&mut self, name: &str) -> Node {
        naming::check_object_name("node", name);
        assert!(
            self.nodes.iter().all(|state| state.node.name != name),
            "node {name} already exists"
        );
        let index = u8::try_from(self.nodes.len() + 1)
            .ok()
            .filter(|index| *index <= 250)
            .expect("at most 250 nodes");
        let netns = format!("{}-node-{name}", self.id);
        self.create_netns(&netns);
        let underlay_v4 = Ipv4Addr::new(172, 30, 0, index);
        let underlay_v6 = self
            .ipv6
            .then(|| Ipv6Addr::new(0xfd00, 0x172, 0x30, 0, 0, 0, 0, u16::from(index)));
        let fabric_ifname = format!("n{index}");
        self.wire_node(&netns, &fabric_ifname, underlay_v4, underlay_v6);

        let cgroup_root = self.cgroup.join(name).join("kubepods");
        let agent_cgroup = cgroup_root.join("ambit-agent");
        create_cgroup(&agent_cgroup);
        let bpffs = self.mount_bpffs(name);
        let node = Node {
            name: name.to_owned(),
            netns_path: netns_path(&netns),
            netns,
            cgroup_root,
            agent_cgroup,
            bpffs,
            underlay_v4,
            underlay_v6,
            index,
            fabric_ifname,
        };
        for other in &self.nodes {
            route_pods(&node, &other.node);
            route_pods(&other.node, &node);
        }
        self.nodes.push(NodeState {
            node: node.clone(),
            pods: 0,
        });
        node
    }

    /// Adds a network namespace with nothing in it but its loopback, up:
    /// for sockets whose traffic must stay inside the test bed and off every
    /// wire (`127.0.0.1` there is no other namespace's). Returns its path,
    /// for [`run_in_netns`](crate::netns::run_in_netns).
    pub fn add_loopback_netns(&mut self, name: &str) -> PathBuf {
        naming::check_object_name("network namespace", name);
        let netns = format!("{}-lo-{name}", self.id);
        self.create_netns(&netns);
        netns_path(&netns)
    }

    /// Adds a pod to `node`, wired like a CNI would: a veth (`eth0` in the pod,
    /// `p<j>` on the node), a /32 (and /128) address, routes both ways, and a
    /// cgroup under the node's `kubepods`.
    pub fn add_pod(&mut self, node: &Node, name: &str, namespace: &str) -> Pod {
        self.add_pod_in_cgroup(node, name, namespace, None)
    }

    /// [`add_pod`](Self::add_pod) with the cgroup the kubelet would give a
    /// pod with this UID (`driver` names it), as Kubernetes mode finds it.
    pub fn add_kube_pod(
        &mut self,
        node: &Node,
        name: &str,
        namespace: &str,
        uid: &str,
        driver: CgroupDriver,
    ) -> Pod {
        let cgroup = match driver {
            CgroupDriver::Cgroupfs => format!("burstable/pod{uid}"),
            CgroupDriver::Systemd => format!(
                "kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            ),
        };
        self.add_pod_in_cgroup(node, name, namespace, Some(&cgroup))
    }

    fn add_pod_in_cgroup(
        &mut self,
        node: &Node,
        name: &str,
        namespace: &str,
        cgroup: Option<&str>,
    ) -> Pod {
        naming::check_object_name("pod", name);
        naming::check_object_name("namespace", namespace);
        let state = self
            .nodes
            .iter_mut()
            .find(|state| state.node.index == node.index)
            .unwrap_or_else(|| panic!("node {} is not part of this test bed", node.name));
        assert!(state.pods < 200, "at most 200 pods per node");
        state.pods += 1;
        let j = state.pods;
        self.pod_count += 1;
        let pod_number = self.pod_count;

        let ipv4 = Ipv4Addr::new(10, 10, node.index, 10 + j);
        let ipv6 = self.ipv6.then(|| {
            let host = u16::from(10 + j);
            Ipv6Addr::new(0xfd00, 0x10, 0x10, u16::from(node.index), 0, 0, 0, host)
        });
        let netns = format!("{}-pod{pod_number}-{name}", self.id);
        self.create_netns(&netns);
        let host_ifname = format!("p{j}");
        add_eth0_veth(&netns, &host_ifname, &node.netns);
        wire_pod_host_side(node, &host_ifname, ipv4, ipv6);
        wire_pod_side(&netns, ipv4, ipv6);

        let cgroup = node
            .cgroup_root
            .join(cgroup.map_or_else(|| format!("pod{pod_number}-{name}"), str::to_owned));
        create_cgroup(&cgroup);
        Pod {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            node: node.name.clone(),
            netns_path: netns_path(&netns),
            netns,
            cgroup,
            ipv4,
            ipv6,
            host_ifname,
        }
    }

    /// Makes a fresh node namespace a router with an `eth0` on the fabric.
    fn wire_node(
        &self,
        netns: &str,
        fabric_ifname: &str,
        underlay_v4: Ipv4Addr,
        underlay_v6: Option<Ipv6Addr>,
    ) {
        let mut sysctls = vec![
            ("net.ipv4.ip_forward", "1"),
            // Inherited from the host otherwise; strict checks would only add noise.
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ];
        if self.ipv6 {
            sysctls.push(("net.ipv6.conf.all.forwarding", "1"));
        }
        write_sysctls(&netns_path(netns), &sysctls)
            .unwrap_or_else(|error| panic!("netns {netns}: {error}"));
        // Proxy ARP answers only for addresses routed through another device
        // than the asking one; this makes the pods' gateway such an address.
        ip_in(
            netns,
            &["route", "add", &format!("{POD_GATEWAY_V4}/32"), "dev", "lo"],
        );

        add_eth0_veth(netns, fabric_ifname, &self.fabric_netns);
        ip_in(
            &self.fabric_netns,
            &["link", "set", fabric_ifname, "master", "br0", "up"],
        );
        address_eth0(
            netns,
            &format!("{underlay_v4}/24"),
            underlay_v6.map(|v6| format!("{v6}/64")),
        );
    }

    /// Mounts a fresh bpffs at `<run_dir>/<node>/bpffs`.
    fn mount_bpffs(&mut self, node_name: &str) -> PathBuf {
        let bpffs = self.run_dir.join(node_name).join("bpffs");
        std::fs::create_dir_all(&bpffs)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", bpffs.display()));
        mount(
            Some("bpf"),
            &bpffs,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|error| panic!("cannot mount bpffs at {}: {error}", bpffs.display()));
        self.mounts.push(bpffs.clone());
        bpffs
    }

    /// Creates the fabric namespace and its bridge.
    pub(super) fn create_fabric(&mut self) {
        let fabric = self.fabric_netns.clone();
        self.create_netns(&fabric);
        ip_in(&fabric, &["link", "add", "br0", "type", "bridge"]);
        // Without a multicast querier, snooping could swallow IPv6 neighbour solicitations.
        ip_in(
            &fabric,
            &[
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        );
        ip_in(&fabric, &["link", "set", "br0", "up"]);
    }

    /// Creates a network namespace with `lo` up and, before any interface
    /// exists, duplicate address detection off so IPv6 addresses work at once.
    fn create_netns(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.netns.push(name.to_owned());
        if self.ipv6 {
            write_sysctls(
                &netns_path(name),
                &[
                    ("net.ipv6.conf.all.accept_dad", "0"),
                    ("net.ipv6.conf.default.accept_dad", "0"),
                ],
            )
            .unwrap_or_else(|error| panic!("netns {name}: {error}"));
        }
        ip_in(name, &["link", "set", "lo", "up"]);
    }
}

/// The node's side of a pod's veth: proxy ARP for the pod's gateway, the
/// IPv6 gateway address, and routes to the pod.
fn wire_pod_host_side(node: &Node, host_ifname: &str, ipv4: Ipv4Addr, ipv6: Option<Ipv6Addr>) {
    let proxy_arp = format!("net.ipv4.conf.{host_ifname}.proxy_arp");
    // Proxy ARP answers after a random delay of up to 0.8 s unless told not to.
    let proxy_delay = format!("net.ipv4.neigh.{host_ifname}.proxy_delay");
    write_sysctls(&node.netns_path, &[(&proxy_arp, "1"), (&proxy_delay, "0")])
        .unwrap_or_else(|error| panic!("node {}: {error}", node.name));
    ip_in(&node.netns, &["link", "set", host_ifname, "up"]);
    ip_in(
        &node.netns,
        &["route", "add", &format!("{ipv4}/32"), "dev", host_ifname],
    );
    if let Some(v6) = ipv6 {
        let gateway = format!("{POD_GATEWAY_V6}/64");
        ip_in(
            &node.netns,
            &["addr", "add", &gateway, "dev", host_ifname, "nodad"],
        );
        ip_in(
            &node.netns,
            &[
                "-6",
                "route",
                "add",
                &format!("{v6}/128"),
                "dev",
                host_ifname,
            ],
        );
    }
}

/// Creates `eth0` in `netns`, a veth whose peer is `peer_name` in
/// `peer_netns`.
fn add_eth0_veth(netns: &str, peer_name: &str, peer_netns: &str) {
    ip_in(
        netns,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", peer_name, "netns", peer_netns,
        ],
    );
}

/// Gives `eth0` in `netns` its IPv4 address and, when there is one, its
/// IPv6 address (without duplicate detection, so it is usable at once),
/// both with their prefix, and brings it up.
fn address_eth0(netns: &str, v4: &str, v6: Option<String>) {
    ip_in(netns, &["addr", "add", v4, "dev", "eth0"]);
    if let Some(v6) = v6 {
        ip_in(netns, &["addr", "add", &v6, "dev", "eth0", "nodad"]);
    }
    ip_in(netns, &["link", "set", "eth0", "up"]);
}

/// The pod's side of its veth: its addresses and its default routes.
fn wire_pod_side(netns: &str, ipv4: Ipv4Addr, ipv6: Option<Ipv6Addr>) {
    address_eth0(
        netns,
        &format!("{ipv4}/32"),
        ipv6.map(|v6| format!("{v6}/128")),
    );
    ip_in(
        netns,
        &[
            "route",
            "add",
            POD_GATEWAY_V4,
            "dev",
            "eth0",
            "scope",
            "link",
        ],
    );
    ip_in(
        netns,
        &[
            "route",
            "add",
            "default",
            "via",
            POD_GATEWAY_V4,
            "dev",
            "eth0",
        ],
    );
    if ipv6.is_some() {
        ip_in(
            netns,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                POD_GATEWAY_V6,
                "dev",
                "eth0",
            ],
        );
    }
}

fn create_cgroup(path: &Path) {
    std::fs::create_dir_all(path)
        .unwrap_or_else(|error| panic!("cannot create cgroup {}: {error}", path.display()));
}

/// Routes `from`'s traffic for `to`'s pods over the fabric.
fn route_pods(from: &Node, to: &Node) {
    let v4_range = format!("10.10.{}.0/24", to.index);
    ip_in(
        &from.netns,
        &[
            "route",
            "add",
            &v4_range,
            "via",
            &to.underlay_v4.to_string(),
            "dev",
            "eth0",
        ],
    );
    if let Some(gateway) = to.underlay_v6 {
        let v6_range = format!("fd00:10:10:{:x}::/64", to.index);
        ip_in(
            &from.netns,
            &[
                "-6",
                "route",
                "add",
                &v6_range,
                "via",
                &gateway.to_string(),
                "dev",
                "eth0",
            ],
        );
    }
}

fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}
