//! `ambit`: inspect a node agent from the command line.
//!
//! ```text
//! ambit pods [-o table|json|yaml]        pods the agent knows: state, cookie, traffic
//! ambit counters [-o table|json|yaml]    the eBPF programs' counters
//! ```
//!
//! Both read the agent's admin API (`--admin`, default `127.0.0.1:15000`, or
//! `AMBIT_ADMIN_ADDR`), so run them in the agent's network namespace.
//! Exit codes: 0 success, 1 the agent could not be reached or answered an
//! error, 2 bad usage.

#![forbid(unsafe_code)]

use std::{net::SocketAddr, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

mod admin;
mod render;

/// ambit: inspect the mesh.
#[derive(Debug, Parser)]
#[command(name = "ambit", version, about = "Inspect ambit, the sidecarless mesh")]
struct Cli {
    /// The node agent's admin API address.
    #[arg(
        long,
        global = true,
        env = "AMBIT_ADMIN_ADDR",
        default_value = "127.0.0.1:15000"
    )]
    admin: SocketAddr,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pods the agent knows, with their state and traffic counters.
    Pods,
    /// The eBPF programs' counters, summed over CPUs.
    Counters,
}

/// Output format of listing commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON, as the admin API serves it.
    Json,
    /// YAML.
    Yaml,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = match cli.command {
        Command::Pods => "/pods",
        Command::Counters => "/counters",
    };
    let value: Value = match admin::get_json(cli.admin, path) {
        Ok(value) => value,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let text = match (cli.output, cli.command) {
        (Output::Json, _) => serde_json::to_string_pretty(&value).unwrap_or_default() + "\n",
        (Output::Yaml, _) => serde_yaml::to_string(&value).unwrap_or_default(),
        (Output::Table, Command::Pods) => render::pods_table(&value),
        (Output::Table, Command::Counters) => render::counters_table(&value),
    };
    print!("{text}");
    ExitCode::SUCCESS
}
