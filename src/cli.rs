//! Command-line interface: argument definitions and dispatch to the library.
//!
//! Owns: the clap definitions of every subcommand and the mapping from a parsed command to
//! the library function that does the work. Each subcommand's arguments live beside the code
//! that implements it (`XArgs` structs); this file only lists them.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// obdgw: a vehicle diagnostics gateway (CAN, ISO-TP, DoIP) with a resumable tunnel to a
/// remote operator.
#[derive(Debug, Parser)]
#[command(name = "obdgw", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the configuration comes from (shared by commands that read it).
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// Configuration file. When not given, /etc/obdgw/obdgw.toml is used if it exists;
    /// otherwise built-in defaults apply (with a warning).
    #[arg(long, short = 'c', value_name = "PATH", env = "OBDGW_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway daemon (what the systemd service starts).
    Run(RunArgs),
    /// Show the running daemon's state: cloud link, ticket, session, CAN interfaces.
    /// Exit codes: 0 healthy, 1 degraded, 3 no daemon, 4 permission denied.
    Status(crate::daemon::control::StatusArgs),
    /// Ask the running daemon to re-read its configuration and wait for the answer (what
    /// `systemctl reload obdgw` runs). Exit codes: 0 applied, 1 refused (every problem is
    /// printed; the running configuration stays), 3 no daemon, 4 permission denied.
    Reload(crate::daemon::control::ReloadArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the tunnel relay: pair gateways and operators by session and forward their
    /// traffic.
    Relay(crate::relay::RelayArgs),
    /// Simulators: a vehicle with ECUs over DoIP and CAN, and the vendor cloud API.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Read the vehicle's VIN and print it. Exit codes: 0 printed, 1 no answer, 2 usage,
    /// 3 refused (negative response, NACK), 4 malformed answer or VIN.
    Vin(crate::vehicle::vin::VinArgs),
    /// Log in to the Customer API and store the tokens in the state directory.
    Login(crate::cloud::cli::LoginArgs),
    /// Call any Customer API operation: `obdgw api <group> <operation> --help`.
    Api(crate::cloud::cli::ApiArgs),
    /// Present a remote car on this machine through the tunnel: a local DoIP entity and a
    /// socketcand server (docs/operator.md).
    Operator(crate::operator::tunnel::OperatorArgs),
    /// Measure components end to end on loopback (`bench tunnel`).
    Bench(crate::tunnel::bench::BenchArgs),
    /// The whole path on the built-in simulators, in one process: a simulated car on CAN,
    /// the gateway, the tunnel and the operator's DoIP entity and socketcand server.
    Demo(crate::demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Simulate a vehicle: ECUs answering UDS and OBD-II over DoIP (and CAN).
    Vehicle(crate::sim::vehicle::SimVehicleArgs),
    /// The vendor Customer API with its status websocket and an admin interface.
    Cloud(crate::sim::cloud::CloudSimArgs),
    /// Thousands of gateways and operators against a relay on loopback: capacity figures.
    Fleet(crate::sim::fleet::FleetArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective values (secrets redacted).
    /// Exits 0 when valid, 2 when not.
    Check(ConfigCheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConfigCheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Parse the process arguments and run the chosen command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    dispatch(cli)
}

fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => crate::daemon::run_cli(args),
        Command::Status(args) => crate::daemon::control::run_status(args),
        Command::Reload(args) => crate::daemon::control::run_reload(args),
        Command::Config(ConfigCommand::Check(args)) => {
            crate::config::check_cli(args.config.config.as_deref())
        }
        Command::Relay(args) => crate::relay::run_relay(args),
        Command::Sim(SimCommand::Vehicle(args)) => crate::sim::vehicle::run_sim_vehicle(args),
        Command::Vin(args) => crate::vehicle::vin::run_vin(args),
        Command::Login(args) => crate::cloud::cli::run_login(args),
        Command::Api(args) => crate::cloud::cli::run_api(args),
        Command::Sim(SimCommand::Cloud(args)) => crate::sim::cloud::run_cli(args),
        Command::Sim(SimCommand::Fleet(args)) => crate::sim::fleet::run_sim_fleet(args),
        Command::Operator(args) => crate::operator::tunnel::run_operator(args),
        Command::Bench(args) => crate::tunnel::bench::run_bench(args),
        Command::Demo(args) => crate::demo::run_demo(args),
    }
}
