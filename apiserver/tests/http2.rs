//! HTTP/2 by ALPN: kubectl and curl get `h2`, HTTP/1.1 clients still work, a hundred
//! watches share one connection, and a watch over h2 ends cleanly at shutdown.

mod common;

use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use common::TestServer;

/// `curl` against the server as the admin: (HTTP version curl used, body).
fn curl(s: &TestServer, version_flag: &str, path: &str) -> (String, String) {
    curl_with(s, version_flag, path, &[])
}

/// [`curl`] with more arguments (headers).
fn curl_with(s: &TestServer, version_flag: &str, path: &str, args: &[&str]) -> (String, String) {
    let server = s.server();
    let out = Command::new("curl")
        .args(["-sS", "--fail", version_flag, "--cacert"])
        .arg(server.ca_file())
        .args(["-H", &format!("Authorization: Bearer {}", server.token())])
        .args(args)
        .args(["-w", "\n%{http_version}"])
        .arg(format!("{}{path}", server.url()))
        .output()
        .expect("running curl");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl {version_flag} {path}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, version) = stdout.rsplit_once('\n').expect("curl's -w line");
    (version.to_string(), body.to_string())
}

/// The server's count of requests that came in over `protocol`, read over HTTP/1.1.
fn requests_over(s: &TestServer, protocol: &str) -> u64 {
    let (_, metrics) = curl(s, "--http1.1", "/metrics");
    let prefix = format!("kaze_apiserver_requests_by_protocol_total{{protocol=\"{protocol}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|n| n.parse().expect("a count"))
        .unwrap_or(0)
}

#[test]
fn kubectl_and_curl_speak_http2_and_http11_still_works() {
    let s = TestServer::start();

    let (version, body) = curl(&s, "--http2", "/api/v1/namespaces/default/configmaps");
    assert_eq!(version, "2", "curl negotiated h2");
    assert!(body.contains("ConfigMapList"), "{body}");
    // headers past hyper's h2 default of 16 KiB, which HTTP/1.1 takes
    let big = format!("X-Big: {}", "a".repeat(30 << 10));
    let (version, _) = curl_with(&s, "--http2", "/version", &["-H", &big]);
    assert_eq!(version, "2");
    let (version, body) = curl(&s, "--http1.1", "/api/v1/namespaces/default/configmaps");
    assert_eq!(version, "1.1", "an HTTP/1.1 client is served HTTP/1.1");
    assert!(body.contains("ConfigMapList"), "{body}");

    let (h2_before, h1_before) = (requests_over(&s, "HTTP/2.0"), requests_over(&s, "HTTP/1.1"));
    s.kubectl(&["create", "configmap", "h2-by-kubectl", "--from-literal=a=b"]);
    let got = s.kubectl(&["get", "configmap", "h2-by-kubectl", "-o", "name"]);
    assert_eq!(got.trim(), "configmap/h2-by-kubectl");
    let (h2_after, h1_after) = (requests_over(&s, "HTTP/2.0"), requests_over(&s, "HTTP/1.1"));
    // discovery (unless cached), the create, the get: over h2 ...
    assert!(
        h2_after >= h2_before + 2,
        "kubectl's requests came in over HTTP/2: {h2_before} before, {h2_after} after"
    );
    // ... and none over HTTP/1.1: only the two /metrics reads in between
    assert_eq!(
        h1_after,
        h1_before + 2,
        "HTTP/1.1 requests other than this test's /metrics reads"
    );
}

/// An h2 connection to the server (ALPN `h2` only, checked) and how many streams the server
/// lets it open, updated as its SETTINGS arrive.
async fn h2_connect(
    s: &apiserver::RunningServer,
) -> (
    h2::client::SendRequest<Bytes>,
    Arc<AtomicUsize>,
    JoinHandle<Result<(), h2::Error>>,
) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(s.ca_pem().as_bytes()) {
        roots.add(cert.expect("CA pem")).expect("CA cert");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let addr = s.local_addr();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the server chose h2"
    );
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    let streams = Arc::new(AtomicUsize::new(0));
    let seen = streams.clone();
    let mut conn = Box::pin(conn);
    let task = tokio::spawn(std::future::poll_fn(move |cx| {
        let r = conn.as_mut().poll(cx);
        seen.store(conn.max_concurrent_send_streams(), Ordering::SeqCst);
        r
    }));
    (send, streams, task)
}

/// A watch of the default namespace's ConfigMaps named `name`, as a stream on `send`.
async fn watch(
    s: &apiserver::RunningServer,
    send: &mut h2::client::SendRequest<Bytes>,
    name: &str,
) -> h2::RecvStream {
    let uri = format!(
        "{}/api/v1/namespaces/default/configmaps?watch=true&fieldSelector=metadata.name%3D{name}",
        s.url()
    );
    let req = axum::http::Request::get(uri)
        .header("authorization", format!("Bearer {}", s.token()))
        .body(())
        .expect("request");
    *send = send.clone().ready().await.expect("stream capacity");
    let (resp, _) = send.send_request(req, true).expect("sending the watch");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("watch response in time")
        .expect("watch response");
    assert_eq!(resp.status(), 200, "watch {name}");
    assert_eq!(resp.version(), axum::http::Version::HTTP_2);
    resp.into_body()
}

/// Read `body` until its text holds `needle` and the rest of that event's line (or fail
/// after 10 s); returns what was read. An event may arrive split over DATA frames when a
/// hundred streams share the connection's flow-control window, so the needle alone is not
/// the whole event.
async fn read_until(body: &mut h2::RecvStream, needle: &str) -> String {
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let whole = |text: &str| {
        text.find(needle)
            .is_some_and(|at| text[at..].contains('\n'))
    };
    while !whole(&text) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, body.data())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in time; read {text:?}"))
            .unwrap_or_else(|| panic!("stream ended before {needle:?}; read {text:?}"))
            .expect("watch data");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

#[test]
fn a_hundred_watches_share_one_h2_connection() {
    let s = TestServer::start();
    let (mut send, streams, conn) = s.rt.block_on(h2_connect(s.server()));
    let mut bodies = s.rt.block_on(async {
        let mut bodies = Vec::new();
        for _ in 0..100 {
            bodies.push(watch(s.server(), &mut send, "shared").await);
        }
        bodies
    });
    assert_eq!(
        streams.load(Ordering::SeqCst),
        apiserver::DEFAULT_HTTP2_MAX_STREAMS as usize,
        "the server's SETTINGS_MAX_CONCURRENT_STREAMS"
    );

    s.kubectl(&["create", "configmap", "shared", "--from-literal=k=v1"]);
    s.rt.block_on(async {
        for (i, body) in bodies.iter_mut().enumerate() {
            let text = read_until(body, "\"ADDED\"").await;
            assert!(text.contains("\"name\":\"shared\""), "watch {i}: {text}");
        }
    });
    s.kubectl(&["label", "configmap", "shared", "changed=yes"]);
    s.rt.block_on(async {
        for (i, body) in bodies.iter_mut().enumerate() {
            let text = read_until(body, "\"MODIFIED\"").await;
            assert!(text.contains("\"changed\":\"yes\""), "watch {i}: {text}");
        }
    });
    assert!(!conn.is_finished(), "one connection carried them all");
    drop(bodies);
    conn.abort();
}

#[test]
fn a_watch_over_h2_ends_cleanly_at_shutdown() {
    let mut s = TestServer::start();
    let (mut send, _, conn) = s.rt.block_on(h2_connect(s.server()));
    let mut body = s.rt.block_on(watch(s.server(), &mut send, "any"));
    drop(send);
    let reader = s.rt.spawn(async move {
        let mut text = String::new();
        while let Some(chunk) = body.data().await {
            // an RST_STREAM or a GOAWAY with an error would be an Err here
            let chunk = chunk.map_err(|e| format!("{e}; read {text:?}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        Ok::<_, String>(text)
    });

    let started = Instant::now();
    let server = s.server.take().expect("server");
    s.rt.block_on(server.shutdown());
    let took = started.elapsed();
    let ended =
        s.rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), reader).await })
            .expect("the watch stream ended")
            .expect("reader task");
    assert!(ended.is_ok(), "the watch ended with END_STREAM: {ended:?}");
    let closed =
        s.rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), conn).await })
            .expect("the connection closed")
            .expect("connection task");
    assert!(
        closed.is_ok(),
        "the connection closed by GOAWAY: {closed:?}"
    );
    // the watch ended itself: no wait for the drain timeout (5 s) to abort it
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
}
