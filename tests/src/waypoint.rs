//! A meshed namespace with a waypoint, for the waypoint's tests and bench.
//!
//! Two nodes: `n1` runs the clients `client-a` and `client-b`; `n2` runs the
//! backends `v1`, `v2`, `v3` (pods of the Service `backend`, `v1` and `v2`
//! also of `backend-v1` and `backend-v2`) and the waypoint pod `wp`, which
//! is not enrolled: the waypoint speaks HBONE itself. The Service `backend`
//! (cluster IP [`VIP`], port 80 → 8080) names the waypoint, so meshed
//! clients' connections to it go through `wp`.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::{
    Node, Pod, Proc, Testbed,
    mesh::{Agent, mesh_ca, write_atomically},
    workload::{ECHO_PORT, WAIT, pod_tool},
};

/// The cluster IP of the Service `backend`.
pub const VIP: &str = "10.96.0.20";
/// The cluster IP of the Service `backend-tcp`: the same pods as `backend`,
/// its port declared `appProtocol: tcp`, so the waypoint passes its streams
/// through without HTTP.
pub const TCP_VIP: &str = "10.96.0.22";
/// A `policies:` section allowing only `client-a`'s GETs to the Service
/// `backend` (the policy `shop/backend-get-only`), enforced by the waypoint.
pub const GET_ONLY_FOR_CLIENT_A: &str = "policies:
  - metadata: {name: backend-get-only, namespace: shop}
    spec:
      targetRefs: [{kind: Service, group: '', name: backend}]
      action: ALLOW
      rules:
        - from: [{source: {principals: [cluster.local/ns/shop/sa/client-a]}}]
          to: [{operation: {methods: [GET]}}]
";

/// The waypoint's binary.
pub const WAYPOINT_BIN: &str = "ambit-waypoint";
/// The waypoint's metrics and readiness port, on its pod's address.
pub const METRICS_PORT: u16 = 15020;
/// Where the waypoint serves its admin views (`/config`): localhost, in
/// its pod.
pub const ADMIN_ADDR: &str = "127.0.0.1:15000";

/// The topology, its agents, the waypoint and the backends' servers.
pub struct WaypointMesh {
    /// Clients' node.
    pub n1: Node,
    /// Backends' and waypoint's node.
    pub n2: Node,
    /// Client with identity `.../sa/client-a`.
    pub client_a: Pod,
    /// Client with identity `.../sa/client-b`.
    pub client_b: Pod,
    /// Backends.
    pub v1: Pod,
    /// Backends.
    pub v2: Pod,
    /// Backends.
    pub v3: Pod,
    /// The waypoint's pod.
    pub wp: Pod,
    /// The agents of n1 and n2.
    pub agents: Vec<Agent>,
    /// The waypoint, once started.
    pub waypoint: Option<Proc>,
    /// The backends' HTTP servers.
    pub servers: Vec<Proc>,
    /// The waypoint's configuration file.
    pub config_path: PathBuf,
}

impl WaypointMesh {
    /// Builds the topology and starts both agents with `extra` (routes and
    /// policies YAML sections) in the configuration; no waypoint or
    /// backends yet.
    pub fn new(tb: &mut Testbed, extra: &str) -> Self {
        let n1 = tb.add_node("n1");
        let n2 = tb.add_node("n2");
        Self::on_nodes(tb, n1, n2, extra)
    }

    /// [`new`](Self::new) on nodes the caller made.
    pub fn on_nodes(tb: &mut Testbed, n1: Node, n2: Node, extra: &str) -> Self {
        let mut mesh = Self::without_agents(tb, n1, n2);
        let yaml = mesh.config(extra);
        write_atomically(&mesh.config_path, &yaml);
        for node in [mesh.n1.clone(), mesh.n2.clone()] {
            let pods: Vec<&Pod> = mesh.enrolled();
            let agent = Agent::start_with_config(tb, &node, &yaml, &pods, &[]);
            mesh.agents.push(agent);
        }
        mesh
    }

    /// The topology's pods on `n1` and `n2`, without agents and without a
    /// configuration file yet: for a caller that runs the agents itself
    /// with a larger configuration ([`pods_yaml`](Self::pods_yaml) and
    /// [`services_yaml`](Self::services_yaml) are this topology's part).
    pub fn without_agents(tb: &mut Testbed, n1: Node, n2: Node) -> Self {
        let client_a = tb.add_pod(&n1, "client-a", "shop");
        let client_b = tb.add_pod(&n1, "client-b", "shop");
        let v1 = tb.add_pod(&n2, "v1", "shop");
        let v2 = tb.add_pod(&n2, "v2", "shop");
        let v3 = tb.add_pod(&n2, "v3", "shop");
        let wp = tb.add_pod(&n2, "wp", "shop");
        let config_path = tb.run_dir().join("waypoint-mesh.yaml");
        Self {
            n1,
            n2,
            client_a,
            client_b,
            v1,
            v2,
            v3,
            wp,
            agents: Vec::new(),
            waypoint: None,
            servers: Vec::new(),
            config_path,
        }
    }

    /// The pods the agents enroll.
    #[must_use]
    pub fn enrolled(&self) -> Vec<&Pod> {
        vec![&self.client_a, &self.client_b, &self.v1, &self.v2, &self.v3]
    }

    /// The configuration: pods, services, then `extra`.
    #[must_use]
    pub fn config(&self, extra: &str) -> String {
        let mut yaml = self.pods_yaml();
        yaml.push_str(&self.services_yaml());
        yaml.push_str(extra);
        yaml
    }

    /// The `pods:` section of [`config`](Self::config): the enrolled pods,
    /// each labelled `app: <name>`, the backends also `tier: backend`.
    #[must_use]
    pub fn pods_yaml(&self) -> String {
        let mut yaml = String::from("pods:\n");
        for pod in self.enrolled() {
            let labels = if pod.name.starts_with('v') {
                format!("{{app: {}, tier: backend}}", pod.name)
            } else {
                format!("{{app: {}}}", pod.name)
            };
            let _ = write!(
                yaml,
                "  - name: {}\n    namespace: shop\n    serviceAccount: {}\n    labels: {labels}\n    ips: [{}]\n    netns: {}\n    node: {}\n",
                pod.name,
                pod.name,
                pod.ipv4,
                pod.netns_path.display(),
                pod.node
            );
        }
        yaml
    }

    /// The `services:` section of [`config`](Self::config): the waypoint's
    /// own (`wp`), `backend` and `backend-tcp` through it, `backend-v1`
    /// and `backend-v2`.
    #[must_use]
    pub fn services_yaml(&self) -> String {
        format!(
            "services:
  - name: wp
    namespace: shop
    endpoints: [{{ip: {wp}, ports: {{hbone: 15008}}}}]
    ports: [{{name: hbone, port: 15008}}]
  - name: backend
    namespace: shop
    waypoint: wp
    clusterIPs: [{VIP}]
    selector: {{tier: backend}}
    ports: [{{name: http, port: 80, targetPort: {ECHO_PORT}}}]
  - name: backend-tcp
    namespace: shop
    waypoint: wp
    clusterIPs: [{TCP_VIP}]
    selector: {{tier: backend}}
    ports: [{{name: http, port: 80, targetPort: {ECHO_PORT}, appProtocol: tcp}}]
  - name: backend-v1
    namespace: shop
    selector: {{app: v1}}
    ports: [{{name: http, port: 80, targetPort: {ECHO_PORT}}}]
  - name: backend-v2
    namespace: shop
    selector: {{app: v2}}
    ports: [{{name: http, port: 80, targetPort: {ECHO_PORT}}}]
",
            wp = self.wp.ipv4
        )
    }

    /// Replaces the routes and policies in every configuration file.
    pub fn set_extra(&self, extra: &str) {
        let yaml = self.config(extra);
        write_atomically(&self.config_path, &yaml);
        for agent in &self.agents {
            agent.set_config_text(&yaml);
        }
    }

    /// Replaces every configuration file with `text` as it is.
    pub fn set_raw_config(&self, text: &str) {
        write_atomically(&self.config_path, text);
        for agent in &self.agents {
            agent.set_config_text(text);
        }
    }

    /// Starts `pod-tool http-serve` on `pod` with `args` and waits until it
    /// listens.
    pub fn serve_http(&mut self, tb: &Testbed, pod: &Pod, args: &[&str]) {
        let listen = format!("0.0.0.0:{ECHO_PORT}");
        let mut command = vec!["http-serve", "--listen", &listen, "--name", &pod.name];
        command.extend_from_slice(args);
        let server = tb.spawn_in_pod(pod, pod_tool(&command));
        server.wait_for_event("listening", WAIT);
        self.servers.push(server);
    }

    /// Starts the waypoint with `extra_args` and waits until it is ready.
    pub fn start_waypoint(&mut self, tb: &Testbed, extra_args: &[&str]) {
        self.spawn_waypoint(tb, &mesh_ca(tb), extra_args);
        let waypoint = self.waypoint();
        let ready = waypoint.wait_for_stderr_line(Duration::from_secs(20), |line| {
            line.contains("waypoint ready")
        });
        assert!(
            ready.is_some(),
            "the waypoint did not start\n{}",
            waypoint.report()
        );
    }

    /// Starts the waypoint with the mesh CA's files from `ca_dir`
    /// (`ca.pem`, `ca-key.pem`) and `extra_args`, without waiting.
    pub fn spawn_waypoint(&mut self, tb: &Testbed, ca_dir: &Path, extra_args: &[&str]) {
        let mut command = Command::new(Testbed::bin(WAYPOINT_BIN));
        command
            .args(["--name", "wp", "--namespace", "shop", "--config"])
            .arg(&self.config_path)
            .arg("--ca-cert")
            .arg(ca_dir.join("ca.pem"))
            .arg("--ca-key")
            .arg(ca_dir.join("ca-key.pem"))
            .args(["--log-format", "json"])
            .args(extra_args)
            .env(
                "AMBIT_LOG",
                std::env::var(crate::mesh::AGENT_LOG_ENV)
                    .unwrap_or_else(|_| "info,waypoint=debug".to_owned()),
            );
        self.waypoint = Some(tb.spawn_in_pod(&self.wp, command));
    }

    /// The waypoint's readiness, as the kubelet probes it on the pod's
    /// address: (HTTP status, body); status 0 when nothing answers.
    #[must_use]
    pub fn readiness(&self, tb: &Testbed) -> (u16, String) {
        let url = format!("http://{}:{METRICS_PORT}/healthz/ready", self.wp.ipv4);
        let out = tb.exec_in_netns(
            &self.wp.netns,
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "-w",
                "\n%{http_code}",
                &url,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.parse().unwrap_or(0), body.to_owned())
    }

    /// The running waypoint.
    #[must_use]
    pub fn waypoint(&self) -> &Proc {
        self.waypoint.as_ref().expect("the waypoint was started")
    }

    /// `GET path` on the waypoint's admin views, from inside its pod.
    #[must_use]
    pub fn admin(&self, tb: &Testbed, path: &str) -> String {
        self.get_in_pod(tb, &format!("http://{ADMIN_ADDR}{path}"))
    }

    /// `GET path` on the waypoint's metrics and readiness port, at its
    /// pod's address.
    #[must_use]
    pub fn telemetry(&self, tb: &Testbed, path: &str) -> String {
        self.get_in_pod(tb, &format!("http://{}:{METRICS_PORT}{path}", self.wp.ipv4))
    }

    /// [`admin`](Self::admin), `None` when the waypoint does not answer.
    #[must_use]
    pub fn try_admin(&self, tb: &Testbed, path: &str) -> Option<String> {
        self.try_get_in_pod(tb, &format!("http://{ADMIN_ADDR}{path}"))
    }

    fn get_in_pod(&self, tb: &Testbed, url: &str) -> String {
        self.try_get_in_pod(tb, url)
            .unwrap_or_else(|| panic!("GET {url} failed"))
    }

    fn try_get_in_pod(&self, tb: &Testbed, url: &str) -> Option<String> {
        let out = tb.exec_in_netns(&self.wp.netns, &["curl", "-sf", "--max-time", "5", url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The waypoint's `/config` view.
    #[must_use]
    pub fn config_view(&self, tb: &Testbed) -> Value {
        serde_json::from_str(&self.admin(tb, "/config")).expect("/config is JSON")
    }

    /// The sum of the waypoint's counter `name` over the series whose
    /// labels contain every `label="value"` in `labels`.
    #[must_use]
    pub fn metric(&self, tb: &Testbed, name: &str, labels: &[&str]) -> u64 {
        self.telemetry(tb, "/stats/prometheus")
            .lines()
            .filter(|line| line.starts_with(name) && !line.starts_with('#'))
            .filter(|line| labels.iter().all(|l| line.contains(l)))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Runs curl in `client` with `args` and the URL `http://VIP<path>`;
    /// returns (HTTP status, body, seconds taken). Status 0: no response.
    #[must_use]
    pub fn curl(&self, tb: &Testbed, client: &Pod, path: &str, args: &[&str]) -> Curl {
        let url = format!("http://{VIP}{path}");
        let mut command = Command::new("curl");
        command
            .args(["-s", "--max-time", "20", "-D", "-", "-o", "-"])
            .args(["-w", "\n@@%{http_code} %{time_total}"])
            .args(args)
            .arg(&url);
        let out = tb.run_in_pod(client, command);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head_and_body, tail) = text.rsplit_once("\n@@").unwrap_or((&text, "0 0"));
        let mut tail = tail.split_whitespace();
        let status = tail.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let seconds = tail.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
        let (head, body) = head_and_body
            .split_once("\r\n\r\n")
            .unwrap_or(("", head_and_body));
        Curl {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
            seconds,
        }
    }
}

/// The waypoint's `/config` is served on localhost in its pod and not on
/// the pod's address (neither on the admin port nor on the metrics port,
/// which serves metrics and readiness there); returns it.
#[must_use]
pub fn admin_views_on_localhost_only(tb: &Testbed, wp: &Pod) -> Value {
    let curl = |url: &str| {
        let out = tb.exec_in_netns(
            &wp.netns,
            &["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", url],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (out.status.code(), status.to_owned(), body.to_owned())
    };
    let admin_port = ADMIN_ADDR.rsplit_once(':').expect("host:port").1;
    let (code, _, _) = curl(&format!("http://{}:{admin_port}/config", wp.ipv4));
    assert_eq!(code, Some(7), "the admin port answers on the pod's address");
    let (_, status, _) = curl(&format!("http://{}:{METRICS_PORT}/config", wp.ipv4));
    assert_eq!(status, "404", "/config on the metrics port");
    for path in ["/stats/prometheus", "/healthz/ready"] {
        let (_, status, body) = curl(&format!("http://{}:{METRICS_PORT}{path}", wp.ipv4));
        assert_eq!(status, "200", "{path} on the pod's address: {body}");
    }
    let (_, status, body) = curl(&format!("http://{ADMIN_ADDR}/config"));
    assert_eq!(status, "200", "/config on localhost: {body}");
    serde_json::from_str(&body).expect("/config is JSON")
}

/// What curl got.
#[derive(Debug)]
pub struct Curl {
    /// The status; 0 when there was no response.
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    /// The body.
    pub body: String,
    /// `time_total`.
    pub seconds: f64,
}

impl Curl {
    /// The value of response header `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }
}
