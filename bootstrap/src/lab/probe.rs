//! Talking to lab services from `lab up` itself, which runs in the host's
//! network namespace: a socket is created by a short-lived thread that has
//! entered the lab namespace, so the connection lives there, and nothing is
//! ever sent from the host's own namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

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
        connect_in(namespace, addr, HTTP_TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    get_over(stream, addr, path)
}

/// A plain-HTTP GET from this process's own namespace (`tailroute status`
/// asking the local agent): the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    get_over(stream, addr, path)
}

const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

fn get_over(mut stream: TcpStream, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response from {addr}: {response:.80}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Ok when something accepts TCP connections on `addr` in `namespace`.
pub fn listening_in(namespace: &str, addr: SocketAddr) -> Result<(), String> {
    connect_in(namespace, addr, Duration::from_secs(1))
        .map(drop)
        .map_err(|e| format!("connect {addr}: {e}"))
}
