//! Calling one webhook: where it is (`clientConfig.url`, or `clientConfig.service` resolved to
//! one of the Service's ready endpoints), TLS verified against `clientConfig.caBundle`, one
//! POST of the AdmissionReview, the whole call bounded by `timeoutSeconds`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request};
use base64::Engine;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::state::AppState;

/// Largest AdmissionReview response read (upstream limits responses the same way).
const MAX_RESPONSE: usize = 3 * 1024 * 1024;

/// Where to connect and what the server's certificate must name.
#[derive(Debug)]
struct Target {
    /// The URL as upstream prints it in errors (`https://svc.ns.svc:443/path?timeout=10s`).
    url: String,
    connect: (String, u16),
    server_name: String,
    path_and_query: String,
}

/// POST `review` to the webhook described by `hook`; the response's JSON, or upstream's
/// error text (`failed to call webhook: ...`, without the `failed calling webhook` prefix).
pub async fn call(state: &AppState, hook: &Value, review: &Value) -> Result<Value, String> {
    let timeout = hook
        .get("timeoutSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(10);
    let cc = hook.get("clientConfig").cloned().unwrap_or(Value::Null);
    let target = target(state, &cc, timeout).await?;
    let url = target.url.clone();
    match tokio::time::timeout(
        Duration::from_secs(timeout),
        post(&state.webhooks.pool, &cc, target, review),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(format!(
            "failed to call webhook: Post \"{url}\": context deadline exceeded"
        )),
    }
}

async fn target(state: &AppState, cc: &Value, timeout: u64) -> Result<Target, String> {
    if let Some(url) = cc.get("url").and_then(Value::as_str) {
        let uri: axum::http::Uri = url
            .parse()
            .map_err(|e| format!("failed to call webhook: parsing url {url:?}: {e}"))?;
        let host = uri
            .host()
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let path = uri.path();
        let path_and_query = format!("{path}?timeout={timeout}s");
        return Ok(Target {
            url: format!("{url}?timeout={timeout}s"),
            connect: (host.clone(), port),
            server_name: host,
            path_and_query,
        });
    }
    let svc = cc.get("service").cloned().unwrap_or(Value::Null);
    let s = |f: &str| svc.get(f).and_then(Value::as_str).unwrap_or("").to_string();
    let (ns, name) = (s("namespace"), s("name"));
    let port = svc.get("port").and_then(Value::as_u64).unwrap_or(443);
    let path = match s("path") {
        p if p.is_empty() => "/".to_string(),
        p => p,
    };
    let host = format!("{name}.{ns}.svc");
    let url = format!("https://{host}:{port}{path}?timeout={timeout}s");
    let connect = resolve_service(state, &ns, &name, port)
        .await
        .map_err(|e| format!("failed to call webhook: Post \"{url}\": {e}"))?;
    Ok(Target {
        url,
        connect,
        server_name: host,
        path_and_query: format!("{path}?timeout={timeout}s"),
    })
}

/// A ready endpoint of Service `ns/name` serving its port `port`: the Service's
/// `targetPort` on one of the addresses its Endpoints list (its EndpointSlices when there are
/// no Endpoints). The apiserver runs on a host that routes to pod IPs (and to 127.0.0.1 for
/// host-network webhooks), so it dials the endpoint itself rather than the ClusterIP, which
/// only nodes' service proxies answer. Read from the watch cache.
async fn resolve_service(
    state: &AppState,
    ns: &str,
    name: &str,
    port: u64,
) -> Result<(String, u16), String> {
    let get = |group, plural, filter| async move {
        let def = state
            .registry
            .get(group, "v1", plural)
            .ok_or_else(|| format!("{plural} are not served"))?;
        super::cached(state, def, Some(ns), filter)
            .await
            .map_err(|e| e.message)
    };
    let by_name = format!("metadata.name={name}");
    let svc = match get("", "services", (by_name.as_str(), "")).await?.pop() {
        Some(svc) => svc,
        // created a moment ago: the store decides
        None => {
            let def = state.registry.get("", "v1", "services");
            let def = def.ok_or("services are not served")?;
            crate::objects::get(state, def, Some(ns), name)
                .await
                .map_err(|_| format!("service \"{name}\" not found"))?
        }
    };
    let svc_port = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .and_then(|ps| ps.iter().find(|p| p["port"].as_u64() == Some(port)))
        .ok_or_else(|| format!("service {name}/{ns} has no port {port}"))?;
    let port_name = svc_port.get("name").and_then(Value::as_str).unwrap_or("");
    let named = |ports: Option<&Value>| {
        ports
            .and_then(Value::as_array)
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name)
            })
            .and_then(|p| p.get("port").and_then(Value::as_u64))
            .and_then(|p| u16::try_from(p).ok())
    };
    let eps = get("", "endpoints", (by_name.as_str(), "")).await?;
    for subset in eps
        .iter()
        .filter_map(|e| e.get("subsets").and_then(Value::as_array))
        .flatten()
    {
        let ip = subset
            .get("addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(|a| a.get("ip").and_then(Value::as_str));
        if let (Some(p), Some(ip)) = (named(subset.get("ports")), ip) {
            return Ok((ip.to_string(), p));
        }
    }
    let owned = format!("kubernetes.io/service-name={name}");
    let slices = get("discovery.k8s.io", "endpointslices", ("", owned.as_str())).await?;
    for slice in &slices {
        let Some(p) = named(slice.get("ports")) else {
            continue;
        };
        let ready = slice
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| e.pointer("/conditions/ready") != Some(&Value::Bool(false)));
        if let Some(ip) = ready
            .filter_map(|e| e.pointer("/addresses/0").and_then(Value::as_str))
            .next()
        {
            return Ok((ip.to_string(), p));
        }
    }
    Err(format!("no endpoints available for service \"{name}\""))
}

fn tls(cc: &Value) -> Result<TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(b64) = cc.get("caBundle").and_then(Value::as_str) {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("caBundle: {e}"))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("caBundle: {e}"))?;
            roots.add(cert).map_err(|e| format!("caBundle: {e}"))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Idle connections to webhooks, reused as upstream's HTTP transport keeps them alive: a
/// webhook called for every pod create would otherwise cost a TCP and TLS handshake each.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<SendRequest<Body>>>>,
}

/// (address dialled, name verified, caBundle): connections are only shared by webhooks that
/// would have made the same one.
type PoolKey = (String, u16, String, String);

/// Idle connections kept per key at most.
const MAX_IDLE: usize = 8;

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("webhooks::Pool")
    }
}

impl Pool {
    fn take(&self, key: &PoolKey) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(sender) = list.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, key: PoolKey, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE {
            list.push(sender);
        }
    }
}

async fn dial(cc: &Value, t: &Target) -> Result<SendRequest<Body>, String> {
    let connector = tls(cc)?;
    let (host, port) = (&t.connect.0, t.connect.1);
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
    let name = match t.server_name.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(t.server_name.clone()).map_err(|e| e.to_string())?,
    };
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "webhook connection ended");
        }
    });
    Ok(sender)
}

async fn post(pool: &Pool, cc: &Value, t: Target, review: &Value) -> Result<Value, String> {
    let fail = |e: String| format!("failed to call webhook: Post \"{}\": {e}", t.url);
    let body = serde_json::to_vec(review).map_err(|e| fail(e.to_string()))?;
    let request = || {
        Request::post(t.path_and_query.as_str())
            .header(header::HOST, format!("{}:{}", t.server_name, t.connect.1))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, */*")
            .body(Body::from(body.clone()))
            .map_err(|e| fail(e.to_string()))
    };
    let ca = cc
        .get("caBundle")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let key: PoolKey = (t.connect.0.clone(), t.connect.1, t.server_name.clone(), ca);
    // an idle connection the webhook has closed meanwhile fails at once: then a fresh one
    let pooled = match pool.take(&key) {
        Some(mut sender) => match sender.send_request(request()?).await {
            Ok(resp) => Some((sender, resp)),
            Err(e) => {
                tracing::debug!(error = %e, "reused webhook connection failed; dialling again");
                None
            }
        },
        None => None,
    };
    let (sender, resp) = match pooled {
        Some(r) => r,
        None => {
            let mut sender = dial(cc, &t).await.map_err(fail)?;
            let resp = sender
                .send_request(request()?)
                .await
                .map_err(|e| fail(e.to_string()))?;
            (sender, resp)
        }
    };
    let status = resp.status();
    let bytes = axum::body::to_bytes(Body::new(resp.into_body()), MAX_RESPONSE)
        .await
        .map_err(|e| fail(format!("reading the response: {e}")))?;
    pool.put(key, sender);
    if !status.is_success() {
        return Err(format!(
            "received invalid webhook response: expected status 200, got {}: {}",
            status.as_u16(),
            String::from_utf8_lossy(&bytes).trim()
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("received invalid webhook response: decoding the response: {e}"))
}
