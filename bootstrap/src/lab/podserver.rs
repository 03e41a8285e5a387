//! The built-in server every lab pod runs: it answers each TCP connection
//! with the pod's name and the client address it saw.

/// Command-line arguments of `tailroute lab pod-server`.
#[derive(Debug, Clone, clap::Args)]
pub struct PodServerArgs {
    /// `namespace/name` of the pod, as answered.
    #[arg(long)]
    pub pod: String,
    /// The TCP port to listen on (IPv4 and IPv6).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
}

/// Serves until killed.
pub fn run(args: PodServerArgs) -> std::io::Result<()> {
    let _ = args;
    Err(std::io::Error::other("the pod server is being written"))
}
