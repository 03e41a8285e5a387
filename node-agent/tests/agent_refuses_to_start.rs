//! The agent binary refuses bad input at start with a message that names
//! the problem and the fix, and exits before touching anything.

use std::path::PathBuf;
use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tailroute-agent"))
}

/// A directory for one test's files, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("tailroute-agent-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
    fn config(&self, text: &str) -> PathBuf {
        let path = self.0.join("agent.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(config: &std::path::Path) -> (i32, String) {
    let out = agent()
        .arg(format!("--config={}", config.display()))
        .env_remove("NODE_NAME")
        .env_remove("KUBECONFIG")
        .env("RUST_LOG", "info")
        .output()
        .expect("run tailroute-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_pod_cidr_inside_the_tailnet_range_is_refused() {
    let scratch = Scratch::new("cidr");
    let config = scratch.config("node_name = \"n1\"\n[cluster]\npod_cidrs = [\"100.64.0.0/16\"]\n");
    let (code, stderr) = run(&config);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("overlaps the tailnet's address range 100.64.0.0/10"),
        "{stderr}"
    );
}

#[test]
fn a_typo_in_the_file_is_refused_with_the_valid_keys() {
    let scratch = Scratch::new("typo");
    let config = scratch.config("node_name = \"n1\"\n[cni]\nconfdir = \"/x\"\n");
    let (code, stderr) = run(&config);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("confdir") && stderr.contains("conf_dir"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_localapi_is_refused_before_anything_is_touched() {
    let scratch = Scratch::new("socket");
    let socket = scratch.0.join("no-tailscaled.sock");
    let conf_dir = scratch.0.join("net.d");
    let config = scratch.config(&format!(
        "node_name = \"n1\"\nstate_dir = \"{0}/state\"\n[tailscale]\nsocket = \"{1}\"\n\
         [cni]\nconf_dir = \"{2}\"\n[cluster]\npod_cidrs = [\"10.244.0.0/16\"]\n",
        scratch.0.display(),
        socket.display(),
        conf_dir.display()
    ));
    let (code, stderr) = run(&config);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("LocalAPI is unreachable"), "{stderr}");
    assert!(stderr.contains(&socket.display().to_string()), "{stderr}");
    assert!(stderr.contains("is tailscaled running?"), "{stderr}");
    assert!(
        !conf_dir.exists() && !scratch.0.join("state").exists(),
        "nothing written"
    );
}

#[test]
fn a_missing_api_key_file_is_named() {
    let scratch = Scratch::new("key");
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let tailscaled = std::os::unix::net::UnixListener::bind(scratch.0.join("ts.sock"))
        .expect("a socket that accepts");
    let key = scratch.0.join("missing-api-key");
    let config = scratch.config(&format!(
        "node_name = \"n1\"\n[tailscale]\nsocket = \"{}\"\n[cluster]\npod_cidrs = [\"10.244.0.0/16\"]\n\
         [approval]\ncontrol = \"headscale\"\nurl = \"http://{}\"\napi_key_file = \"{}\"\n",
        scratch.0.join("ts.sock").display(),
        server.local_addr().expect("addr"),
        key.display()
    ));
    // A fake tailscaled that answers the preflight /status.
    let answer = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut conn, _)) = tailscaled.accept() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let body = r#"{"BackendState":"Running","TailscaleIPs":["100.64.0.1"]}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let (code, stderr) = run(&config);
    let _ = answer.join();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&key.display().to_string()), "{stderr}");
}
