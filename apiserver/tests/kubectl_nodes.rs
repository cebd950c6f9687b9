//! kubectl against node-facing parts of the apiserver: node and pod tables, and `logs` /
//! `exec` proxied to a fake kubelet.

mod common;

use common::TestServer;

#[test]
fn pod_and_node_tables_have_the_usual_columns() {
    let s = TestServer::start();
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {node-role.kubernetes.io/control-plane: \"\"}\nstatus:\n  conditions: [{type: Ready, status: \"True\"}]\n  nodeInfo: {kubeletVersion: v1.37.0-kaze, osImage: Debian, kernelVersion: \"6.1\", containerRuntimeVersion: containerd://1.6.20, machineID: m, systemUUID: u, bootID: b, operatingSystem: linux, architecture: amd64, kubeProxyVersion: \"\"}\n  addresses: [{type: InternalIP, address: 192.168.1.10}]\n";
    s.kubectl_stdin(&["create", "-f", "-"], Some(node));
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p1}\nspec:\n  nodeName: n1\n  containers: [{name: a, image: nginx}, {name: b, image: busybox}]\n";
    s.kubectl_stdin(&["create", "-f", "-"], Some(pod));

    let nodes = s.kubectl(&["get", "nodes"]);
    let header: Vec<&str> = nodes
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    let row: Vec<&str> = nodes
        .lines()
        .nth(1)
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(
        (row[0], row[1], row[2], row[4]),
        ("n1", "Ready", "control-plane", "v1.37.0-kaze")
    );
    let wide = s.kubectl(&["get", "nodes", "-o", "wide"]);
    assert!(
        wide.contains("INTERNAL-IP")
            && wide.contains("192.168.1.10")
            && wide.contains("containerd://1.6.20"),
        "{wide}"
    );

    let pods = s.kubectl(&["get", "pods", "-o", "wide"]);
    let header: Vec<&str> = pods
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(&header[..5], ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert!(
        header.contains(&"IP") && header.contains(&"NODE"),
        "{header:?}"
    );
    let row: Vec<&str> = pods
        .lines()
        .nth(1)
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(
        (row[0], row[1], row[2], row[3]),
        ("p1", "0/2", "Pending", "0")
    );
    assert!(row.contains(&"n1"), "{row:?}");
    let labels = s.kubectl(&["get", "pods", "--show-labels", "-A"]);
    assert!(
        labels.contains("NAMESPACE") && labels.contains("default"),
        "{labels}"
    );
}

/// A stand-in for a node's kubelet: HTTPS with a self-signed certificate, answering
/// `/containerLogs/<ns>/<pod>/<container>` with a line naming what was asked.
fn start_fake_kubelet(s: &TestServer) -> u16 {
    use axum::extract::{Path, RawQuery};
    use std::sync::Arc;
    use tokio_rustls::rustls;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .expect("self-signed cert");
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let app = axum::Router::new()
        .route(
            "/containerLogs/{ns}/{pod}/{container}",
            axum::routing::get(
                |Path((ns, pod, c)): Path<(String, String, String)>, RawQuery(q): RawQuery| async move {
                    format!("{ns}/{pod}/{c} says hello\nquery={}\n", q.unwrap_or_default())
                },
            ),
        )
        .route("/exec/{ns}/{pod}/{container}", axum::routing::get(fake_exec));
    let listener =
        s.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    s.rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    port
}

/// The kubelet's exec endpoint, as far as kubectl can tell: a WebSocket in the
/// `v5.channel.k8s.io` protocol that writes the command line to stdout (channel 1) and ends
/// with a Success status on the error channel (3).
async fn fake_exec(
    axum::extract::Path((ns, pod, c)): axum::extract::Path<(String, String, String)>,
    mut req: axum::extract::Request,
) -> axum::response::Response {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let key = req
        .headers()
        .get("sec-websocket-key")
        .cloned()
        .expect("a websocket key");
    let offered = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        offered.contains("v5.channel.k8s.io"),
        "kubectl offers v5: {offered}"
    );
    let commands: Vec<String> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.into_owned())
        .collect();
    let upgrade = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .expect("upgradable");
    tokio::spawn(async move {
        let io = hyper_util::rt::TokioIo::new(upgrade.await.expect("upgraded"));
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            io,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let mut out = vec![1u8];
        out.extend(format!("{ns}/{pod}/{c} ran {}\n", commands.join(" ")).into_bytes());
        ws.send(Message::binary(out)).await.expect("stdout frame");
        let mut status = vec![3u8];
        status.extend(br#"{"metadata":{},"status":"Success"}"#);
        ws.send(Message::binary(status))
            .await
            .expect("status frame");
        let _ = ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    });
    axum::response::Response::builder()
        .status(101)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-protocol", "v5.channel.k8s.io")
        .header(
            "sec-websocket-accept",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .body(axum::body::Body::empty())
        .expect("101 response")
}

#[test]
fn logs_and_exec_are_proxied_to_the_nodes_kubelet() {
    let s = TestServer::start();
    let port = start_fake_kubelet(&s);
    let node = format!("apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\nstatus:\n  addresses: [{{type: InternalIP, address: 127.0.0.1}}]\n  daemonEndpoints: {{kubeletEndpoint: {{Port: {port}}}}}\n");
    s.kubectl_stdin(&["create", "-f", "-"], Some(&node));
    let pods = "apiVersion: v1\nkind: Pod\nmetadata: {name: two}\nspec:\n  nodeName: n1\n  containers: [{name: a, image: img-a}, {name: b, image: img-b}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: one}\nspec:\n  nodeName: n1\n  containers: [{name: only, image: x}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: pending}\nspec:\n  containers: [{name: c, image: x}]\n";
    s.kubectl_stdin(&["create", "-f", "-"], Some(pods));

    let out = s.kubectl(&["logs", "two", "-c", "b", "--tail=3", "--timestamps"]);
    assert!(out.contains("default/two/b says hello"), "{out}");
    assert!(
        out.contains("tailLines=3") && out.contains("timestamps=true"),
        "query passed through: {out}"
    );
    let out = s.kubectl(&["logs", "one"]);
    assert!(
        out.contains("default/one/only says hello"),
        "the only container is the default: {out}"
    );
    // kubectl picks the first container itself; the raw API asks for one.
    let out = s.kubectl(&["logs", "two"]);
    assert!(out.contains("default/two/a says hello"), "{out}");
    let err = s.kubectl_fails(
        &["get", "--raw", "/api/v1/namespaces/default/pods/two/log"],
        None,
    );
    assert!(
        err.contains("a container name must be specified for pod two, choose one of: [a b]"),
        "{err}"
    );
    let err = s.kubectl_fails(&["logs", "pending"], None);
    assert!(
        err.contains("pod pending does not have a host assigned"),
        "{err}"
    );
    // exec upgrades through the apiserver to the kubelet (WebSocket, v5.channel.k8s.io).
    let out = s.kubectl(&["exec", "two", "-c", "b", "--", "echo", "hi there"]);
    assert_eq!(out, "default/two/b ran echo hi there\n");
    let err = s.kubectl_fails(
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/two/exec?command=ls",
        ],
        None,
    );
    assert!(err.contains("Upgrade request required"), "{err}");

    let err = s.kubectl_fails(&["logs", "two", "-c", "zz"], None);
    assert!(
        err.contains("container zz is not valid for pod two"),
        "{err}"
    );
}
