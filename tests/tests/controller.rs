//! The controller against the fake API server: the real `ambit-controller`
//! process, asked with `curl` over HTTPS (verified with the mesh CA) the way
//! a node agent asks. It signs only the caller's node's pods, with their own
//! identities; it refuses bad, foreign and wrong-audience tokens; it follows
//! its CA Secret (rotation through the trust bundle); it writes each
//! `AuthorizationPolicy`'s and `PeerAuthentication`'s `Accepted`
//! condition. Then real node agents in
//! Kubernetes mode get their pods' certificates from it: across nodes, while
//! it is down and after it comes up, and through a CA rotation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_tests::{
    Node, Testbed,
    fake_kube::FakeKube,
    mesh::{Agent, mesh_ca},
    proc::Proc,
};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use mesh_core::ca::{CertificateAuthority, WorkloadKey};
use mesh_core::identity::SpiffeId;
use serde_json::{Value, json};

const AGENT_USER: &str = "system:serviceaccount:ambit-system:ambit-node-agent";
const PORT: u16 = 15012;
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const WAIT: Duration = Duration::from_secs(20);

/// The fake API server, the controller, and the CA files it started with.
struct Setup {
    tb: Testbed,
    cp: Node,
    kube: FakeKube,
    controller: Proc,
    ca_dir: PathBuf,
}

fn setup(name: &str) -> Option<Setup> {
    let mut tb = match Testbed::new(name) {
        Ok(tb) => tb,
        Err(skip) => {
            skip.report(name);
            return None;
        }
    };
    let cp = tb.add_node("cp");
    let kube = FakeKube::start(&cp).expect("the fake API server");
    let ca_dir = mesh_ca(&tb);
    let read = |file: &str| std::fs::read(ca_dir.join(file)).expect("CA file");
    for namespace in ["ambit-system", "shop"] {
        kube.apply(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
        )
        .expect("namespace");
    }
    kube.apply(secret(&read("ca.pem"), &read("ca-key.pem"), None))
        .expect("the CA secret");
    for (pod, node, account) in [("web-1", "n1", "web"), ("web-2", "n2", "web")] {
        kube.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": "shop"},
            "spec": {"nodeName": node, "serviceAccountName": account,
                     "containers": [{"name": "app", "image": "app"}]}}))
            .expect("pod");
    }
    kube.register_token("agent-n1", AGENT_USER, &["ambit-ca"], Some("n1"));
    kube.register_token(
        "agent-n1-api",
        AGENT_USER,
        &["https://kubernetes.default.svc"],
        Some("n1"),
    );
    kube.register_token(
        "web-n1",
        "system:serviceaccount:shop:web",
        &["ambit-ca"],
        Some("n1"),
    );
    kube.register_token("agent-unbound", AGENT_USER, &["ambit-ca"], None);
    let controller = start_controller(&mut tb, &cp, &kube);
    let setup = Setup {
        tb,
        cp,
        kube,
        controller,
        ca_dir,
    };
    setup.wait_healthy();
    Some(setup)
}

/// Starts `ambit-controller` on `cp`, listening on its underlay address.
fn start_controller(tb: &mut Testbed, cp: &Node, kube: &FakeKube) -> Proc {
    let mut cmd = Command::new(Testbed::bin("ambit-controller"));
    cmd.args([
        "--kube-api-url",
        &kube.url(),
        "--listen",
        &format!("{}:{PORT}", cp.underlay_v4),
    ])
    .args(["--serving-ip", &cp.underlay_v4.to_string()])
    .env("AMBIT_LOG", "info,controller=debug");
    tb.spawn_on_node(cp, &cp.agent_cgroup, cmd)
}

/// The CA Secret, as `kubectl create secret generic` would write it.
fn secret(cert: &[u8], key: &[u8], extra_roots: Option<&[u8]>) -> Value {
    let mut data = std::collections::BTreeMap::from([
        ("ca.crt".to_owned(), ByteString(cert.to_vec())),
        ("ca.key".to_owned(), ByteString(key.to_vec())),
    ]);
    if let Some(roots) = extra_roots {
        data.insert("trust-bundle.pem".to_owned(), ByteString(roots.to_vec()));
    }
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("ambit-ca".into()),
            namespace: Some("ambit-system".into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    let mut value = serde_json::to_value(secret).expect("secret JSON");
    value["apiVersion"] = json!("v1");
    value["kind"] = json!("Secret");
    value
}

/// A fresh key's CSR for `identity`, PEM.
fn csr(identity: &str) -> String {
    let key = WorkloadKey::generate().expect("key");
    let id: SpiffeId = identity.parse().expect("SPIFFE id");
    let der = key.csr_der(&id).expect("CSR");
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der))
}

/// A request as the API defines it: the pod, and a CSR for `identity`.
fn request(pod: &str, identity: &str) -> String {
    json!({"pod": {"namespace": "shop", "name": pod}, "csr": csr(identity)}).to_string()
}

// === impl Setup ===

impl Setup {
    /// Waits until the controller answers `/healthz` (it listens only once
    /// its CA is loaded).
    fn wait_healthy(&self) {
        let deadline = Instant::now() + WAIT;
        while self
            .curl("GET", "/healthz", None, None, &self.ca_dir.join("ca.pem"))
            .0
            != 200
        {
            assert!(
                Instant::now() < deadline,
                "the controller never answered\n{}",
                self.controller.report()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The trust bundle the controller publishes (`ConfigMap`
    /// `ambit-trust-bundle`, key `ca.crt`).
    fn published_bundle(&self) -> String {
        self.published_bundle_in("ambit-system")
    }

    /// The trust bundle published in `namespace`, or empty.
    fn published_bundle_in(&self, namespace: &str) -> String {
        self.kube
            .get("configmaps", namespace, "ambit-trust-bundle")
            .ok()
            .flatten()
            .and_then(|cm| cm["data"]["ca.crt"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Writes a token file holding `token` (the fake API server's tokens
    /// are their own names).
    fn token_file(&self, token: &str) -> PathBuf {
        let path = self.tb.run_dir().join(format!("{token}.token"));
        std::fs::write(&path, token).expect("token file");
        path
    }

    /// The controller's address as agents are given it.
    fn address(&self) -> String {
        format!("https://{}:{PORT}", self.cp.underlay_v4)
    }

    /// `curl` from the API server's namespace, verifying the controller
    /// against `ca`: (status, body).
    fn curl(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        ca: &Path,
    ) -> (u16, String) {
        let url = format!("https://{}:{PORT}{path}", self.cp.underlay_v4);
        let body_file = self.tb.run_dir().join("request.json");
        let mut args = vec![
            "curl".to_owned(),
            "-s".into(),
            "--max-time".into(),
            "5".into(),
            "--cacert".into(),
            ca.display().to_string(),
            "-X".into(),
            method.into(),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        if let Some(token) = token {
            args.extend(["-H".into(), format!("Authorization: Bearer {token}")]);
        }
        if let Some(body) = body {
            std::fs::write(&body_file, body).expect("write the body");
            args.extend(["--data-binary".into(), format!("@{}", body_file.display())]);
        }
        args.push(url);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.tb.exec_in_netns(&self.cp.netns, &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    fn ask(&self, token: Option<&str>, body: &str) -> (u16, Value) {
        let (status, text) = self.curl(
            "POST",
            "/v1/certificates",
            token,
            Some(body),
            &self.ca_dir.join("ca.pem"),
        );
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `openssl verify -CAfile ca_file` on `chain_pem`'s leaf.
    fn openssl_verify(&self, chain_pem: &str, ca_file: &Path) -> std::process::Output {
        let leaf_file = self.tb.run_dir().join("leaf.pem");
        std::fs::write(&leaf_file, chain_pem).expect("write the chain");
        Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(ca_file)
            .arg(&leaf_file)
            .output()
            .expect("openssl runs")
    }

    /// Checks that `chain_pem`'s leaf chains to the roots in `ca_file`, and
    /// returns its SPIFFE id.
    fn verified_identity(&self, chain_pem: &str, ca_file: &Path) -> String {
        let out = self.openssl_verify(chain_pem, ca_file);
        assert!(
            out.status.success(),
            "openssl verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let leaf = rustls_pki_types_first(chain_pem);
        mesh_core::ca::spiffe_id_of(&leaf)
            .expect("a SPIFFE id")
            .to_string()
    }
}

/// The DER of every PEM block of `pem_text`.
fn der_blocks(pem_text: &[u8]) -> Vec<Vec<u8>> {
    pem::parse_many(pem_text)
        .expect("PEM")
        .into_iter()
        .map(pem::Pem::into_contents)
        .collect()
}

fn rustls_pki_types_first(chain_pem: &str) -> rustls::pki_types::CertificateDer<'static> {
    let block = pem::parse_many(chain_pem).expect("PEM").remove(0);
    rustls::pki_types::CertificateDer::from(block.into_contents())
}

#[test]
fn signs_only_the_callers_node_pods_with_their_own_identity() {
    let Some(s) = setup("controller_sign") else {
        return;
    };
    let (status, granted) = s.ask(Some("agent-n1"), &request("web-1", WEB));
    assert_eq!(status, 200, "{granted}\n{}", s.controller.report());
    let chain = granted["certificateChain"].as_str().expect("a chain");
    assert_eq!(s.verified_identity(chain, &s.ca_dir.join("ca.pem")), WEB);
    assert!(
        granted["trustBundle"]
            .as_str()
            .unwrap_or_default()
            .contains("BEGIN CERTIFICATE")
    );

    let refused = |token: Option<&str>, body: &str, status: u16, says: &str| {
        let (got, answer) = s.ask(token, body);
        let error = answer["error"].as_str().unwrap_or_default().to_owned();
        assert_eq!(got, status, "{says}: {answer}");
        assert!(error.contains(says), "expected {says:?} in {answer}");
    };
    // Another node's pod.
    refused(
        Some("agent-n1"),
        &request("web-2", WEB),
        403,
        "runs on node n2, not on the caller's node n1",
    );
    // The pod's node, but not its identity.
    refused(
        Some("agent-n1"),
        &request("web-1", "spiffe://cluster.local/ns/shop/sa/admin"),
        403,
        "runs as spiffe://cluster.local/ns/shop/sa/web",
    );
    // Tokens: unknown, for the API server's audience, not the agents', not bound to a node, none.
    refused(
        Some("forged"),
        &request("web-1", WEB),
        401,
        "did not accept the token",
    );
    refused(
        Some("agent-n1-api"),
        &request("web-1", WEB),
        401,
        "did not accept the token",
    );
    refused(
        Some("web-n1"),
        &request("web-1", WEB),
        403,
        "is not the node agents' service account",
    );
    refused(
        Some("agent-unbound"),
        &request("web-1", WEB),
        403,
        "names no node",
    );
    refused(None, &request("web-1", WEB), 401, "no bearer token");
    // Bad input.
    refused(
        Some("agent-n1"),
        "{not json",
        400,
        "not a certificate request",
    );
    let pod = json!({"namespace": "shop", "name": "web-1"});
    let bad_csr = json!({"pod": pod, "csr": "hello"}).to_string();
    refused(Some("agent-n1"), &bad_csr, 400, "CERTIFICATE REQUEST");
    let unknown_field = json!({"pod": pod, "csr": csr(WEB), "node": "n1"}).to_string();
    refused(
        Some("agent-n1"),
        &unknown_field,
        400,
        "unknown field `node`",
    );
    let claims_another =
        json!({"pod": pod, "csr": csr(WEB), "identity": "spiffe://cluster.local/ns/shop/sa/admin"})
            .to_string();
    refused(
        Some("agent-n1"),
        &claims_another,
        400,
        "is not the one the CSR asks for",
    );
    refused(
        Some("agent-n1"),
        &request("ghost", WEB),
        404,
        "shop/ghost does not exist",
    );
    assert!(
        s.controller.try_wait().is_none(),
        "the controller survived every bad request"
    );
}

#[test]
fn a_rotated_ca_signs_at_once_and_the_bundle_holds_both_roots() {
    let Some(s) = setup("controller_rotate") else {
        return;
    };
    let old_pem = std::fs::read(s.ca_dir.join("ca.pem")).expect("old CA");
    let bundle = Setup::published_bundle;
    assert_eq!(
        bundle(&s).matches("BEGIN CERTIFICATE").count(),
        1,
        "published at start"
    );

    // A bad Secret keeps the last good CA.
    s.kube
        .apply(secret(b"not a certificate", b"not a key", None))
        .expect("bad secret");
    std::thread::sleep(Duration::from_millis(500));
    let (status, granted) = s.ask(Some("agent-n1"), &request("web-1", WEB));
    assert_eq!(status, 200, "{granted}");

    let new_ca =
        CertificateAuthority::generate("cluster.local", Duration::from_hours(24)).expect("CA");
    let new_dir = s.tb.run_dir().join("ca-new");
    let (new_cert, new_key) = new_ca.write(&new_dir).expect("write the new CA");
    // The extra roots repeat the new CA: the bundle holds it once.
    let new_pem = std::fs::read(&new_cert).expect("cert");
    let extra_roots = [old_pem.as_slice(), new_pem.as_slice()].concat();
    s.kube
        .apply(secret(
            &new_pem,
            &std::fs::read(&new_key).expect("key"),
            Some(&extra_roots),
        ))
        .expect("rotate");
    let new_root = der_blocks(&new_pem).remove(0);
    let deadline = Instant::now() + WAIT;
    while !der_blocks(bundle(&s).as_bytes()).contains(&new_root) {
        assert!(
            Instant::now() < deadline,
            "bundle never held the new root: {}\n{}",
            bundle(&s),
            s.controller.report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        der_blocks(bundle(&s).as_bytes()),
        [der_blocks(&old_pem), vec![new_root]].concat(),
        "both roots, once each"
    );
    // New certificates chain to the new CA; the controller now serves a
    // certificate of the new CA too, which clients verify with the bundle.
    let bundle_file = s.tb.run_dir().join("bundle.pem");
    std::fs::write(&bundle_file, bundle(&s)).expect("write the bundle");
    let (status, text) = s.curl(
        "POST",
        "/v1/certificates",
        Some("agent-n1"),
        Some(&request("web-1", WEB)),
        &bundle_file,
    );
    assert_eq!(status, 200, "{text}");
    let granted: Value = serde_json::from_str(&text).expect("JSON");
    let chain = granted["certificateChain"].as_str().expect("chain");
    assert_eq!(s.verified_identity(chain, &new_cert), WEB);
    assert!(
        !s.openssl_verify(chain, &s.ca_dir.join("ca.pem"))
            .status
            .success(),
        "a certificate of the new CA must not verify against the old root alone"
    );
}

#[test]
fn policies_get_an_accepted_condition_or_the_reason_they_are_rejected() {
    let Some(s) = setup("controller_status") else {
        return;
    };
    let policy = |name: &str, spec: Value| {
        s.kube
            .apply(
                json!({"apiVersion": "security.ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
                          "metadata": {"name": name, "namespace": "shop"}, "spec": spec}),
            )
            .expect("policy");
    };
    policy(
        "allow-web",
        json!({"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}]}),
    );
    policy("typo", json!({"action": "ALOW", "rules": [{}]}));
    let condition = |name: &str| -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let object = s
                .kube
                .get("authorizationpolicies", "shop", name)
                .expect("the API answers")
                .expect("the policy exists");
            if let Some(c) = object["status"]["conditions"]
                .as_array()
                .and_then(|c| c.first())
            {
                return c.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no status on {name}\n{}",
                s.controller.report()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let good = condition("allow-web");
    assert_eq!(
        (good["type"].as_str(), good["status"].as_str()),
        (Some("Accepted"), Some("True")),
        "{good}"
    );
    let bad = condition("typo");
    assert_eq!(
        (bad["status"].as_str(), bad["reason"].as_str()),
        (Some("False"), Some("Invalid")),
        "{bad}"
    );
    assert!(
        bad["message"]
            .as_str()
            .unwrap_or_default()
            .contains("action"),
        "{bad}"
    );
    // Fixing it flips the condition.
    policy("typo", json!({"action": "ALLOW", "rules": [{}]}));
    let deadline = Instant::now() + WAIT;
    while condition("typo")["status"] != "True" {
        assert!(
            Instant::now() < deadline,
            "the fixed policy stayed rejected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first condition `resource` `shop/name` carries, once it has one.
fn first_condition(s: &Setup, resource: &str, name: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let object = s
            .kube
            .get(resource, "shop", name)
            .expect("the API answers")
            .expect("the object exists");
        if let Some(c) = object["status"]["conditions"]
            .as_array()
            .and_then(|c| c.first())
        {
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no status on {name}\n{}",
            s.controller.report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn peer_authentications_get_an_accepted_condition_or_the_reason_they_are_strict() {
    let Some(s) = setup("controller_peer_authn") else {
        return;
    };
    // A workload with one port: a Service selecting its pod, by the
    // container port's name.
    s.kube
        .apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "api-1", "namespace": "shop", "labels": {"app": "api"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "app",
                     "ports": [{"name": "http", "containerPort": 8080}]}]}}))
        .expect("pod");
    s.kube
        .apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": "http"}]}}))
        .expect("service");
    let peer_authn = |name: &str, spec: Value| {
        s.kube
            .apply(
                json!({"apiVersion": "security.ambit.dev/v1alpha1", "kind": "PeerAuthentication",
                       "metadata": {"name": name, "namespace": "shop"}, "spec": spec}),
            )
            .expect("peer authentication");
    };
    let api = |port: &str| {
        json!({"selector": {"matchLabels": {"app": "api"}}, "mtls": {"mode": "PERMISSIVE"},
               "portLevelMtls": {port: {"mode": "STRICT"}}})
    };
    peer_authn("strict", json!({"mtls": {"mode": "STRICT"}}));
    peer_authn("typo", json!({"mtls": {"mode": "Strict"}}));
    peer_authn("api-port", api("8080"));
    peer_authn("api-missing-port", api("9090"));
    let condition = |name: &str| first_condition(&s, "peerauthentications", name);
    for good in ["strict", "api-port"] {
        let c = condition(good);
        assert_eq!(
            (c["type"].as_str(), c["status"].as_str()),
            (Some("Accepted"), Some("True")),
            "{good}: {c}"
        );
    }
    for (bad, field) in [
        ("typo", "spec.mtls.mode"),
        ("api-missing-port", "spec.portLevelMtls.9090"),
    ] {
        let c = condition(bad);
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("False"), Some("Invalid")),
            "{bad}: {c}"
        );
        let message = c["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(field) && message.contains("STRICT in its scope"),
            "{bad}: {c}"
        );
    }
    // The port appears: the policy is accepted.
    s.kube
        .merge_patch(
            "services",
            "shop",
            "api",
            &json!({"spec": {"ports": [{"port": 80, "targetPort": "http"}, {"name": "admin", "port": 9090}]}}),
        )
        .expect("patch the service");
    let deadline = Instant::now() + WAIT;
    while condition("api-missing-port")["status"] != "True" {
        assert!(
            Instant::now() < deadline,
            "the policy stayed rejected once the port exists\n{}",
            s.controller.report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn http_routes_get_gateway_api_status_and_follow_their_backends() {
    let Some(s) = setup("controller_route_status") else {
        return;
    };
    let service = |name: &str| {
        s.kube
            .apply(json!({"apiVersion": "v1", "kind": "Service",
                          "metadata": {"name": name, "namespace": "shop"},
                          "spec": {"ports": [{"port": 80}]}}))
            .expect("service");
    };
    service("web");
    let route = |name: &str, backend: &str| {
        s.kube
            .apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                          "metadata": {"name": name, "namespace": "shop"},
                          "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                                   "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]}}))
            .expect("route");
    };
    route("good", "web");
    route("missing", "web-v2");
    // The conditions of the route's first parent, once written with `accepted`.
    let conditions = |name: &str, accepted: &str| -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let object = s
                .kube
                .get("httproutes", "shop", name)
                .expect("the API answers")
                .expect("the route exists");
            let parent = &object["status"]["parents"][0];
            if parent["conditions"][0]["status"] == accepted {
                assert_eq!(parent["controllerName"], "ambit.dev/waypoint", "{object}");
                assert_eq!(parent["parentRef"]["name"], "web", "{object}");
                return parent["conditions"].as_array().cloned().unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "{name} never got Accepted={accepted}: {object}\n{}",
                s.controller.report()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let good = conditions("good", "True");
    assert_eq!(
        (good[0]["type"].as_str(), good[0]["reason"].as_str()),
        (Some("Accepted"), Some("Accepted"))
    );
    assert_eq!(
        (good[1]["type"].as_str(), good[1]["status"].as_str()),
        (Some("ResolvedRefs"), Some("True"))
    );
    let missing = conditions("missing", "False");
    assert_eq!(missing[0]["reason"], "BackendNotFound", "{missing:?}");
    assert_eq!(
        (missing[1]["status"].as_str(), missing[1]["reason"].as_str()),
        (Some("False"), Some("BackendNotFound"))
    );
    assert!(
        missing[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("web-v2"),
        "{missing:?}"
    );
    // The backend appears: the route is re-checked and accepted.
    service("web-v2");
    let fixed = conditions("missing", "True");
    assert_eq!(fixed[1]["status"], "True", "{fixed:?}");
}

#[test]
fn a_waypoint_gets_its_own_certificate_and_nothing_else() {
    let Some(s) = setup("controller_waypoint") else {
        return;
    };
    let bundle_file = trust_bundle_published_for_waypoints(&s);
    // The waypoint's pod, not labelled as one yet.
    let waypoint_pod = |labels: Value| {
        s.kube
            .apply(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "wp-1", "namespace": "shop", "labels": labels},
                "spec": {"nodeName": "cp", "serviceAccountName": "wp",
                         "containers": [{"name": "waypoint", "image": "ambit-waypoint"}]}}))
            .expect("the waypoint pod");
    };
    waypoint_pod(json!({}));
    s.kube.register_pod_token(
        "wp-token",
        "system:serviceaccount:shop:wp",
        &["ambit-ca"],
        "cp",
        "wp-1",
    );
    s.kube.register_pod_token(
        "web-token",
        "system:serviceaccount:shop:web",
        &["ambit-ca"],
        "n1",
        "web-1",
    );
    let ca = s.ca_dir.join("ca.pem");
    // A workload's own token cannot get a certificate directly, nor can a
    // waypoint's token get another pod's.
    let (status, text) = s.curl(
        "POST",
        "/v1/certificates",
        Some("web-token"),
        Some(&request("web-1", WEB)),
        &ca,
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("not a waypoint"), "{text}");
    let (status, text) = s.curl(
        "POST",
        "/v1/certificates",
        Some("wp-token"),
        Some(&request("web-1", WEB)),
        &ca,
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("its own certificate"), "{text}");

    // The waypoint itself, with its pod-bound token. Its pod is not
    // labelled yet: refused, it keeps asking and is not ready, and says
    // why; once labelled: signed, serving and ready.
    let waypoint = spawn_waypoint(&s, &bundle_file);
    let readiness = || waypoint_readiness(&s);
    let deadline = Instant::now() + WAIT;
    let mut answer = readiness();
    while !answer.contains("is not a waypoint") {
        assert!(
            Instant::now() < deadline,
            "readiness never said why there is no certificate: {answer:?}\n{}",
            waypoint.report()
        );
        std::thread::sleep(Duration::from_millis(200));
        answer = readiness();
    }
    assert!(
        answer.starts_with("not ready: no certificate yet: the controller at https://")
            && answer.ends_with(" 503"),
        "{answer:?}"
    );
    assert!(waypoint.try_wait().is_none(), "{}", waypoint.report());
    waypoint_pod(json!({"ambit.dev/waypoint": "wp"}));
    assert!(
        waypoint
            .wait_for_stderr_line(WAIT, |l| l.contains("waypoint ready"))
            .is_some(),
        "{}\n{}",
        waypoint.report(),
        s.controller.report()
    );
    assert_eq!(readiness(), "ready\n 200");
    let signed = s.controller.wait_for_stderr_line(WAIT, |l| {
        l.contains("certificate signed") && l.contains("shop/wp-1") && l.contains("/sa/wp")
    });
    assert!(signed.is_some(), "{}", s.controller.report());

    // A CA rotation adds a root to the mounted bundle: the waypoint follows
    // the file; a bundle that does not parse is reported and not used.
    let next_ca = CertificateAuthority::generate("cluster.local", Duration::from_hours(1))
        .expect("the next CA");
    let mut rotated = std::fs::read_to_string(&bundle_file).expect("the bundle");
    rotated.push_str(next_ca.certificate_pem());
    std::fs::write(&bundle_file, rotated).expect("the rotated bundle");
    let followed = waypoint.wait_for_stderr_line(Duration::from_secs(15), |l| {
        l.contains("trust bundle changed") && l.contains("roots=2")
    });
    assert!(followed.is_some(), "{}", waypoint.report());
    std::fs::write(&bundle_file, "not a certificate").expect("a broken bundle");
    let refused = waypoint.wait_for_stderr_line(Duration::from_secs(15), |l| {
        l.contains("cannot be used; keeping the roots in use")
    });
    assert!(refused.is_some(), "{}", waypoint.report());
}

/// The waypoint `shop/wp` in pod `wp-1` on `cp`, in Kubernetes mode, with
/// its certificate from the controller and the trust bundle `bundle_file`.
fn spawn_waypoint(s: &Setup, bundle_file: &Path) -> Proc {
    let token_file = s.tb.run_dir().join("wp-token");
    std::fs::write(&token_file, "wp-token").expect("token file");
    let mut command = Command::new(Testbed::bin("ambit-waypoint"));
    command
        .args([
            "--name",
            "wp",
            "--namespace",
            "shop",
            "--kubernetes",
            "--kube-api-url",
            &s.kube.url(),
        ])
        .args([
            "--ca-address",
            &format!("https://{}:{PORT}", s.cp.underlay_v4),
        ])
        .arg("--ca-token-file")
        .arg(&token_file)
        .arg("--trust-bundle")
        .arg(bundle_file)
        .args([
            "--pod-name",
            "wp-1",
            "--listen",
            "127.0.0.1:15008",
            "--metrics-addr",
            "127.0.0.1:15020",
        ]);
    s.tb.spawn_on_node(&s.cp, &s.cp.agent_cgroup, command)
}

/// What the waypoint of [`spawn_waypoint`] answers on `/healthz/ready`,
/// then a space and the HTTP status.
fn waypoint_readiness(s: &Setup) -> String {
    let out = s.tb.exec_in_netns(
        &s.cp.netns,
        &[
            "curl",
            "-s",
            "--max-time",
            "5",
            "-w",
            " %{http_code}",
            "http://127.0.0.1:15020/healthz/ready",
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A waypoint's account appears (as `ambit waypoint apply` writes it): the
/// trust bundle is published in its namespace, which the waypoint mounts; a
/// namespace without a waypoint gets none. Returns the bundle as a file.
fn trust_bundle_published_for_waypoints(s: &Setup) -> PathBuf {
    assert!(s.published_bundle_in("shop").is_empty());
    for (namespace, labels) in [
        ("shop", json!({"ambit.dev/waypoint": "wp"})),
        ("plain", json!({})),
    ] {
        s.kube
            .apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "wp", "namespace": namespace, "labels": labels}}))
            .expect("an account");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.published_bundle_in("shop").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no trust bundle in the waypoint's namespace\n{}",
            s.controller.report()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.published_bundle_in("shop"), s.published_bundle());
    assert!(s.published_bundle_in("plain").is_empty());
    let bundle_file = s.tb.run_dir().join("shop-trust-bundle.pem");
    std::fs::write(&bundle_file, s.published_bundle_in("shop")).expect("bundle file");
    bundle_file
}

/// A pod of the `shop` namespace on `node` as the kubelet would run it: the
/// Pod object, its cgroup named after its UID, its address in the status,
/// an echo server in it.
fn running_pod(s: &mut Setup, node: &Node, name: &str) -> (ambit_tests::Pod, Proc) {
    let pod = s
        .kube
        .run_pod(
            &mut s.tb,
            node,
            "shop",
            name,
            &json!({"app": name}),
            ambit_tests::CgroupDriver::Cgroupfs,
        )
        .expect("pod");
    let server = ambit_tests::workload::serve(&s.tb, &pod);
    (pod, server)
}

/// Waits until the agent lists pod `name` with an error containing `says`.
fn wait_pod_error(tb: &Testbed, agent: &Agent, name: &str, says: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let pod = agent.pod(tb, name);
        if let Some(pod) = pod
            .as_ref()
            .filter(|p| p["error"].as_str().is_some_and(|e| e.contains(says)))
        {
            return pod.clone();
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} never said {says:?}: {pod:?}\n{}",
            agent.proc.report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The serial the controller logged for a certificate it signed for
/// `identity`, if any.
fn signed_serials(controller: &Proc, identity: &str) -> Vec<String> {
    controller
        .stderr_text()
        .lines()
        .filter(|line| line.contains("certificate signed") && line.contains(identity))
        .filter_map(|line| {
            let at = line.find("serial=")? + "serial=".len();
            Some(line[at..].split_whitespace().next()?.to_owned())
        })
        .collect()
}

/// The serial the agent's `/certificates` shows for `identity`.
fn agent_serial(tb: &Testbed, agent: &Agent, identity: &str) -> String {
    let certs = agent.get_json(tb, "/certificates");
    certs
        .as_array()
        .and_then(|all| all.iter().find(|c| c["identity"] == identity))
        .and_then(|c| c["serial"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no certificate of {identity}: {certs}"))
}

fn label_shop_meshed(s: &Setup) {
    s.kube
        .merge_patch(
            "namespaces",
            "",
            "shop",
            &json!({"metadata": {"labels": {"ambit.dev/mesh": "enabled"}}}),
        )
        .expect("label");
}

/// Sends through the mesh from `client` to `server`'s echo port and
/// checks, on the client's agent, that it went over mutual TLS to the
/// server's identity.
fn assert_meshed(
    s: &Setup,
    client_agent: &Agent,
    client: &ambit_tests::Pod,
    server: &ambit_tests::Pod,
) {
    let to = format!("{}:{}", server.ipv4, ambit_tests::workload::ECHO_PORT);
    let sent = ambit_tests::workload::send(&s.tb, client, &to, 10_000);
    assert_eq!(sent["bytes_received"], 10_000, "{sent}");
    let record =
        client_agent.wait_connection(&s.tb, |c| c["direction"] == "outbound" && c["dst"] == to);
    assert_eq!(record["security"], "mutual_tls", "{record}");
    assert_eq!(
        record["dst_identity"],
        format!("spiffe://cluster.local/ns/shop/sa/{}", server.name),
        "{record}"
    );
}

const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/shop/sa/server";

#[test]
fn agents_get_their_pods_certificates_from_the_controller_and_mesh_across_nodes() {
    let Some(mut s) = setup("controller_e2e") else {
        return;
    };
    let n1 = s.tb.add_node("n1");
    let n2 = s.tb.add_node("n2");
    label_shop_meshed(&s);
    let (client, _client_server) = running_pod(&mut s, &n1, "client");
    let (server, _server_server) = running_pod(&mut s, &n2, "server");
    s.kube
        .register_token("agent-n2", AGENT_USER, &["ambit-ca"], Some("n2"));
    let address = s.address();
    let a1 = Agent::spawn_kubernetes_with_controller(
        &s.tb,
        &n1,
        &s.kube.url(),
        &address,
        &s.token_file("agent-n1"),
    );
    // n2's agent first presents n1's token: the controller refuses to sign
    // n2's pod for it, and the pod waits, saying why.
    let a2 = Agent::spawn_kubernetes_with_controller(
        &s.tb,
        &n2,
        &s.kube.url(),
        &address,
        &s.token_file("agent-n1"),
    );
    a1.wait_ready(&s.tb);
    a1.wait_pod_state(&s.tb, "client", "enrolled", WAIT);
    let refused = wait_pod_error(
        &s.tb,
        &a2,
        "server",
        "runs on node n2, not on the caller's node n1",
    );
    // Captured while it waits (fail closed), not left out of the mesh.
    assert_eq!(refused["state"], "waiting", "{refused}");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("the controller at {address} refused")) && error.contains("(403)"),
        "{refused}"
    );
    assert!(
        a2.get_json(&s.tb, "/certificates")
            .as_array()
            .is_some_and(Vec::is_empty),
        "nothing was issued to n2 with n1's token"
    );
    // Restarted with its own node's token, it gets the certificate.
    let n2_token = s.token_file("agent-n2");
    drop(a2);
    let a2 =
        Agent::spawn_kubernetes_with_controller(&s.tb, &n2, &s.kube.url(), &address, &n2_token);
    a2.wait_ready(&s.tb);
    a2.wait_pod_state(&s.tb, "server", "enrolled", WAIT);

    // The agents hold no CA key: the certificates they show are the ones
    // the controller signed.
    for (agent, identity) in [(&a1, CLIENT), (&a2, SERVER)] {
        let serial = agent_serial(&s.tb, agent, identity);
        assert!(
            signed_serials(&s.controller, identity).contains(&serial),
            "{identity}'s serial {serial} was not signed by the controller:\n{}",
            s.controller.stderr_text()
        );
    }

    // Meshed across nodes over HBONE with those certificates, which the
    // agents verify against the mesh CA (their --trust-bundle).
    assert_meshed(&s, &a1, &client, &server);
}

#[test]
fn pods_wait_for_the_controller_and_enroll_when_it_answers() {
    let Some(mut s) = setup("controller_down") else {
        return;
    };
    s.controller.kill();
    let n1 = s.tb.add_node("n1");
    label_shop_meshed(&s);
    let (_client, _client_server) = running_pod(&mut s, &n1, "client");
    // No token yet, no controller: the pod waits, saying what to check,
    // and the agent stays responsive meanwhile.
    let token = s.tb.run_dir().join("late.token");
    let agent =
        Agent::spawn_kubernetes_with_controller(&s.tb, &n1, &s.kube.url(), &s.address(), &token);
    agent.wait_ready(&s.tb);
    let waiting = wait_pod_error(
        &s.tb,
        &agent,
        "client",
        "cannot read the service-account token",
    );
    assert!(
        waiting["error"]
            .as_str()
            .is_some_and(|e| e.contains(token.to_str().unwrap_or_default())
                && e.contains("audience ambit-ca")),
        "{waiting}"
    );
    std::fs::write(&token, "agent-n1").expect("token");
    wait_pod_error(
        &s.tb,
        &agent,
        "client",
        &format!("cannot reach the controller at {}", s.address()),
    );
    let started = Instant::now();
    s.controller = start_controller(&mut s.tb, &s.cp, &s.kube);
    s.wait_healthy();
    agent.wait_pod_state(&s.tb, "client", "enrolled", WAIT);
    let serial = agent_serial(&s.tb, &agent, CLIENT);
    assert!(signed_serials(&s.controller, CLIENT).contains(&serial));
    // Retries back off (0.5 s doubling), but not past a few seconds here.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "enrolled {:?} after the controller came up",
        started.elapsed()
    );
}

#[test]
fn a_pod_waiting_for_its_certificate_is_captured_and_its_connections_wait() {
    let Some(mut s) = setup("controller_cert_wait") else {
        return;
    };
    s.controller.kill();
    let n1 = s.tb.add_node("n1");
    let n2 = s.tb.add_node("n2");
    s.kube
        .merge_patch(
            "namespaces",
            "",
            "shop",
            &json!({"metadata": {"labels": {"ambit.dev/mesh": "enabled", "ambit.dev/mtls": "strict"}}}),
        )
        .expect("label");
    let (client, _client_echo) = running_pod(&mut s, &n1, "client");
    let (server, server_echo) = running_pod(&mut s, &n2, "server");
    let legacy = s.tb.add_pod(&n1, "legacy", "legacy");
    s.kube
        .register_token("agent-n2", AGENT_USER, &["ambit-ca"], Some("n2"));
    // Long enough for a connection to outlast the controller's retry
    // backoff once it is back (at most about half the time it was away).
    let timeout = ["--connect-timeout-ms", "12000"];
    let spawn = |node: &Node, token: &str| {
        Agent::spawn_kubernetes_with_controller_and(
            &s.tb,
            node,
            &s.kube.url(),
            &s.address(),
            &s.token_file(token),
            &timeout,
        )
    };
    let a1 = spawn(&n1, "agent-n1");
    let a2 = spawn(&n2, "agent-n2");
    a1.wait_ready(&s.tb);
    a2.wait_ready(&s.tb);

    // Captured at once, waiting, saying what for.
    let unreachable = format!("cannot reach the controller at {}", s.address());
    for (agent, pod) in [(&a1, "client"), (&a2, "server")] {
        let entry = agent.wait_pod_state(&s.tb, pod, "waiting", WAIT);
        assert!(
            entry["error"]
                .as_str()
                .is_some_and(|e| e.contains(&unreachable)),
            "{entry}"
        );
        assert!(entry["netns_cookie"].is_u64(), "captured: {entry}");
    }
    let ambit = Testbed::bin("ambit");
    let out =
        s.tb.exec_in_netns(&n1.netns, &[ambit.to_str().expect("utf-8"), "pods"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.contains("client") && l.contains("waiting") && l.contains(&unreachable)),
        "ambit pods shows the wait:\n{table}"
    );

    // The strict pod waiting for its certificate takes no plaintext.
    let to_server = format!("{}:{}", server.ipv4, ambit_tests::workload::ECHO_PORT);
    let (ok, sent, _) = ambit_tests::workload::try_send(&s.tb, &legacy, &to_server, 1000);
    assert!(
        !ok,
        "plaintext reached a pod waiting for its certificate: {sent}"
    );
    assert!(
        !server_echo.json_lines().iter().any(|l| l["event"] == "conn"
            && l["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with(&legacy.ipv4.to_string()))),
        "the server accepted a connection from outside the mesh"
    );

    // The client's mesh connection waits for the certificate, then fails
    // with the reason.
    let started = Instant::now();
    let (ok, sent, _) = ambit_tests::workload::try_send(&s.tb, &client, &to_server, 1000);
    let waited = started.elapsed();
    assert!(!ok, "no certificate, no connection: {sent}");
    assert!(
        waited >= Duration::from_secs(11),
        "it waited for the certificate: {waited:?}"
    );
    a1.proc
        .wait_for_stderr_line(WAIT, |l| {
            l.contains("no certificate for spiffe://cluster.local/ns/shop/sa/client")
                && l.contains("cannot reach the controller")
        })
        .expect("the failure is logged with the reason");

    // A connection made while the controller comes back waits and then
    // goes over mutual TLS.
    let sender = s.tb.spawn_in_pod(
        &client,
        ambit_tests::workload::pod_tool(&["send", "--to", &to_server, "--bytes", "10000"]),
    );
    s.controller = start_controller(&mut s.tb, &s.cp, &s.kube);
    s.wait_healthy();
    let (status, lines) = sender.output_json_lines(Duration::from_mins(1));
    assert!(status.success(), "{lines:?}\n{}", sender.report());
    assert_meshed(&s, &a1, &client, &server);
    a1.wait_pod_state(&s.tb, "client", "enrolled", WAIT);
}

#[test]
fn agents_follow_the_trust_bundle_through_a_ca_rotation() {
    let Some(mut s) = setup("controller_ca_rotation") else {
        return;
    };
    let n1 = s.tb.add_node("n1");
    let n2 = s.tb.add_node("n2");
    label_shop_meshed(&s);
    s.kube
        .register_token("agent-n2", AGENT_USER, &["ambit-ca"], Some("n2"));
    // The agents' --trust-bundle is the mesh CA's ca.pem; rewriting it
    // plays the kubelet updating the mounted ConfigMap.
    let agents_bundle = s.ca_dir.join("ca.pem");
    let old_pem = std::fs::read(&agents_bundle).expect("old CA");
    let old_key = std::fs::read(s.ca_dir.join("ca-key.pem")).expect("old key");
    let (client, _client_server) = running_pod(&mut s, &n1, "client");
    let a1 = Agent::spawn_kubernetes_with_controller(
        &s.tb,
        &n1,
        &s.kube.url(),
        &s.address(),
        &s.token_file("agent-n1"),
    );
    a1.wait_ready(&s.tb);
    a1.wait_pod_state(&s.tb, "client", "enrolled", WAIT);

    // 1. The new root joins the bundle; the agents read it.
    let new_ca =
        CertificateAuthority::generate("cluster.local", Duration::from_hours(24)).expect("CA");
    let (new_cert, new_key) = new_ca
        .write(&s.tb.run_dir().join("ca-new"))
        .expect("write the new CA");
    let new_pem = std::fs::read(&new_cert).expect("new CA");
    s.kube
        .apply(secret(&old_pem, &old_key, Some(&new_pem)))
        .expect("add the new root");
    let deadline = Instant::now() + WAIT;
    while der_blocks(s.published_bundle().as_bytes()).len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the bundle never held both roots"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&agents_bundle, s.published_bundle()).expect("update the agents' bundle");
    a1.proc
        .wait_for_stderr_line(WAIT, |line| line.contains("trust bundle changed"))
        .unwrap_or_else(|| panic!("n1's agent never read the new bundle\n{}", a1.proc.report()));

    // 2. The new CA signs; the old root stays trusted.
    s.kube
        .apply(secret(
            &new_pem,
            &std::fs::read(&new_key).expect("key"),
            Some(&old_pem),
        ))
        .expect("switch to the new CA");
    s.controller
        .wait_for_stderr_line(WAIT, |line| line.contains("CA Secret changed"))
        .unwrap_or_else(|| panic!("the controller kept the old CA\n{}", s.controller.report()));
    std::fs::write(&agents_bundle, s.published_bundle()).expect("update the agents' bundle");

    // A pod enrolled now gets a certificate of the new CA ...
    let (server, _server_server) = running_pod(&mut s, &n2, "server");
    let a2 = Agent::spawn_kubernetes_with_controller(
        &s.tb,
        &n2,
        &s.kube.url(),
        &s.address(),
        &s.token_file("agent-n2"),
    );
    a2.wait_ready(&s.tb);
    a2.wait_pod_state(&s.tb, "server", "enrolled", WAIT);
    let serial = agent_serial(&s.tb, &a2, SERVER);
    assert!(signed_serials(&s.controller, SERVER).contains(&serial));
    // ... and a pod of the old CA and one of the new mesh: n1's agent,
    // started when only the old root existed, verifies the server's new
    // chain with the root it read from the file.
    assert_meshed(&s, &a1, &client, &server);
}
