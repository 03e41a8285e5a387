//! A scripted stand-in for a control plane's API on a loopback TCP port.
//!
//! It speaks raw HTTP/1.1 and closes every connection after one answer, so
//! it sees exactly the bytes the client sends. A script lists the requests
//! expected, in order, with the `Authorization` header and body each must
//! carry, and the answer to give; [`FakeControl::finish`] fails the test if
//! a request differed, one was missing, or an extra one came.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::test_support::{read_request, SeenRequest};

/// The body a request must carry.
pub(super) enum Expect {
    /// None.
    Nothing,
    /// This JSON document (compared as JSON).
    Json(serde_json::Value),
    /// A JSON document this check accepts (for bodies holding the time).
    JsonWhere(fn(&serde_json::Value) -> Result<(), String>),
    /// This form, fields in any order.
    Form(Vec<(&'static str, &'static str)>),
}

/// How the fake answers.
pub(super) enum Reply {
    /// This status with this JSON body.
    Json(u16, String),
    /// This status with this text body.
    Text(u16, &'static str),
    /// Read the request, then never answer.
    Stall,
}

/// One expected request and the answer to give.
pub(super) struct Exchange {
    method: &'static str,
    target: String,
    authorization: Option<String>,
    body: Expect,
    reply: Reply,
}

impl Exchange {
    /// Expects `method target` carrying `Authorization: Bearer <bearer>`
    /// and no body.
    pub(super) fn new(method: &'static str, target: &str, bearer: &str, reply: Reply) -> Exchange {
        Exchange {
            method,
            target: target.to_owned(),
            authorization: Some(format!("Bearer {bearer}")),
            body: Expect::Nothing,
            reply,
        }
    }

    /// Expects no `Authorization` header at all (the OAuth token request).
    pub(super) fn unauthenticated(mut self) -> Exchange {
        self.authorization = None;
        self
    }

    /// Also expects this body.
    pub(super) fn with_body(mut self, body: Expect) -> Exchange {
        self.body = body;
        self
    }
}

/// The fake, serving its script until finished or dropped.
pub(super) struct FakeControl {
    url: String,
    expected: usize,
    served: Arc<AtomicUsize>,
    problems: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl FakeControl {
    /// Listens on a free loopback port.
    pub(super) async fn start(script: Vec<Exchange>) -> FakeControl {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let served = Arc::new(AtomicUsize::new(0));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let expected = script.len();
        let task = tokio::spawn(serve(
            listener,
            script,
            Arc::clone(&served),
            Arc::clone(&problems),
        ));
        FakeControl {
            url,
            expected,
            served,
            problems,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// Stops serving; panics if the requests were not exactly the script.
    pub(super) fn finish(self) {
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

impl Drop for FakeControl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    script: Vec<Exchange>,
    served: Arc<AtomicUsize>,
    problems: Arc<Mutex<Vec<String>>>,
) {
    let complain = |p: String| problems.lock().expect("not poisoned").push(p);
    let mut script = script.into_iter();
    let mut stalled = Vec::new();
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        let request = match read_request(&mut conn).await {
            Ok(request) => request,
            // reqwest may open a spare connection and close it unused.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => continue,
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
                let _ = write_answer(&mut conn, status, "text/plain", body.as_bytes()).await;
            }
            Reply::Stall => stalled.push(conn),
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
    if seen.header("authorization") != expected.authorization.as_deref() {
        problems.push(format!(
            "{what}: Authorization is {:?}, expected {:?}",
            seen.header("authorization"),
            expected.authorization
        ));
    }
    match &expected.body {
        Expect::Nothing if !seen.body.is_empty() => problems.push(format!(
            "{what}: unexpected body {:?}",
            String::from_utf8_lossy(&seen.body)
        )),
        Expect::Nothing => {}
        Expect::Json(want) => {
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
        Expect::JsonWhere(accept) => {
            match serde_json::from_slice::<serde_json::Value>(&seen.body) {
                Ok(got) => {
                    if let Err(e) = accept(&got) {
                        problems.push(format!("{what}: body {got}: {e}"));
                    }
                }
                Err(e) => problems.push(format!("{what}: body is not JSON: {e}")),
            }
        }
        Expect::Form(want) => {
            let text = String::from_utf8_lossy(&seen.body);
            let mut got: Vec<(String, String)> = text
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (decode(k), decode(v)))
                .collect();
            let mut want: Vec<(String, String)> = want
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            got.sort();
            want.sort();
            if got != want {
                problems.push(format!("{what}: form {got:?}, expected {want:?}"));
            }
            if seen.header("content-type") != Some("application/x-www-form-urlencoded") {
                problems.push(format!(
                    "{what}: Content-Type is {:?}",
                    seen.header("content-type")
                ));
            }
        }
    }
    problems
}

/// Form decoding, enough for the tests' values.
fn decode(raw: &str) -> String {
    let raw = raw.replace('+', " ");
    let bytes = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&raw[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn write_answer(
    conn: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} Fake\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body).await?;
    conn.shutdown().await
}
