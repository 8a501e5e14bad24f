//! `ambit`: inspect a node agent and operate the mesh from the command line.
//!
//! ```text
//! ambit pods [-o table|json|yaml]        pods the agent knows: state, cookie, traffic
//! ambit counters [-o table|json|yaml]    the eBPF programs' counters
//! ambit policies [-o table|json|yaml]    authorization policies and their state
//! ambit ca init --dir DIR [--trust-domain TD] [--validity-days N] [--force]
//!                                        make a CA: DIR/ca.pem and DIR/ca-key.pem
//! ```
//!
//! `pods`, `counters` and `policies` read the agent's admin API (`--admin`, default
//! `127.0.0.1:15000`, or `AMBIT_ADMIN_ADDR`), so run them in the agent's
//! network namespace. Exit codes: 0 success, 1 the command failed (the agent
//! could not be reached or answered an error, the CA files exist, ...),
//! 2 bad usage.

#![forbid(unsafe_code)]

use std::{error::Error, net::SocketAddr, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

mod admin;
mod ca;
mod render;

/// ambit: inspect and operate the mesh.
#[derive(Debug, Parser)]
#[command(
    name = "ambit",
    version,
    about = "Inspect and operate ambit, the sidecarless mesh"
)]
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
    /// Authorization policies in force: accepted, failing closed (fields
    /// that need a waypoint) or rejected (with the field at fault).
    Policies,
    /// The mesh's certificate authority (local mode).
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
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
    match run(&cli) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command and returns what to print.
fn run(cli: &Cli) -> Result<String, Box<dyn Error>> {
    match &cli.command {
        Command::Pods => show(cli, "/pods", render::pods_table),
        Command::Counters => show(cli, "/counters", render::counters_table),
        Command::Policies => show(cli, "/policies", render::policies_table),
        Command::Ca {
            command: ca::CaCommand::Init(args),
        } => Ok(ca::init(args)?.render(cli.output)),
    }
}

/// Reads one admin API listing and renders it.
fn show(cli: &Cli, path: &str, table: fn(&Value) -> String) -> Result<String, Box<dyn Error>> {
    let value: Value = admin::get_json(cli.admin, path)?;
    Ok(match cli.output {
        Output::Json => serde_json::to_string_pretty(&value).unwrap_or_default() + "\n",
        Output::Yaml => serde_yaml::to_string(&value).unwrap_or_default(),
        Output::Table => table(&value),
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn listing_commands_still_parse() {
        let cli = Cli::try_parse_from(["ambit", "pods", "-o", "json"]).unwrap();
        assert!(matches!(cli.command, Command::Pods));
        assert_eq!(cli.output, Output::Json);
        let cli = Cli::try_parse_from(["ambit", "--admin", "127.0.0.1:1", "counters"]).unwrap();
        assert!(matches!(cli.command, Command::Counters));
    }

    #[test]
    fn ca_init_parses_with_defaults() {
        let cli = Cli::try_parse_from(["ambit", "ca", "init", "--dir", "/tmp/x"]).unwrap();
        let Command::Ca {
            command: ca::CaCommand::Init(args),
        } = cli.command
        else {
            panic!("expected ca init");
        };
        assert_eq!(args.dir, std::path::Path::new("/tmp/x"));
        assert_eq!(args.trust_domain, "cluster.local");
        assert_eq!(args.validity_days, 3650);
        assert!(!args.force);
    }

    #[test]
    fn ca_init_needs_a_dir_and_a_sane_validity() {
        for argv in [
            &["ambit", "ca", "init"][..],
            &["ambit", "ca", "init", "--dir", "d", "--validity-days", "0"],
            &[
                "ambit",
                "ca",
                "init",
                "--dir",
                "d",
                "--validity-days",
                "36501",
            ],
        ] {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }
}
