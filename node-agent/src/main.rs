//! `ambit-node-agent`: see the library's docs.

use std::process::ExitCode;

use clap::Parser as _;
use node_agent::{
    config::{Config, env},
    logging::LogControl,
};

fn main() -> ExitCode {
    let config = Config::parse();
    let filter = std::env::var(env::LOG).unwrap_or_else(|_| "info".to_owned());
    let logging = match LogControl::install(config.log_format, &filter) {
        Ok(logging) => logging,
        Err(error) => {
            eprintln!("ambit-node-agent: {error} (set {})", env::LOG);
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
