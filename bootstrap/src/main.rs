//! `tailroute`: the command-line tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tailroute::lab::kubelet::KubeletArgs;
use tailroute::lab::podserver::PodServerArgs;

/// Kubernetes pod networking over a tailnet.
#[derive(Debug, Parser)]
#[command(name = "tailroute", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The one-machine lab: a whole cluster's networking in network namespaces.
    #[command(subcommand)]
    Lab(LabCommand),
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// (internal) The lab kubelet of one node; `lab up` starts it.
    #[command(hide = true)]
    Kubelet(KubeletArgs),
    /// (internal) The built-in server of one lab pod; the lab kubelet starts it.
    #[command(hide = true)]
    PodServer(PodServerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Lab(LabCommand::Kubelet(args)) => tailroute::lab::kubelet::run(args),
        Command::Lab(LabCommand::PodServer(args)) => {
            tailroute::lab::podserver::run(args).map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailroute: {e}");
            ExitCode::FAILURE
        }
    }
}
