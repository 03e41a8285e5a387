//! The one door from the host into the lab: a TCP forwarder that listens on
//! the host's loopback and connects to the API server inside the
//! control-plane namespace, so `kubectl` on the host can use the lab.
//!
//! The listening socket is bound by `lab up` in the host's namespace and
//! handed over as fd 3; the forwarder then enters the control-plane
//! namespace, so every connection it opens is made there. It only ever
//! connects to the API server, and only host-loopback clients reach it.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::lab::daemon::open_netns;

/// The fd the listening socket is passed on.
const LISTENER_FD: RawFd = 3;

/// Arguments of `tailroute lab api-proxy` (started by `lab up`).
#[derive(Debug, Clone, clap::Args)]
pub struct ApiProxyArgs {
    /// The namespace the API server runs in.
    #[arg(long)]
    pub netns: String,
    /// The API server's address inside it.
    #[arg(long)]
    pub target: SocketAddr,
}

/// Binds `127.0.0.1:0` here and starts the forwarder with it; returns the
/// forwarder's pid and the port.
pub fn spawn(exe: &Path, netns: &str, target: SocketAddr, log: &Path) -> io::Result<(u32, u16)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let fd = listener.as_raw_fd();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut command = Command::new(exe);
    command
        .args([
            "lab",
            "api-proxy",
            "--netns",
            netns,
            "--target",
            &target.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: dup2 and setsid are async-signal-safe; `listener` outlives
    // the spawn.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec set: clear it instead.
            let handed_over = if fd == LISTENER_FD {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, LISTENER_FD)
            };
            if handed_over < 0 || libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    Ok((child.id(), port))
}

/// Runs the forwarder: accepts on fd 3, connects in `netns`.
pub fn run(args: ApiProxyArgs) -> io::Result<()> {
    // SAFETY: fd 3 is the listening socket `spawn` passed; nothing else in
    // this process owns it.
    let listener = unsafe { TcpListener::from_raw_fd(LISTENER_FD) };
    let netns = open_netns(&args.netns)?;
    // Before any thread exists: every thread spawned from here on starts in
    // the control-plane namespace; the listener stays in the host's.
    // SAFETY: setns on the only thread.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    drop(netns);
    watch_namespace(&args.netns);
    for client in listener.incoming() {
        let client = match client {
            Ok(client) => client,
            // Out of fds or memory: back off rather than spin.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
                ) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || e.kind() == io::ErrorKind::ConnectionAborted =>
            {
                continue
            }
            // Not a listening socket (bad hand-over): nothing will ever work.
            Err(e) => return Err(e),
        };
        let target = args.target;
        std::thread::spawn(move || {
            if let Err(e) = forward(client, target) {
                eprintln!("api-proxy: {e}");
            }
        });
    }
    Ok(())
}

/// Exits the process once namespace `name` is gone: then the lab is down,
/// even if the `down` that removed it never knew this process (an `up`
/// killed between starting it and recording it).
fn watch_namespace(name: &str) {
    let path = std::path::Path::new(crate::lab::resource::NETNS_DIR).join(name);
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_secs(2));
        if !path.exists() {
            std::process::exit(0);
        }
    });
}

fn forward(client: TcpStream, target: SocketAddr) -> io::Result<()> {
    let server = TcpStream::connect(target)?;
    let (mut client_r, mut server_w) = (client.try_clone()?, server.try_clone()?);
    let upstream = std::thread::spawn(move || {
        let _ = io::copy(&mut client_r, &mut server_w);
        let _ = server_w.shutdown(Shutdown::Write);
    });
    let (mut server_r, mut client_w) = (server, client);
    let _ = io::copy(&mut server_r, &mut client_w);
    let _ = client_w.shutdown(Shutdown::Write);
    let _ = upstream.join();
    Ok(())
}
