//! The control-plane client against a real Headscale (the lab's pinned
//! v0.29.2): its API key is verified, a wrong key is rejected, and route
//! approval merges into approvals made by hand, withdraws only what it is
//! told, and deletes the node.
//!
//! Headscale runs as this user on loopback ports, with its database and
//! sockets in a temporary directory. The node is made with `headscale
//! debug create-node` + `nodes register` rather than a real tailscaled: a
//! tailscaled on the host's network would probe the default gateway (port
//! mapping), which is not loopback, and Headscale approves routes whether or
//! not the node advertises them, so approval is tested all the same.
//!
//! Needs the peer build (`scripts/build-peers.sh`); without it the test
//! fails, it never skips.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tailroute_agent::control::{ControlPlane, Credential, DeviceQuery, ErrorKind, Secret};

/// The Headscale version the lab pins (`scripts/peers.env`).
const HEADSCALE_VERSION: &str = "v0.29.2";

/// How long Headscale may take to answer its CLI.
const STARTUP: Duration = Duration::from_secs(30);

/// A Headscale on loopback. Dropping it kills Headscale (by pid) and
/// removes its directory, also when the test panics.
struct RealHeadscale {
    child: Child,
    program: PathBuf,
    dir: PathBuf,
    url: String,
}

impl RealHeadscale {
    fn start() -> RealHeadscale {
        let program = headscale_program();
        let dir = temp_dir();
        let [port, metrics, grpc, stun] = free_ports();
        let url = format!("http://127.0.0.1:{port}");
        let d = dir.display();
        let config = format!(
            "server_url: {url}\n\
             listen_addr: 127.0.0.1:{port}\n\
             metrics_listen_addr: 127.0.0.1:{metrics}\n\
             grpc_listen_addr: 127.0.0.1:{grpc}\n\
             noise:\n  private_key_path: {d}/noise_private.key\n\
             prefixes:\n  v4: 100.64.0.0/10\n  v6: fd7a:115c:a1e0::/48\n  allocation: sequential\n\
             derp:\n  server:\n    enabled: true\n    region_id: 999\n    region_code: test\n\
             \x20   region_name: test\n    stun_listen_addr: 127.0.0.1:{stun}\n\
             \x20   private_key_path: {d}/derp_server_private.key\n\
             \x20   automatically_add_embedded_derp_region: true\n    ipv4: 127.0.0.1\n\
             \x20 urls: []\n  auto_update_enabled: false\n\
             disable_check_updates: true\n\
             database:\n  type: sqlite\n  sqlite:\n    path: {d}/db.sqlite\n\
             policy:\n  mode: file\n  path: {d}/policy.hujson\n\
             dns:\n  magic_dns: false\n  override_local_dns: false\n\
             unix_socket: {d}/headscale.sock\n\
             unix_socket_permission: \"0700\"\n\
             log:\n  level: info\n"
        );
        std::fs::write(dir.join("config.yaml"), config).expect("write config.yaml");
        std::fs::write(
            dir.join("policy.hujson"),
            "{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}]}\n",
        )
        .expect("write the policy");
        let log = File::create(dir.join("headscale.log")).expect("log file");
        let child = Command::new(&program)
            .arg("-c")
            .arg(dir.join("config.yaml"))
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn headscale");
        let mut headscale = RealHeadscale {
            child,
            program,
            dir,
            url,
        };
        headscale.wait_until_answering();
        headscale
    }

    /// Creates the user, retrying until the server answers its CLI.
    fn wait_until_answering(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("headscale exited ({status}):\n{}", self.log());
            }
            match self.try_cli(&["users", "create", "lab"]) {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "headscale did not answer in {STARTUP:?}: {e}\n{}",
                        self.log()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new(&self.program)
            .arg("-c")
            .arg(self.dir.join("config.yaml"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run headscale {args:?}: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "headscale {args:?}: {}\n{stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("headscale.log")).unwrap_or_default()
    }

    /// A fresh API key, as `headscale apikeys create` prints it.
    fn api_key(&self) -> Secret {
        let out = self.cli(&["apikeys", "create", "--expiration", "1h"]);
        let key = out
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(!key.trim().is_empty(), "apikeys create printed nothing");
        Secret::new(key.trim())
    }

    /// Registers a node named `name` announcing `routes`; returns its node key.
    fn node(&self, name: &str, auth_id: &str, routes: &[&str]) {
        let mut args = vec![
            "debug",
            "create-node",
            "--name",
            name,
            "--user",
            "lab",
            "--key",
            auth_id,
        ];
        for route in routes {
            args.extend(["--route", route]);
        }
        self.cli(&args);
        self.cli(&["nodes", "register", "--user", "lab", "--key", auth_id]);
    }
}

impl Drop for RealHeadscale {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn headscale_program() -> PathBuf {
    let root = match std::env::var_os("TAILROUTE_CACHE").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            Some(dir) => Path::new(&dir).join("tailroute"),
            None => Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/tailroute"),
        },
    };
    let program = root.join(format!("peers/headscale-{HEADSCALE_VERSION}/headscale"));
    assert!(
        program.is_file(),
        "{} is missing: build the lab's peers with scripts/build-peers.sh",
        program.display()
    );
    program
}

fn temp_dir() -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tailroute-control-headscale-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir(&path).expect("create a temporary directory");
    path
}

/// Four distinct free loopback ports (held together, so they differ).
fn free_ports() -> [u16; 4] {
    let listeners: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    let port = |i: usize| listeners[i].local_addr().expect("an address").port();
    [port(0), port(1), port(2), port(3)]
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = list.iter().map(|s| s.parse().expect("a prefix")).collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<IpNet>) -> Vec<IpNet> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_against_real_headscale_keeps_approvals_made_by_hand() {
    let headscale = RealHeadscale::start();
    let key = headscale.api_key();
    let control = ControlPlane::with_timeout(
        Credential::headscale(&headscale.url, key),
        Duration::from_secs(10),
    )
    .expect("a client");
    control.verify().await.expect("the API key is accepted");

    let wrong = ControlPlane::new(Credential::headscale(
        &headscale.url,
        Secret::new("hskey-api-notakey-000000000000000000000000000"),
    ))
    .expect("a client");
    let rejected = wrong.verify().await.expect_err("a wrong key");
    assert_eq!(rejected.kind(), ErrorKind::CredentialRejected, "{rejected}");
    assert!(rejected.to_string().contains("headscale apikeys create"));

    headscale.node(
        "k8s-worker-1",
        "hskey-authreq-AAAAAAAAAAAAAAAAAAAAAAAA",
        &["10.244.7.0/24", "10.99.0.0/24"],
    );
    let listed = control.list_devices().await.expect("listed");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let node_key = listed[0].node_key.clone();
    assert!(node_key.starts_with("nodekey:"), "{node_key}");
    let device = control
        .find_device(&DeviceQuery::by_node_key(&node_key))
        .await
        .expect("listed")
        .expect("found by node key");
    assert!(!device.addresses.is_empty(), "{device:?}");
    let by_ip = control
        .find_device(&DeviceQuery::default().or_address(device.addresses.clone()))
        .await
        .expect("listed")
        .expect("found by address");
    assert_eq!(by_ip.id, device.id);

    // An operator approved 10.99.0.0/24 by hand.
    headscale.cli(&[
        "nodes",
        "approve-routes",
        "-i",
        &device.id,
        "-r",
        "10.99.0.0/24",
    ]);
    let ours = nets(&["10.244.7.0/24"]);
    let update = control
        .approve_routes(&device, &ours)
        .await
        .expect("approved");
    assert!(update.changed);
    assert_eq!(
        sorted(update.approved),
        nets(&["10.244.7.0/24", "10.99.0.0/24"])
    );
    let again = control
        .approve_routes(&device, &ours)
        .await
        .expect("approved");
    assert!(!again.changed, "already approved: nothing written");

    let withdrawn = control
        .withdraw_approval(&device, &ours)
        .await
        .expect("withdrawn");
    assert!(withdrawn.changed);
    assert_eq!(sorted(withdrawn.approved), nets(&["10.99.0.0/24"]));
    let seen = control
        .find_device(&DeviceQuery::by_node_key(&node_key))
        .await
        .expect("listed")
        .expect("still there");
    assert_eq!(
        seen.approved_routes,
        nets(&["10.99.0.0/24"]),
        "the hand-made approval stays"
    );

    control.delete_device(&device).await.expect("deleted");
    control
        .delete_device(&device)
        .await
        .expect("already gone is fine");
    assert!(control.list_devices().await.expect("listed").is_empty());
    let gone = control
        .approve_routes(&device, &ours)
        .await
        .expect_err("gone");
    assert_eq!(gone.kind(), ErrorKind::NotFound, "{gone}");
}
