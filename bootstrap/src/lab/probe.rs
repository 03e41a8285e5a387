//! Talking to lab services from `lab up` itself, which runs in the host's
//! network namespace: a socket is created by a short-lived thread that has
//! entered the lab namespace, so the connection lives there, and nothing is
//! ever sent from the host's own namespace.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::http;
use crate::lab::daemon::open_netns;

/// Connects to `addr` from inside network namespace `namespace`.
pub fn connect_in(
    namespace: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let netns = open_netns(namespace)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on this short-lived thread only; it ends
                // right after the connect, so no other code runs in the
                // lab namespace by accident.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                TcpStream::connect_timeout(&addr, timeout)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("connect thread panicked")))
    })
}

/// A plain-HTTP GET from inside `namespace`: the status code and body.
pub fn http_get_in(namespace: &str, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let stream =
        connect_in(namespace, addr, http::TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    http::get_over(stream, addr, path)
}

/// Ok when something accepts TCP connections on `addr` in `namespace`.
pub fn listening_in(namespace: &str, addr: SocketAddr) -> Result<(), String> {
    connect_in(namespace, addr, Duration::from_secs(1))
        .map(drop)
        .map_err(|e| format!("connect {addr}: {e}"))
}
