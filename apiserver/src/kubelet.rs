//! The apiserver's side of node-level subresources, proxied to the kubelet of the pod's node
//! (the node's address and `status.daemonEndpoints.kubeletEndpoint.Port`, default 10250):
//! `pods/<name>/log` to `/containerLogs/<ns>/<pod>/<container>`, streaming; and
//! `exec`/`attach`/`portforward` to `/exec|/attach/<ns>/<pod>/<container>` and
//! `/portForward/<ns>/<pod>`, where the upgrade (WebSocket `v5.channel.k8s.io` etc., or
//! SPDY) is negotiated end to end and the two connections are spliced byte for byte; and
//! `nodes/<n>/proxy/<path>` to `/<path>` (e.g. `/stats/summary`).
//!
//! As upstream without `--kubelet-certificate-authority`, the kubelet's serving certificate
//! is not verified unless that flag names a CA. The apiserver presents its client
//! certificate (`--kubelet-client-certificate`, by default the one it issues itself), which
//! kubelets verify against the cluster CA (their `--client-ca-file`).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::handlers::Query;
use crate::objects;
use crate::registry::ResourceDef;
use crate::state::AppState;
use crate::status::ApiError;
use crate::Error;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_KUBELET_PORT: u16 = 10250;

pub struct KubeletClient {
    tls: TlsConnector,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeletClient")
    }
}

impl KubeletClient {
    /// A client that verifies kubelets against `ca` (if given) and presents the certificate
    /// and key in `client` (`(cert, key)` files, if given).
    pub fn new(ca: Option<&Path>, client: Option<(&Path, &Path)>) -> Result<KubeletClient, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_err = |what: &str, e: String| Error::Tls {
            reason: format!("{what}: {e}"),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("kubelet client TLS versions", e.to_string()))?;
        let builder = match ca {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let pem = std::fs::read(path)
                    .map_err(Error::io("reading --kubelet-certificate-authority", path))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        tls_err("parsing --kubelet-certificate-authority", e.to_string())
                    })?;
                    roots.add(cert).map_err(|e| {
                        tls_err("loading --kubelet-certificate-authority", e.to_string())
                    })?;
                }
                builder.with_root_certificates(roots)
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(component::https::any_server_cert(provider)),
        };
        let mut config = match client {
            Some((cert, key)) => {
                let id = crate::backend::Identity::load(
                    cert,
                    key,
                    ("--kubelet-client-certificate", "--kubelet-client-key"),
                )?;
                builder
                    .with_client_auth_cert(id.chain(), id.key())
                    .map_err(|e| tls_err("loading --kubelet-client-certificate", e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Send `req` (its URI a path and query) to the kubelet at `host:port`; the response
    /// body streams, and an upgrade (101) can be taken from the response.
    async fn send(
        &self,
        host: &str,
        port: u16,
        mut req: Request<Body>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let url = format!("https://{host}:{port}{}", req.uri());
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
            .await
            .map_err(|_| format!("{} \"{url}\": dial tcp: i/o timeout", req.method()))?
            .map_err(|e| format!("{} \"{url}\": dial tcp: {e}", req.method()))?;
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_string())
                .map_err(|e| format!("kubelet host {host:?}: {e}"))?,
        };
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("\"{url}\": tls: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("\"{url}\": {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "kubelet connection ended");
            }
        });
        req.headers_mut().insert(
            header::HOST,
            header::HeaderValue::from_str(&format!("{host}:{port}")).map_err(|e| e.to_string())?,
        );
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("\"{url}\": {e}"))
    }

    pub(crate) async fn get(
        &self,
        host: &str,
        port: u16,
        path_and_query: &str,
    ) -> Result<Response, String> {
        let req = Request::get(path_and_query)
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        Ok(self.send(host, port, req).await?.map(Body::new))
    }
}

/// Where a node's kubelet listens.
pub(crate) fn kubelet_address(node: &Value) -> (String, u16) {
    let addresses = node.pointer("/status/addresses").and_then(Value::as_array);
    let by_type = |ty: &str| {
        addresses
            .into_iter()
            .flatten()
            .find(|a| a["type"] == ty)
            .and_then(|a| a["address"].as_str())
            .map(String::from)
    };
    let host = by_type("InternalIP")
        .or_else(|| by_type("ExternalIP"))
        .or_else(|| by_type("Hostname"))
        .unwrap_or_else(|| {
            crate::meta::meta_str(node, "name")
                .unwrap_or("")
                .to_string()
        });
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    (host, port)
}

/// Query parameters of `pods/log` the kubelet understands, passed through as given.
const LOG_PARAMS: &[&str] = &[
    "follow",
    "previous",
    "sinceSeconds",
    "sinceTime",
    "timestamps",
    "tailLines",
    "limitBytes",
    "insecureSkipTLSVerifyBackend",
];

/// The pod's node's kubelet and the container a request is for (`None` when `container`
/// is not needed, as for port-forward).
async fn resolve(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    container: Option<&str>,
    need_container: bool,
) -> Result<(String, u16, Option<String>), ApiError> {
    let pod = objects::get(state, def, ns, name).await?;
    let containers: Vec<&str> = [
        "/spec/initContainers",
        "/spec/containers",
        "/spec/ephemeralContainers",
    ]
    .iter()
    .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
    .flatten()
    .filter_map(|c| c["name"].as_str())
    .collect();
    let main: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match container.filter(|c| !c.is_empty()) {
        _ if !need_container => None,
        Some(c) if containers.contains(&c) => Some(c.to_string()),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None if main.len() == 1 => Some(main[0].to_string()),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                main.join(" ")
            )))
        }
    };
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let node_def = state
        .registry
        .get("", "v1", "nodes")
        .expect("nodes are built in");
    let node = objects::get(state, node_def, None, node_name)
        .await
        .map_err(|e| {
            if e.code == 404 {
                ApiError::bad_request(format!("pod {name}'s node {node_name} does not exist"))
            } else {
                e
            }
        })?;
    let (host, port) = kubelet_address(&node);
    Ok((host, port, container))
}

pub async fn pod_log(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    q: &Query,
) -> Result<Response, ApiError> {
    let (host, port, container) = resolve(
        state,
        def,
        ns,
        name,
        q.get("container").map(String::as_str),
        true,
    )
    .await?;
    let container = container.unwrap_or_default();
    let ns = ns.unwrap_or("default");
    let query: Vec<String> = LOG_PARAMS
        .iter()
        .filter_map(|k| {
            q.get(*k).map(|v| {
                format!(
                    "{k}={}",
                    form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                )
            })
        })
        .collect();
    let mut path = format!("/containerLogs/{ns}/{name}/{container}");
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let resp = state
        .kubelet
        .get(&host, port, &path)
        .await
        .map_err(ApiError::internal)?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
            .await
            .unwrap_or_default();
        let mut e = ApiError::internal(format!(
            "the kubelet answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
        if status == StatusCode::NOT_FOUND {
            e = ApiError::not_found("pods/log", "", name);
        }
        // the kubelet's own words, as upstream's response checker passes a 400 on
        // (`previous terminated container "c" in pod "p" not found`)
        if status == StatusCode::BAD_REQUEST {
            e = ApiError::bad_request(String::from_utf8_lossy(&body).trim().to_string());
        }
        return Err(e);
    }
    let (parts, body) = resp.into_parts();
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(header::HeaderValue::from_static("text/plain"));
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, ct)], body).into_response())
}

/// A `nodes/<n>/proxy/<path>` request as it arrived.
#[derive(Debug)]
pub struct ProxyRequest<'a> {
    pub method: axum::http::Method,
    pub headers: axum::http::HeaderMap,
    /// What follows `proxy` (empty or starting with `/`), still percent-encoded.
    pub path: &'a str,
    pub query: &'a str,
    pub body: bytes::Bytes,
}

/// Request headers passed on to the kubelet.
const PROXIED_HEADERS: &[&str] = &["accept", "content-type", "accept-encoding"];

/// `nodes/<node>[:<port>]/proxy/<path>`: send the request to the node's kubelet at `/<path>`
/// and stream its answer back (`kubectl get --raw /api/v1/nodes/<n>/proxy/stats/summary`,
/// metrics-server). Upgrades are not proxied.
pub async fn node_proxy(
    state: &AppState,
    node: &str,
    req: ProxyRequest<'_>,
) -> Result<Response, ApiError> {
    let (name, port) = match node.split_once(':') {
        Some((n, p)) => {
            let port = p
                .parse::<u16>()
                .map_err(|_| ApiError::bad_request(format!("invalid port in node {node:?}")))?;
            (n, Some(port))
        }
        None => (node, None),
    };
    let node_def = state
        .registry
        .get("", "v1", "nodes")
        .expect("nodes are built in");
    let obj = objects::get(state, node_def, None, name).await?;
    let (host, default_port) = kubelet_address(&obj);
    let path = if req.path.is_empty() { "/" } else { req.path };
    let uri = if req.query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", req.query)
    };
    let mut kreq = Request::builder().method(req.method).uri(uri);
    for (k, v) in &req.headers {
        if PROXIED_HEADERS.contains(&k.as_str()) {
            kreq = kreq.header(k, v);
        }
    }
    let kreq = kreq
        .body(Body::from(req.body))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let resp = state
        .kubelet
        .send(&host, port.unwrap_or(default_port), kreq)
        .await
        .map_err(|e| ApiError::internal(format!("error trying to reach the kubelet: {e}")))?;
    let (parts, body) = resp.into_parts();
    let mut out = Response::builder().status(parts.status);
    for k in [header::CONTENT_TYPE, header::CONTENT_ENCODING] {
        if let Some(v) = parts.headers.get(&k) {
            out = out.header(k, v);
        }
    }
    out.body(Body::new(body))
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kubelet_address_prefers_internal_ip_and_reported_port() {
        let node = json!({"metadata": {"name": "n1"}, "status": {
            "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10251}}}});
        assert_eq!(kubelet_address(&node), ("10.0.0.5".to_string(), 10251));
        assert_eq!(
            kubelet_address(&json!({"metadata": {"name": "n2"}})),
            ("n2".to_string(), 10250)
        );
    }
}

/// An exec/attach/port-forward request as it arrived.
#[derive(Debug)]
pub struct StreamRequest {
    pub method: axum::http::Method,
    pub headers: axum::http::HeaderMap,
    /// Passed through untouched: `command` repeats, which a map would lose.
    pub raw_query: String,
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Headers that carry the upgrade negotiation (WebSocket `v5.channel.k8s.io` and friends,
/// or SPDY) between the client and the kubelet.
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "sec-websocket-accept",
    "x-stream-protocol-version",
];

/// `pods/<n>/exec|attach|portforward`: forward the upgrade request to the kubelet and, once
/// it switches protocols, splice the client's connection to the kubelet's byte for byte.
pub async fn stream(
    state: &AppState,
    t: &crate::handlers::Target,
    req: StreamRequest,
) -> Result<Response, ApiError> {
    let name = t.name.as_deref().unwrap_or("");
    let ns = t.namespace.as_deref();
    let wants_upgrade = req
        .headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
    let Some(client_upgrade) = req.upgrade.filter(|_| wants_upgrade) else {
        return Err(ApiError::bad_request("Upgrade request required"));
    };
    let q = crate::handlers::parse_query(Some(&req.raw_query));
    let sub = t.sub.expect("stream is only called for subresources");
    let need_container = sub != crate::registry::Sub::PortForward;
    let (host, port, container) = resolve(
        state,
        &t.def,
        ns,
        name,
        q.get("container").map(String::as_str),
        need_container,
    )
    .await?;
    let ns = ns.unwrap_or("default");
    let path = match (sub, container) {
        (crate::registry::Sub::Exec, Some(c)) => format!("/exec/{ns}/{name}/{c}"),
        (crate::registry::Sub::Attach, Some(c)) => format!("/attach/{ns}/{name}/{c}"),
        _ => format!("/portForward/{ns}/{name}"),
    };
    let uri = if req.raw_query.is_empty() {
        path
    } else {
        format!("{path}?{}", req.raw_query)
    };
    let mut kreq = Request::builder().method(req.method).uri(uri);
    for (k, v) in &req.headers {
        if UPGRADE_HEADERS.contains(&k.as_str()) {
            kreq = kreq.header(k, v);
        }
    }
    let kreq = kreq
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut kresp = state
        .kubelet
        .send(&host, port, kreq)
        .await
        .map_err(ApiError::internal)?;
    if kresp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = kresp.status();
        let body = axum::body::to_bytes(Body::new(kresp.into_body()), 64 * 1024)
            .await
            .unwrap_or_default();
        return Err(ApiError::internal(format!(
            "the kubelet did not upgrade the connection ({status}): {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    let kubelet_upgrade = hyper::upgrade::on(&mut kresp);
    let mut resp = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in kresp.headers() {
        if UPGRADE_HEADERS.contains(&k.as_str()) {
            resp = resp.header(k, v);
        }
    }
    // the request's audit ResponseComplete waits for the stream's end
    let audit_hold = crate::audit::hold();
    // counted as a long-running request until the stream ends
    let metrics_hold = crate::metrics::hold();
    tokio::spawn(async move {
        let _audit_hold = audit_hold;
        let _metrics_hold = metrics_hold;
        match tokio::try_join!(client_upgrade, kubelet_upgrade) {
            Ok((client, kubelet)) => {
                let (mut c, mut k) = (TokioIo::new(client), TokioIo::new(kubelet));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut k).await {
                    tracing::debug!(error = %e, "stream between client and kubelet ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrading the stream connections"),
        }
    });
    resp.body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))
}
