//! Tables for people.

use std::fmt::Write as _;

use serde_json::Value;

/// Renders rows as aligned columns under a header.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

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
            vec![
                text(&pod["namespace"]),
                text(&pod["name"]),
                text(&pod["state"]),
                ips.join(","),
                text(&pod["netns_cookie"]),
                traffic("outbound"),
                traffic("inbound"),
                text(&pod["error"]),
            ]
        })
        .collect();
    table(
        &[
            "NAMESPACE",
            "NAME",
            "STATE",
            "IPS",
            "NETNS COOKIE",
            "OUTBOUND",
            "INBOUND",
            "ERROR",
        ],
        &rows,
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
    let rows: Vec<Vec<String>> = policies
        .as_array()
        .into_iter()
        .flatten()
        .map(|policy| {
            let selector = policy["selector"].as_object().map_or_else(
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
            );
            let rules = policy["rules"].as_array().map_or(0, Vec::len);
            vec![
                text(&policy["key"]["namespace"]),
                text(&policy["key"]["name"]),
                text(&policy["action"]),
                selector,
                rules.to_string(),
                text(&policy["state"]),
                text(&policy["status"]),
            ]
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
    fn counters_table_lists_every_counter() {
        let out = counters_table(&serde_json::json!({"bind_denied": 3, "connect_redirected": 1}));
        assert_eq!(
            out,
            "COUNTER             VALUE\nbind_denied         3\nconnect_redirected  1\n"
        );
    }
}
