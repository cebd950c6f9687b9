//! Request deadlines as upstream's: `--request-timeout` bounds every request but the
//! long-running ones, a request's `timeout` parameter shortens (never lengthens) it, past it
//! the client gets upstream's 504, a malformed `timeout` is a 400, and watches without
//! `timeoutSeconds` end between `--min-request-timeout` and twice that. A request whose
//! body is only half sent stands for a slow one (real HTTP with curl).

mod common;

use std::time::Duration;

use common::curl::{configmap_requests, curl_cmd, get, half_sent_answer, Reply, CONFIGMAPS};
use common::TestServer;

fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.request_timeout = Duration::from_secs(3);
        c.min_request_timeout = 1;
    })
}

/// A half-sent create at `path` must be answered with upstream's 504 after about `after`.
fn times_out(s: &TestServer, path: &str, after: Duration) {
    let (reply, took) = half_sent_answer(s, path, after + Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{path}: no answer"));
    assert_eq!(reply.code, 504, "{path}: {}", reply.body);
    let status: serde_json::Value = serde_json::from_str(&reply.body).expect("a Status");
    assert_eq!(status["reason"], "Timeout");
    assert_eq!(
        status["message"],
        "Timeout: request did not complete within the allotted timeout"
    );
    assert!(
        took >= after - Duration::from_millis(300) && took < after + Duration::from_secs(3),
        "{path}: answered after {took:?}, deadline {after:?}"
    );
}

#[test]
fn slow_requests_get_upstreams_504_at_their_deadline() {
    let s = server();
    // the flag's deadline, and a shorter one the request asks for
    times_out(&s, CONFIGMAPS, Duration::from_secs(3));
    times_out(
        &s,
        &format!("{CONFIGMAPS}?timeout=1s"),
        Duration::from_secs(1),
    );
    // a longer one is capped by the flag
    times_out(
        &s,
        &format!("{CONFIGMAPS}?timeout=10m"),
        Duration::from_secs(3),
    );
    // the request metrics saw them, as ended in self-defense
    let (answered, terminated) = configmap_requests(&s, "POST", "resource", 504);
    assert!(
        answered >= 3.0 && terminated >= 3.0,
        "{answered} {terminated}"
    );
    // quick requests are not affected
    assert_eq!(get(&s, None, &format!("{CONFIGMAPS}?timeout=2s")).code, 200);
}

#[test]
fn a_malformed_timeout_is_refused() {
    let s = server();
    for (bad, why) in [
        ("abc", r#"time: invalid duration "abc""#),
        ("5", r#"time: missing unit in duration "5""#),
    ] {
        let r = get(&s, None, &format!("{CONFIGMAPS}?timeout={bad}"));
        assert_eq!(r.code, 400, "{}", r.body);
        let status: serde_json::Value = serde_json::from_str(&r.body).expect("a Status");
        assert_eq!(
            status["message"],
            format!("invalid timeout specified in the request URL - {why}")
        );
    }
}

#[test]
fn watches_outlive_the_request_timeout_and_end_after_the_minimum() {
    let s = server();
    s.kubectl(&["create", "configmap", "seen"]);
    let url = format!("{}{CONFIGMAPS}?watch=true", s.server().url());
    // --min-request-timeout 1: the server ends the watch within [1 s, 2 s)
    let started = std::time::Instant::now();
    let out = curl_cmd(&s, None, &["--max-time", "20", &url])
        .output()
        .expect("curl");
    let took = started.elapsed();
    let reply = Reply::parse(&out.stdout);
    assert_eq!(reply.code, 200, "{}", reply.body);
    assert!(reply.body.contains("\"seen\""), "{}", reply.body);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "the watch ended after {took:?}"
    );
    // one that asks for longer than --request-timeout (3 s) gets it
    let started = std::time::Instant::now();
    let out = curl_cmd(
        &s,
        None,
        &["--max-time", "20", &format!("{url}&timeoutSeconds=5")],
    )
    .output()
    .expect("curl");
    let took = started.elapsed();
    let reply = Reply::parse(&out.stdout);
    assert_eq!(reply.code, 200, "{}", reply.body);
    assert!(!reply.body.contains("Timeout"), "{}", reply.body);
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(9),
        "the watch ended after {took:?}"
    );
}
