//! `ambit bpf ...` against the real kernel: the CLI reads the agent's pinned
//! programs, maps and links directly, and what it decodes matches what the
//! agent's admin API and bpftool say, while the agent runs and after it
//! stopped with its state kept.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Command, Output},
};

use ambit_tests::{
    Pod, Testbed,
    mesh::Agent,
    testbed_or_skip,
    workload::{ClientServer, ECHO_PORT, WAIT, client_and_server, send, serve, wait_conn_from},
};
use serde_json::Value;

/// The cgroup programs, attached once to the node's cgroup root.
const CGROUP_PROGRAMS: [&str; 8] = [
    "ambit_bind4",
    "ambit_bind6",
    "ambit_connect4",
    "ambit_connect6",
    "ambit_getpeername4",
    "ambit_getpeername6",
    "ambit_getsockopt",
    "ambit_sock_ops",
];

const MAPS: [&str; 10] = [
    "AMBIT_BYPASS",
    "AMBIT_ENROLLED",
    "AMBIT_ODST_SOCK",
    "AMBIT_ODST_TUPL",
    "AMBIT_INBOUND",
    "AMBIT_COUNTERS",
    "AMBIT_DIRECT",
    "AMBIT_SPLICE_SK",
    "AMBIT_SPLICED",
    "AMBIT_SPLICE_EV",
];

/// Runs `ambit bpf --bpffs-dir DIR ARGS` from the test's own namespaces.
fn ambit_bpf(dir: &Path, args: &[&str]) -> Output {
    Command::new(Testbed::bin("ambit"))
        .arg("bpf")
        .arg("--bpffs-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("ambit runs")
}

/// `ambit bpf ARGS -o json`, which must succeed.
fn ambit_bpf_json(dir: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    let out = ambit_bpf(dir, &args);
    assert!(
        out.status.success(),
        "ambit bpf {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ambit bpf {args:?} printed bad JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `ambit bpf ARGS` as a table, which must succeed.
fn ambit_bpf_table(dir: &Path, args: &[&str]) -> String {
    let out = ambit_bpf(dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ambit bpf {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn bpftool_json(args: &[&str]) -> Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool runs");
    assert!(
        out.status.success(),
        "bpftool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()))
}

/// (program id, program name) of ambit's programs on a cgroup, as bpftool
/// lists them (it knows nothing of ambit's pins).
fn bpftool_cgroup_programs(cgroup: &Path) -> BTreeSet<u64> {
    bpftool_json(&["cgroup", "show", &cgroup.display().to_string()])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("ambit_")))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// (link id, program id, attach type) of every link on a cgroup, from
/// bpftool's own listing of the kernel's links.
fn bpftool_cgroup_links(cgroup: &Path) -> BTreeSet<(u64, u64, String)> {
    let id = std::fs::metadata(cgroup).expect("cgroup exists").ino();
    bpftool_json(&["link", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["type"] == "cgroup" && l["cgroup_id"] == id)
        .filter_map(|l| {
            Some((
                l["id"].as_u64()?,
                l["prog_id"].as_u64()?,
                l["attach_type"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// The id of the `sk_lookup` link on a pod's network namespace, from bpftool.
fn bpftool_sk_lookup_link(pod: &Pod) -> Option<u64> {
    let inode = std::fs::metadata(&pod.netns_path)
        .expect("netns exists")
        .ino();
    bpftool_json(&["link", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["attach_type"] == "sk_lookup" && l["netns_ino"] == inode)
        .and_then(|l| l["id"].as_u64())
}

/// Sum over CPUs of each counter in a `map dump AMBIT_COUNTERS`, by name,
/// after checking each total is the sum of its per-CPU values.
fn counter_totals(dump: &Value) -> BTreeMap<String, u64> {
    dump["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let total = e["value"]["total"].as_u64().expect("total");
            let per_cpu: u64 = e["value"]["per_cpu"]
                .as_array()
                .expect("per_cpu")
                .iter()
                .filter_map(Value::as_u64)
                .sum();
            assert_eq!(total, per_cpu, "{e}");
            let name = e["key"]["counter"].as_str().expect("counter name");
            (name.to_owned(), total)
        })
        .collect()
}

fn admin_counters(agent: &Agent, tb: &Testbed) -> BTreeMap<String, u64> {
    agent
        .get_json(tb, "/counters")
        .as_object()
        .expect("/counters is an object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("counter value")))
        .collect()
}

/// A program in `prog list` by ambit's name.
fn program<'a>(programs: &'a Value, name: &str) -> &'a Value {
    programs
        .as_array()
        .expect("prog list is a list")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no program {name} in {programs:#}"))
}

/// What the pins say, without the parts that move on their own: run
/// statistics, LRU maps, and the inbound listeners (sockets of the agent,
/// which the kernel drops from the sock hash when the agent exits).
fn stable_view(dir: &Path) -> Value {
    let mut netns = ambit_bpf_json(dir, &["netns", "list"]);
    for n in netns.as_array_mut().expect("netns list") {
        n.as_object_mut()
            .expect("netns")
            .remove("inbound_listeners");
    }
    let mut programs = ambit_bpf_json(dir, &["prog", "list"]);
    for p in programs.as_array_mut().expect("programs") {
        let p = p.as_object_mut().expect("program");
        p.remove("run_count");
        p.remove("run_time_ns");
    }
    let maps: Vec<Value> = ambit_bpf_json(dir, &["map", "list"])
        .as_array()
        .expect("maps")
        .iter()
        .map(|m| serde_json::json!([m["name"], m["id"], m["type"], m["max_entries"]]))
        .collect();
    serde_json::json!({
        "programs": programs,
        "maps": maps,
        "enrolled": ambit_bpf_json(dir, &["map", "dump", "AMBIT_ENROLLED"]),
        "cgroups": ambit_bpf_json(dir, &["cgroup", "show"]),
        "netns": netns,
    })
}

/// Starts an agent on `n1` for `client` and sends through it twice.
fn agent_with_traffic(tb: &Testbed, setup: &ClientServer, extra: &[&str]) -> Agent {
    let agent = Agent::start(tb, &setup.n1, &[&setup.client], extra);
    let echo = serve(tb, &setup.server);
    let to = format!("{}:{ECHO_PORT}", setup.server.ipv4);
    send(tb, &setup.client, &to, 10_000);
    send(tb, &setup.client, &to, 10_000);
    wait_conn_from(&echo, &setup.client.ipv4.to_string());
    agent
}

#[test]
fn bpf_commands_decode_a_running_agents_pinned_state() {
    let mut tb = testbed_or_skip!("cli_bpf_live");
    let setup = client_and_server(&mut tb);
    let agent = agent_with_traffic(&tb, &setup, &[]);
    let dir = setup.n1.bpffs.join("ambit");
    let pod = agent.wait_pod_state(&tb, "client", "enrolled", WAIT);
    let cookie = pod["netns_cookie"]
        .as_u64()
        .expect("the pod has a netns cookie");

    check_programs(&dir, &setup.n1.cgroup_root, cookie);
    check_maps(&dir, &tb, &agent, &setup.client, cookie);
    check_netns(&dir, &setup.client, cookie);
    check_cgroups(&dir, &setup.n1.cgroup_root);
}

/// Programs: every cgroup program on the node's cgroup root, `sk_lookup`
/// on the pod's namespace, `sk_msg` on its sock hash; one by id and name.
fn check_programs(dir: &Path, cgroup_root: &Path, cookie: u64) {
    let programs = ambit_bpf_json(dir, &["prog", "list"]);
    let cgroup_root_text = cgroup_root.display().to_string();
    let bpftool_ids = bpftool_cgroup_programs(cgroup_root);
    assert_eq!(bpftool_ids.len(), 8, "{bpftool_ids:?}");
    for name in CGROUP_PROGRAMS {
        let p = program(&programs, name);
        assert!(
            bpftool_ids.contains(&p["id"].as_u64().expect("id")),
            "{name} is not a program bpftool sees on {cgroup_root_text}: {p:#}"
        );
        let attachments = p["attachments"].as_array().expect("attachments");
        assert_eq!(attachments.len(), 1, "{p:#}");
        assert_eq!(attachments[0]["target"], cgroup_root_text.as_str(), "{p:#}");
        assert!(attachments[0]["link_id"].is_u64(), "{p:#}");
        assert_eq!(p["tag"].as_str().map(str::len), Some(16), "{p:#}");
        assert!(p["loaded_at"].is_string(), "{p:#}");
    }
    let connect4 = program(&programs, "ambit_connect4");
    assert_eq!(
        connect4["attachments"][0]["attach_type"],
        "cgroup_inet4_connect"
    );
    assert_eq!(connect4["type"], "cgroup_sock_addr");
    let sk_lookup = program(&programs, "ambit_sk_lookup");
    assert_eq!(sk_lookup["type"], "sk_lookup");
    assert_eq!(
        sk_lookup["attachments"][0]["netns_cookie"], cookie,
        "{sk_lookup:#}"
    );
    assert_eq!(sk_lookup["attachments"][0]["attach_type"], "sk_lookup");
    let sk_msg = program(&programs, "ambit_sk_msg");
    assert_eq!(
        sk_msg["attachments"][0]["target"], "map AMBIT_SPLICE_SK",
        "{sk_msg:#}"
    );
    assert_eq!(programs.as_array().map(Vec::len), Some(10), "{programs:#}");
    let table = ambit_bpf_table(dir, &["prog", "list"]);
    assert!(table.starts_with("ID "), "{table}");
    for name in CGROUP_PROGRAMS {
        assert!(table.contains(name), "{name} missing from\n{table}");
    }

    // By id and by name; the kernel's cut name fits two programs.
    let by_name = ambit_bpf_json(dir, &["prog", "show", "ambit_getpeername6"]);
    let id = by_name["id"].as_u64().expect("id").to_string();
    let by_id = ambit_bpf_json(dir, &["prog", "show", &id]);
    assert_eq!(by_id["name"], "ambit_getpeername6");
    assert_eq!(by_id["kernel_name"], "ambit_getpeerna");
    assert_eq!(by_id["attachments"], by_name["attachments"]);
    let out = ambit_bpf(dir, &["prog", "show", "ambit_getpeerna"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ambit_getpeername4"), "{stderr}");
    let out = ambit_bpf(dir, &["prog", "show", "no_such_program"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no_such_program") && stderr.contains("ambit_connect4"),
        "{stderr}"
    );
}

/// Maps: all ten with the kernel's sizes; counters equal to `/counters`;
/// the enrolled netns and inbound listener of the pod.
fn check_maps(dir: &Path, tb: &Testbed, agent: &Agent, client: &Pod, cookie: u64) {
    let maps = ambit_bpf_json(dir, &["map", "list"]);
    let names: Vec<&str> = maps
        .as_array()
        .expect("map list")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, MAPS);
    let counters_map = &maps[5];
    assert_eq!(counters_map["type"], "percpu_array", "{counters_map}");
    // mesh_ebpf_common::counters::COUNT
    assert_eq!(counters_map["entries"], 19, "{counters_map}");
    assert_eq!(maps[1]["entries"], 1, "one enrolled netns: {}", maps[1]);
    assert_eq!(maps[1]["key_size"], 8);
    assert_eq!(maps[1]["value_size"], 24);
    let pin = dir.join("maps/AMBIT_COUNTERS").display().to_string();
    let pinned = bpftool_json(&["map", "show", "pinned", &pin]);
    assert_eq!(counters_map["id"], pinned["id"], "{pinned}");
    let table = ambit_bpf_table(dir, &["map", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("AMBIT_COUNTERS") && l.contains("percpu_array")),
        "{table}"
    );

    let before = admin_counters(agent, tb);
    let totals = counter_totals(&ambit_bpf_json(dir, &["map", "dump", "AMBIT_COUNTERS"]));
    let after = admin_counters(agent, tb);
    assert_eq!(
        totals.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (name, value) in &totals {
        assert!(
            before[name] <= *value && *value <= after[name],
            "{name}: ambit bpf says {value}, /counters {} then {}",
            before[name],
            after[name]
        );
    }
    assert!(totals["connect_redirected"] >= 2, "{totals:?}");
    let table = ambit_bpf_table(dir, &["map", "dump", "counters"]);
    let redirected = totals["connect_redirected"].to_string();
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["0", "connect_redirected", redirected.as_str()]),
        "{table}"
    );

    let enrolled = ambit_bpf_json(dir, &["map", "dump", "AMBIT_ENROLLED"]);
    let entries = enrolled["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{enrolled:#}");
    assert_eq!(entries[0]["key"]["netns_cookie"], cookie);
    assert_eq!(entries[0]["value"]["ipv4"], client.ipv4.to_string());
    match client.ipv6 {
        Some(v6) => assert_eq!(entries[0]["value"]["ipv6"], v6.to_string()),
        None => assert!(entries[0]["value"]["ipv6"].is_null()),
    }
    let inbound = ambit_bpf_json(dir, &["map", "dump", "AMBIT_INBOUND"]);
    assert!(
        inbound["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["key"]["pod_ip"] == client.ipv4.to_string()),
        "{inbound:#}"
    );
    let events = ambit_bpf_json(dir, &["map", "dump", "AMBIT_SPLICE_EV"]);
    assert!(events["note"].is_string(), "{events:#}");
}

/// Pod network namespaces: the cookie `/pods` shows, the `sk_lookup` link
/// bpftool sees on the pod's namespace, the pod's address and listener.
fn check_netns(dir: &Path, client: &Pod, cookie: u64) {
    let netns = ambit_bpf_json(dir, &["netns", "list"]);
    let entries = netns.as_array().expect("netns list");
    assert_eq!(entries.len(), 1, "{netns:#}");
    let entry = &entries[0];
    assert_eq!(entry["netns_cookie"], cookie, "{entry:#}");
    assert_eq!(entry["enrolled"], true);
    assert_eq!(entry["ipv4"], client.ipv4.to_string());
    assert_eq!(entry["netns_path"], client.netns_path.display().to_string());
    assert_eq!(
        entry["sk_lookup_link_id"].as_u64(),
        bpftool_sk_lookup_link(client),
        "{entry:#}"
    );
    assert!(
        entry["inbound_listeners"]
            .as_array()
            .is_some_and(|l| l.contains(&Value::from(client.ipv4.to_string()))),
        "{entry:#}"
    );
    let yaml = ambit_bpf(dir, &["netns", "list", "-o", "yaml"]);
    let from_yaml: Value = serde_yaml::from_slice(&yaml.stdout).expect("YAML");
    assert_eq!(from_yaml, netns);
    let table = ambit_bpf_table(dir, &["netns", "list"]);
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&cookie.to_string())),
        "{table}"
    );
}

/// Cgroup attachments: eight, all on the node's cgroup root, the programs
/// bpftool lists there, one link each.
fn check_cgroups(dir: &Path, cgroup_root: &Path) {
    let cgroup_root_text = cgroup_root.display().to_string();
    let cgroups = ambit_bpf_json(dir, &["cgroup", "show"]);
    let cgroups = cgroups.as_array().expect("cgroup show");
    assert_eq!(cgroups.len(), 8, "{cgroups:#?}");
    let ids: BTreeSet<u64> = cgroups
        .iter()
        .map(|c| {
            assert_eq!(c["cgroup"], cgroup_root_text.as_str(), "{c}");
            c["program_id"].as_u64().expect("program id")
        })
        .collect();
    assert_eq!(ids, bpftool_cgroup_programs(cgroup_root));
    let links: BTreeSet<(u64, u64, String)> = cgroups
        .iter()
        .map(|c| {
            (
                c["link_id"].as_u64().expect("link id"),
                c["program_id"].as_u64().expect("program id"),
                c["attach_type"].as_str().expect("attach type").to_owned(),
            )
        })
        .collect();
    assert_eq!(links, bpftool_cgroup_links(cgroup_root));
    let table = ambit_bpf_table(dir, &["cgroup", "show"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&cgroup_root_text) && l.contains("cgroup_inet4_connect")),
        "{table}"
    );
}

#[test]
fn bpf_commands_read_the_pins_a_stopped_agent_kept() {
    let mut tb = testbed_or_skip!("cli_bpf_kept");
    let setup = client_and_server(&mut tb);
    let agent = agent_with_traffic(&tb, &setup, &[]);
    let dir = setup.n1.bpffs.join("ambit");
    let running = stable_view(&dir);
    let listeners =
        |dir: &Path| ambit_bpf_json(dir, &["netns", "list"])[0]["inbound_listeners"].clone();
    assert_eq!(
        listeners(&dir)[0],
        setup.client.ipv4.to_string(),
        "the running agent's inbound listener"
    );
    let counters = admin_counters(&agent, &tb);
    let pod = agent.wait_pod_state(&tb, "client", "enrolled", WAIT);

    let status = agent.proc.terminate();
    assert!(
        status.success(),
        "agent exit: {status}\n{}",
        agent.proc.report()
    );
    assert!(agent.get(&tb, "/ready").is_none(), "the agent is down");

    let stopped = stable_view(&dir);
    assert_eq!(
        stopped, running,
        "the pins show the same state once the agent is gone"
    );
    assert_eq!(stopped["netns"][0]["netns_cookie"], pod["netns_cookie"]);
    assert_eq!(
        listeners(&dir),
        Value::Array(Vec::new()),
        "the listeners closed with the agent"
    );
    // sk_msg has no link: it is found through the map it stays attached to.
    program(&stopped["programs"], "ambit_sk_msg");
    let totals = counter_totals(&ambit_bpf_json(&dir, &["map", "dump", "AMBIT_COUNTERS"]));
    assert_eq!(totals["connect_redirected"], counters["connect_redirected"]);
    for (name, value) in &totals {
        assert!(
            *value >= counters[name],
            "{name}: {value} < {}",
            counters[name]
        );
    }

    // A map whose pin is gone is an error that names the pin.
    let missing = dir.join("maps/AMBIT_DIRECT");
    std::fs::remove_file(&missing).expect("unpin AMBIT_DIRECT");
    for args in [&["map", "dump", "AMBIT_DIRECT"][..], &["map", "list"]] {
        let out = ambit_bpf(&dir, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    }
}

#[test]
fn bpf_commands_refuse_bad_input_naming_the_path_or_the_known_names() {
    let scratch = std::env::temp_dir().join(format!("ambit-cli-bpf-{}", std::process::id()));
    let missing = scratch.join("no-such-dir");
    for args in [
        &["prog", "list"][..],
        &["map", "list"],
        &["map", "dump", "AMBIT_COUNTERS"],
        &["cgroup", "show"],
        &["netns", "list", "-o", "json"],
    ] {
        let out = ambit_bpf(&missing, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
        assert!(stderr.contains("--bpffs-dir"), "a hint: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    let out = ambit_bpf(&missing, &["map", "dump", "AMBIT_NOPE"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("AMBIT_NOPE"), "{stderr}");
    for name in MAPS {
        assert!(stderr.contains(name), "{name} missing from: {stderr}");
    }

    // A directory with the layout but not on bpffs: the map pin is named,
    // and the hint says bpffs is not mounted there.
    let fake = scratch.join("fake");
    for sub in ["maps", "links"] {
        std::fs::create_dir_all(fake.join(sub)).expect("scratch dir");
    }
    let out = ambit_bpf(&fake, &["map", "dump", "AMBIT_ENROLLED"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&scratch);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&fake.join("maps/AMBIT_ENROLLED").display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("bpf filesystem"), "{stderr}");
}
