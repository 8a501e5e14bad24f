use mesh_core::ca::WorkloadKey;
use serde_json::json;

use super::*;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn pod(node: Option<&str>, account: Option<&str>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "shop"},
        "spec": {"nodeName": node, "serviceAccountName": account, "containers": []},
    }))
    .unwrap()
}

fn id(text: &str) -> SpiffeId {
    text.parse().unwrap()
}

fn csr_pem(identity: &str) -> String {
    let der = WorkloadKey::generate()
        .unwrap()
        .csr_der(&id(identity))
        .unwrap();
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der))
}

fn parse(body: &serde_json::Value) -> Result<ValidRequest, SignError> {
    ValidRequest::parse(body.to_string().as_bytes())
}

fn bad_request(body: &[u8]) -> String {
    let error = ValidRequest::parse(body).unwrap_err();
    assert_eq!(error.status(), 400, "{error}");
    error.to_string()
}

#[test]
fn the_pods_own_identity_on_the_callers_node_is_granted() {
    let identity = authorize(
        &pod(Some("n1"), Some("web")),
        "n1",
        &id(WEB),
        "cluster.local",
    );
    assert_eq!(identity.unwrap().to_string(), WEB);
    // No service account in the spec: the namespace's default one.
    let default = id("spiffe://cluster.local/ns/shop/sa/default");
    let identity = authorize(&pod(Some("n1"), None), "n1", &default, "cluster.local");
    assert_eq!(identity.unwrap(), default);
}

#[test]
fn another_nodes_pod_or_another_identity_is_forbidden() {
    let error = authorize(
        &pod(Some("n2"), Some("web")),
        "n1",
        &id(WEB),
        "cluster.local",
    )
    .unwrap_err();
    assert_eq!(error.status(), 403);
    assert!(
        error
            .to_string()
            .contains("pod shop/web-1 runs on node n2, not on the caller's node n1"),
        "{error}"
    );
    let admin = id("spiffe://cluster.local/ns/shop/sa/admin");
    let error =
        authorize(&pod(Some("n1"), Some("web")), "n1", &admin, "cluster.local").unwrap_err();
    assert_eq!(error.status(), 403);
    assert!(
        error
            .to_string()
            .contains("runs as spiffe://cluster.local/ns/shop/sa/web, not"),
        "{error}"
    );
    // Another trust domain is another identity.
    let foreign = id("spiffe://other.example/ns/shop/sa/web");
    let error = authorize(
        &pod(Some("n1"), Some("web")),
        "n1",
        &foreign,
        "cluster.local",
    )
    .unwrap_err();
    assert_eq!(error.status(), 403);
    let error = authorize(&pod(None, Some("web")), "n1", &id(WEB), "cluster.local").unwrap_err();
    assert!(error.to_string().contains("not scheduled"), "{error}");
}

#[test]
fn a_request_names_a_pod_and_carries_a_csr_for_one_identity() {
    let request =
        parse(&json!({"pod": {"namespace": "shop", "name": "web-1"}, "csr": csr_pem(WEB)}))
            .unwrap();
    assert_eq!(
        (request.namespace.as_str(), request.name.as_str()),
        ("shop", "web-1")
    );
    assert_eq!(request.identity, id(WEB));
    // The optional identity, when it agrees with the CSR.
    let csr = csr_pem(WEB);
    let request =
        parse(&json!({"pod": {"namespace": "shop", "name": "web-1"}, "csr": csr, "identity": WEB}))
            .unwrap();
    assert_eq!(request.identity, id(WEB));
}

#[test]
fn malformed_requests_are_400_saying_what_is_wrong() {
    let pod = json!({"namespace": "shop", "name": "web-1"});
    for (body, says) in [
        (b"{not json".to_vec(), "not a certificate request"),
        (b"".to_vec(), "not a certificate request"),
        (
            json!({"pod": pod, "csr": csr_pem(WEB), "extra": 1})
                .to_string()
                .into_bytes(),
            "unknown field `extra`",
        ),
        (
            json!({"csr": csr_pem(WEB)}).to_string().into_bytes(),
            "missing field `pod`",
        ),
        (
            json!({"pod": {"namespace": "", "name": "x"}, "csr": csr_pem(WEB)})
                .to_string()
                .into_bytes(),
            "must not be empty",
        ),
        (
            json!({"pod": pod, "csr": "hello"}).to_string().into_bytes(),
            "PEM CERTIFICATE REQUEST",
        ),
        (
            json!({"pod": pod, "csr": pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2]))})
                .to_string()
                .into_bytes(),
            "PEM CERTIFICATE REQUEST",
        ),
        (
            json!({"pod": pod, "csr": pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", b"junk".to_vec()))})
                .to_string()
                .into_bytes(),
            "not a DER PKCS#10",
        ),
        (
            json!({"pod": pod, "csr": csr_pem(WEB), "identity": "spiffe://cluster.local/ns/shop/sa/admin"})
                .to_string()
                .into_bytes(),
            "is not the one the CSR asks for",
        ),
    ] {
        let error = bad_request(&body);
        assert!(error.contains(says), "{says:?} in {error}");
    }
}

#[test]
fn every_refusal_has_its_status() {
    for (error, status) in [
        (SignError::BadRequest(String::new()), 400),
        (SignError::Unauthenticated(String::new()), 401),
        (SignError::Forbidden(String::new()), 403),
        (SignError::NotFound(String::new()), 404),
        (SignError::Unavailable(String::new()), 503),
        (SignError::Internal(String::new()), 500),
    ] {
        assert_eq!(error.status(), status, "{error}");
    }
}

#[test]
fn a_bad_csr_is_the_callers_fault_and_a_failing_ca_is_not() {
    use mesh_core::ca::CaError;
    let bad_csr = CaError::CsrIdentity {
        reason: "no URI SAN".to_owned(),
    };
    assert_eq!(SignError::of_ca(&bad_csr).status(), 400);
    let wrong_key = CaError::Csr {
        identity: id("spiffe://cluster.local/ns/shop/sa/web"),
        reason: "is not signed by its key".to_owned(),
    };
    assert_eq!(SignError::of_ca(&wrong_key).status(), 400);
    assert_eq!(SignError::of_ca(&CaError::Random).status(), 500);
    let lifetime = CaError::Validity {
        reason: "the configured lifetime overflows".to_owned(),
    };
    assert_eq!(SignError::of_ca(&lifetime).status(), 500);
}

#[test]
fn only_a_labelled_waypoint_pod_gets_its_own_identity() {
    let waypoint = |labels: serde_json::Value, account: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "wp-1", "namespace": "shop", "labels": labels},
            "spec": {"nodeName": "n2", "serviceAccountName": account, "containers": []},
        }))
        .unwrap()
    };
    let wp = id("spiffe://cluster.local/ns/shop/sa/wp");
    let labelled = waypoint(json!({"ambit.dev/waypoint": "wp"}), "wp");
    assert_eq!(
        authorize_waypoint(&labelled, "wp", &wp, "cluster.local").unwrap(),
        wp
    );
    // An ordinary workload's token: no waypoint label.
    let plain = waypoint(json!({"app": "web"}), "wp");
    let error = authorize_waypoint(&plain, "wp", &wp, "cluster.local").unwrap_err();
    assert_eq!(error.status(), 403);
    assert!(error.to_string().contains("not a waypoint"), "{error}");
    // The label names another waypoint than the token's account.
    let other = waypoint(json!({"ambit.dev/waypoint": "other"}), "wp");
    assert_eq!(
        authorize_waypoint(&other, "wp", &wp, "cluster.local")
            .unwrap_err()
            .status(),
        403
    );
    // The pod runs as another account than the token's.
    assert!(
        authorize_waypoint(&labelled, "web", &wp, "cluster.local")
            .unwrap_err()
            .to_string()
            .contains("runs as service account wp")
    );
    // Another identity than its own.
    let error = authorize_waypoint(&labelled, "wp", &id(WEB), "cluster.local").unwrap_err();
    assert_eq!(error.status(), 403, "{error}");
}
