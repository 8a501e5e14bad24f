//! Tests of the test bed itself: plain routing between simulated pods on two
//! nodes (no eBPF, no mesh), and that nothing is left behind.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use std::net::TcpListener;

use ambit_tests::netns::run_in_netns;
use ambit_tests::{Pod, Proc, Testbed, testbed_or_skip};

const PORT: u16 = 8080;
const BYTES: u64 = 1_000_000;
const WAIT: Duration = Duration::from_secs(20);

fn pod_tool(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pod-tool"));
    cmd.args(args);
    cmd
}

/// Runs `pod-tool send` from `client` to `server_addr` and checks the echo and
/// what the server saw.
fn echo_once(tb: &Testbed, server: &Proc, client: &Pod, server_addr: &str, client_ip: &str) {
    let sender = tb.spawn_in_pod(
        client,
        pod_tool(&["send", "--to", server_addr, "--bytes", &BYTES.to_string()]),
    );
    let (status, lines) = sender.output_json_lines(Duration::from_mins(1));
    let sent = lines
        .iter()
        .find(|line| line["event"] == "sent")
        .unwrap_or_else(|| panic!("no sent line\n{}", sender.report()));
    assert!(
        status.success(),
        "send to {server_addr} failed: {sent}\n{}",
        sender.report()
    );
    assert_eq!(sent["echo_ok"], true, "{sent}");
    assert_eq!(sent["bytes_received"], BYTES, "{sent}");
    assert_eq!(sent["peer"], server_addr, "{sent}");
    let local = sent["local"]
        .as_str()
        .expect("local is a string")
        .to_owned();

    let conn = server.wait_for_json(WAIT, |line| {
        line["event"] == "conn" && line["peer"] == local.as_str()
    });
    assert_eq!(conn["bytes_in"], BYTES, "{conn}");
    assert_eq!(conn["bytes_out"], BYTES, "{conn}");
    assert_eq!(conn["local"], server_addr, "{conn}");
    let peer_ip = local
        .rsplit_once(':')
        .map(|(ip, _)| ip.trim_matches(['[', ']']))
        .expect("ip:port");
    assert_eq!(
        peer_ip, client_ip,
        "the server must see the client pod's own address: {conn}"
    );
}

#[test]
fn pods_on_two_nodes_reach_each_other() {
    let mut tb = testbed_or_skip!("pods_on_two_nodes");
    let n1 = tb.add_node("n1");
    let n2 = tb.add_node("n2");
    let a = tb.add_pod(&n1, "a", "default");
    let b = tb.add_pod(&n2, "b", "default");
    assert_eq!(a.ipv4.to_string(), "10.10.1.11");
    assert_eq!(b.ipv4.to_string(), "10.10.2.11");

    let listen = if tb.ipv6_available() {
        format!("0.0.0.0:{PORT},[::]:{PORT}")
    } else {
        format!("0.0.0.0:{PORT}")
    };
    let server = tb.spawn_in_pod(&b, pod_tool(&["serve", "--listen", &listen]));
    server.wait_for_event("listening", WAIT);

    echo_once(
        &tb,
        &server,
        &a,
        &format!("{}:{PORT}", b.ipv4),
        &a.ipv4.to_string(),
    );
    match (a.ipv6, b.ipv6) {
        (Some(a6), Some(b6)) => {
            assert_eq!(b6.to_string(), "fd00:10:10:2::b");
            echo_once(&tb, &server, &a, &format!("[{b6}]:{PORT}"), &a6.to_string());
        }
        _ => {
            ambit_tests::Skip::new("IPv6 is unavailable or turned off (AMBIT_TEST_IPV6=0)")
                .report("testbed (IPv6 part)");
        }
    }

    // The pod's process really runs in the pod's cgroup.
    let procs = std::fs::read_to_string(b.cgroup.join("cgroup.procs")).expect("pod cgroup exists");
    assert!(
        procs.lines().any(|pid| pid == server.pid().to_string()),
        "server not in {}",
        b.cgroup.display()
    );
}

#[test]
fn pod_tool_probes_work_in_a_pod() {
    let mut tb = testbed_or_skip!("pod_tool_probes");
    let n1 = tb.add_node("n1");
    let pod = tb.add_pod(&n1, "a", "default");

    let addrs = tb.exec_in_netns(
        &pod.netns,
        &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
    );
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(addrs.contains(&format!("{}/32", pod.ipv4)), "{addrs}");

    // The test process itself can open sockets inside the pod: its address
    // exists nowhere else.
    let listener = run_in_netns(&pod.netns_path, || TcpListener::bind((pod.ipv4, 0)))
        .expect("enter the pod's netns")
        .expect("bind the pod's address inside its netns");
    drop(listener);

    let server = tb.spawn_in_pod(&pod, pod_tool(&["serve", "--listen", "0.0.0.0:8080"]));
    server.wait_for_event("listening", WAIT);
    let bind_result = |addr: &str| -> serde_json::Value {
        let output = tb.run_in_pod(&pod, pod_tool(&["try-bind", "--addr", addr]));
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).expect("one JSON line")
    };
    let taken = bind_result("0.0.0.0:8080");
    assert_eq!(taken["ok"], false, "{taken}");
    assert_eq!(taken["errno"], libc::EADDRINUSE, "{taken}");
    let free = bind_result("0.0.0.0:8081");
    assert_eq!(free["ok"], true, "{free}");

    let proxy = tb.spawn_in_pod(
        &pod,
        pod_tool(&["original-dst-proxy", "--listen", "0.0.0.0:15001"]),
    );
    proxy.wait_for_event("listening", WAIT);
    let target = format!("{}:15001", pod.ipv4);
    // Not an echo server, so the exchange itself is expected to fail.
    let _ = tb.run_in_pod(
        &pod,
        pod_tool(&[
            "send",
            "--to",
            &target,
            "--bytes",
            "5",
            "--timeout-secs",
            "5",
        ]),
    );
    let answer = proxy.wait_for_event("original_dst", WAIT);
    assert_eq!(answer["local"], target.as_str(), "{answer}");
    // Without eBPF or NAT the kernel has no original destination to report,
    // unless conntrack tracks the connection, which reports the real one.
    let original = &answer["original_dst"];
    assert!(
        (original.is_null() && answer["error"].is_string()) || *original == target.as_str(),
        "{answer}"
    );
}

#[test]
fn dropping_the_testbed_removes_everything() {
    let mut tb = testbed_or_skip!("dropping_removes");
    let n1 = tb.add_node("n1");
    let pod = tb.add_pod(&n1, "a", "default");
    let id = tb.id().to_owned();
    let cgroup = tb.cgroup().to_owned();
    let run_dir = tb.run_dir().to_owned();
    let bpffs = n1.bpffs.clone();
    assert!(
        is_mounted(&bpffs),
        "bpffs is mounted at {}",
        bpffs.display()
    );
    // Left running on purpose: the test bed must stop it.
    let server = tb.spawn_in_pod(&pod, pod_tool(&["serve", "--listen", "0.0.0.0:8080"]));
    server.wait_for_event("listening", WAIT);
    let server_pid = server.pid();
    std::mem::forget(server);

    drop(tb);

    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(!netns.contains(&id), "network namespaces left: {netns}");
    assert!(!cgroup.exists(), "cgroup left: {}", cgroup.display());
    assert!(!run_dir.exists(), "run dir left: {}", run_dir.display());
    assert!(
        !is_mounted(&bpffs),
        "bpffs still mounted at {}",
        bpffs.display()
    );
    let status = std::fs::read_to_string(format!("/proc/{server_pid}/status")).unwrap_or_default();
    assert!(
        !status.contains("pod-tool"),
        "the server (pid {server_pid}) still runs: {status}"
    );
}

#[test]
fn bin_finds_workspace_binaries() {
    let pod_tool = Testbed::bin("pod-tool");
    assert!(pod_tool.is_file(), "{}", pod_tool.display());
    assert_eq!(
        pod_tool.file_name(),
        Path::new(env!("CARGO_BIN_EXE_pod-tool")).file_name()
    );
}

/// Set for the child process of [`leftovers_of_a_crashed_run_are_removed`].
const CRASH_HELPER_ENV: &str = "AMBIT_TEST_CRASH_HELPER";

#[test]
fn leftovers_of_a_crashed_run_are_removed() {
    let first = testbed_or_skip!("stale_cleanup");
    drop(first);
    // A run that dies without dropping its test bed, with a server running.
    let helper = Command::new(std::env::current_exe().expect("test binary path"))
        .args(["--exact", "crashing_run", "--ignored", "--nocapture"])
        .env(CRASH_HELPER_ENV, "1")
        .output()
        .expect("run the crashing helper");
    let stdout = String::from_utf8_lossy(&helper.stdout);
    let marker = stdout
        .lines()
        .find_map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .filter(|value| value["crashed"].is_string())
        })
        .unwrap_or_else(|| {
            panic!(
                "the helper printed no marker: {stdout}\n{}",
                String::from_utf8_lossy(&helper.stderr)
            )
        });
    let id = marker["crashed"].as_str().expect("id").to_owned();
    let server_pid = marker["server_pid"].as_u64().expect("pid");
    let cgroup = Path::new(marker["cgroup"].as_str().expect("cgroup path")).to_owned();
    let run_dir = Path::new(marker["run_dir"].as_str().expect("run dir")).to_owned();

    // Creating any test bed removes what dead runs left behind.
    let second = Testbed::new("stale_cleanup").expect("the first one was not skipped");
    drop(second);

    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(!netns.contains(&id), "network namespaces left: {netns}");
    assert!(!cgroup.exists(), "cgroup left: {}", cgroup.display());
    assert!(!run_dir.exists(), "run dir left: {}", run_dir.display());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mountinfo.contains(&id), "mounts left: {mountinfo}");
    let status = std::fs::read_to_string(format!("/proc/{server_pid}/status")).unwrap_or_default();
    let running = status.contains("pod-tool") && !status.contains("State:\tZ");
    assert!(
        !running,
        "the crashed run's server (pid {server_pid}) still runs: {status}"
    );
}

/// Builds a test bed and aborts without cleaning up; only runs as the child
/// of [`leftovers_of_a_crashed_run_are_removed`].
#[test]
#[ignore = "helper process of leftovers_of_a_crashed_run_are_removed"]
fn crashing_run() {
    if std::env::var_os(CRASH_HELPER_ENV).is_none() {
        return;
    }
    let mut tb = testbed_or_skip!("crashing_run");
    let n1 = tb.add_node("n1");
    let pod = tb.add_pod(&n1, "a", "default");
    let server = tb.spawn_in_pod(&pod, pod_tool(&["serve", "--listen", "0.0.0.0:8080"]));
    server.wait_for_event("listening", WAIT);
    let marker = serde_json::json!({
        "crashed": tb.id(),
        "server_pid": server.pid(),
        "cgroup": tb.cgroup(),
        "run_dir": tb.run_dir(),
    });
    println!("{marker}");
    std::process::abort();
}

fn is_mounted(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let path = path.to_str().expect("utf-8 path");
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path))
}

#[test]
fn a_skip_is_logged_outside_ci_and_fails_in_ci() {
    // Each nextest test is a process of its own, so changing this
    // process's environment touches no other test.
    let log = std::env::temp_dir().join(format!("ambit-skip-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    // SAFETY: this test's process runs no other thread that reads the
    // environment while it is changed.
    unsafe {
        std::env::remove_var("CI");
        std::env::set_var(ambit_tests::testbed::SKIP_LOG_ENV, &log);
    }
    ambit_tests::Skip::new("no frobnicator").report("some_test");
    let logged = std::fs::read_to_string(&log).expect("the skip is logged");
    assert_eq!(logged, "SKIPPED: some_test: no frobnicator\n");
    let _ = std::fs::remove_file(&log);

    // SAFETY: as above.
    unsafe { std::env::set_var("CI", "true") };
    let failed = std::panic::catch_unwind(|| {
        ambit_tests::Skip::new("no frobnicator").report("some_test");
    });
    let message = failed
        .expect_err("a skip must fail under CI")
        .downcast::<String>()
        .map(|m| *m)
        .unwrap_or_default();
    assert!(
        message.contains("CI=true forbids skipping") && message.contains("no frobnicator"),
        "{message}"
    );
}
