//! The agent's HTTP endpoints: `/healthz` (the loop is alive), `/readyz`
//! (the node's pod network is up), `/metrics` (Prometheus) and `/status`
//! (the last [`NodeReport`] as JSON, for `tailroute status`).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::reconcile::NodeReport;

/// What the endpoints serve, updated by the reconcile loop.
pub struct AgentState {
    metrics: Arc<Metrics>,
    /// The longest a pass may be overdue before `/healthz` fails.
    stale_after: Duration,
    last: Mutex<Option<(Instant, NodeReport)>>,
}

impl AgentState {
    /// State for a loop that passes at least every `resync`.
    pub fn new(metrics: Arc<Metrics>, resync: Duration) -> AgentState {
        AgentState {
            metrics,
            // Three missed passes, plus room for one slow pass.
            stale_after: resync * 3 + Duration::from_secs(30),
            last: Mutex::new(None),
        }
    }

    /// Records a finished pass.
    pub fn record(&self, report: NodeReport) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some((Instant::now(), report));
        }
    }

    /// The last report, if any.
    pub fn report(&self) -> Option<NodeReport> {
        self.last
            .lock()
            .ok()
            .and_then(|l| l.as_ref().map(|(_, r)| r.clone()))
    }

    fn answer(&self, method: &Method, path: &str) -> (StatusCode, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        if method != Method::GET {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                "GET only\n".to_owned(),
            );
        }
        let last = self.last.lock().ok().and_then(|l| l.clone());
        match path {
            "/healthz" => match last {
                Some((at, _)) if at.elapsed() <= self.stale_after => {
                    (StatusCode::OK, TEXT, "ok\n".to_owned())
                }
                Some((at, _)) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("the reconcile loop last finished {:?} ago\n", at.elapsed()),
                ),
                // Starting: the first pass waits for the Node and tailscaled.
                None => (StatusCode::OK, TEXT, "starting\n".to_owned()),
            },
            "/readyz" => match last {
                Some((_, r)) if !r.network_unavailable => (StatusCode::OK, TEXT, "ok\n".to_owned()),
                Some((_, r)) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("{}: {}\n", r.reason, r.message),
                ),
                None => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "no reconcile has finished yet\n".to_owned(),
                ),
            },
            "/metrics" => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.render(),
            ),
            "/status" => match last {
                Some((_, r)) => (
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_string_pretty(&r).unwrap_or_default() + "\n",
                ),
                None => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    "{\"error\":\"no reconcile has finished yet\"}\n".to_owned(),
                ),
            },
            _ => (
                StatusCode::NOT_FOUND,
                TEXT,
                "not found: /healthz, /readyz, /metrics, /status\n".to_owned(),
            ),
        }
    }
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AgentState>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed on the metrics listener");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (status, content_type, body) = state.answer(req.method(), req.uri().path());
                let response = Response::builder()
                    .status(status)
                    .header(CONTENT_TYPE, content_type)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_default();
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}
