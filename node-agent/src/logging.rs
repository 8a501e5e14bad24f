//! The agent's log output: text or JSON lines on stderr, filtered by a
//! `tracing` filter (`AMBIT_LOG`, default `info`) that the admin API can
//! change while the agent runs.

use std::sync::Mutex;

use tracing_subscriber::{EnvFilter, Registry, layer::SubscriberExt as _, reload};

use crate::config::LogFormat;

/// Why the log filter could not be changed.
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
    /// The logging layer is gone (only at shutdown).
    #[error("cannot change the log filter: {0}")]
    Reload(#[from] reload::Error),
    /// A global subscriber was installed already.
    #[error("cannot install the log subscriber: {0}")]
    Install(#[from] tracing::subscriber::SetGlobalDefaultError),
}

/// Changes the log filter at run time.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The filter's text as it was set: `EnvFilter`'s own rendering
    /// reorders directives.
    current: Mutex<String>,
}

// === impl LogControl ===

impl LogControl {
    /// Installs the global subscriber: `format` lines on stderr, filtered by
    /// `filter` (a `tracing` filter such as `info` or `warn,node_agent=debug`).
    pub fn install(format: LogFormat, filter: &str) -> Result<Self, LoggingError> {
        let parsed = parse(filter)?;
        let (filter_layer, handle) = reload::Layer::new(parsed);
        // Colour only for a person at a terminal; log collectors get plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let text = matches!(format, LogFormat::Text).then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
        });
        let json = matches!(format, LogFormat::Json).then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
        });
        let subscriber = tracing_subscriber::registry()
            .with(filter_layer)
            .with(text)
            .with(json);
        tracing::subscriber::set_global_default(subscriber)?;
        Ok(Self {
            handle,
            current: Mutex::new(filter.to_owned()),
        })
    }

    /// The filter in force.
    #[must_use]
    pub fn current(&self) -> String {
        crate::sync::lock(&self.current).clone()
    }

    /// Replaces the filter; an invalid one changes nothing.
    pub fn set(&self, filter: &str) -> Result<(), LoggingError> {
        let parsed = parse(filter)?;
        self.handle.reload(parsed)?;
        filter.clone_into(&mut crate::sync::lock(&self.current));
        tracing::info!(filter, "log filter changed");
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_or_name_the_problem() {
        assert!(parse("info").is_ok());
        assert!(parse("warn,node_agent::proxy=debug").is_ok());
        let error = parse("node_agent=loud").unwrap_err().to_string();
        assert!(error.contains("node_agent=loud"), "{error}");
        assert!(error.contains("examples"), "{error}");
    }
}
