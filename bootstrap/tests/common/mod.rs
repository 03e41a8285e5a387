//! Throwaway labs for the root test tiers, and probes that run inside their
//! namespaces.
//!
//! Every lab gets a tag of its own (a letter per test, then the test
//! process's pid), so tests run in parallel, and in parallel with other test
//! runs, without sharing a single name. A [`TestLab`] tears its lab down on
//! drop, also when the test panics. Nothing here sends a packet from the
//! host's own namespace: probes run inside lab namespaces only.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tailroute::lab::{down, up, LabTag, Ledger, TopologyMode, TopologyPlan};

/// Test labs keep their state in `<tmp>/<STATE_DIR_PREFIX><tag>`: not
/// under `/run/tailroute-lab`, so tests never meet a developer's real lab,
/// and without a shared parent directory that would outlive the tests.
const STATE_DIR_PREFIX: &str = "tailroute-lab-test-";

/// `letter` + this process's pid in 5 base-36 digits: unique among tests
/// of one binary (distinct letters) and among live processes (the pid).
pub fn unique_tag(letter: char) -> LabTag {
    assert!(letter.is_ascii_lowercase(), "tag letters are a-z");
    let mut pid = std::process::id();
    let mut digits = [b'0'; 5];
    for d in digits.iter_mut().rev() {
        *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[(pid % 36) as usize];
        pid /= 36;
    }
    let tag = format!("{letter}{}", String::from_utf8_lossy(&digits));
    LabTag::new(&tag).expect("generated tag is valid")
}

/// The pid encoded in a tag made by [`unique_tag`].
fn tag_pid(tag: &str) -> Option<u32> {
    let digits = tag.get(1..)?;
    u32::from_str_radix(digits, 36).ok()
}

/// `(tag, state dir)` of every `<tmp>/<prefix><tag>` whose creating test
/// process (encoded in the tag by [`unique_tag`]) is gone: labs of runs
/// that were killed outright, so no Drop cleaned up.
pub fn stale_state_dirs(prefix: &str) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let tag = name.strip_prefix(prefix)?.to_owned();
            let alive =
                tag_pid(&tag).is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            (!alive).then(|| (tag, entry.path()))
        })
        .collect()
}

/// Tears down test labs of earlier runs that were killed outright.
fn reap_stale_labs() {
    for (_, dir) in stale_state_dirs(STATE_DIR_PREFIX) {
        if let Ok(Some(ledger)) = Ledger::open(dir) {
            let _ = down(ledger);
        }
    }
}

/// A lab that exists for the duration of a test.
pub struct TestLab {
    /// What was built.
    pub plan: TopologyPlan,
    /// Its state directory.
    pub state_dir: PathBuf,
}

impl TestLab {
    /// A plan and state directory, nothing built yet. Fails the test when
    /// not root.
    pub fn planned(letter: char, nodes: usize, mode: TopologyMode, dual_stack: bool) -> TestLab {
        cni_testbed::require_root();
        reap_stale_labs();
        let tag = unique_tag(letter);
        let state_dir = std::env::temp_dir().join(format!("{STATE_DIR_PREFIX}{tag}"));
        let plan = TopologyPlan::new(tag, nodes, mode, dual_stack).expect("plan");
        TestLab { plan, state_dir }
    }

    /// A lab that is up.
    pub fn up(letter: char, nodes: usize, mode: TopologyMode, dual_stack: bool) -> TestLab {
        let lab = TestLab::planned(letter, nodes, mode, dual_stack);
        let mut ledger = Ledger::create(&lab.state_dir).expect("create ledger");
        up(&lab.plan, &mut ledger).unwrap_or_else(|e| panic!("lab up: {e}"));
        lab
    }

    /// `trl<tag>-`.
    pub fn prefix(&self) -> String {
        self.plan.tag.name_prefix()
    }

    /// Tears the lab down from its on-disk ledger alone, asserting success.
    pub fn down(&self) {
        if let Some(ledger) = Ledger::open(&self.state_dir).expect("open ledger") {
            down(ledger).unwrap_or_else(|e| panic!("lab down: {e}"));
        }
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        // Drop may run during a panic: report, never panic again.
        match Ledger::open(&self.state_dir) {
            Ok(Some(ledger)) => {
                if let Err(e) = down(ledger) {
                    eprintln!("cleanup of lab {}: {e}", self.plan.tag);
                }
            }
            Ok(None) => {}
            Err(e) => eprintln!("cleanup of lab {}: {e}", self.plan.tag),
        }
    }
}

/// Runs `f` on a fresh thread that has joined namespace `ns`; only that
/// thread switches, the test's own threads stay where they are. Sockets
/// made there stay in `ns` wherever they are used afterwards.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(Path::new("/run/netns").join(ns))
                    .unwrap_or_else(|e| panic!("open namespace {ns}: {e}"));
                // SAFETY: setns on a valid descriptor; it changes only this
                // thread's network namespace, and the thread ends with `f`.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread panicked")
    })
}

/// One `ping` from inside `ns`; true when answered.
fn ping_once(ns: &str, dst: IpAddr, wait_secs: &str) -> bool {
    let family = if dst.is_ipv6() { "-6" } else { "-4" };
    let mut cmd = cni_testbed::command_in(&Path::new("/run/netns").join(ns), "ping")
        .expect("namespace exists");
    cmd.args([
        family,
        "-n",
        "-q",
        "-c",
        "1",
        "-W",
        wait_secs,
        &dst.to_string(),
    ]);
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// Asserts that `ns` reaches `dst` (three tries: a lost first packet is not
/// what the tests are about).
pub fn assert_reaches(ns: &str, dst: IpAddr) {
    let ok = (0..3).any(|_| ping_once(ns, dst, "2"));
    assert!(ok, "{ns} cannot ping {dst}");
}

/// Asserts that no `(namespace, destination)` pair gets an answer. The
/// pings run in parallel: each one has to wait out its timeout.
pub fn assert_none_reach(pairs: &[(String, IpAddr)]) {
    let answered: Vec<String> = std::thread::scope(|scope| {
        let probes: Vec<_> = pairs
            .iter()
            .map(|(ns, dst)| {
                scope.spawn(move || ping_once(ns, *dst, "1").then(|| format!("{ns} -> {dst}")))
            })
            .collect();
        probes
            .into_iter()
            .filter_map(|p| p.join().expect("ping thread"))
            .collect()
    });
    assert!(
        answered.is_empty(),
        "must not be reachable, but answered: {answered:?}"
    );
}

/// Opens a TCP connection from `client_ns` to `server` (listening in
/// `server_ns`), echoes a message through it, and returns the source
/// address the server saw.
pub fn tcp_source_seen_by(server_ns: &str, server: IpAddr, client_ns: &str) -> IpAddr {
    let listener = in_netns(server_ns, || TcpListener::bind((server, 0)).expect("bind"));
    let target = listener.local_addr().expect("local addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::scope(|scope| {
        let client = scope.spawn(move || {
            let mut stream = in_netns(client_ns, || {
                TcpStream::connect_timeout(&target, Duration::from_secs(3))
            })
            .unwrap_or_else(|e| panic!("{client_ns} cannot connect to {target}: {e}"));
            stream
                .set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            stream.write_all(b"ping").expect("send");
            let mut echo = [0u8; 4];
            stream.read_exact(&mut echo).expect("echo");
            assert_eq!(&echo, b"ping");
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut conn, peer): (TcpStream, SocketAddr) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline && !client.is_finished(),
                        "no connection from {client_ns} to {target}"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        conn.set_nonblocking(false).expect("blocking");
        conn.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut msg = [0u8; 4];
        conn.read_exact(&mut msg).expect("read");
        conn.write_all(&msg).expect("echo back");
        client.join().expect("client thread");
        peer.ip()
    })
}

/// `ip -j -n <ns> <args>` as JSON (`ip` prints nothing for empty lists).
pub fn ip_json(ns: Option<&str>, args: &[&str]) -> Value {
    let mut cmd = Command::new("ip");
    cmd.arg("-j");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let out = cmd.args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        Value::Array(Vec::new())
    } else {
        serde_json::from_str(&text).expect("ip JSON")
    }
}

/// A sysctl's value inside `ns`: /proc/sys/net shows the network
/// namespace of the thread that opens it.
pub fn sysctl_in(ns: &str, key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(ns, || std::fs::read_to_string(&path).expect("read sysctl"))
        .trim()
        .to_owned()
}

/// Named namespaces whose name contains `needle` (`ip netns list`).
pub fn netns_containing(needle: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Interfaces in the host's own namespace whose name contains `needle`.
pub fn host_links_containing(needle: &str) -> Vec<String> {
    ip_json(None, &["link", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// The host namespace's nftables tables (`nft list tables`).
pub fn host_nft_tables() -> BTreeSet<String> {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft list tables");
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Asserts that nothing of the lab is left: no namespace and no host link
/// with its prefix, host nftables as before, no state directory.
pub fn assert_nothing_left(lab: &TestLab, host_tables_before: &BTreeSet<String>) {
    let prefix = lab.prefix();
    assert_eq!(
        netns_containing(&prefix),
        Vec::<String>::new(),
        "namespaces left"
    );
    assert_eq!(
        host_links_containing(&prefix),
        Vec::<String>::new(),
        "host links left"
    );
    assert_eq!(
        &host_nft_tables(),
        host_tables_before,
        "host nftables changed"
    );
    assert!(
        !lab.state_dir.exists(),
        "state dir {} left",
        lab.state_dir.display()
    );
}

/// The destinations of every route in `ns` (both families), e.g.
/// `"default"`, `"192.168.101.0/24"`.
pub fn route_destinations(ns: &str) -> Vec<String> {
    let mut dsts = Vec::new();
    for family in ["-4", "-6"] {
        for route in ip_json(Some(ns), &[family, "route", "show"])
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(dst) = route["dst"].as_str() {
                dsts.push(dst.to_owned());
            }
        }
    }
    dsts
}

/// `ip route get <dst>` in `ns`: the route the kernel would use, or `None`
/// when it has none (a lookup only; nothing is sent).
pub fn route_get(ns: &str, dst: IpAddr) -> Option<Value> {
    let out = Command::new("ip")
        .args(["-j", "-n", ns, "route", "get", &dst.to_string()])
        .output()
        .expect("ip route get");
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip JSON");
    Some(v[0].clone())
}
