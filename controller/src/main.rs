//! `ambit-controller`: the cluster's CA for node agents, and the status of
//! `AuthorizationPolicy` objects. See the library's docs.

use std::process::ExitCode;

use clap::Parser as _;
use controller::config::Config;

fn main() -> ExitCode {
    let config = Config::parse();
    let _logging = match controller::logging(&config) {
        Ok(logging) => logging,
        Err(error) => {
            eprintln!(
                "ambit-controller: {error} (set {})",
                mesh_core::logging::LOG_ENV
            );
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ambit-controller: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(controller::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "ambit-controller stopped");
            eprintln!("ambit-controller: {error}");
            ExitCode::FAILURE
        }
    }
}
