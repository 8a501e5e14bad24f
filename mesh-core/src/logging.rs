//! Logging set-up for every ambit binary: one filter variable (`AMBIT_LOG`,
//! `tracing` filter syntax, default `info`), one format switch (text for a
//! person, JSON lines for a collector), one JSON shape, and a handle that
//! changes the filter while the process runs.
//!
//! Every JSON line has the same fields, whichever binary wrote it, so one
//! query works across the mesh:
//!
//! ```json
//! {"timestamp":"2026-01-02T03:04:05.678901Z","level":"INFO","component":"ambit-node-agent",
//!  "target":"node_agent::agent","message":"ambit node agent ready",
//!  "fields":{"node":"n1"},"spans":[{"name":"outbound","pod":"shop/frontend"}]}
//! ```
//!
//! `fields` holds the event's structured fields (never `message`); `spans`
//! the spans the event happened in, outermost first, each with its name and
//! fields. Records of the `log` crate (aya-log forwards the eBPF programs'
//! messages through it) become events too, with their own target and level.

use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry, layer::SubscriberExt as _, reload};

/// The environment variable holding the log filter.
pub const LOG_ENV: &str = "AMBIT_LOG";
/// The environment variable holding the log format (`text` or `json`); each
/// binary reads it as the default of its `--log-format` flag.
pub const LOG_FORMAT_ENV: &str = "AMBIT_LOG_FORMAT";
/// The filter when [`LOG_ENV`] is not set.
pub const DEFAULT_FILTER: &str = "info";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line, in the shape this module documents.
    Json,
}

/// Why logging could not be set up or its filter changed.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter text does not parse.
    #[error(
        "invalid log filter {filter:?}: {source} (examples: `debug`, `info,node_agent::proxy=debug`)"
    )]
    InvalidFilter {
        /// What was given.
        filter: String,
        /// Why it was refused.
        source: tracing_subscriber::filter::ParseError,
    },
    /// The filter variable is set but is not text.
    #[error("{LOG_ENV} is not valid UTF-8; set it to a filter such as `info` or unset it")]
    FilterNotUnicode,
    /// The logging layer is gone (only at shutdown).
    #[error("cannot change the log filter: {0}")]
    Reload(#[from] reload::Error),
    /// A global subscriber was installed already.
    #[error("cannot install the log subscriber: {0}")]
    Install(#[from] tracing::subscriber::SetGlobalDefaultError),
    /// Another `log` crate logger was installed already.
    #[error("cannot forward `log` records (aya-log) into the log: {0}")]
    LogForwarding(#[from] log::SetLoggerError),
}

/// Changes the log filter at run time (the node agent's `PUT /logging`).
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The filter's text as it was set: `EnvFilter`'s own rendering
    /// reorders directives.
    current: Mutex<String>,
}

/// One JSON log line, fields in the order they are written.
#[derive(Serialize)]
struct JsonLine<'a> {
    timestamp: String,
    level: &'a str,
    component: &'a str,
    target: &'a str,
    message: String,
    fields: Map<String, Value>,
    spans: Vec<Map<String, Value>>,
}

/// Writes events as [`JsonLine`]s.
struct JsonLines {
    component: &'static str,
}

/// Collects an event's fields: the message apart, the rest as JSON values.
#[derive(Default)]
struct EventFields {
    message: String,
    fields: Map<String, Value>,
}

// === impl LogControl ===

impl LogControl {
    /// Installs the global subscriber for the binary `component` (e.g.
    /// `ambit-node-agent`, the `component` of every JSON line): `format`
    /// lines on stderr, filtered by [`LOG_ENV`] (default [`DEFAULT_FILTER`]).
    /// An invalid filter is an error, not a silent default.
    pub fn install_from_env(
        component: &'static str,
        format: LogFormat,
    ) -> Result<Self, LoggingError> {
        Self::install(component, format, &filter_from_env()?)
    }

    /// Like [`install_from_env`](Self::install_from_env) with the filter
    /// given (a `tracing` filter such as `info` or `warn,node_agent=debug`).
    pub fn install(
        component: &'static str,
        format: LogFormat,
        filter: &str,
    ) -> Result<Self, LoggingError> {
        // Colour only for a person at a terminal; log collectors get plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        Self::install_with_writer(component, format, filter, std::io::stderr, ansi)
    }

    /// [`install`](Self::install) writing to `writer` (tests use a buffer).
    fn install_with_writer<W>(
        component: &'static str,
        format: LogFormat,
        filter: &str,
        writer: W,
        ansi: bool,
    ) -> Result<Self, LoggingError>
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let parsed = parse(filter)?;
        let log_level = log_level(&parsed);
        let (filter_layer, handle) = reload::Layer::new(parsed);
        let subscriber = tracing_subscriber::registry()
            .with(filter_layer)
            .with(output_layer(component, format, writer, ansi));
        tracing::subscriber::set_global_default(subscriber)?;
        tracing_log::LogTracer::builder()
            .with_max_level(log_level)
            .init()?;
        Ok(Self {
            handle,
            current: Mutex::new(filter.to_owned()),
        })
    }

    /// The filter in force.
    #[must_use]
    pub fn current(&self) -> String {
        lock(&self.current).clone()
    }

    /// Replaces the filter; an invalid one changes nothing.
    pub fn set(&self, filter: &str) -> Result<(), LoggingError> {
        let parsed = parse(filter)?;
        let log_level = log_level(&parsed);
        self.handle.reload(parsed)?;
        // `log` records above this level are dropped before they reach the
        // filter, so it follows the filter.
        log::set_max_level(log_level);
        filter.clone_into(&mut lock(&self.current));
        tracing::info!(filter, "log filter changed");
        Ok(())
    }
}

/// The filter text from [`LOG_ENV`], or [`DEFAULT_FILTER`] when it is unset.
pub fn filter_from_env() -> Result<String, LoggingError> {
    match std::env::var(LOG_ENV) {
        Ok(filter) => Ok(filter),
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_FILTER.to_owned()),
        Err(std::env::VarError::NotUnicode(_)) => Err(LoggingError::FilterNotUnicode),
    }
}

/// The layer that writes `format` lines to `writer`.
fn output_layer<S, W>(
    component: &'static str,
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines { component })
            .boxed(),
    }
}

fn parse(filter: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::builder()
        .parse(filter.trim())
        .map_err(|source| LoggingError::InvalidFilter {
            filter: filter.to_owned(),
            source,
        })
}

/// The most verbose `log` level `filter` may let through.
fn log_level(filter: &EnvFilter) -> log::LevelFilter {
    use tracing::level_filters::LevelFilter;
    match filter.max_level_hint() {
        Some(LevelFilter::OFF) => log::LevelFilter::Off,
        Some(LevelFilter::ERROR) => log::LevelFilter::Error,
        Some(LevelFilter::WARN) => log::LevelFilter::Warn,
        Some(LevelFilter::INFO) => log::LevelFilter::Info,
        Some(LevelFilter::DEBUG) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The text is replaced whole; a panic elsewhere cannot leave it half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl JsonLines ===

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        // `log` records carry their real target and level in fields.
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let spans = ctx
            .event_scope()
            .into_iter()
            .flat_map(tracing_subscriber::registry::Scope::from_root)
            .map(|span| {
                let mut object = Map::new();
                object.insert("name".to_owned(), span.name().into());
                let extensions = span.extensions();
                // The span's fields as `JsonFields` recorded them.
                if let Some(recorded) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(recorded)) = serde_json::from_str(recorded.as_str())
                {
                    object.extend(recorded);
                }
                object
            })
            .collect();
        let line = JsonLine {
            timestamp,
            level: metadata.level().as_str(),
            component: self.component,
            target: metadata.target(),
            message: fields.message,
            fields: fields.fields,
            spans,
        };
        let text = serde_json::to_string(&line).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

// === impl EventFields ===

impl EventFields {
    fn insert(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.message = match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                };
            }
            // What `tracing-log` adds to a `log` record: its target and
            // level are already in the line.
            name if name.starts_with("log.") => {}
            name => {
                self.fields.insert(name.to_owned(), value);
            }
        }
    }
}

impl Visit for EventFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field, value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.insert(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests;
