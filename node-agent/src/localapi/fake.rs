//! A scripted stand-in for tailscaled on a unix socket, for the client's tests.
//!
//! It speaks raw HTTP/1.1, so it sees exactly the bytes the client sends. A
//! script lists the requests expected, in order, and the answer to each;
//! [`FakeTailscaled::finish`] fails the test if a request differed, one was
//! missing, or an extra one came.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::test_support::{read_request, tempdir, SeenRequest, TempDir};

/// One expected request and the answer to give.
pub(crate) struct Exchange {
    method: &'static str,
    target: String,
    body: Option<serde_json::Value>,
    reply: Reply,
}

/// How the fake answers.
pub(crate) enum Reply {
    /// This status with this body, as `application/json`.
    Json(u16, String),
    /// This status with this body, as `text/plain`, like Go's `http.Error`.
    Text(u16, String),
    /// Read the request, then never answer (the connection stays open).
    Stall,
    /// A 200 whose chunked body is these lines, each after its delay; then
    /// the body ends, as when tailscaled closes a watch.
    Lines(Vec<(Duration, String)>),
}

impl Exchange {
    /// Expects `method target` with no body.
    pub(crate) fn new(method: &'static str, target: &str, reply: Reply) -> Exchange {
        Exchange {
            method,
            target: target.to_owned(),
            body: None,
            reply,
        }
    }

    /// Also expects this JSON body.
    pub(crate) fn with_body(mut self, body: serde_json::Value) -> Exchange {
        self.body = Some(body);
        self
    }
}

/// A recorded v1.98.10 answer from `testdata/localapi/v1.98.10/`.
pub(crate) fn recorded(name: &str) -> String {
    let path = format!(
        "{}/testdata/localapi/v1.98.10/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fake tailscaled, serving its script until finished or dropped.
pub(crate) struct FakeTailscaled {
    dir: TempDir,
    socket: PathBuf,
    expected: usize,
    served: Arc<AtomicUsize>,
    problems: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl FakeTailscaled {
    /// Listens on a fresh socket in a temporary directory.
    pub(crate) fn start(script: Vec<Exchange>) -> FakeTailscaled {
        let dir = tempdir();
        let socket = dir.path().join("tailscaled.sock");
        let listener = UnixListener::bind(&socket).expect("bind the fake's socket");
        let served = Arc::new(AtomicUsize::new(0));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let expected = script.len();
        let task = tokio::spawn(serve(
            listener,
            script,
            Arc::clone(&served),
            Arc::clone(&problems),
        ));
        FakeTailscaled {
            dir,
            socket,
            expected,
            served,
            problems,
            task,
        }
    }

    /// The socket to point a client at.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temporary directory holding the socket.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops serving; panics if the requests were not exactly the script.
    pub(crate) fn finish(self) {
        self.task.abort();
        let problems = self.problems.lock().expect("not poisoned").clone();
        assert!(
            problems.is_empty(),
            "requests differ from the script:\n{problems:#?}"
        );
        let served = self.served.load(Ordering::SeqCst);
        assert_eq!(
            served, self.expected,
            "the client made {served} of the {} scripted requests",
            self.expected
        );
    }
}

async fn serve(
    listener: UnixListener,
    script: Vec<Exchange>,
    served: Arc<AtomicUsize>,
    problems: Arc<Mutex<Vec<String>>>,
) {
    let complain = |p: String| problems.lock().expect("not poisoned").push(p);
    let mut script = script.into_iter();
    // Stalled connections stay open here until the fake goes away.
    let mut stalled = Vec::new();
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        let request = match read_request(&mut conn).await {
            Ok(request) => request,
            Err(e) => {
                complain(format!("unreadable request: {e}"));
                continue;
            }
        };
        let Some(exchange) = script.next() else {
            complain(format!(
                "unscripted request: {} {}",
                request.method, request.target
            ));
            let _ = write_answer(&mut conn, 500, "text/plain", b"unscripted\n").await;
            continue;
        };
        served.fetch_add(1, Ordering::SeqCst);
        for problem in check(&exchange, &request) {
            complain(problem);
        }
        match exchange.reply {
            Reply::Json(status, body) => {
                let _ = write_answer(&mut conn, status, "application/json", body.as_bytes()).await;
            }
            Reply::Text(status, body) => {
                let content_type = "text/plain; charset=utf-8";
                let _ = write_answer(&mut conn, status, content_type, body.as_bytes()).await;
            }
            Reply::Stall => stalled.push(conn),
            Reply::Lines(lines) => {
                // The watch is served in the background, so the script can go on.
                tokio::spawn(async move {
                    let _ = write_lines(&mut conn, lines).await;
                });
            }
        }
    }
}

fn check(expected: &Exchange, seen: &SeenRequest) -> Vec<String> {
    let mut problems = Vec::new();
    let what = format!("{} {}", seen.method, seen.target);
    if seen.method != expected.method || seen.target != expected.target {
        problems.push(format!(
            "expected {} {}, got {what}",
            expected.method, expected.target
        ));
    }
    if seen.header("host") != Some("local-tailscaled.sock") {
        problems.push(format!("{what}: Host is {:?}", seen.header("host")));
    }
    for forbidden in ["referer", "origin"] {
        if let Some(value) = seen.header(forbidden) {
            problems.push(format!("{what}: has a {forbidden} header ({value})"));
        }
    }
    match &expected.body {
        None if !seen.body.is_empty() => problems.push(format!(
            "{what}: unexpected body {:?}",
            String::from_utf8_lossy(&seen.body)
        )),
        None => {}
        Some(want) => {
            match serde_json::from_slice::<serde_json::Value>(&seen.body) {
                Ok(got) if &got == want => {}
                Ok(got) => problems.push(format!("{what}: body {got}, expected {want}")),
                Err(e) => problems.push(format!("{what}: body is not JSON: {e}")),
            }
            if seen.header("content-type") != Some("application/json") {
                problems.push(format!(
                    "{what}: Content-Type is {:?}",
                    seen.header("content-type")
                ));
            }
        }
    }
    problems
}

async fn write_answer(
    conn: &mut UnixStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} Fake\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Tailscale-Version: 1.98.10\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body).await?;
    conn.shutdown().await
}

async fn write_lines(conn: &mut UnixStream, lines: Vec<(Duration, String)>) -> std::io::Result<()> {
    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await?;
    for (delay, line) in lines {
        tokio::time::sleep(delay).await;
        let chunk = format!("{:x}\r\n{line}\n\r\n", line.len() + 1);
        conn.write_all(chunk.as_bytes()).await?;
    }
    conn.write_all(b"0\r\n\r\n").await?;
    conn.shutdown().await
}
