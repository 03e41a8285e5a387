//! The LocalAPI client against a real tailscaled (the lab's pinned v1.98.10).
//!
//! Each test runs its own tailscaled in a throwaway network namespace that
//! has nothing but loopback, with its state and socket in a temporary
//! directory. tailscaled is never given a login server and never joins a
//! tailnet, so it stays logged out; these tests prove the wire format of
//! status, prefs edits and the IPN bus, not a joined node.
//!
//! Needs root (namespaces) and the peer build (`scripts/build-peers.sh`);
//! without either the tests fail, they never skip.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cni_testbed::Netns;
use futures::StreamExt;
use tailroute_agent::localapi::{
    BackendState, LocalApiClient, MaskedPrefs, Notify, NotifyStream, WatchMask,
};

/// The tailscale version the lab pins (`scripts/peers.env`).
const TAILSCALE_VERSION: &str = "v1.98.10";

/// How long tailscaled may take to open its socket.
const STARTUP: Duration = Duration::from_secs(20);

/// How long to wait for a message on the bus.
const BUS_WAIT: Duration = Duration::from_secs(10);

/// A tailscaled in a namespace of its own. Dropping it kills tailscaled
/// (by pid), then removes its directory, then deletes the namespace, also
/// when a test panics.
struct RealTailscaled {
    child: Option<Child>,
    dir: PathBuf,
    // Declared last: dropped after the Drop body has killed tailscaled.
    netns: Netns,
}

impl RealTailscaled {
    /// Starts tailscaled and waits until its LocalAPI answers.
    async fn start() -> RealTailscaled {
        cni_testbed::require_root();
        let program = tailscaled_program();
        let netns = Netns::create("trag").expect("create a network namespace");
        cni_testbed::set_lo_up(&netns).expect("loopback up");
        let dir = temp_dir();
        let log = File::create(dir.join("tailscaled.log")).expect("log file");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns.name(),
                "env",
                "TS_DEBUG_USE_DERP_HTTP=1",
            ])
            // Otherwise tailscaled writes its log config into the host's
            // /var/lib/tailscale, even with --no-logs-no-support.
            .arg(format!("TS_LOGS_DIR={}", dir.display()))
            .arg(&program)
            .arg(format!("--statedir={}", dir.display()))
            .arg(format!("--socket={}", dir.join("ts.sock").display()))
            .args(["--port=41641", "--tun=tailscale0", "--no-logs-no-support"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn tailscaled");
        let ts = RealTailscaled {
            child: Some(child),
            dir,
            netns,
        };
        ts.wait_until_answering().await;
        // `ip netns exec` and `env` exec in place: the pid is tailscaled's,
        // so killing it by pid kills tailscaled.
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", ts.pid())).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            "tailscaled",
            "pid {} is not tailscaled",
            ts.pid()
        );
        ts
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("ts.sock")
    }

    fn client(&self) -> LocalApiClient {
        LocalApiClient::new(self.socket())
    }

    async fn wait_until_answering(&self) {
        let client = self.client().with_timeout(Duration::from_secs(2));
        let started = Instant::now();
        loop {
            match client.status().await {
                Ok(_) => return,
                Err(e) if started.elapsed() > STARTUP => {
                    panic!(
                        "tailscaled in {} did not answer within {STARTUP:?}: {e}",
                        self.netns.name()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Kills tailscaled (SIGKILL, by pid) and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RealTailscaled {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("tailscaled.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- tailscaled log (last lines, newest first) ---");
            for line in tail {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The peer build's tailscaled, where `scripts/build-peers.sh` puts it.
fn tailscaled_program() -> PathBuf {
    let cache = std::env::var_os("TAILROUTE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/tailroute")))
        .expect("TAILROUTE_CACHE or HOME must be set");
    let program = cache
        .join("peers")
        .join(format!("tailscale-{TAILSCALE_VERSION}"))
        .join("tailscaled");
    assert!(
        program.is_file(),
        "{} is missing: build the peers with scripts/build-peers.sh",
        program.display()
    );
    program
}

fn temp_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tailroute-agent-real-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("create a temporary directory");
    dir
}

/// The next message on the bus, or a panic after [`BUS_WAIT`].
async fn next_notify(watch: &mut NotifyStream) -> Notify {
    match tokio::time::timeout(BUS_WAIT, watch.next()).await {
        Ok(Some(Ok(notify))) => notify,
        Ok(Some(Err(e))) => panic!("bus error: {e}"),
        Ok(None) => panic!("the bus ended"),
        Err(_) => panic!("no bus message within {BUS_WAIT:?}"),
    }
}

#[tokio::test]
async fn logged_out_tailscaled_takes_the_pod_route_and_announces_it_on_the_bus() {
    let ts = RealTailscaled::start().await;
    let client = ts.client();
    let pod_cidr: ipnet::IpNet = "10.244.1.0/24".parse().expect("prefix");

    let status = client.status().await.expect("status");
    assert!(
        matches!(
            status.backend_state,
            BackendState::NeedsLogin | BackendState::NoState
        ),
        "a tailscaled that never logged in is {}",
        status.backend_state
    );
    assert!(status.tailscale_ips.is_empty() && status.current_tailnet.is_none());

    let mut watch = client
        .watch_ipn_bus(WatchMask::INITIAL_STATE | WatchMask::INITIAL_PREFS)
        .await
        .expect("watch the bus");
    let initial = next_notify(&mut watch).await;
    assert_eq!(initial.state, Some(status.backend_state.clone()));
    let initial_prefs = initial.prefs.expect("initial prefs were asked for");
    assert!(!initial_prefs.advertise_routes.contains(&pod_cidr));

    let edit = MaskedPrefs::new()
        .advertise_routes(vec![pod_cidr])
        .no_snat(true);
    let after = client.patch_prefs(&edit).await.expect("patch prefs");
    assert_eq!(after.advertise_routes, vec![pod_cidr]);
    assert!(after.no_snat);
    // Fields outside the mask are left alone.
    assert_eq!(after.route_all, initial_prefs.route_all);
    assert_eq!(after.corp_dns, initial_prefs.corp_dns);

    let read_back = client.prefs().await.expect("prefs");
    assert_eq!(read_back, after);

    let deadline = Instant::now() + BUS_WAIT;
    loop {
        let notify = next_notify(&mut watch).await;
        if let Some(prefs) = notify.prefs {
            assert_eq!(prefs.advertise_routes, vec![pod_cidr]);
            assert!(prefs.no_snat);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no prefs change on the bus within {BUS_WAIT:?}"
        );
    }
}

#[tokio::test]
async fn the_bus_ends_and_calls_fail_clearly_when_tailscaled_dies() {
    let mut ts = RealTailscaled::start().await;
    let client = ts.client();
    let mut watch = client
        .watch_ipn_bus(WatchMask::INITIAL_STATE)
        .await
        .expect("watch the bus");
    assert!(next_notify(&mut watch).await.state.is_some());

    ts.kill();

    match tokio::time::timeout(BUS_WAIT, watch.next()).await {
        Ok(None | Some(Err(_))) => {}
        Ok(Some(Ok(notify))) => panic!("a message after tailscaled died: {notify:?}"),
        Err(_) => panic!("the bus did not end within {BUS_WAIT:?} of tailscaled dying"),
    }
    let err = client.status().await.expect_err("tailscaled is dead");
    assert!(
        matches!(err.kind(), "not_listening" | "socket_missing"),
        "{err}"
    );
}
