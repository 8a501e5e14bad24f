//! `ambit-node-agent`: see the library's docs.

use std::process::ExitCode;

use clap::Parser as _;
use mesh_core::logging::{self, LOG_ENV, LogControl};
use node_agent::config::{Config, LogFormat};

fn main() -> ExitCode {
    let config = Config::parse();
    let format = match config.log_format {
        LogFormat::Text => logging::LogFormat::Text,
        LogFormat::Json => logging::LogFormat::Json,
    };
    let logging = match LogControl::install_from_env("ambit-node-agent", format) {
        Ok(logging) => logging,
        Err(error) => {
            eprintln!("ambit-node-agent: {error} (set {LOG_ENV})");
            return ExitCode::FAILURE;
        }
    };
    match node_agent::agent::run(&config, logging) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            tracing::error!(error = %message, "ambit node agent failed");
            ExitCode::FAILURE
        }
    }
}
