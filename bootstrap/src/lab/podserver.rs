//! The built-in server every lab pod runs: it answers each TCP connection
//! with the pod's name and the client address it saw.
//!
//! That one line is what the lab's reachability checks are about: who
//! answered (the pod) and from which address the connection arrived (so a
//! test can tell whether a path was masqueraded). The server listens on
//! `[::]` with `IPV6_V6ONLY` off, so one socket takes both families; a
//! namespace without IPv6 falls back to `0.0.0.0`.
//!
//! An HTTP client (`curl`, a kubelet-style probe) gets an `HTTP/1.0 200 OK`
//! response with the line as its `text/plain` body; anything else (`nc`)
//! gets just the line. The server is deliberately plain: blocking std
//! sockets and a thread per connection, since a lab pod sees a handful of
//! connections, not a load.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

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

/// How long a client may take to send its first bytes before it is taken
/// for a non-HTTP client (`nc` that sends nothing) and answered anyway.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(1);

/// How long an HTTP client may take to finish its request headers.
const HEADERS_WAIT: Duration = Duration::from_secs(5);

/// Request headers beyond this are not read (the answer does not depend on
/// them).
const MAX_REQUEST: usize = 64 * 1024;

/// Serves until killed.
pub fn run(args: PodServerArgs) -> io::Result<()> {
    let listener = listen(args.port)?;
    eprintln!(
        "pod-server: pod={} listening on {}",
        args.pod,
        listener.local_addr()?
    );
    serve(listener, &args.pod)
}

/// Accepts connections forever, answering each on a thread of its own.
pub fn serve(listener: TcpListener, pod: &str) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            // A client that reset before we accepted it is its business.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        };
        let pod = pod.to_owned();
        std::thread::spawn(move || {
            if let Err(e) = answer(stream, &pod, peer) {
                eprintln!("pod-server: {}: {e}", client_address(peer));
            }
        });
    }
}

/// A listener on `[::]:port` taking IPv4 too (`IPV6_V6ONLY` off whatever
/// the namespace's `bindv6only` says), or on `0.0.0.0:port` where the
/// namespace has no IPv6.
pub fn listen(port: u16) -> io::Result<TcpListener> {
    match listen_dual_stack(port) {
        Ok(listener) => Ok(listener),
        Err(v6) => TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(|v4| {
            io::Error::new(
                v4.kind(),
                format!("cannot listen on port {port}: [::] ({v6}), 0.0.0.0 ({v4})"),
            )
        }),
    }
}

fn listen_dual_stack(port: u16) -> io::Result<TcpListener> {
    // std's TcpListener cannot set a socket option between socket() and
    // bind(), so the socket is made by hand and handed over once listening.
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    set_int_option(&socket, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let addr = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: port.to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
        sin6_scope_id: 0,
    };
    // SAFETY: addr is a valid sockaddr_in6 and its exact size is passed.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on a bound socket we own.
    if unsafe { libc::listen(socket.as_raw_fd(), 128) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(socket))
}

fn set_int_option(socket: &OwnedFd, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: value lives across the call and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads what the client sends (up to the end of its HTTP headers, if it
/// speaks HTTP), answers, and closes.
fn answer(mut stream: TcpStream, pod: &str, peer: SocketAddr) -> io::Result<()> {
    let request = read_request(&mut stream)?;
    let body = body_line(pod, peer);
    let response = match request {
        Request::Http { head_only } => http_response(&body, head_only),
        Request::Other => body.into_bytes(),
    };
    stream.write_all(&response)?;
    stream.flush()
}

/// What kind of client is on the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// An HTTP request whose headers have been read; `HEAD` gets no body.
    Http { head_only: bool },
    /// Anything else, including silence.
    Other,
}

/// Whether the bytes received so far start an HTTP request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Looks {
    Http,
    NotHttp,
    /// Too few bytes to tell (e.g. `GE`).
    Undecided,
}

/// An HTTP request starts with a method token (upper-case letters) and a
/// space; that is all it takes to be answered in HTTP.
fn looks_like_http(received: &[u8]) -> Looks {
    const LONGEST_METHOD: usize = 16;
    let token_len = received
        .iter()
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    match received.get(token_len) {
        Some(b' ') if token_len > 0 => Looks::Http,
        Some(_) => Looks::NotHttp,
        None if token_len < LONGEST_METHOD => Looks::Undecided,
        None => Looks::NotHttp,
    }
}

/// True once `received` holds the blank line ending HTTP headers.
fn headers_complete(received: &[u8]) -> bool {
    received.windows(4).any(|w| w == b"\r\n\r\n") || received.windows(2).any(|w| w == b"\n\n")
}

fn read_request(stream: &mut TcpStream) -> io::Result<Request> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let start = Instant::now();
    loop {
        let deadline = match looks_like_http(&received) {
            Looks::NotHttp => return Ok(Request::Other),
            Looks::Http if headers_complete(&received) || received.len() >= MAX_REQUEST => {
                return Ok(classify(&received))
            }
            Looks::Http => HEADERS_WAIT,
            Looks::Undecided => FIRST_BYTES_WAIT,
        };
        let Some(left) = deadline
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero())
        else {
            // A silent client, or one that stalls mid-request: answer
            // anyway rather than hold the connection.
            return Ok(classify(&received));
        };
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                // The client closed its sending side (`nc -N`, `echo | nc`):
                // it said all it will say.
                return Ok(classify(&received));
            }
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What to answer, given everything the client sent.
fn classify(received: &[u8]) -> Request {
    match looks_like_http(received) {
        Looks::Http => Request::Http {
            head_only: received.starts_with(b"HEAD "),
        },
        Looks::NotHttp | Looks::Undecided => Request::Other,
    }
}

/// `pod=<namespace/name> client=<address>\n`, the answer's one line.
pub fn body_line(pod: &str, client: SocketAddr) -> String {
    format!("pod={pod} client={}\n", client_address(client))
}

/// The client's address as seen, with an IPv4 client of the dual-stack
/// socket (`::ffff:10.0.0.1`) shown as the IPv4 address it is:
/// `10.0.0.1:5000`, `[fd00::1]:5000`.
pub fn client_address(client: SocketAddr) -> SocketAddr {
    match client.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), client.port()),
            None => client,
        },
        IpAddr::V4(_) => client,
    }
}

/// The HTTP/1.0 response carrying `body` (without it for `HEAD`).
fn http_response(body: &str, head_only: bool) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(body);
    }
    response.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, Shutdown};

    #[test]
    fn mapped_ipv4_clients_are_shown_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.244.1.1]:40000".parse().unwrap();
        assert_eq!(
            body_line("default/web", mapped),
            "pod=default/web client=10.244.1.1:40000\n"
        );
        let v6: SocketAddr = "[fd00:10:244:1::1]:40000".parse().unwrap();
        assert_eq!(
            body_line("default/web", v6),
            "pod=default/web client=[fd00:10:244:1::1]:40000\n"
        );
        let v4: SocketAddr = "192.168.1.2:5".parse().unwrap();
        assert_eq!(body_line("ns/p", v4), "pod=ns/p client=192.168.1.2:5\n");
    }

    #[test]
    fn http_is_recognised_from_the_method_token() {
        assert_eq!(looks_like_http(b""), Looks::Undecided);
        assert_eq!(looks_like_http(b"GE"), Looks::Undecided);
        assert_eq!(looks_like_http(b"GET / HTTP/1.1\r\n"), Looks::Http);
        assert_eq!(looks_like_http(b"HEAD /"), Looks::Http);
        assert_eq!(looks_like_http(b"hello\n"), Looks::NotHttp);
        assert_eq!(looks_like_http(b" GET"), Looks::NotHttp);
        assert_eq!(looks_like_http(b"\x16\x03\x01"), Looks::NotHttp);
        assert_eq!(looks_like_http(b"ABCDEFGHIJKLMNOPQ"), Looks::NotHttp);
        assert!(headers_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(headers_complete(b"GET / HTTP/1.0\n\n"));
        assert!(!headers_complete(b"GET / HTTP/1.1\r\nHost: x\r\n"));
    }

    #[test]
    fn the_http_response_carries_the_line_as_plain_text() {
        let text = String::from_utf8(http_response("pod=a/b client=1.2.3.4:5\n", false)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 25\r\n\
             Connection: close\r\n\r\npod=a/b client=1.2.3.4:5\n"
        );
        let head = String::from_utf8(http_response("x\n", true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"), "{head}");
    }

    /// A server on an ephemeral loopback port, for the tests below.
    fn loopback_server(pod: &'static str) -> SocketAddr {
        let listener = listen(0).expect("listen");
        let port = listener.local_addr().expect("local addr").port();
        std::thread::spawn(move || serve(listener, pod));
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    fn exchange(server: SocketAddr, send: &[u8], close_sending: bool) -> (String, SocketAddr) {
        let mut stream = TcpStream::connect(server).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream.write_all(send).expect("send");
        if close_sending {
            stream.shutdown(Shutdown::Write).expect("shutdown");
        }
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        (answer, stream.local_addr().expect("local addr"))
    }

    #[test]
    fn answers_http_and_plain_clients_over_loopback() {
        let server = loopback_server("default/loop");

        let (answer, me) = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
        assert_eq!(
            answer,
            format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\npod=default/loop client={me}\n",
                body_line("default/loop", me).len()
            )
        );

        // `echo hi | nc`: a line, then end of input.
        let (answer, me) = exchange(server, b"hi\n", true);
        assert_eq!(answer, format!("pod=default/loop client={me}\n"));

        // `nc` that sends nothing at all is answered after a short wait.
        let (answer, me) = exchange(server, b"", false);
        assert_eq!(answer, format!("pod=default/loop client={me}\n"));
    }

    #[test]
    fn one_socket_takes_both_families() {
        let listener = listen(0).expect("listen");
        let local = listener.local_addr().expect("local addr");
        if !local.is_ipv6() {
            // No IPv6 where the tests run: the fallback is what is tested.
            return;
        }
        let port = local.port();
        std::thread::spawn(move || serve(listener, "default/dual"));
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
        let (answer, me) = exchange(v6, b"x\n", true);
        assert_eq!(answer, format!("pod=default/dual client={me}\n"));
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let (answer, me) = exchange(v4, b"x\n", true);
        assert_eq!(answer, format!("pod=default/dual client={me}\n"));
    }
}
