//! The client against a scripted fake tailscaled: the exact requests it
//! makes, and how each failure reads.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use super::fake::{recorded, Exchange, FakeTailscaled, Reply};
use super::*;
use crate::test_support::tempdir;

fn client_for(fake: &FakeTailscaled) -> LocalApiClient {
    LocalApiClient::new(fake.socket()).with_timeout(Duration::from_secs(5))
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().expect("test prefix")
}

#[tokio::test]
async fn status_is_a_plain_get_and_decodes_a_recorded_answer() {
    let fake = FakeTailscaled::start(vec![
        Exchange::new(
            "GET",
            "/localapi/v0/status",
            Reply::Json(200, recorded("status-needs-login.json")),
        ),
        Exchange::new(
            "GET",
            "/localapi/v0/status?peers=false",
            Reply::Json(200, recorded("status-running-synthesized.json")),
        ),
    ]);
    let client = client_for(&fake);
    let status = client.status().await.expect("status");
    assert_eq!(status.backend_state, BackendState::NeedsLogin);
    let status = client.status_without_peers().await.expect("status");
    assert_eq!(status.backend_state, BackendState::Running);
    fake.finish();
}

#[tokio::test]
async fn prefs_are_read_with_get_and_edited_with_a_masked_patch() {
    let fake = FakeTailscaled::start(vec![
        Exchange::new(
            "GET",
            "/localapi/v0/prefs",
            Reply::Json(200, recorded("prefs-fresh.json")),
        ),
        Exchange::new(
            "PATCH",
            "/localapi/v0/prefs",
            Reply::Json(200, recorded("prefs-after-patch.json")),
        )
        .with_body(json!({
            "AdvertiseRoutes": ["10.244.1.0/24"], "AdvertiseRoutesSet": true,
            "RouteAll": true, "RouteAllSet": true,
            "NoSNAT": true, "NoSNATSet": true,
            "NoStatefulFiltering": true, "NoStatefulFilteringSet": true,
        })),
    ]);
    let client = client_for(&fake);
    assert!(client
        .prefs()
        .await
        .expect("prefs")
        .advertise_routes
        .is_empty());
    let edit = MaskedPrefs::new()
        .advertise_routes(vec![net("10.244.1.0/24")])
        .route_all(true)
        .no_snat(true)
        .no_stateful_filtering(true);
    let after = client.patch_prefs(&edit).await.expect("patch");
    assert_eq!(after.advertise_routes, vec![net("10.244.1.0/24")]);
    assert!(after.no_snat && after.route_all);
    fake.finish();
}

#[tokio::test]
async fn watch_streams_each_line_as_a_notify_and_ends_when_tailscaled_closes_it() {
    let lines: Vec<(Duration, String)> = recorded("watch-initial-state-prefs-then-patch.jsonl")
        .lines()
        .map(|l| (Duration::from_millis(20), l.to_owned()))
        .collect();
    let fake = FakeTailscaled::start(vec![Exchange::new(
        "GET",
        "/localapi/v0/watch-ipn-bus?mask=6",
        Reply::Lines(lines),
    )]);
    let client = client_for(&fake);
    let mut watch = client
        .watch_ipn_bus(WatchMask::INITIAL_STATE | WatchMask::INITIAL_PREFS)
        .await
        .expect("watch");
    let first = watch.next().await.expect("a message").expect("decodes");
    assert_eq!(first.state, Some(BackendState::NeedsLogin));
    let second = watch.next().await.expect("a message").expect("decodes");
    assert_eq!(
        second.prefs.expect("prefs change").advertise_routes,
        vec![net("10.244.1.0/24")]
    );
    let third = watch.next().await.expect("a message").expect("decodes");
    assert!(third.health);
    assert!(watch.next().await.is_none(), "the watch ends with the body");
    fake.finish();
}

#[tokio::test]
async fn a_bad_line_on_the_bus_is_an_error_and_the_watch_goes_on() {
    let fake = FakeTailscaled::start(vec![Exchange::new(
        "GET",
        "/localapi/v0/watch-ipn-bus?mask=0",
        Reply::Lines(vec![
            (Duration::ZERO, "{not json".to_owned()),
            (
                Duration::ZERO,
                r#"{"Version":"1.98.10","State":6}"#.to_owned(),
            ),
        ]),
    )]);
    let client = client_for(&fake);
    let mut watch = client
        .watch_ipn_bus(WatchMask::empty())
        .await
        .expect("watch");
    let err = watch.next().await.expect("an item").expect_err("bad line");
    assert_eq!(err.kind(), "json");
    assert!(err.to_string().contains("{not json"), "{err}");
    let next = watch.next().await.expect("an item").expect("decodes");
    assert_eq!(next.state, Some(BackendState::Running));
    fake.finish();
}

#[tokio::test]
async fn a_missing_socket_asks_whether_tailscaled_runs() {
    let dir = tempdir();
    let socket = dir.path().join("tailscaled.sock");
    let err = LocalApiClient::new(&socket)
        .status()
        .await
        .expect_err("no socket");
    assert_eq!(err.kind(), "socket_missing");
    let message = err.to_string();
    assert!(message.contains("is tailscaled running?"), "{message}");
    assert!(message.contains(&socket.display().to_string()), "{message}");
}

#[tokio::test]
async fn a_socket_nobody_listens_on_says_tailscaled_is_gone() {
    let dir = tempdir();
    let socket = dir.path().join("tailscaled.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let err = LocalApiClient::new(&socket)
        .prefs()
        .await
        .expect_err("stale socket");
    assert_eq!(err.kind(), "not_listening", "{err}");
}

#[tokio::test]
async fn refusals_and_failures_carry_tailscaleds_explanation() {
    let fake = FakeTailscaled::start(vec![
        // What tailscaled answers to a request with a Referer (recorded).
        Exchange::new(
            "GET",
            "/localapi/v0/status",
            Reply::Text(403, "invalid localapi request\n".to_owned()),
        ),
        // An edit EditPrefs rejects: JSON error body.
        Exchange::new(
            "PATCH",
            "/localapi/v0/prefs",
            Reply::Json(400, r#"{"Error":"cannot advertise that"}"#.to_owned()),
        )
        .with_body(json!({"NoSNAT": true, "NoSNATSet": true})),
        // A body it cannot parse: plain text (recorded).
        Exchange::new(
            "GET",
            "/localapi/v0/prefs",
            Reply::Text(400, "netip.ParsePrefix(\"bogus\"): no '/'\n".to_owned()),
        ),
    ]);
    let client = client_for(&fake);

    let err = client.status().await.expect_err("403");
    assert_eq!(err.kind(), "forbidden");
    let message = err.to_string();
    assert!(message.contains("invalid localapi request"), "{message}");
    assert!(message.contains("GET /localapi/v0/status"), "{message}");

    let err = client
        .patch_prefs(&MaskedPrefs::new().no_snat(true))
        .await
        .expect_err("400");
    assert!(
        matches!(&err, LocalApiError::Status { status: 400, message, .. } if message == "cannot advertise that"),
        "{err:?}"
    );

    let err = client.prefs().await.expect_err("400");
    assert!(err.to_string().contains("no '/'"), "{err}");
    fake.finish();
}

#[tokio::test]
async fn an_answer_that_is_not_the_expected_json_says_so_and_shows_it() {
    let fake = FakeTailscaled::start(vec![
        Exchange::new(
            "GET",
            "/localapi/v0/status",
            Reply::Json(200, "<html>surprise</html>".to_owned()),
        ),
        Exchange::new(
            "GET",
            "/localapi/v0/status",
            Reply::Json(200, r#"{"Version":"1.98.10"}"#.to_owned()),
        ),
    ]);
    let client = client_for(&fake);
    let err = client.status().await.expect_err("garbage");
    assert_eq!(err.kind(), "json");
    assert!(err.to_string().contains("<html>surprise</html>"), "{err}");
    let err = client.status().await.expect_err("no BackendState");
    assert!(err.to_string().contains("BackendState"), "{err}");
    fake.finish();
}

#[tokio::test]
async fn a_stalled_tailscaled_times_out_every_kind_of_call() {
    let fake = FakeTailscaled::start(vec![
        Exchange::new("GET", "/localapi/v0/status", Reply::Stall),
        Exchange::new("GET", "/localapi/v0/watch-ipn-bus?mask=2", Reply::Stall),
    ]);
    let timeout = Duration::from_millis(300);
    let client = LocalApiClient::new(fake.socket()).with_timeout(timeout);

    let started = Instant::now();
    let err = client.status().await.expect_err("stalls");
    let took = started.elapsed();
    assert_eq!(err.kind(), "timeout");
    assert!(took >= timeout && took < timeout * 10, "took {took:?}");
    assert!(err.to_string().contains("GET /localapi/v0/status"), "{err}");

    let err = client
        .watch_ipn_bus(WatchMask::INITIAL_STATE)
        .await
        .expect_err("stalls");
    assert_eq!(err.kind(), "timeout");
    assert!(fake.dir().exists());
    fake.finish();
}
