//! `ambit`: inspect a node agent and operate the mesh from the command line.
//!
//! ```text
//! ambit pods [-o table|json|yaml]        this node's pods: state, mTLS modes, cookie, traffic
//! ambit workloads [FILTERS]              every meshed pod the agent knows, on any node
//! ambit services [FILTERS]               configured services and the pods behind them
//! ambit connections [FILTERS] [--direction D] [--state S] [--follow [--count N] [--for SECS]]
//!                                        open and recent connections: identities, verdict, bytes
//! ambit certs [--namespace NS]           workload certificates and when they expire
//! ambit policies [--namespace NS]        authorization policies and their state
//! ambit peer-authentications [--namespace NS]
//!                                        peer authentications (mTLS modes) and their state
//! ambit counters                         the eBPF programs' counters
//! ambit log-level [FILTER]               show or change the agent's log filter
//! ambit check                            preflight and health report, ✓/✗ per check
//! ambit bpf prog list|show, map list|dump NAME, cgroup show, netns list
//!                                        eBPF state read from the pins (works with the agent down)
//! FILTERS: --namespace NS, --workload NAME|NS/NAME, --node NODE; -o table|json|yaml everywhere
//! ambit ca init --dir DIR [--trust-domain TD] [--validity-days N] [--force]
//!                                        make a CA: DIR/ca.pem and DIR/ca-key.pem
//! ambit waypoint apply -n NS [--name N] [--image I] [--wait SECS] [--dry-run]
//! ambit waypoint list [-n NS]
//! ambit waypoint delete -n NS [--name N]
//!                                        a namespace's waypoint in Kubernetes
//! ```
//!
//! The listings read the agent's admin API (`--admin`, default
//! `127.0.0.1:15000`, or `AMBIT_ADMIN_ADDR`), so run them in the agent's
//! network namespace. `waypoint` talks to the API server (`--kube-api-url`,
//! else the kubeconfig or the in-cluster configuration). Exit codes: 0 success, 1 the command failed (the agent
//! could not be reached or answered an error, a check failed, the CA files
//! exist, ...), 2 bad usage.
//!
//! Modules import only downward (`cargo xtask lint` checks it). Bottom
//! first, each line using only the lines above it:
//!
//! 1. `admin` (the agent's admin API), `listing`, `table` (the output
//!    switch: table, JSON or YAML).
//! 2. `bpf`, `ca`, `render`, `uninstall`.
//! 3. `check` (reads bpf), `waypoint` (renders with render).
//! 4. `main`, which parses the command line and calls them.

#![forbid(unsafe_code)]

use std::{error::Error, net::SocketAddr, ops::ControlFlow, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use serde_json::Value;

mod admin;
mod bpf;
mod ca;
mod check;
mod listing;
mod render;
mod table;
mod uninstall;
mod waypoint;

use crate::table::Output;

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
    /// This node's pods, with their state, effective mTLS modes (and
    /// warnings about them) and traffic counters.
    Pods,
    /// Every meshed pod the agent knows, on any node: identity, addresses, labels.
    Workloads {
        #[command(flatten)]
        scope: listing::Scope,
    },
    /// Configured services: host name, selector, ports, the pods behind them.
    Services {
        #[command(flatten)]
        scope: listing::Scope,
    },
    /// Open connections (bytes so far, age) and the recently closed ones:
    /// both ends, identities, mTLS or not, verdict and deciding policy.
    Connections {
        #[command(flatten)]
        filters: listing::ConnectionFilters,
        /// Keep printing connections as they close, like `hubble observe`.
        #[arg(long, short = 'f')]
        follow: bool,
        /// With --follow: stop after this many connections.
        #[arg(long, requires = "follow")]
        count: Option<u64>,
        /// With --follow: stop after this many seconds.
        #[arg(long = "for", value_name = "SECONDS", requires = "follow")]
        for_secs: Option<u64>,
    },
    /// Workload certificates: identity, serial, validity, state.
    Certs {
        #[command(flatten)]
        scope: listing::Scope,
    },
    /// The eBPF programs' counters, summed over CPUs.
    Counters,
    /// Authorization policies in force: accepted, failing closed (fields
    /// that need a waypoint) or rejected (with the field at fault).
    Policies {
        #[command(flatten)]
        scope: listing::Scope,
    },
    /// Peer authentications (mTLS modes) in force: accepted, or rejected
    /// (with the field at fault) and STRICT in their scope.
    #[command(name = "peer-authentications", alias = "peerauthentications")]
    PeerAuthentications {
        #[command(flatten)]
        scope: listing::Scope,
    },
    /// Show the agent's log filter, or set it (e.g. `debug`,
    /// `info,node_agent::proxy=debug`) while it runs.
    LogLevel {
        /// The new filter; without it, the current one is shown.
        filter: Option<String>,
    },
    /// Preflight and health: kernel, BTF, cgroup v2, bpffs, program types,
    /// agent readiness, certificates, CA bundle. Exits 1 if any fails.
    Check(check::CheckArgs),
    /// bpftool-style inspection of the eBPF state the agent pinned:
    /// programs, maps (decoded), cgroup and pod netns attachments. Reads
    /// bpffs directly, so it works while the agent is down.
    Bpf(bpf::BpfArgs),
    /// The mesh's certificate authority (local mode).
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
    /// A namespace's waypoint (L7 proxy) in Kubernetes: apply, list, delete.
    Waypoint(waypoint::WaypointArgs),
    /// Take every pod of this node out of the mesh and remove the eBPF
    /// state: through the running agent, or directly from bpffs when none
    /// runs. The agent stopping never does this.
    Uninstall(uninstall::UninstallArgs),
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
        Command::Pods => show(cli, "/pods", |_| true, render::pods_table),
        Command::Workloads { scope } => show(
            cli,
            "/workloads",
            |w| scope.matches_workload(w),
            render::workloads_table,
        ),
        Command::Services { scope } => show(
            cli,
            "/services",
            |s| scope.matches_service(s),
            render::services_table,
        ),
        Command::Connections {
            filters,
            follow: false,
            ..
        } => show(
            cli,
            "/connections",
            |c| filters.matches(c),
            render::connections_table,
        ),
        Command::Connections {
            filters,
            follow: true,
            count,
            for_secs,
        } => follow_connections(cli, filters, *count, for_secs.map(Duration::from_secs)),
        Command::Certs { scope } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            show(
                cli,
                "/certificates",
                |c| scope.matches_certificate(c),
                |c| render::certificates_table(c, now),
            )
        }
        Command::Counters => show(cli, "/counters", |_| true, render::counters_table),
        Command::Policies { scope } => show(
            cli,
            "/policies",
            |p| scope.matches_policy(p),
            render::policies_table,
        ),
        Command::PeerAuthentications { scope } => show(
            cli,
            "/peer-authentications",
            |p| scope.matches_policy(p),
            render::peer_authentications_table,
        ),
        Command::LogLevel { filter } => {
            let answer = match filter {
                Some(filter) => admin::put_text(cli.admin, "/logging", filter)?,
                None => admin::get_json(cli.admin, "/logging")?,
            };
            Ok(table::output(&answer, cli.output, |v| {
                format!("log filter: {}\n", v["filter"].as_str().unwrap_or("?"))
            }))
        }
        Command::Check(args) => {
            let report = check::run(args, cli.admin);
            let text = report.render(cli.output);
            if report.ok {
                Ok(text)
            } else {
                // The report is the output; the exit code says it failed.
                print!("{text}");
                Err("some checks failed (see the hints above)".into())
            }
        }
        Command::Bpf(args) => Ok(bpf::run(args, cli.output)?),
        Command::Ca {
            command: ca::CaCommand::Init(args),
        } => Ok(ca::init(args)?.render(cli.output)),
        Command::Waypoint(args) => Ok(waypoint::run(args, cli.output)?),
        Command::Uninstall(args) => Ok(uninstall::run(args, cli.admin)?.render(cli.output)),
    }
}

/// Reads one admin API listing, keeps what `keep` accepts, and renders it.
fn show(
    cli: &Cli,
    path: &str,
    keep: impl Fn(&Value) -> bool,
    table: impl Fn(&Value) -> String,
) -> Result<String, Box<dyn Error>> {
    let value = listing::filter(admin::get_json(cli.admin, path)?, keep);
    Ok(table::output(&value, cli.output, table))
}

/// `ambit connections --follow`: prints each matching connection as it
/// closes (a table row, a JSON line or a YAML document) until `count`
/// connections, `limit`, the agent stopping, or Ctrl-C.
fn follow_connections(
    cli: &Cli,
    filters: &listing::ConnectionFilters,
    count: Option<u64>,
    limit: Option<Duration>,
) -> Result<String, Box<dyn Error>> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout();
    if cli.output == Output::Table {
        let _ = write!(
            stdout,
            "{}",
            render::follow_line(
                &render::CONNECTION_HEADER.map(str::to_owned),
                &render::CONNECTION_HEADER
            )
        );
        let _ = stdout.flush();
    }
    let mut shown = 0u64;
    admin::follow_lines(cli.admin, "/connections?follow", limit, |line| {
        let Ok(item) = serde_json::from_str::<Value>(line) else {
            return ControlFlow::Continue(());
        };
        if let Some(missed) = item["missed"].as_u64() {
            eprintln!("warning: fell behind; {missed} connection(s) not shown");
            return ControlFlow::Continue(());
        }
        if !filters.matches(&item) {
            return ControlFlow::Continue(());
        }
        let text = match cli.output {
            Output::Table => {
                render::follow_line(&render::connection_row(&item), &render::CONNECTION_HEADER)
            }
            Output::Json => serde_json::to_string(&item).unwrap_or_default() + "\n",
            Output::Yaml => format!("---\n{}", serde_yaml::to_string(&item).unwrap_or_default()),
        };
        let _ = write!(stdout, "{text}");
        let _ = stdout.flush();
        shown += 1;
        if count.is_some_and(|count| shown >= count) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    Ok(String::new())
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
        let cli = Cli::try_parse_from([
            "ambit",
            "connections",
            "--namespace",
            "shop",
            "--direction",
            "inbound",
            "--follow",
            "--count",
            "3",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Connections {
                follow: true,
                count: Some(3),
                ..
            }
        ));
        assert!(Cli::try_parse_from(["ambit", "connections", "--count", "3"]).is_err());
        let cli =
            Cli::try_parse_from(["ambit", "peer-authentications", "-n", "shop", "-o", "yaml"])
                .unwrap();
        assert!(matches!(cli.command, Command::PeerAuthentications { .. }));
        assert_eq!(cli.output, Output::Yaml);
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
