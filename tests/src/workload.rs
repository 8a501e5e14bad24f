//! Workloads for tests: `pod-tool` echo servers and senders run in pods.

use std::{fmt::Write as _, process::Command, time::Duration};

use serde_json::Value;

use crate::{Node, Pod, Proc, Testbed};

/// Port the test echo servers listen on.
pub const ECHO_PORT: u16 = 8080;
/// Port the request/response servers (`pod-tool rr-server`) listen on.
pub const RR_PORT: u16 = 7001;
/// How long a test waits for a workload event.
pub const WAIT: Duration = Duration::from_secs(30);

/// A `pod-tool` command with these arguments.
#[must_use]
pub fn pod_tool(args: &[&str]) -> Command {
    let mut cmd = Command::new(Testbed::bin("pod-tool"));
    cmd.args(args);
    cmd
}

/// Starts an echo server on [`ECHO_PORT`] (IPv4, and IPv6 when available)
/// in `pod` and waits until it listens.
pub fn serve(tb: &Testbed, pod: &Pod) -> Proc {
    let mut listen = format!("0.0.0.0:{ECHO_PORT}");
    if tb.ipv6_available() {
        let _ = write!(listen, ",[::]:{ECHO_PORT}");
    }
    let server = tb.spawn_in_pod(pod, pod_tool(&["serve", "--listen", &listen]));
    server.wait_for_event("listening", WAIT);
    server
}

/// Starts a request/response server answering each request with one byte
/// on [`RR_PORT`] (IPv4) in `pod`, for `crr` and `rr` clients, and waits
/// until it listens.
pub fn rr_server(tb: &Testbed, pod: &Pod) -> Proc {
    let server = tb.spawn_in_pod(
        pod,
        pod_tool(&[
            "rr-server",
            "--listen",
            &format!("0.0.0.0:{RR_PORT}"),
            "--size",
            "1",
        ]),
    );
    server.wait_for_event("listening", WAIT);
    server
}

/// Sends `bytes` from `client` to `to`, checks every byte came back, and
/// returns pod-tool's report.
pub fn send(tb: &Testbed, client: &Pod, to: &str, bytes: u64) -> Value {
    send_with(tb, client, to, bytes, &[])
}

/// [`send`] with more `pod-tool send` arguments.
pub fn send_with(tb: &Testbed, client: &Pod, to: &str, bytes: u64, args: &[&str]) -> Value {
    let (ok, sent, report) = try_send_with(tb, client, to, bytes, args);
    assert!(ok, "send to {to} failed: {sent}\n{report}");
    assert_eq!(sent["echo_ok"], true, "{sent}");
    assert_eq!(sent["bytes_sent"], bytes, "{sent}");
    assert_eq!(sent["bytes_received"], bytes, "{sent}");
    sent
}

/// How long a refusal may take: a denied connection is reset at once, and
/// one that hangs instead is a failure of its own.
pub const REFUSED_PROMPTLY: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends from `client` to `to` and expects the connection to be refused
/// within [`REFUSED_PROMPTLY`]; returns how long it took.
///
/// # Panics
///
/// When the connection goes through, or its refusal takes longer.
pub fn expect_refused(tb: &Testbed, client: &Pod, to: &str) -> std::time::Duration {
    let started = std::time::Instant::now();
    let (ok, sent, report) = try_send(tb, client, to, 1000);
    let took = started.elapsed();
    assert!(
        !ok,
        "{} -> {to} must be refused: {sent}\n{report}",
        client.name
    );
    assert!(
        took < REFUSED_PROMPTLY,
        "{} -> {to} took {took:?} to be refused: a denial must not hang\n{report}",
        client.name
    );
    took
}

/// Like [`send`] without the checks: (exited successfully, report line or
/// `null`, process report for failure messages).
pub fn try_send(tb: &Testbed, client: &Pod, to: &str, bytes: u64) -> (bool, Value, String) {
    try_send_with(tb, client, to, bytes, &[])
}

/// [`try_send`] with more `pod-tool send` arguments.
pub fn try_send_with(
    tb: &Testbed,
    client: &Pod,
    to: &str,
    bytes: u64,
    args: &[&str],
) -> (bool, Value, String) {
    let bytes = bytes.to_string();
    let mut command = vec!["send", "--to", to, "--bytes", &bytes];
    command.extend_from_slice(args);
    let sender = tb.spawn_in_pod(client, pod_tool(&command));
    let (status, lines) = sender.output_json_lines(Duration::from_mins(2));
    let sent = lines
        .into_iter()
        .find(|l| l["event"] == "sent")
        .unwrap_or(Value::Null);
    (status.success(), sent, sender.report())
}

/// Runs `command` in `pod` to the end; panics, with what it printed, unless
/// it succeeds. Its standard output.
#[must_use]
pub fn run_ok_in_pod(tb: &Testbed, pod: &Pod, command: Command) -> String {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = tb.run_in_pod(pod, command);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Starts `pod-tool ping` (a round trip every 50 ms for at most
/// `max_secs`) from `client` to `to` and waits until its connection is up;
/// its `ping_end` event tells how and when the connection ended.
pub fn ping(tb: &Testbed, client: &Pod, to: &str, max_secs: u64) -> Proc {
    let pinger = tb.spawn_in_pod(
        client,
        pod_tool(&["ping", "--to", to, "--max-secs", &max_secs.to_string()]),
    );
    pinger.wait_for_event("ping_up", WAIT);
    pinger
}

/// The IP part of an `ip:port` or `[ip]:port` string.
#[must_use]
pub fn ip_of(addr: &str) -> &str {
    addr.rsplit_once(':')
        .map_or(addr, |(ip, _)| ip)
        .trim_matches(['[', ']'])
}

/// Waits for the echo server's report of a connection from `client_ip`;
/// panics when none arrives.
#[expect(
    clippy::must_use_candidate,
    reason = "a wait that asserts; callers may ignore the report"
)]
pub fn wait_conn_from(server: &Proc, client_ip: &str) -> Value {
    server.wait_for_json(WAIT, |l| {
        l["event"] == "conn" && ip_of(l["peer"].as_str().unwrap_or("")) == client_ip
    })
}

/// The most common topology: two nodes, a `client` pod on the first and a
/// `server` pod on the second, both in namespace `shop`.
pub struct ClientServer {
    /// First node.
    pub n1: Node,
    /// Second node.
    pub n2: Node,
    /// Pod `shop/client` on `n1`.
    pub client: Pod,
    /// Pod `shop/server` on `n2`.
    pub server: Pod,
}

/// Builds [`ClientServer`] in `tb`.
pub fn client_and_server(tb: &mut Testbed) -> ClientServer {
    let n1 = tb.add_node("n1");
    let n2 = tb.add_node("n2");
    let client = tb.add_pod(&n1, "client", "shop");
    let server = tb.add_pod(&n2, "server", "shop");
    ClientServer {
        n1,
        n2,
        client,
        server,
    }
}
