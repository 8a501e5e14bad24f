//! Tables for people.

use serde_json::Value;

use crate::table::render as table;

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `ambit pods` as a table.
#[must_use]
pub fn pods_table(pods: &Value) -> String {
    let rows: Vec<Vec<String>> = pods
        .as_array()
        .into_iter()
        .flatten()
        .map(|pod| {
            let ips: Vec<String> = pod["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            let traffic = |direction: &str| {
                let t = &pod["traffic"][direction];
                if t.is_null() {
                    "-".to_owned()
                } else {
                    format!(
                        "{} conns, {}/{} B",
                        text(&t["connections_opened"]),
                        text(&t["bytes_sent"]),
                        text(&t["bytes_received"])
                    )
                }
            };
            // `on`, `off`, or `rejected: …` / `unavailable: …`: the state in
            // its column, the reason among the notes.
            let kernel_path = pod["kernel_path"].as_str().unwrap_or("-");
            let (kernel_state, kernel_reason) = kernel_path
                .split_once(": ")
                .map_or((kernel_path, None), |(state, reason)| (state, Some(reason)));
            // The error, what to know about the pod's mTLS modes, and why
            // it is not on the kernel path it asked for.
            let notes: Vec<String> = pod["error"]
                .as_str()
                .map(str::to_owned)
                .into_iter()
                .chain(
                    pod["mtls_warnings"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|w| format!("warning: {}", text(w))),
                )
                .chain(kernel_reason.map(|reason| format!("kernel path: {reason}")))
                .collect();
            vec![
                text(&pod["namespace"]),
                text(&pod["name"]),
                text(&pod["state"]),
                mtls_modes(pod),
                kernel_state.to_owned(),
                ips.join(","),
                text(&pod["netns_cookie"]),
                traffic("outbound"),
                traffic("inbound"),
                if notes.is_empty() {
                    "-".to_owned()
                } else {
                    notes.join("; ")
                },
            ]
        })
        .collect();
    table(
        &[
            "NAMESPACE",
            "NAME",
            "STATE",
            "MTLS",
            "KERNEL PATH",
            "IPS",
            "NETNS COOKIE",
            "OUTBOUND",
            "INBOUND",
            "ERROR / WARNINGS",
        ],
        &rows,
    )
}

/// A pod's effective mTLS modes: `strict`, or `permissive (9090 strict)`
/// with the ports that differ.
fn mtls_modes(pod: &Value) -> String {
    let ports: Vec<String> = pod["port_mtls"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(port, mode)| format!("{port} {}", text(mode)))
        .collect();
    if ports.is_empty() {
        text(&pod["mtls"])
    } else {
        format!("{} ({})", text(&pod["mtls"]), ports.join(", "))
    }
}

/// `ambit peer-authentications` as a table.
#[must_use]
pub fn peer_authentications_table(policies: &Value) -> String {
    let rows: Vec<Vec<String>> = items(policies)
        .map(|policy| {
            let ports: Vec<String> = policy["port_level"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(port, mode)| format!("{port}={}", text(mode)))
                .collect();
            policy_row(
                policy,
                [
                    selector(&policy["selector"]),
                    text(&policy["mode"]),
                    if ports.is_empty() {
                        "-".to_owned()
                    } else {
                        ports.join(",")
                    },
                ],
            )
        })
        .collect();
    table(
        &[
            "NAMESPACE",
            "NAME",
            "SELECTOR",
            "MODE",
            "PORTS",
            "STATE",
            "STATUS",
        ],
        &rows,
    )
}

/// A policy's row, either kind: its namespace and name, its own
/// `columns`, then its state and status.
fn policy_row(policy: &Value, columns: [String; 3]) -> Vec<String> {
    let mut row = vec![
        text(&policy["key"]["namespace"]),
        text(&policy["key"]["name"]),
    ];
    row.extend(columns);
    row.extend([text(&policy["state"]), text(&policy["status"])]);
    row
}

/// A selector as `k=v,k=v`; `(namespace)` when empty.
fn selector(labels: &Value) -> String {
    labels.as_object().map_or_else(
        || "-".to_owned(),
        |labels| {
            if labels.is_empty() {
                "(namespace)".to_owned()
            } else {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", text(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        },
    )
}

/// `ambit counters` as a table.
#[must_use]
pub fn counters_table(counters: &Value) -> String {
    let rows: Vec<Vec<String>> = counters
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, value)| vec![name.clone(), text(value)])
        .collect();
    table(&["COUNTER", "VALUE"], &rows)
}

/// `ambit policies` as a table.
#[must_use]
pub fn policies_table(policies: &Value) -> String {
    let rows: Vec<Vec<String>> = items(policies)
        .map(|policy| {
            let rules = policy["rules"].as_array().map_or(0, Vec::len);
            policy_row(
                policy,
                [
                    text(&policy["action"]),
                    selector(&policy["selector"]),
                    rules.to_string(),
                ],
            )
        })
        .collect();
    table(
        &[
            "NAMESPACE",
            "NAME",
            "ACTION",
            "SELECTOR",
            "RULES",
            "STATE",
            "STATUS",
        ],
        &rows,
    )
}

/// `ambit workloads` as a table.
#[must_use]
pub fn workloads_table(workloads: &Value) -> String {
    let rows: Vec<Vec<String>> = items(workloads)
        .map(|w| {
            vec![
                text(&w["namespace"]),
                text(&w["name"]),
                text(&w["node"]),
                if w["local"].as_bool() == Some(true) {
                    "yes".to_owned()
                } else {
                    "no".to_owned()
                },
                joined(&w["ips"]),
                text(&w["identity"]),
                mtls_modes(w),
            ]
        })
        .collect();
    table(
        &[
            "NAMESPACE",
            "NAME",
            "NODE",
            "LOCAL",
            "IPS",
            "IDENTITY",
            "MTLS",
        ],
        &rows,
    )
}

/// `ambit services` as a table.
#[must_use]
pub fn services_table(services: &Value) -> String {
    let rows: Vec<Vec<String>> = items(services)
        .map(|s| {
            let selector = s["selector"].as_object().map_or_else(
                || "-".to_owned(),
                |labels| {
                    labels
                        .iter()
                        .map(|(k, v)| format!("{k}={}", text(v)))
                        .collect::<Vec<_>>()
                        .join(",")
                },
            );
            let ports: Vec<String> = items(&s["ports"])
                .map(|p| {
                    let port = match p["targetPort"].as_u64() {
                        Some(target) => format!("{}→{target}", text(&p["port"])),
                        None => text(&p["port"]),
                    };
                    match p["appProtocol"].as_str() {
                        Some(protocol) => format!("{port}[{protocol}]"),
                        None => port,
                    }
                })
                .collect();
            vec![
                text(&s["namespace"]),
                text(&s["name"]),
                joined(&s["cluster_ips"]),
                text(&s["hostname"]),
                selector,
                if ports.is_empty() {
                    "-".to_owned()
                } else {
                    ports.join(",")
                },
                joined(&s["endpoints"]),
            ]
        })
        .collect();
    table(
        &[
            "NAMESPACE",
            "NAME",
            "CLUSTER-IP",
            "HOSTNAME",
            "SELECTOR",
            "PORTS",
            "ENDPOINTS",
        ],
        &rows,
    )
}

/// `ambit certs` as a table; `now` is seconds since the epoch.
#[must_use]
pub fn certificates_table(certificates: &Value, now: u64) -> String {
    let rows: Vec<Vec<String>> = items(certificates)
        .map(|c| {
            let not_after = c["not_after"].as_u64().unwrap_or(0);
            vec![
                text(&c["identity"]),
                text(&c["serial"]),
                timestamp(&c["not_before"]),
                timestamp(&c["not_after"]),
                if not_after > now {
                    duration(not_after - now)
                } else {
                    "expired".to_owned()
                },
                text(&c["state"]),
                text(&c["rotations"]),
            ]
        })
        .collect();
    table(
        &[
            "IDENTITY",
            "SERIAL",
            "NOT BEFORE",
            "NOT AFTER",
            "EXPIRES IN",
            "STATE",
            "ROTATIONS",
        ],
        &rows,
    )
}

/// The columns of `ambit connections`.
pub const CONNECTION_HEADER: [&str; 10] = [
    "STATE",
    "DIRECTION",
    "SOURCE",
    "DESTINATION",
    "SOURCE ID",
    "DESTINATION ID",
    "SECURITY",
    "VERDICT (POLICY)",
    "BYTES OUT/IN",
    "AGE",
];

/// `ambit connections` as a table.
#[must_use]
pub fn connections_table(connections: &Value) -> String {
    let rows: Vec<Vec<String>> = items(connections).map(connection_row).collect();
    table(&CONNECTION_HEADER, &rows)
}

/// One connection's cells, in [`CONNECTION_HEADER`]'s order.
#[must_use]
pub fn connection_row(c: &Value) -> Vec<String> {
    let end = |workload: &str, addr: &str| match c[workload].as_str() {
        Some(workload) => format!("{workload} ({})", text(&c[addr])),
        None => text(&c[addr]),
    };
    // The trust domain is the same for every identity; the path says who.
    let identity = |field: &str| {
        c[field].as_str().map_or_else(
            || "-".to_owned(),
            |id| {
                id.strip_prefix("spiffe://")
                    .and_then(|rest| rest.split_once('/'))
                    .map_or_else(|| id.to_owned(), |(_, path)| path.to_owned())
            },
        )
    };
    let verdict = match c["authorization"]["decision"].as_str() {
        Some(decision) => format!("{decision} ({})", text(&c["authorization"]["policy"])),
        None => "-".to_owned(),
    };
    let age = c["age_secs"]
        .as_f64()
        .map_or_else(|| "-".to_owned(), |secs| format!("{secs:.1}s"));
    vec![
        c["state"].as_str().unwrap_or("closed").to_owned(),
        text(&c["direction"]),
        end("src_workload", "src"),
        end("dst_workload", "dst"),
        identity("src_identity"),
        identity("dst_identity"),
        text(&c["security"]),
        verdict,
        format!("{}/{}", text(&c["bytes_sent"]), text(&c["bytes_received"])),
        age,
    ]
}

/// One line of the follow table: cells padded to the header's widths or
/// their own, whichever is wider.
#[must_use]
pub fn follow_line(cells: &[String], header: &[&str]) -> String {
    let padded: Vec<String> = cells
        .iter()
        .zip(header)
        .map(|(cell, h)| format!("{cell:<w$}", w = h.len()))
        .collect();
    padded.join("  ").trim_end().to_owned() + "\n"
}

fn items(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

fn joined(values: &Value) -> String {
    let parts: Vec<String> = items(values).map(text).collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(",")
    }
}

/// Seconds since the epoch as an RFC 3339 UTC time.
fn timestamp(secs: &Value) -> String {
    secs.as_i64()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// A duration for people: `3d4h`, `5h12m`, `7m3s`, `42s`.
pub fn duration(secs: u64) -> String {
    let (days, hours, minutes, seconds) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_table_aligns_columns_and_shows_errors() {
        let pods = serde_json::json!([
            {"namespace": "shop", "name": "client", "state": "enrolled", "ips": ["10.10.1.11"], "netns_cookie": 4099,
             "traffic": {"outbound": {"connections_opened": 2, "bytes_sent": 10, "bytes_received": 20},
                         "inbound": {"connections_opened": 0, "bytes_sent": 0, "bytes_received": 0}}, "error": null},
            {"namespace": "shop", "name": "ghost", "state": "failed", "ips": [], "netns_cookie": null, "traffic": null,
             "error": "cannot open network namespace /x"}
        ]);
        let out = pods_table(&pods);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE  NAME    STATE"), "{out}");
        assert!(lines[1].contains("2 conns, 10/20 B"), "{out}");
        assert!(
            lines[2].contains("failed") && lines[2].ends_with("cannot open network namespace /x"),
            "{out}"
        );
    }

    #[test]
    fn pods_table_shows_mtls_modes_and_warnings() {
        let pods = serde_json::json!([
            {"namespace": "shop", "name": "web", "state": "enrolled", "ips": ["10.10.1.11"], "netns_cookie": 1,
             "mtls": "permissive", "port_mtls": {"9090": "strict"}, "traffic": null, "error": null},
            {"namespace": "shop", "name": "db", "state": "enrolled", "ips": ["10.10.1.12"], "netns_cookie": 2,
             "mtls": "strict", "traffic": null, "error": null,
             "mtls_warnings": ["pod shop/db: ambit.dev/mtls=\"Strict\" is neither \"strict\" nor \"permissive\" (lowercase); taken as strict"]}
        ]);
        let out = pods_table(&pods);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].contains("STATE     MTLS"), "{out}");
        assert!(lines[1].contains("permissive (9090 strict)"), "{out}");
        assert!(
            lines[2].contains(" strict ")
                && lines[2].ends_with("warning: pod shop/db: ambit.dev/mtls=\"Strict\" is neither \"strict\" nor \"permissive\" (lowercase); taken as strict"),
            "{out}"
        );
    }

    #[test]
    fn peer_authentications_table_shows_scope_mode_ports_and_status() {
        let policies = serde_json::json!([
            {"key": {"namespace": "shop", "name": "strict"}, "selector": {}, "mode": "STRICT",
             "port_level": {}, "rejected": null, "state": "accepted", "status": "accepted"},
            {"key": {"namespace": "shop", "name": "web"}, "selector": {"app": "web"}, "mode": "PERMISSIVE",
             "port_level": {"9090": "STRICT"}, "rejected": null, "state": "accepted", "status": "accepted"},
            {"key": {"namespace": "shop", "name": "typo"}, "selector": {}, "mode": "STRICT", "port_level": {},
             "state": "rejected", "status": "rejected: spec.mtls.mode: unknown mode"}
        ]);
        let out = peer_authentications_table(&policies);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE  NAME    SELECTOR"), "{out}");
        assert!(
            lines[1].contains("(namespace)") && lines[1].contains("STRICT"),
            "{out}"
        );
        assert!(
            lines[2].contains("app=web") && lines[2].contains("9090=STRICT"),
            "{out}"
        );
        assert!(
            lines[3].ends_with("rejected: spec.mtls.mode: unknown mode"),
            "{out}"
        );
    }

    #[test]
    fn counters_table_lists_every_counter() {
        let out = counters_table(&serde_json::json!({"bind_denied": 3, "connect_redirected": 1}));
        assert_eq!(
            out,
            "COUNTER             VALUE\nbind_denied         3\nconnect_redirected  1\n"
        );
    }

    #[test]
    fn connections_table_shows_workloads_identities_and_verdicts() {
        let connections = serde_json::json!([{
            "state": "open", "direction": "outbound", "src": "10.1.0.2:40000", "dst": "10.2.0.3:80",
            "src_workload": "shop/frontend", "dst_workload": "shop/cache",
            "src_identity": "spiffe://cluster.local/ns/shop/sa/frontend",
            "dst_identity": "spiffe://cluster.local/ns/shop/sa/cache",
            "security": "mutual_tls", "authorization": {"decision": "allow", "policy": "shop/cache-clients"},
            "bytes_sent": 5, "bytes_received": 7, "age_secs": 1.25
        }, {
            "direction": "inbound", "src": "10.9.0.1:5000", "dst": "10.2.0.3:80", "src_workload": null,
            "security": "plaintext", "authorization": null, "bytes_sent": 0, "bytes_received": 0
        }]);
        let out = connections_table(&connections);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("STATE   DIRECTION  SOURCE"), "{out}");
        for expected in [
            "shop/frontend (10.1.0.2:40000)",
            "ns/shop/sa/cache",
            "allow (shop/cache-clients)",
            "5/7",
            "1.2s",
        ] {
            assert!(lines[1].contains(expected), "{expected}: {out}");
        }
        assert!(lines[2].starts_with("closed"), "{out}");
        assert!(lines[2].contains("10.9.0.1:5000"), "{out}");
    }

    #[test]
    fn services_table_shows_ports_with_their_declared_protocol() {
        let out = services_table(&serde_json::json!([{
            "namespace": "shop", "name": "db", "cluster_ips": ["10.96.0.5"], "hostname": "db.shop.svc.cluster.local",
            "selector": {"app": "db"}, "endpoints": [],
            "ports": [{"port": 80, "targetPort": 8080}, {"port": 3306, "appProtocol": "tcp"}]
        }]));
        assert!(out.contains("80→8080,3306[tcp]"), "{out}");
    }

    #[test]
    fn durations_and_times_read_naturally() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(7 * 60 + 3), "7m3s");
        assert_eq!(duration(5 * 3600 + 12 * 60), "5h12m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(timestamp(&serde_json::json!(0)), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(&serde_json::Value::Null), "-");
    }
}
