//! The tables at the end: one row per flow (capture, bytes, security,
//! verdict, identities), the eBPF counters per node, the waypoint's checks,
//! and what `ambit` showed on each node.

use std::fmt::Write as _;

use serde::Serialize;

use crate::inspection::{FILE_NAME, Inspection, NodeCounters, SHOWN_COUNTERS};
use crate::l4_flows::FlowReport;
use crate::l7;
use crate::steps::human_bytes;

/// Everything the demo found out, as `--output json` prints it.
#[derive(Serialize)]
pub struct DemoReport {
    pub flows: Vec<FlowReport>,
    pub flows_as_expected: usize,
    pub flows_total: usize,
    /// Node name → eBPF counter name → value.
    pub counters: NodeCounters,
    /// What `ambit` shows on each node at the end.
    pub inspections: Vec<Inspection>,
    /// The waypoint's checks.
    pub l7: Vec<l7::L7Check>,
}

/// The flow table, the summary line, the counter table, the L7 table and
/// the `ambit` listings: `ambit connections` only, unless `every_command`.
pub fn render(report: &DemoReport, every_command: bool) -> String {
    let flow_rows: Vec<Vec<String>> = report
        .flows
        .iter()
        .map(|flow| {
            vec![
                format!(
                    "{}/{}@{}",
                    flow.source.namespace, flow.source.pod, flow.source.node
                ),
                format!(
                    "{}/{} {}",
                    flow.destination.namespace, flow.destination.pod, flow.destination.address
                ),
                yes_no(flow.captured.outbound).to_owned(),
                yes_no(flow.captured.inbound).to_owned(),
                human_bytes(flow.bytes_sent),
                human_bytes(flow.bytes_received),
                flow.server_saw.clone().unwrap_or_else(|| "-".to_owned()),
                flow.security.clone(),
                match (&flow.verdict, &flow.policy) {
                    (Some(verdict), Some(policy)) => format!("{verdict} ({policy})"),
                    _ => "-".to_owned(),
                },
                format!(
                    "{} → {}",
                    short_identity(flow.source_identity.as_deref()),
                    short_identity(flow.destination_identity.as_deref())
                ),
                flow.result(),
            ]
        })
        .collect();
    let mut out = String::from("\n");
    out.push_str(&render_table(
        &[
            "SOURCE",
            "DESTINATION",
            "OUT CAPTURE",
            "IN CAPTURE",
            "SENT",
            "RECEIVED",
            "SERVER SAW",
            "SECURITY",
            "VERDICT (POLICY)",
            "IDENTITIES",
            "RESULT",
        ],
        &flow_rows,
    ));
    let _ = writeln!(
        out,
        "\n{}/{} flows as expected\n",
        report.flows_as_expected, report.flows_total
    );

    let mut header = vec!["EBPF COUNTER"];
    header.extend(report.counters.keys().map(String::as_str));
    let counter_rows: Vec<Vec<String>> = SHOWN_COUNTERS
        .iter()
        .map(|&name| {
            let mut row = vec![name.to_owned()];
            row.extend(
                report
                    .counters
                    .values()
                    .map(|node| node.get(name).map_or("-".to_owned(), u64::to_string)),
            );
            row
        })
        .collect();
    out.push_str(&render_table(&header, &counter_rows));
    let l7_rows: Vec<Vec<String>> = report
        .l7
        .iter()
        .map(|check| {
            vec![
                check.request.clone(),
                check.expected.clone(),
                check.got.clone(),
                if check.ok { "ok" } else { "NOT AS EXPECTED" }.to_owned(),
            ]
        })
        .collect();
    out.push_str("\nL7 through the waypoint shop/wp (Service shop/backend):\n");
    out.push_str(&render_table(
        &["REQUEST", "EXPECTED", "GOT", "RESULT"],
        &l7_rows,
    ));
    for inspection in &report.inspections {
        if every_command || inspection.shown_by_default() {
            out.push_str(&inspection.render());
        }
    }
    if !every_command {
        let _ = writeln!(
            out,
            "\n`ambit bpf prog list` on each node: {FILE_NAME} in the log directory"
        );
    }
    out
}

/// A SPIFFE id without the scheme and trust domain (`ns/shop/sa/frontend`),
/// or `-` when the end has none (not in the mesh).
fn short_identity(identity: Option<&str>) -> String {
    identity.map_or_else(
        || "-".to_owned(),
        |id| {
            id.strip_prefix("spiffe://")
                .and_then(|rest| rest.split_once('/'))
                .map_or(id, |(_, path)| path)
                .to_owned()
        },
    )
}

/// Left-aligned columns two spaces apart, the header first.
fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|&cell| cell.to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}
