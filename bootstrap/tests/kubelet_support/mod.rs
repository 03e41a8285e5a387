//! A throwaway Kubernetes control plane for the lab kubelet's root tests,
//! and the kubelet under test, each inside a network namespace of its own.
//!
//! One namespace per test (`trk<letter><pid in base 36>`) holds etcd,
//! kube-apiserver (Node + RBAC authorization, `NodeRestriction`),
//! kube-controller-manager (service accounts, node lifecycle) and the
//! kubelet: it plays the lab node, with the node's tailnet addresses on its
//! loopback. Everything is spawned with a `setns` in the child, and the
//! test's own API client runs on a thread that joined the namespace, so
//! nothing talks from the host's namespace to anything but itself.
//!
//! [`ControlPlane`] and [`Kubelet`] clean up on drop, also when the test
//! panics: they stop their processes by pid, kill whatever still runs in
//! the test's namespaces (the pod servers), delete the namespaces and the
//! temp dir. Leftovers of a test run that was killed outright are reaped by
//! the next run (their pid is gone).

#![allow(dead_code)] // each test binary uses its own subset

use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use tailroute::lab::peers::{cache_root, Peers};
use tailroute::lab::process::ProcessId;

/// Where the namespaces live.
const NETNS_DIR: &str = "/run/netns";

/// Test namespaces and temp dirs start with this.
const TAG_PREFIX: &str = "trk";

/// The lab node's name.
pub const NODE_NAME: &str = "lab-n1";

/// The node's tailnet addresses (on the namespace's loopback).
pub const NODE_IPS: [&str; 2] = ["100.64.0.1", "fd7a:115c:a1e0::1"];

/// The pod subnet of the conflist the tests write.
pub const POD_SUBNET: &str = "10.244.1.0/24";

/// The pod subnet's gateway: the bridge's address in the node namespace,
/// from which the node's connections to pods come.
pub const POD_GATEWAY: &str = "10.244.1.1";

/// The admin's bearer token (group `system:masters`).
const ADMIN_TOKEN: &str = "admin-token-for-tests";

/// The node's bearer token (`system:node:<name>`, group `system:nodes`).
const NODE_TOKEN: &str = "node-token-for-tests";

/// `trk` + `letter` + this process's pid in 5 base-36 digits.
fn tag(letter: char) -> String {
    assert!(letter.is_ascii_lowercase(), "tag letters are a-z");
    let mut pid = std::process::id();
    let mut digits = [b'0'; 5];
    for d in digits.iter_mut().rev() {
        *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[(pid % 36) as usize];
        pid /= 36;
    }
    format!("{TAG_PREFIX}{letter}{}", String::from_utf8_lossy(&digits))
}

/// The pid encoded in a name made from [`tag`] (namespace or dir name).
fn tag_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TAG_PREFIX)?;
    let mut chars = rest.chars();
    if !chars.next()?.is_ascii_lowercase() {
        return None;
    }
    let digits = rest.get(1..6)?;
    u32::from_str_radix(digits, 36).ok()
}

fn temp_dir_of(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tailroute-kubelet-test-{tag}"))
}

/// The peers' binaries, built by `scripts/build-peers.sh`, found as `lab up`
/// finds them.
fn find_peers() -> Peers {
    Peers::locate(&cache_root()).unwrap_or_else(|missing| panic!("{missing}"))
}

/// The CNI plugin under test, built beside the `tailroute` binary.
fn bridge_plugin() -> PathBuf {
    if let Some(path) = std::env::var_os("TAILROUTE_BRIDGE") {
        return PathBuf::from(path);
    }
    let plugin = Path::new(env!("CARGO_BIN_EXE_tailroute")).with_file_name("tailroute-bridge");
    assert!(
        plugin.is_file(),
        "{} is missing: build it first (`cargo build --release -p tailroute-bridge`, \
         or test the whole workspace), or point TAILROUTE_BRIDGE at it",
        plugin.display()
    );
    plugin
}

/// A process the test started, stopped on drop.
#[derive(Debug)]
struct Spawned {
    what: &'static str,
    child: Child,
    log: PathBuf,
}

impl Spawned {
    /// Starts `cmd` inside namespace `netns`, output to `log`.
    fn start(what: &'static str, netns: &str, mut cmd: Command, log: PathBuf) -> Spawned {
        let out = std::fs::File::create(&log).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        cni_testbed::enter_netns_on_spawn(&mut cmd, &Path::new(NETNS_DIR).join(netns))
            .expect("namespace exists");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        Spawned { what, child, log }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; reaped either way.
    fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let pid = self.child.id() as i32;
        // SAFETY: kill on the pid of our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// etcd, kube-apiserver and kube-controller-manager in a fresh namespace,
/// which also plays the lab node.
pub struct ControlPlane {
    /// The namespace's name, also the prefix of every name the test makes.
    pub tag: String,
    /// The test's temp dir.
    pub dir: PathBuf,
    peers: Vec<Spawned>,
}

impl ControlPlane {
    /// Starts a control plane and waits until pods can be created. Fails
    /// the test when not root.
    pub fn start(letter: char) -> ControlPlane {
        cni_testbed::require_root();
        reap_stale();
        // Pod servers outlive a stopped kubelet (as containers do) and are
        // then reparented: to this process, so it can reap them.
        // SAFETY: prctl with an integer argument; it only sets a flag.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let peers = find_peers();
        let tag = tag(letter);
        let dir = temp_dir_of(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut plane = ControlPlane {
            tag: tag.clone(),
            dir: dir.clone(),
            peers: Vec::new(),
        };
        run(&["ip", "netns", "add", &tag]);
        run(&["ip", "-n", &tag, "link", "set", "lo", "up"]);
        for ip in NODE_IPS {
            let prefix = if ip.contains(':') { "128" } else { "32" };
            run(&[
                "ip",
                "-n",
                &tag,
                "addr",
                "add",
                &format!("{ip}/{prefix}"),
                "dev",
                "lo",
            ]);
        }
        plane.write_credentials();

        let d = |p: &str| dir.join(p).to_string_lossy().into_owned();
        let mut etcd = Command::new(&peers.etcd);
        etcd.args([
            "--name=default",
            &format!("--data-dir={}", d("etcd")),
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=default=http://127.0.0.1:2380",
        ]);
        plane
            .peers
            .push(Spawned::start("etcd", &tag, etcd, dir.join("etcd.log")));

        let mut apiserver = Command::new(&peers.kube_apiserver);
        apiserver.args([
            "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=127.0.0.1",
            "--secure-port=6443",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            &format!("--cert-dir={}", d("certs")),
            &format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc",
            &format!("--service-account-key-file={}", d("sa.pub")),
            &format!("--service-account-signing-key-file={}", d("sa.key")),
            "--service-cluster-ip-range=10.96.0.0/16",
        ]);
        plane.peers.push(Spawned::start(
            "kube-apiserver",
            &tag,
            apiserver,
            dir.join("kube-apiserver.log"),
        ));
        plane.block_on(|client| async move {
            wait_until("the API server answers", Duration::from_secs(60), || {
                let client = client.clone();
                async move {
                    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
                        kube::Api::all(client);
                    namespaces
                        .get("default")
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
            })
            .await;
        });

        // A node is declared dead 10 s after its last heartbeat, even right
        // after registration: "stays Ready" is then worth asserting.
        let mut controller_manager = Command::new(&peers.kube_controller_manager);
        controller_manager.args([
            &format!("--kubeconfig={}", d("admin.kubeconfig")),
            "--controllers=serviceaccount,nodelifecycle",
            &format!("--flex-volume-plugin-dir={}", d("flex")),
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--node-monitor-period=1s",
            "--node-monitor-grace-period=10s",
            "--node-startup-grace-period=10s",
        ]);
        plane.peers.push(Spawned::start(
            "kube-controller-manager",
            &tag,
            controller_manager,
            dir.join("kube-controller-manager.log"),
        ));
        plane.block_on(|client| async move {
            wait_until(
                "the default ServiceAccount exists (pods need it)",
                Duration::from_secs(60),
                || {
                    let client = client.clone();
                    async move {
                        let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
                            kube::Api::namespaced(client, "default");
                        accounts
                            .get("default")
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }
                },
            )
            .await;
        });
        plane
    }

    /// Tokens, service-account keys and kubeconfigs.
    fn write_credentials(&self) {
        let dir = &self.dir;
        std::fs::write(
            dir.join("tokens.csv"),
            format!(
                "{ADMIN_TOKEN},admin,admin,\"system:masters\"\n\
                 {NODE_TOKEN},system:node:{NODE_NAME},node-{NODE_NAME},\"system:nodes\"\n"
            ),
        )
        .expect("token file");
        let key = dir.join("sa.key").to_string_lossy().into_owned();
        let public = dir.join("sa.pub").to_string_lossy().into_owned();
        run(&["openssl", "genrsa", "-out", &key, "2048"]);
        run(&["openssl", "rsa", "-in", &key, "-pubout", "-out", &public]);
        for (file, user, token) in [
            ("admin.kubeconfig", "admin", ADMIN_TOKEN),
            ("node.kubeconfig", NODE_NAME, NODE_TOKEN),
        ] {
            let ca = dir.join("certs/apiserver.crt");
            std::fs::write(
                dir.join(file),
                format!(
                    "apiVersion: v1\nkind: Config\n\
                     clusters:\n- name: lab\n  cluster:\n    server: https://127.0.0.1:6443\n    \
                     certificate-authority: {}\n\
                     users:\n- name: {user}\n  user:\n    token: {token}\n\
                     contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: {user}\n\
                     current-context: lab\n",
                    ca.display()
                ),
            )
            .expect("kubeconfig");
        }
    }

    /// The node's kubeconfig (`system:node:<name>`).
    pub fn node_kubeconfig(&self) -> PathBuf {
        self.dir.join("node.kubeconfig")
    }

    /// The namespace file.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.tag)
    }

    /// Runs `f` with an admin client on a thread inside the namespace (so
    /// every connection it makes starts there), and returns its result.
    pub fn block_on<T, F, Fut>(&self, f: F) -> T
    where
        T: Send,
        F: FnOnce(Client) -> Fut + Send,
        Fut: Future<Output = T>,
    {
        let kubeconfig = self.dir.join("admin.kubeconfig");
        in_netns(&self.tag, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let client = wait_until("the admin client", Duration::from_secs(30), || {
                    let kubeconfig = kubeconfig.clone();
                    async move { client_from(&kubeconfig).await }
                })
                .await;
                f(client).await
            })
        })
    }
}

async fn client_from(kubeconfig: &Path) -> Result<Client, String> {
    let config = Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Client::try_from(config).map_err(|e| e.to_string())
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for peer in &self.peers {
                eprintln!(
                    "--- last lines of {} ({}) ---\n{}",
                    peer.what,
                    peer.log.display(),
                    peer.log_tail(15)
                );
            }
        }
        while let Some(mut peer) = self.peers.pop() {
            peer.stop(Duration::from_secs(5));
        }
        remove_namespaces_of(&self.tag);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup of {}: {e}", self.dir.display());
        }
    }
}

/// The lab kubelet under test, in the control plane's namespace.
pub struct Kubelet {
    process: Option<Spawned>,
    log: PathBuf,
    /// Its `--state-dir`.
    pub state_dir: PathBuf,
    /// Its `--cni-conf-dir`.
    pub conf_dir: PathBuf,
    /// The conflist's `ipam.dataDir`: the plugin's state.
    pub bridge_data_dir: PathBuf,
    /// Its `--pod-netns-prefix`.
    pub netns_prefix: String,
    args: Vec<String>,
    netns: String,
}

impl Kubelet {
    /// Starts the kubelet of [`NODE_NAME`] with an empty CNI conf dir and
    /// a bin dir holding tailroute-bridge.
    pub fn start(plane: &ControlPlane) -> Kubelet {
        let dir = &plane.dir;
        let conf_dir = dir.join("cni-conf");
        let bin_dir = dir.join("cni-bin");
        std::fs::create_dir_all(&conf_dir).expect("conf dir");
        std::fs::create_dir_all(&bin_dir).expect("bin dir");
        std::os::unix::fs::symlink(bridge_plugin(), bin_dir.join("tailroute-bridge"))
            .expect("plugin link");
        let state_dir = dir.join("kubelet");
        let netns_prefix = format!("{}-p-", plane.tag);
        let mut args: Vec<String> = vec![
            "lab".into(),
            "kubelet".into(),
            format!("--node-name={NODE_NAME}"),
            format!("--kubeconfig={}", plane.node_kubeconfig().display()),
            format!("--cni-conf-dir={}", conf_dir.display()),
            format!("--cni-bin-dir={}", bin_dir.display()),
            format!("--state-dir={}", state_dir.display()),
            format!("--pod-netns-prefix={netns_prefix}"),
            "--pod-port=8080".into(),
            "--heartbeat-interval-secs=1".into(),
        ];
        args.extend(NODE_IPS.iter().map(|ip| format!("--node-ip={ip}")));
        let mut kubelet = Kubelet {
            process: None,
            log: dir.join("kubelet.log"),
            state_dir,
            conf_dir,
            bridge_data_dir: dir.join("bridge"),
            netns_prefix,
            args,
            netns: plane.tag.clone(),
        };
        kubelet.restart();
        kubelet
    }

    /// Starts the kubelet again after [`Kubelet::stop`] (its log goes on).
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "the kubelet is running");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tailroute"));
        cmd.args(&self.args);
        let log = self.log.clone();
        // Appending: each run's lines follow the previous run's.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("kubelet log");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out);
        cni_testbed::enter_netns_on_spawn(&mut cmd, &Path::new(NETNS_DIR).join(&self.netns))
            .expect("namespace exists");
        let child = cmd.spawn().expect("start the kubelet");
        self.process = Some(Spawned {
            what: "kubelet",
            child,
            log,
        });
    }

    /// Stops the kubelet with SIGTERM and returns how long it took to exit
    /// (asserting that it did, successfully).
    pub fn stop(&mut self) -> Duration {
        let mut process = self.process.take().expect("the kubelet is running");
        let start = Instant::now();
        let status = process.stop(Duration::from_secs(10));
        let took = start.elapsed();
        assert!(
            status.is_some_and(|s| s.success()),
            "the kubelet exited with {status:?} on SIGTERM"
        );
        took
    }

    /// The kubelet's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- kubelet log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(5));
        }
    }
}

/// Polls `probe` every 100 ms until it succeeds; panics after `timeout`
/// with `what` and the probe's last error.
pub async fn wait_until<T, Fut>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting until {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Runs `f` on a fresh thread that has joined namespace `ns`; a panic in
/// `f` is the caller's panic.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            let file = std::fs::File::open(Path::new(NETNS_DIR).join(ns))
                .unwrap_or_else(|e| panic!("open namespace {ns}: {e}"));
            // SAFETY: setns on a valid descriptor; it changes only this
            // thread's namespace, and the thread ends with `f`.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        });
        match thread.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// True while a process with `pid` and `start_time` runs (not a zombie).
/// A zombie child of ours (a reparented pod server) is reaped on the way.
pub fn process_runs(pid: i32, start_time: u64) -> bool {
    let runs = ProcessId { pid, start_time }.is_running();
    if !runs {
        // SAFETY: waitpid on one pid, without blocking; ECHILD if it is not
        // ours, which is fine.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    }
    runs
}

/// Runs a command, panicking with its stderr on failure.
fn run(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills every process in the namespaces whose names start with `tag`,
/// then deletes the namespaces.
fn remove_namespaces_of(tag: &str) {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(tag))
        .collect();
    for name in &names {
        kill_processes_in(&Path::new(NETNS_DIR).join(name));
    }
    for name in &names {
        let out = Command::new("ip").args(["netns", "del", name]).output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("cleanup: could not delete namespace {name}");
        }
    }
}

/// SIGKILLs every process whose network namespace is `netns`, and reaps
/// those that are (or were reparented to) this process.
fn kill_processes_in(netns: &Path) {
    let me = std::process::id();
    let mut killed = Vec::new();
    for pid in tailroute::lab::daemon::pids_in_netns(netns).unwrap_or_default() {
        let Ok(pid) = i32::try_from(pid) else {
            continue;
        };
        if pid as u32 != me {
            // SAFETY: kill(2); the pid was just seen in the namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed.push(pid);
        }
    }
    for pid in killed {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            // SAFETY: non-blocking waitpid on one pid; ECHILD when it is not
            // our child (init reaps it then).
            let rc = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            if rc != 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Removes what killed runs of these tests left: namespaces and temp dirs
/// whose creating process is gone.
fn reap_stale() {
    let dead =
        |name: &str| tag_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        let mut tags: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| dead(n))
            .filter_map(|n| n.get(..TAG_PREFIX.len() + 6).map(str::to_owned))
            .collect();
        tags.sort();
        tags.dedup();
        for tag in tags {
            remove_namespaces_of(&tag);
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(tag) = name.strip_prefix("tailroute-kubelet-test-") {
                if dead(tag) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}
