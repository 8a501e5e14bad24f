//! The demo's L7 part: a second pair of nodes where the Service
//! `shop/backend` names the waypoint `shop/wp`. Meshed clients' requests to
//! it go through the waypoint, which splits them 90/10 between
//! `backend-v1` and `backend-v2` (an `HTTPRoute`) and allows only
//! `client-a`'s GETs (an `AuthorizationPolicy` with methods and
//! principals). Each check says what was expected and what happened.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;

use ambit_tests::Testbed;
use ambit_tests::waypoint::{GET_ONLY_FOR_CLIENT_A, VIP, WaypointMesh};
use serde::Serialize;

/// Requests sent for the split.
const SPLIT_REQUESTS: u64 = 1000;
/// The v2 share's 99.9% two-sided binomial bounds for 1000 requests at
/// p = 0.1 (sd 9.5, ±3.29 sd).
const V2_BOUNDS: std::ops::RangeInclusive<u64> = 69..=131;

/// The route the waypoint follows (the policy is
/// [`GET_ONLY_FOR_CLIENT_A`]).
const ROUTE: &str = "routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: canary, namespace: shop}
    spec:
      parentRefs: [{group: '', kind: Service, name: backend, port: 80}]
      rules:
        - backendRefs:
            - {name: backend-v1, port: 80, weight: 90}
            - {name: backend-v2, port: 80, weight: 10}
";

/// One L7 check: what was sent, what was expected, what came back.
#[derive(Serialize)]
pub struct L7Check {
    /// What was sent, e.g. `client-a GET /`.
    pub request: String,
    /// What the waypoint should do.
    pub expected: String,
    /// What happened.
    pub got: String,
    /// Whether it matched.
    pub ok: bool,
}

/// Builds the waypoint's nodes (`w1`, `w2`), runs the checks, and returns
/// them; `Err` with the processes' output when the setup itself failed.
pub fn run(tb: &mut Testbed, progress: impl Fn(&str)) -> Result<Vec<L7Check>, String> {
    progress(
        "L7: nodes w1 (clients) and w2 (backends v1, v2, v3 and the waypoint shop/wp); shop/backend names the waypoint",
    );
    catch_unwind(AssertUnwindSafe(|| {
        let w1 = tb.add_node("w1");
        let w2 = tb.add_node("w2");
        let mut mesh =
            WaypointMesh::on_nodes(tb, w1, w2, &format!("{ROUTE}{GET_ONLY_FOR_CLIENT_A}"));
        for pod in [mesh.v1.clone(), mesh.v2.clone(), mesh.v3.clone()] {
            mesh.serve_http(tb, &pod, &[]);
        }
        mesh.start_waypoint(tb, &[]);
        progress(&format!(
            "L7: {SPLIT_REQUESTS} GETs from client-a with h2load (HTTP/2) through the 90/10 route"
        ));
        let mut checks = vec![split(tb, &mesh)];
        progress("L7: GET and DELETE from client-a, GET from client-b");
        for (client, method, status, body, expected) in [
            ("client-a", "GET", 200, "", "200: allowed"),
            (
                "client-a",
                "DELETE",
                403,
                "shop/backend-get-only",
                "403 naming the policy",
            ),
            (
                "client-b",
                "GET",
                403,
                "access denied",
                "403: not a named principal",
            ),
        ] {
            let pod = if client == "client-a" {
                &mesh.client_a
            } else {
                &mesh.client_b
            };
            let answer = mesh.curl(tb, pod, "/", &["-X", method]);
            checks.push(L7Check {
                request: format!("{client} {method} http://{VIP}/"),
                expected: expected.to_owned(),
                got: summary(answer.status, &answer.body),
                ok: answer.status == status && answer.body.contains(body),
            });
        }
        checks
    }))
    .map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "the L7 setup failed".to_owned())
    })
}

/// The 90/10 split, counted by the waypoint's `istio_requests_total` per
/// backend Service.
fn split(tb: &Testbed, mesh: &WaypointMesh) -> L7Check {
    let mut h2load = Command::new("h2load");
    h2load
        .args(["-n", &SPLIT_REQUESTS.to_string(), "-c", "4"])
        .arg(format!("http://{VIP}/"));
    let out = tb.run_in_pod(&mesh.client_a, h2load);
    let routed = |backend: &str| {
        mesh.metric(
            tb,
            "istio_requests_total",
            &[&format!("destination_backend=\"{backend}\"")],
        )
    };
    let (v1, v2) = (routed("backend-v1"), routed("backend-v2"));
    L7Check {
        request: format!("client-a {SPLIT_REQUESTS} × GET http://{VIP}/ (h2load)"),
        expected: format!(
            "90/10: v2 in {}..={} (binomial 99.9%)",
            V2_BOUNDS.start(),
            V2_BOUNDS.end()
        ),
        got: format!("v1 {v1}, v2 {v2}"),
        ok: out.status.success() && v1 + v2 == SPLIT_REQUESTS && V2_BOUNDS.contains(&v2),
    }
}

/// A response in a few words: the backend that answered and whether the
/// waypoint started a trace, or the first line of an error body.
fn summary(status: u16, body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(echo) => format!(
            "{status} from {}{}",
            echo["backend"].as_str().unwrap_or("?"),
            if echo["headers"]["traceparent"].is_string() {
                ", traceparent added"
            } else {
                ""
            }
        ),
        Err(_) => format!("{status} {}", body.lines().next().unwrap_or("").trim()),
    }
}
