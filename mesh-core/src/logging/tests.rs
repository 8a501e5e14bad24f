//! The JSON shape, `log` record forwarding and run-time filter changes.

use std::sync::Arc;

use super::*;

#[test]
fn filters_parse_or_name_the_problem() {
    assert!(parse("info").is_ok());
    assert!(parse("warn,node_agent::proxy=debug").is_ok());
    let error = parse("node_agent=loud").unwrap_err().to_string();
    assert!(error.contains("node_agent=loud"), "{error}");
    assert!(error.contains("examples"), "{error}");
}

/// Lines written to memory.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for Buffer {
    type Writer = Self;

    fn make_writer(&'w self) -> Self {
        self.clone()
    }
}

/// The JSON lines `emit` logs, at any level.
fn json_lines(component: &'static str, emit: impl FnOnce()) -> Vec<Value> {
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new("trace"))
        .with(output_layer(
            component,
            LogFormat::Json,
            buffer.clone(),
            false,
        ));
    tracing::subscriber::with_default(subscriber, emit);
    let text = String::from_utf8(lock(&buffer.0).clone()).expect("UTF-8");
    text.lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

#[test]
fn json_lines_have_the_agreed_fields() {
    let lines = json_lines("ambit-test", || {
        let span = tracing::info_span!("outbound", pod = "shop/frontend");
        let _entered = span.enter();
        tracing::warn!(bytes = 42_u64, peer = %"10.0.0.1:80", "connection closed");
    });
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    let keys: Vec<&str> = line
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "timestamp",
        "level",
        "component",
        "target",
        "message",
        "fields",
        "spans",
    ];
    expected.sort_unstable();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected, "{line}");
    assert!(
        line["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "{line}"
    );
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["component"], "ambit-test", "{line}");
    assert_eq!(line["target"], module_path!(), "{line}");
    assert_eq!(line["message"], "connection closed", "{line}");
    assert_eq!(line["fields"]["bytes"], 42, "{line}");
    assert_eq!(line["fields"]["peer"], "10.0.0.1:80", "{line}");
    assert_eq!(line["spans"][0]["name"], "outbound", "{line}");
    assert_eq!(line["spans"][0]["pod"], "shop/frontend", "{line}");
}

/// The one test that installs the global subscriber (nextest runs each
/// test in its own process; the others use a scoped one).
#[test]
fn log_records_and_filter_changes_reach_the_installed_log() {
    let buffer = Buffer::default();
    let control = LogControl::install_with_writer(
        "ambit-test",
        LogFormat::Json,
        "info",
        buffer.clone(),
        false,
    )
    .expect("the first subscriber installs");
    let lines = || -> Vec<Value> {
        let text = String::from_utf8(lock(&buffer.0).clone()).expect("UTF-8");
        text.lines()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect()
    };
    // What aya-log does with an eBPF program's record.
    log::warn!(target: "ambit_ebpf::connect", "could not record the original destination");
    log::debug!(target: "ambit_ebpf::connect", "below the filter");
    let forwarded = lines();
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    assert_eq!(forwarded[0]["level"], "WARN", "{}", forwarded[0]);
    assert_eq!(
        forwarded[0]["target"], "ambit_ebpf::connect",
        "{}",
        forwarded[0]
    );
    assert_eq!(
        forwarded[0]["message"], "could not record the original destination",
        "{}",
        forwarded[0]
    );
    assert_eq!(
        forwarded[0]["fields"],
        serde_json::json!({}),
        "{}",
        forwarded[0]
    );

    assert!(control.set("node_agent=loud").is_err());
    assert_eq!(control.current(), "info");
    control.set("debug").expect("a valid filter");
    assert_eq!(control.current(), "debug");
    log::debug!(target: "ambit_ebpf::connect", "now shown");
    let after = lines();
    assert!(
        after
            .iter()
            .any(|line| line["message"] == "log filter changed"),
        "{after:?}"
    );
    assert!(
        after.iter().any(|line| line["message"] == "now shown"),
        "{after:?}"
    );
}

#[test]
fn an_event_without_fields_or_spans_keeps_the_shape() {
    let lines = json_lines("ambit-test", || tracing::info!("ready"));
    assert_eq!(lines[0]["fields"], serde_json::json!({}), "{}", lines[0]);
    assert_eq!(lines[0]["spans"], serde_json::json!([]), "{}", lines[0]);
    assert_eq!(lines[0]["message"], "ready", "{}", lines[0]);
}
