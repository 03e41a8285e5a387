//! A minimal plain-HTTP/1.0 GET, for the agent's `/status` and `/metrics`
//! on loopback or a node's tailnet address: one request per connection, no
//! TLS, no redirects. (`tailroute status`, and the lab's probes through
//! [`crate::lab::probe`], which open the connection inside a namespace.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a connect and a read may take.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// GET `path` from `addr` in this process's own network namespace: the
/// status code and body.
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    get_over(stream, addr, path)
}

/// GET `path` over an already connected `stream` to `addr`.
pub fn get_over(
    mut stream: TcpStream,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, String), String> {
    stream
        .set_read_timeout(Some(TIMEOUT))
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
