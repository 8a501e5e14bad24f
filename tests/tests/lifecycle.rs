//! The agent's life cycle against the real kernel: un-enrolling, restarting
//! onto pinned state, and bad configuration.

use std::{path::Path, process::Command, time::Duration};

use ambit_tests::{
    Node, Pod, Testbed,
    mesh::{Agent, pods_yaml},
    testbed_or_skip,
    workload::{
        ClientServer, ECHO_PORT, WAIT, client_and_server, pod_tool, send, serve, try_send,
        wait_conn_from,
    },
};
use serde_json::Value;

/// ambit's programs attached to a cgroup, as the kernel lists them
/// (`bpftool cgroup show`).
fn attached_programs(cgroup: &Path) -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool runs");
    assert!(
        out.status.success(),
        "bpftool cgroup show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()));
    listing
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .filter(|name| name.starts_with("ambit_"))
        .map(str::to_owned)
        .collect()
}

/// `sk_lookup` links attached to a pod's network namespace, as the kernel
/// lists them (`bpftool link show`).
fn sk_lookup_links(pod: &Pod) -> usize {
    use std::os::unix::fs::MetadataExt as _;
    let inode = std::fs::metadata(&pod.netns_path)
        .expect("netns exists")
        .ino();
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("bpftool runs");
    let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()));
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["attach_type"] == "sk_lookup" && l["netns_ino"] == inode)
        .count()
}

fn pins(node: &Node) -> usize {
    std::fs::read_dir(node.bpffs.join("ambit/links")).map_or(0, Iterator::count)
}

/// `ambit uninstall` for `node`'s agent and pins, run in the node's network
/// namespace; it must succeed.
fn uninstall(tb: &Testbed, node: &Node, args: &[&str]) -> std::process::Output {
    let ambit = Testbed::bin("ambit");
    let bpffs_dir = node.bpffs.join("ambit");
    let mut command = vec![
        ambit.to_str().expect("utf-8 path"),
        "uninstall",
        "--bpffs-dir",
        bpffs_dir.to_str().expect("utf-8 path"),
    ];
    command.extend_from_slice(args);
    let out = tb.exec_in_netns(&node.netns, &command);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`uninstall`]'s JSON report.
fn uninstall_json(tb: &Testbed, node: &Node) -> Value {
    serde_json::from_slice(&uninstall(tb, node, &["-o", "json"]).stdout).expect("JSON report")
}

/// The pod's return-mark sysctls (`tcp_fwmark_accept`, `fwmark_reflect`)
/// all read `expected`: "1" while enrolled, "0" after.
fn assert_mark_sysctls(tb: &Testbed, pod: &Pod, expected: &str) {
    for sysctl in ["ipv4/tcp_fwmark_accept", "ipv4/fwmark_reflect"] {
        let value = tb.exec_in_netns(&pod.netns, &["cat", &format!("/proc/sys/net/{sysctl}")]);
        assert_eq!(
            String::from_utf8_lossy(&value.stdout).trim(),
            expected,
            "the pod's {sysctl}"
        );
    }
}

#[test]
fn unenrolling_restores_direct_traffic() {
    let mut tb = testbed_or_skip!("unenroll");
    let ClientServer {
        n1,
        n2: _,
        client,
        server,
    } = client_and_server(&mut tb);
    let agent = Agent::start(&tb, &n1, &[&client], &[]);
    let echo = serve(&tb, &server);
    let to = format!("{}:{ECHO_PORT}", server.ipv4);

    send(&tb, &client, &to, 100_000);
    assert_eq!(agent.counter(&tb, "connect_redirected"), 1);
    assert_eq!(sk_lookup_links(&client), 1);

    agent.set_pods(&[]);
    agent.wait_pod_gone(&tb, "client", WAIT);

    send(&tb, &client, &to, 100_000);
    wait_conn_from(&echo, &client.ipv4.to_string());
    assert_eq!(
        agent.counter(&tb, "connect_redirected"),
        1,
        "traffic after un-enrolling must not be captured"
    );
    assert_eq!(
        sk_lookup_links(&client),
        0,
        "sk_lookup must be detached from the pod"
    );
    // The agent's listeners are gone and the bind hook no longer guards the pod.
    let out = tb.run_in_pod(
        &client,
        pod_tool(&["try-bind", "--addr", "127.0.0.1:15001"]),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"ok\":true"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let rules = tb.exec_in_netns(&client.netns, &["ip", "rule", "show"]);
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains("0x53a"),
        "the return-path rule must be removed"
    );
    assert_mark_sysctls(&tb, &client, "0");
}

/// A pod that leaves the mesh while the agent connects to its application
/// from a client's address: that connect ends at once. Its answer would
/// come back by the pod's return path, which leaving removes, so without
/// this the connect would wait out its whole timeout (the soak saw it).
#[test]
fn a_connect_under_way_when_its_pod_leaves_the_mesh_ends_at_once() {
    let mut tb = testbed_or_skip!("unenroll_connect");
    // The client on n1 is outside the mesh; only the server is meshed.
    let ClientServer {
        n1: _,
        n2,
        client,
        server,
    } = client_and_server(&mut tb);
    let agent = Agent::start(&tb, &n2, &[&server], &[]);
    let port = ECHO_PORT.to_string();
    let stall = tb.spawn_in_pod(
        &server,
        pod_tool(&["stall", "--port", &port, "--max-secs", "60"]),
    );
    stall.wait_for_event("listening", WAIT);
    let to = format!("{}:{ECHO_PORT}", server.ipv4);
    let _caller = tb.spawn_in_pod(&client, pod_tool(&["send", "--to", &to, "--bytes", "10"]));
    // The agent accepted the client and connects, from the client's
    // address, to the application, which never answers.
    let client_ip = client.ipv4.to_string();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let out = tb.exec_in_netns(&server.netns, &["ss", "-tnH", "state", "syn-sent"]);
        if String::from_utf8_lossy(&out.stdout).contains(&client_ip) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never connected to the application\n{}",
            agent.proc.report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    agent.set_pods(&[]);
    // Well inside the 10 s connect timeout.
    agent
        .proc
        .wait_for_stderr_line(Duration::from_secs(3), |l| {
            l.contains("left the mesh while the agent was connecting")
        })
        .unwrap_or_else(|| {
            panic!(
                "the connect under way did not end when its pod left the mesh\n{}",
                agent.proc.report()
            )
        });
    let out = tb.exec_in_netns(&server.netns, &["ss", "-tnH", "state", "syn-sent"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&client_ip),
        "the agent's socket is closed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn restarted_agent_reuses_pinned_state_without_attaching_twice() {
    let mut tb = testbed_or_skip!("restart_reuse");
    let ClientServer {
        n1,
        n2: _,
        client,
        server,
    } = client_and_server(&mut tb);
    let echo = serve(&tb, &server);
    let to = format!("{}:{ECHO_PORT}", server.ipv4);

    let first = Agent::start(&tb, &n1, &[&client], &[]);
    assert_eq!(
        attached_programs(&n1.cgroup_root).len(),
        8,
        "{:?}",
        attached_programs(&n1.cgroup_root)
    );
    send(&tb, &client, &to, 100_000);
    assert_eq!(first.counter(&tb, "connect_redirected"), 1);
    let status = first.proc.terminate();
    assert!(
        status.success(),
        "agent exit: {status}\n{}",
        first.proc.report()
    );
    assert_eq!(
        pins(&n1),
        9,
        "a graceful stop keeps 8 cgroup links and 1 sk_lookup link pinned for the next agent"
    );
    assert_eq!(
        attached_programs(&n1.cgroup_root).len(),
        8,
        "programs stay attached across the restart"
    );

    let second = Agent::start(&tb, &n1, &[&client], &[]);
    second
        .proc
        .wait_for_stderr_line(WAIT, |l| l.contains("reused=8"))
        .expect("the second agent adopts all 8 cgroup links");
    let programs = attached_programs(&n1.cgroup_root);
    assert_eq!(
        programs.len(),
        8,
        "no duplicate attachments after a restart: {programs:?}"
    );
    assert_eq!(
        sk_lookup_links(&client),
        1,
        "no duplicate sk_lookup attachment after a restart"
    );
    let entry = second.wait_pod_state(&tb, "client", "enrolled", WAIT);
    assert!(entry["netns_cookie"].is_u64(), "{entry}");

    send(&tb, &client, &to, 100_000);
    wait_conn_from(&echo, &client.ipv4.to_string());
    // The counters live in the pinned map, so they carry over.
    assert_eq!(second.counter(&tb, "connect_redirected"), 2);

    // `ambit uninstall` through the running agent: it un-enrolls the pod
    // (return path and sysctls too), removes everything and exits.
    let report = uninstall_json(&tb, &n1);
    assert_eq!(report["via"], "agent", "{report}");
    let status = second
        .proc
        .wait_timeout(WAIT)
        .expect("the agent exits after an uninstall");
    assert!(
        status.success(),
        "agent exit: {status}\n{}",
        second.proc.report()
    );
    assert!(
        attached_programs(&n1.cgroup_root).is_empty(),
        "{:?}",
        attached_programs(&n1.cgroup_root)
    );
    assert_eq!(sk_lookup_links(&client), 0);
    assert!(
        !n1.bpffs.join("ambit").exists(),
        "the pin directory must be removed"
    );
    assert_mark_sysctls(&tb, &client, "0");
    // The pod left the mesh: its traffic goes straight out again.
    send(&tb, &client, &to, 100_000);
    wait_conn_from(&echo, &client.ipv4.to_string());
}

#[test]
fn uninstall_without_an_agent_removes_the_pinned_state() {
    let mut tb = testbed_or_skip!("uninstall_pins");
    let ClientServer {
        n1,
        n2: _,
        client,
        server,
    } = client_and_server(&mut tb);
    let echo = serve(&tb, &server);
    let to = format!("{}:{ECHO_PORT}", server.ipv4);
    let agent = Agent::start(&tb, &n1, &[&client], &[]);
    agent.proc.kill();
    assert_eq!(pins(&n1), 9, "a crash leaves everything pinned");
    let (ok, sent, _) = try_send(&tb, &client, &to, 1000);
    assert!(
        !ok,
        "without an agent the enrolled pod's traffic is refused: {sent}"
    );

    let out = uninstall(&tb, &n1, &[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("9 link(s) detached") && table.contains("map(s) removed"),
        "{table}"
    );
    assert!(attached_programs(&n1.cgroup_root).is_empty());
    assert_eq!(sk_lookup_links(&client), 0);
    assert!(!n1.bpffs.join("ambit").exists());
    send(&tb, &client, &to, 1000);
    wait_conn_from(&echo, &client.ipv4.to_string());

    // Nothing left: a second uninstall says so and succeeds.
    let report = uninstall_json(&tb, &n1);
    assert_eq!(report["via"], "nothing", "{report}");
}

#[test]
fn an_agent_refuses_pinned_state_of_another_layout_and_changes_nothing() {
    let mut tb = testbed_or_skip!("pin_layout");
    let ClientServer {
        n1,
        n2: _,
        client,
        server: _,
    } = client_and_server(&mut tb);
    let first = Agent::start(&tb, &n1, &[&client], &[]);
    first.proc.terminate();
    // Pretend a future agent pinned this state.
    let pin_dir = n1.bpffs.join("ambit");
    let ours = std::fs::read_dir(&pin_dir)
        .expect("pin dir")
        .flatten()
        .find_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("layout-")
                .map(str::to_owned)
        })
        .expect("a layout marker");
    std::fs::rename(
        pin_dir.join(format!("layout-{ours}")),
        pin_dir.join("layout-99"),
    )
    .expect("rename marker");
    let links_before = attached_programs(&n1.cgroup_root);

    let second = Agent::spawn(&tb, &n1, &pods_yaml(&[&client]), &[]);
    let status = second
        .proc
        .wait_timeout(WAIT)
        .expect("the agent refuses to start");
    assert!(!status.success());
    let stderr = second.proc.stderr_text();
    assert!(
        stderr.contains("map layout version 99")
            && stderr.contains(&format!("uses version {ours}")),
        "the error names both versions:\n{stderr}"
    );
    assert_eq!(
        attached_programs(&n1.cgroup_root),
        links_before,
        "nothing changed"
    );
    assert_eq!(pins(&n1), 9, "nothing changed");
    assert_eq!(sk_lookup_links(&client), 1);
}

#[test]
fn bad_pod_entries_do_not_affect_other_pods() {
    let mut tb = testbed_or_skip!("bad_entries");
    let ClientServer {
        n1,
        n2: _,
        client,
        server,
    } = client_and_server(&mut tb);
    let missing = format!("/run/netns/{}-does-not-exist", tb.id());
    let yaml = format!(
        "{}  - name: ghost\n    namespace: shop\n    ips: [10.10.1.99]\n    netns: {missing}\n  - name: client\n    namespace: shop\n    ips: [10.10.1.98]\n    netns: {}\n",
        pods_yaml(&[&client]),
        client.netns_path.display()
    );
    let agent = Agent::spawn(&tb, &n1, &yaml, &[]);
    agent.wait_ready(&tb);
    agent.wait_pod_state(&tb, "client", "enrolled", WAIT);
    let ghost = agent.wait_pod_state(&tb, "ghost", "failed", WAIT);
    assert!(
        ghost["error"].as_str().unwrap_or("").contains(&missing),
        "the error must name the netns path: {ghost}"
    );
    let rejected: Vec<Value> = agent
        .pods(&tb)
        .into_iter()
        .filter(|p| p["state"] == "rejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(
        rejected[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("shop/client is listed twice"),
        "{rejected:?}"
    );

    let echo = serve(&tb, &server);
    send(
        &tb,
        &client,
        &format!("{}:{ECHO_PORT}", server.ipv4),
        100_000,
    );
    wait_conn_from(&echo, &client.ipv4.to_string());
    assert_eq!(
        agent.counter(&tb, "connect_redirected"),
        1,
        "the good pod is captured"
    );

    // The CLI shows the same, as a table by default.
    let ambit = Testbed::bin("ambit");
    let ambit = ambit.to_str().expect("utf-8 path");
    let out = tb.exec_in_netns(&n1.netns, &[ambit, "pods"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("ghost") && l.contains("failed") && l.contains(&missing)),
        "{table}"
    );
    let out = tb.exec_in_netns(&n1.netns, &[ambit, "pods", "-o", "json"]);
    let pods: Value = serde_json::from_slice(&out.stdout).expect("ambit pods -o json prints JSON");
    assert_eq!(pods.as_array().map(Vec::len), Some(3), "{pods}");
    // An agent that cannot be reached is a failure scripts can see.
    let out = tb.exec_in_netns(&n1.netns, &[ambit, "--admin", "127.0.0.1:1", "counters"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the node agent"));
}

#[test]
fn unparseable_config_stops_the_agent_with_the_file_and_line() {
    let mut tb = testbed_or_skip!("bad_config");
    let n1 = tb.add_node("n1");
    let agent = Agent::spawn(
        &tb,
        &n1,
        "pods:\n  - name: a\n    ips: [not-an-ip]\n    netns: /x\n",
        &[],
    );
    let status = agent
        .proc
        .wait_timeout(WAIT)
        .expect("the agent exits on a bad config");
    assert!(!status.success(), "{status}");
    let stderr = agent.proc.stderr_text();
    assert!(
        stderr.contains("n1-mesh.yaml") && stderr.contains("line 3"),
        "the error must name the file and line:\n{stderr}"
    );
    assert!(
        attached_programs(&n1.cgroup_root).is_empty(),
        "nothing may be attached on a failed start"
    );
}

#[test]
fn an_agent_started_with_ip_netns_exec_says_to_use_nsenter_and_changes_nothing() {
    let mut tb = testbed_or_skip!("ip_netns_exec");
    let n1 = tb.add_node("n1");
    // The common mistake: `ip netns exec` remounts /sys for the namespace,
    // which hides the cgroup v2 mount the agent attaches under.
    let agent = Agent::command(&tb, &n1, "pods: []\n", &[]);
    let output = Command::new("ip")
        .args(["netns", "exec", &n1.netns])
        .arg(agent.get_program())
        .args(agent.get_args())
        .envs(agent.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()
        .expect("run ip netns exec");
    assert!(!output.status.success(), "the agent must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot open cgroup")
            && stderr.contains("ip netns exec")
            && stderr.contains("nsenter --net="),
        "the error names the cause and the fix:\n{stderr}"
    );
    assert!(
        !n1.bpffs.join("ambit/maps").exists(),
        "nothing may be loaded or pinned before the cgroup is checked"
    );
    assert!(attached_programs(&n1.cgroup_root).is_empty());
}

#[test]
fn broken_config_reload_keeps_the_last_good_state() {
    let mut tb = testbed_or_skip!("bad_reload");
    let ClientServer {
        n1,
        n2: _,
        client,
        server,
    } = client_and_server(&mut tb);
    let agent = Agent::start(&tb, &n1, &[&client], &[]);
    agent.set_config_text("pods: [ {name: broken\n");
    agent
        .proc
        .wait_for_stderr_line(WAIT, |l| l.contains("keeping the last good configuration"))
        .expect("the reload error is logged");
    std::thread::sleep(Duration::from_millis(300));
    agent.wait_pod_state(&tb, "client", "enrolled", WAIT);
    let echo = serve(&tb, &server);
    send(
        &tb,
        &client,
        &format!("{}:{ECHO_PORT}", server.ipv4),
        100_000,
    );
    wait_conn_from(&echo, &client.ipv4.to_string());
    assert_eq!(agent.counter(&tb, "connect_redirected"), 1);
}

#[test]
fn pod_sysctls_are_written_through_proc_sys_net_and_a_bad_one_is_named() {
    let mut tb = testbed_or_skip!("proc_sys_net");
    let ClientServer {
        n1,
        n2: _,
        client,
        server: _,
    } = client_and_server(&mut tb);
    // A writable bind of /proc/sys/net elsewhere, as the DaemonSet mounts
    // the host's: the pod's value changes through it.
    let bound = tb.run_dir().join("host-proc-sys-net");
    std::fs::create_dir_all(&bound).expect("mount point");
    nix::mount::mount(
        Some("/proc/sys/net"),
        &bound,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind /proc/sys/net");
    let _unmount = Unmount(bound.clone());
    let agent = Agent::spawn(
        &tb,
        &n1,
        &pods_yaml(&[&client]),
        &["--proc-sys-net", bound.to_str().expect("UTF-8")],
    );
    agent.wait_ready(&tb);
    agent.wait_pod_state(&tb, "client", "enrolled", WAIT);
    assert_mark_sysctls(&tb, &client, "1");
    drop(agent);

    // A path that cannot be written fails the pod, naming it and what to check.
    let agent = Agent::spawn(
        &tb,
        &n1,
        &pods_yaml(&[&client]),
        &["--proc-sys-net", "/nonexistent/net"],
    );
    agent.wait_ready(&tb);
    let failed = agent.wait_pod_state(&tb, "client", "failed", WAIT);
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("/nonexistent/net/ipv4/tcp_fwmark_accept")
            && error.contains("--proc-sys-net"),
        "{failed}"
    );
}

/// Detaches a bind mount when dropped, also when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
