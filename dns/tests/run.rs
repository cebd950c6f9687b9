//! `dns::run` end to end, as `kaze dns` calls it, before any apiserver exists: it binds,
//! serves, stays unready while the API cannot be listed, and shuts down on request.

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use clap::Parser;
use common::kdig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: dns::Config,
}

fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// An "apiserver" that accepts connections and closes them: every list fails.
async fn unreachable_apiserver() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    addr
}

fn kubeconfig(dir: &std::path::Path, server: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{server}\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_stays_unready_without_the_api_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let api = unreachable_apiserver().await;
    let dns_port = free_port();
    let http_port = free_port();
    let kc = kubeconfig(dir.path(), api);
    let cli = Cli::parse_from([
        "kaze-dns",
        "--bind",
        &format!("127.0.0.1:{dns_port}"),
        "--http-bind",
        &format!("127.0.0.1:{http_port}"),
        "--upstream",
        "127.0.0.1:9",
        "--kubeconfig",
        kc.to_str().unwrap(),
    ]);
    assert_eq!(cli.config.cluster_domain, "cluster.local");
    assert_eq!(cli.config.ttl, 5);
    let shutdown = CancellationToken::new();
    let _cancel_on_panic = shutdown.clone().drop_guard();
    let task = tokio::spawn(dns::run(cli.config, shutdown.clone()));

    let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let started = Instant::now();
    while http_status(http, "/health").await != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(10), "never healthy");
        assert!(!task.is_finished(), "run() ended early: {:?}", task.await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the API cannot be listed, so the zone is not synced: not ready, but answering
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(http_status(http, "/ready").await, Some(503));
    let r = kdig(
        ([127, 0, 0, 1], dns_port).into(),
        "dns-version.cluster.local",
        "TXT",
        &[],
    )
    .await;
    assert_eq!(r.answers, vec!["dns-version.cluster.local. TXT \"1.0.1\""]);

    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run() did not return after cancellation")
        .expect("run() panicked");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_bad_configuration_before_serving() {
    let bad_upstream = Cli::parse_from(["kaze-dns", "--upstream", "not-an-address"]);
    let err = dns::run(bad_upstream.config, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, dns::Error::Upstream { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "parsing upstream \"not-an-address\": expected IP or IP:port"
    );

    let port = free_port();
    let missing = Cli::parse_from([
        "kaze-dns",
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--http-bind",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
    ]);
    let err = dns::run(missing.config, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            dns::Error::Client(component::ClientError::Kubeconfig { .. })
        ),
        "{err}"
    );
}
