//! Lab daemons: started inside a namespace, found again by namespace, and
//! stopped; the API proxy forwards into a namespace and exits with it.
//! Needs root; fails without it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use cni_testbed::Netns;
use tailroute::lab::daemon::{process_alive, processes_in, stop_processes_in, DaemonSpec, Entry};

mod common;

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops whatever still runs in the namespaces on drop (a failed test).
struct StopOnDrop(Vec<String>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        stop_processes_in(&self.0, Path::new("/nonexistent"), Duration::from_secs(1));
    }
}

#[test]
fn a_daemon_runs_in_its_namespace_and_is_found_and_stopped_there() {
    cni_testbed::require_root();
    let ns = Netns::create("dmn").expect("namespace");
    let _stop = StopOnDrop(vec![ns.name().to_owned()]);
    let log = std::env::temp_dir().join(format!("tailroute-daemon-{}.log", std::process::id()));
    let mut pids = Vec::new();
    for entry in [Entry::Setns, Entry::IpNetnsExec] {
        let pid = DaemonSpec {
            namespace: Some(ns.name()),
            entry,
            program: Path::new("/bin/sleep"),
            args: vec!["300".into()],
            env: vec![],
            log: log.clone(),
        }
        .spawn()
        .expect("spawn");
        pids.push(pid);
    }
    let names = vec![ns.name().to_owned()];
    wait_until("both sleeps in the namespace", || {
        let found: Vec<u32> = processes_in(&names).into_iter().map(|(p, _)| p).collect();
        pids.iter().all(|p| found.contains(p))
    });
    // A process of the host's namespace is not "in" the lab namespace.
    let me = std::process::id();
    assert!(!processes_in(&names).iter().any(|(p, _)| *p == me));
    assert_eq!(
        stop_processes_in(&names, Path::new("/nonexistent"), Duration::from_secs(2)),
        2
    );
    wait_until("both sleeps gone", || {
        pids.iter().all(|p| !process_alive(*p))
    });
    let _ = std::fs::remove_file(log);
}

#[test]
fn the_api_proxy_forwards_host_loopback_into_the_namespace_and_exits_with_it() {
    cni_testbed::require_root();
    let ns = Netns::create("apx").expect("namespace");
    // An echo server on the namespace's loopback, unreachable from the host.
    let listener = common::in_netns(ns.name(), || {
        std::process::Command::new("ip")
            .args(["netns", "exec", ns.name(), "ip", "link", "set", "lo", "up"])
            .status()
            .expect("lo up");
        TcpListener::bind("127.0.0.1:0").expect("bind in namespace")
    });
    let target: SocketAddr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).expect("read");
        conn.write_all(&buf).expect("echo");
    });
    let log = std::env::temp_dir().join(format!("tailroute-apx-{}.log", std::process::id()));
    let (pid, port) = tailroute::lab::api_proxy::spawn(
        Path::new(env!("CARGO_BIN_EXE_tailroute")),
        ns.name(),
        target,
        &log,
    )
    .expect("spawn proxy");
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    conn.write_all(b"hello").expect("send");
    let mut back = [0u8; 5];
    conn.read_exact(&mut back).expect("echo back");
    assert_eq!(&back, b"hello");
    server.join().expect("server");
    drop(ns);
    wait_until("the proxy to exit with its namespace", || {
        !process_alive(pid)
    });
    let _ = std::fs::remove_file(log);
}
