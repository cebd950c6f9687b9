//! Calling one webhook: where it is (`clientConfig.url`, or `clientConfig.service` resolved to
//! one of the Service's ready endpoints), TLS verified against `clientConfig.caBundle`, one
//! POST of the AdmissionReview, the whole call bounded by `timeoutSeconds`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request};
use serde_json::Value;

use crate::backend::{self, Pool, PoolKey, Verify};
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
    let connect = backend::resolve_service(state, &ns, &name, port)
        .await
        .map_err(|e| format!("failed to call webhook: Post \"{url}\": {e}"))?
        .swap_remove(0);
    Ok(Target {
        url,
        connect,
        server_name: host,
        path_and_query: format!("{path}?timeout={timeout}s"),
    })
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
            .ok()
    };
    let ca = cc.get("caBundle").and_then(Value::as_str).unwrap_or("");
    let key: PoolKey = (
        t.connect.0.clone(),
        t.connect.1,
        t.server_name.clone(),
        ca.to_string(),
    );
    let dial = async {
        let connector = backend::connector(Verify::CaBundle(ca), None)?;
        backend::dial(connector, &t.connect.0, t.connect.1, &t.server_name).await
    };
    let resp = pool
        .send(key, request, dial)
        .await
        .map_err(|e| fail(e.message))?;
    let status = resp.status();
    // read to the end: the connection goes back to the pool
    let bytes = axum::body::to_bytes(Body::new(resp.into_body()), MAX_RESPONSE)
        .await
        .map_err(|e| fail(format!("reading the response: {e}")))?;
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
