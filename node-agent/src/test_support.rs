//! Helpers for the unit tests.

use std::path::{Path, PathBuf};

/// A temporary directory, removed with everything in it on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh directory under the system's temporary directory.
pub(crate) fn tempdir() -> TempDir {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tailroute-agent-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}

/// One call the mock apiserver expects, and its answer.
pub(crate) struct ApiCall {
    method: &'static str,
    path: String,
    check_body: Box<dyn Fn(&serde_json::Value) + Send>,
    status: u16,
    reply: serde_json::Value,
}

impl ApiCall {
    /// Expects `method path` (the query string is ignored) and answers `reply`.
    pub(crate) fn new(method: &'static str, path: &str, reply: serde_json::Value) -> ApiCall {
        ApiCall {
            method,
            path: path.to_owned(),
            check_body: Box::new(|_| {}),
            status: 200,
            reply,
        }
    }

    /// Answers with this HTTP status instead of 200; a body that is not
    /// an object becomes the apiserver's `Status` for that code.
    pub(crate) fn status(mut self, code: u16) -> ApiCall {
        self.status = code;
        if self.reply.as_object().is_none_or(|o| o.is_empty()) {
            self.reply = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "scripted", "reason": "NotFound", "code": code,
            });
        }
        self
    }

    /// Also checks the request's JSON body.
    pub(crate) fn body(mut self, check: impl Fn(&serde_json::Value) + Send + 'static) -> ApiCall {
        self.check_body = Box::new(check);
        self
    }
}

/// The apiserver as a script: each request must be the next expected
/// call; [`MockApiserver::finish`] fails the test on a call missing or one
/// too many.
pub(crate) struct MockApiserver {
    task: tokio::task::JoinHandle<()>,
    state: std::sync::Arc<std::sync::Mutex<MockState>>,
}

#[derive(Default)]
struct MockState {
    remaining: usize,
    problems: Vec<String>,
}

impl MockApiserver {
    /// A client talking to a mock that plays `script`.
    pub(crate) fn start(script: Vec<ApiCall>) -> (kube::Client, MockApiserver) {
        use http_body_util::BodyExt;
        let (service, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let state = std::sync::Arc::new(std::sync::Mutex::new(MockState {
            remaining: script.len(),
            problems: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut script = script.into_iter();
            while let Some((request, respond)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_owned();
                let bytes = request
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let body: serde_json::Value =
                    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                let (status, reply) = match script.next() {
                    Some(call) if call.method == method && call.path == path => {
                        // A failed body assertion is recorded, not raised
                        // here, so the test sees it in `finish`.
                        let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            (call.check_body)(&body)
                        }));
                        let mut st = shared.lock().expect("mock state");
                        st.remaining -= 1;
                        if check.is_err() {
                            st.problems
                                .push(format!("{method} {path}: unexpected body {body}"));
                        }
                        (call.status, call.reply)
                    }
                    Some(call) => {
                        let mut st = shared.lock().expect("mock state");
                        st.remaining -= 1;
                        st.problems.push(format!(
                            "expected {} {}, got {method} {path} with {body}",
                            call.method, call.path
                        ));
                        (500, serde_json::json!({}))
                    }
                    None => {
                        shared
                            .lock()
                            .expect("mock state")
                            .problems
                            .push(format!("a call too many: {method} {path} with {body}"));
                        (500, serde_json::json!({}))
                    }
                };
                let response = http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&reply).unwrap_or_default(),
                    ))
                    .expect("response");
                respond.send_response(response);
            }
        });
        let client = kube::Client::new(service, "default");
        (client, MockApiserver { task, state })
    }

    /// Fails the test unless every scripted call came, in order, and no other.
    pub(crate) fn finish(self) {
        self.task.abort();
        let st = self.state.lock().expect("mock state");
        let mut problems = st.problems.clone();
        if st.remaining > 0 {
            problems.push(format!("{} scripted call(s) never came", st.remaining));
        }
        assert!(
            problems.is_empty(),
            "apiserver script broken:\n{}",
            problems.join("\n")
        );
    }
}

/// One HTTP/1.1 request as a scripted fake server saw it.
pub(crate) struct SeenRequest {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl SeenRequest {
    /// A header's value (names compare case-insensitively).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request (head and a Content-Length body) from `conn`. A
/// connection closed before any byte of a head is `UnexpectedEof` (a client
/// may open a spare connection and close it unused).
pub(crate) async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    conn: &mut S,
) -> std::io::Result<SeenRequest> {
    use tokio::io::AsyncReadExt;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the request head ended",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut seen = SeenRequest {
        method,
        target,
        headers,
        body: buf[head_end + 4..].to_vec(),
    };
    if seen.header("transfer-encoding").is_some() {
        return Err(bad(
            "chunked request body; the client should send Content-Length",
        ));
    }
    let length: usize = seen
        .header("content-length")
        .map(|v| v.parse().map_err(|_| bad("bad Content-Length")))
        .transpose()?
        .unwrap_or(0);
    while seen.body.len() < length {
        let mut chunk = vec![0u8; length - seen.body.len()];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("connection closed inside the body"));
        }
        seen.body.extend_from_slice(&chunk[..n]);
    }
    Ok(seen)
}
