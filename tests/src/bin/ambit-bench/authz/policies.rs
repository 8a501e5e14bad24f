//! The bench's authorization policies: 1,000 namespaces with 10 policies
//! each, as a cluster with many teams would have them, and a few mesh-wide
//! ones in the root namespace.
//!
//! Every namespace has five apps in fixed roles: a service (`backend`), its
//! client (`frontend`), a database (`db`), a gateway (`gateway`) and a
//! worker (`worker`); its ten policies are ALLOW, DENY and AUDIT policies on
//! them, with exact, prefix and suffix principals, namespaces, IP blocks and
//! ports. The first namespace is the bench's own (`bench`), with the bench's
//! server in the service's role and the bench's client in the client's, so
//! that the meshed server is selected by some of the policies and the
//! client is allowed by exactly one of them.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use mesh_core::identity::DEFAULT_TRUST_DOMAIN;
use mesh_core::policy::DEFAULT_ROOT_NAMESPACE;

/// Namespaces with policies of their own.
pub const NAMESPACES: usize = 1000;

/// Policies in each of them.
pub const PER_NAMESPACE: usize = 10;

/// Mesh-wide policies, in the root namespace.
pub const MESH_WIDE: usize = 4;

/// The apps of a namespace other than the bench's, in role order: the
/// service, its client, the database, the gateway, the worker.
const APPS: [&str; 5] = ["backend", "frontend", "db", "gateway", "worker"];

/// The service's port in namespaces other than the bench's.
const SERVICE_PORT: u16 = 8080;

/// Where the monitoring system runs; it may scrape every service.
pub const MONITORING_NAMESPACE: &str = "monitoring";

/// The port the monitoring system scrapes.
pub const METRICS_PORT: u16 = 9090;

/// The database's port.
pub const DB_PORT: u16 = 5432;

/// The gateways' port, open to the ingress namespaces.
pub const GATEWAY_PORT: u16 = 8443;

/// The service account every namespace refuses (a namespace-wide DENY).
pub const BANNED_ACCOUNT: &str = "banned";

/// The bench's client and server: the first namespace is theirs.
pub struct BenchPods<'a> {
    /// Their namespace.
    pub namespace: &'a str,
    /// The server's `app` label.
    pub server_app: &'a str,
    /// The client's service account.
    pub client_account: &'a str,
    /// The ports the server listens on.
    pub server_ports: &'a [u16],
}

/// One namespace and its apps.
pub struct Tenant {
    /// Its name.
    pub namespace: String,
    /// Its apps' `app` labels (and service accounts), in role order (see
    /// [`APPS`]).
    pub apps: [String; 5],
    /// The service's ports.
    pub service_ports: Vec<u16>,
    /// Addresses its service refuses: `100.<a>.<b>.0/24`, one /24 of
    /// 100.64.0.0/10 per namespace, far from the test bed's addresses.
    blocked: [u8; 2],
}

/// The generated policies.
pub struct Corpus {
    /// The `policies:` list as YAML, its items at the start of the line, so
    /// that it parses on its own and follows a `policies:` key as it is.
    pub yaml: String,
    /// How many policies it holds.
    pub count: usize,
    /// The namespaces, the bench's first.
    pub tenants: Vec<Tenant>,
    /// The policy that allows the bench's client to its server
    /// (namespace/name).
    pub server_allow: String,
}

/// A policy's contents, before it is written out.
struct Spec<'a> {
    name: String,
    /// `matchLabels`; empty: no selector.
    selector: Vec<(&'a str, &'a str)>,
    action: &'static str,
    /// The `source` mapping's contents, as YAML flow.
    source: String,
    /// `ports`; empty: any port.
    ports: Vec<u16>,
}

/// The policies for `bench`'s namespace and [`NAMESPACES`]` - 1` others,
/// and the mesh-wide ones.
pub fn generate(bench: &BenchPods<'_>) -> Corpus {
    let tenants: Vec<Tenant> = (0..NAMESPACES)
        .map(|index| Tenant::new(index, bench))
        .collect();
    let mut yaml = String::new();
    let mut count = 0;
    for spec in mesh_wide() {
        push(&mut yaml, DEFAULT_ROOT_NAMESPACE, &spec);
        count += 1;
    }
    for tenant in &tenants {
        for spec in tenant.policies() {
            push(&mut yaml, &tenant.namespace, &spec);
            count += 1;
        }
    }
    let server_allow = format!("{}/{}", tenants[0].namespace, tenants[0].service_allow());
    Corpus {
        yaml,
        count,
        tenants,
        server_allow,
    }
}

/// A principal in the mesh's trust domain.
pub fn principal(namespace: &str, account: &str) -> String {
    format!("{DEFAULT_TRUST_DOMAIN}/ns/{namespace}/sa/{account}")
}

/// The root namespace's policies: two DENYs and an AUDIT for every
/// workload of the mesh, and an ALLOW for an app no namespace runs.
fn mesh_wide() -> [Spec<'static>; MESH_WIDE] {
    [
        Spec {
            name: "deny-quarantined-range".to_owned(),
            selector: Vec::new(),
            action: "DENY",
            source: "{ipBlocks: [100.127.255.0/24]}".to_owned(),
            ports: Vec::new(),
        },
        Spec {
            name: "deny-compromised-accounts".to_owned(),
            selector: Vec::new(),
            action: "DENY",
            source: "{principals: [\"*/sa/compromised\"]}".to_owned(),
            ports: Vec::new(),
        },
        Spec {
            name: "audit-debug-port".to_owned(),
            selector: Vec::new(),
            action: "AUDIT",
            source: "{principals: [\"*\"]}".to_owned(),
            ports: vec![6060],
        },
        Spec {
            name: "allow-legacy-gateway".to_owned(),
            selector: vec![("app", "legacy-gateway")],
            action: "ALLOW",
            source: "{namespaces: [\"ingress*\"]}".to_owned(),
            ports: Vec::new(),
        },
    ]
}

/// Writes one policy as a list item.
fn push(out: &mut String, namespace: &str, spec: &Spec<'_>) {
    let _ = writeln!(
        out,
        "- metadata: {{name: {}, namespace: {namespace}}}\n  spec:",
        spec.name
    );
    if !spec.selector.is_empty() {
        let labels: Vec<String> = spec
            .selector
            .iter()
            .map(|(key, value)| format!("{key}: {value}"))
            .collect();
        let _ = writeln!(
            out,
            "    selector: {{matchLabels: {{{}}}}}",
            labels.join(", ")
        );
    }
    let _ = write!(
        out,
        "    action: {}\n    rules: [{{from: [{{source: {}}}]",
        spec.action, spec.source
    );
    if !spec.ports.is_empty() {
        let ports: Vec<String> = spec.ports.iter().map(|p| format!("\"{p}\"")).collect();
        let _ = write!(
            out,
            ", to: [{{operation: {{ports: [{}]}}}}]",
            ports.join(", ")
        );
    }
    out.push_str("}]\n");
}

/// A YAML flow list of quoted strings: `*` may start a value, which YAML
/// would otherwise read as an alias.
fn quoted(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

// === impl Tenant ===

impl Tenant {
    fn new(index: usize, bench: &BenchPods<'_>) -> Self {
        // 100.64.0.0/10 holds 16,384 /24s: one each, as long as there are
        // no more namespaces than that.
        let [high, low] = u16::try_from(index).unwrap_or(u16::MAX).to_be_bytes();
        let blocked = [64 | (high & 63), low];
        if index == 0 {
            let [_, _, db, gateway, worker] = APPS.map(str::to_owned);
            return Self {
                namespace: bench.namespace.to_owned(),
                apps: [
                    bench.server_app.to_owned(),
                    bench.client_account.to_owned(),
                    db,
                    gateway,
                    worker,
                ],
                service_ports: bench.server_ports.to_vec(),
                blocked,
            };
        }
        Self {
            namespace: format!("tenant-{index:04}"),
            apps: APPS.map(str::to_owned),
            service_ports: vec![SERVICE_PORT],
            blocked,
        }
    }

    /// The /24 its service refuses.
    pub fn blocked_range(&self) -> String {
        format!("{}/24", self.blocked_address(0))
    }

    /// An address in that range.
    pub fn blocked_address(&self, host: u8) -> Ipv4Addr {
        let [a, b] = self.blocked;
        Ipv4Addr::new(100, a, b, host)
    }

    /// The name of the policy that lets the client reach the service.
    fn service_allow(&self) -> String {
        format!("allow-{}-from-{}", self.apps[0], self.apps[1])
    }

    /// Its ten policies.
    fn policies(&self) -> [Spec<'_>; PER_NAMESPACE] {
        let ns = self.namespace.as_str();
        let [service, client, db, gateway, worker] = &self.apps;
        let own = |account: &str| principal(ns, account);
        [
            Spec {
                name: self.service_allow(),
                selector: vec![("app", service)],
                action: "ALLOW",
                source: format!("{{principals: {}}}", quoted(&[own(client)])),
                ports: self.service_ports.clone(),
            },
            Spec {
                name: format!("allow-{service}-metrics"),
                selector: vec![("app", service)],
                action: "ALLOW",
                source: format!("{{namespaces: [{MONITORING_NAMESPACE}]}}"),
                ports: vec![METRICS_PORT],
            },
            Spec {
                name: format!("deny-{service}-blocked-range"),
                selector: vec![("app", service)],
                action: "DENY",
                source: format!("{{ipBlocks: [{}]}}", self.blocked_range()),
                ports: Vec::new(),
            },
            Spec {
                name: format!("allow-{client}-in-namespace"),
                selector: vec![("app", client)],
                action: "ALLOW",
                source: format!("{{principals: {}}}", quoted(&[own("*")])),
                ports: Vec::new(),
            },
            Spec {
                name: format!("allow-{db}-from-{client}"),
                selector: vec![("app", db)],
                action: "ALLOW",
                source: format!("{{principals: {}}}", quoted(&[format!("*/sa/{client}")])),
                ports: vec![DB_PORT],
            },
            Spec {
                name: format!("deny-{db}-other-namespaces"),
                selector: vec![("app", db)],
                action: "DENY",
                source: format!("{{notNamespaces: [{ns}, {MONITORING_NAMESPACE}]}}"),
                ports: Vec::new(),
            },
            Spec {
                name: format!("allow-{gateway}-from-ingress"),
                selector: vec![("app", gateway)],
                action: "ALLOW",
                source: "{namespaces: [\"ingress*\"]}".to_owned(),
                ports: vec![GATEWAY_PORT],
            },
            Spec {
                name: format!("deny-{BANNED_ACCOUNT}"),
                selector: Vec::new(),
                action: "DENY",
                source: format!("{{principals: {}}}", quoted(&[own(BANNED_ACCOUNT)])),
                ports: Vec::new(),
            },
            Spec {
                name: format!("audit-{worker}-blocked-range"),
                selector: vec![("app", worker)],
                action: "AUDIT",
                source: format!("{{ipBlocks: [{}]}}", self.blocked_range()),
                ports: Vec::new(),
            },
            Spec {
                name: format!("allow-{worker}-v2"),
                selector: vec![("app", worker), ("version", "v2")],
                action: "ALLOW",
                source: format!("{{principals: {}}}", quoted(&[own(gateway), own(service)])),
                ports: vec![SERVICE_PORT, SERVICE_PORT + 1],
            },
        ]
    }
}
