//! `tailroute-agent`: the node agent's binary.
//!
//! Not yet complete: it parses its command line and says so, rather than
//! pretend to run. Its LocalAPI client is in the library.

use std::process::ExitCode;

use clap::Parser;

/// tailroute's node agent: keeps this node's pod route advertised, approved
/// and working on the tailnet.
#[derive(Debug, Parser)]
#[command(name = "tailroute-agent", version, about)]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!(
        "tailroute-agent {}: not yet complete; only its LocalAPI client exists, \
         so there is nothing to run yet",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::FAILURE
}
