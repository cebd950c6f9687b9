//! `ComponentStatus` (core v1, deprecated since 1.19 but still served by upstream 1.37):
//! list and get only, computed on each request, never stored. As upstream's registry
//! (`pkg/registry/core/componentstatus`): `scheduler` and `controller-manager` are probed at
//! upstream's secure ports (`https://127.0.0.1:10259/healthz`, `:10257/healthz`, the
//! certificate not checked), `etcd-N` is a read from each store (kaze also reports the
//! embedded store as `etcd-0`). Healthy: condition `Healthy` True with message `ok`;
//! otherwise False with the probe's error as the message.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::handlers::Target;
use crate::state::AppState;
use crate::status::ApiError;

/// Upstream's probe timeout for these checks.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// The deprecation warning upstream sends with every ComponentStatus response.
pub const WARNING: &str = "v1 ComponentStatus is deprecated in v1.19+";

/// The components and where they are probed: (name, port).
const COMPONENTS: &[(&str, u16)] = &[("controller-manager", 10257), ("scheduler", 10259)];

/// GET `https://127.0.0.1:<port>/healthz`: the body when it is 200 `ok`, else the error as
/// Go's HTTP client words it.
async fn probe_https(port: u16) -> Result<String, String> {
    let url = format!("https://127.0.0.1:{port}/healthz");
    let run = async {
        let connector = crate::backend::connector(crate::backend::Verify::Insecure, None)?;
        let mut sender = crate::backend::dial(connector, "127.0.0.1", port, "127.0.0.1").await?;
        let req = axum::http::Request::get("/healthz")
            .header(header::HOST, format!("127.0.0.1:{port}"))
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = axum::body::to_bytes(Body::new(resp.into_body()), 64 * 1024)
            .await
            .map_err(|e| e.to_string())?;
        let body = String::from_utf8_lossy(&body).to_string();
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!(
                "HTTP probe failed with statuscode: {}",
                status.as_u16()
            ))
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, run).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
        Err(_) => Err(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

fn object(name: &str, result: Result<String, String>) -> Value {
    let (status, message) = match result {
        Ok(m) => ("True", m),
        Err(e) => ("False", e),
    };
    json!({
        "kind": "ComponentStatus",
        "apiVersion": "v1",
        "metadata": {"name": name},
        "conditions": [{"type": "Healthy", "status": status, "message": message, "error": ""}],
    })
}

/// Every component's status, by name.
pub async fn all(state: &AppState) -> Vec<Value> {
    let probes = COMPONENTS.iter().map(|(name, port)| async move {
        let r = probe_https(*port).await;
        object(name, r)
    });
    let mut out = futures::future::join_all(probes).await;
    for (i, store) in state.storage.stores().into_iter().enumerate() {
        let r = match tokio::time::timeout(crate::health::ETCD_TIMEOUT, store.get("health")).await {
            Ok(Ok(_)) => Ok("ok".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("context deadline exceeded".to_string()),
        };
        out.push(object(&format!("etcd-{i}"), r));
    }
    out.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    out
}

/// GET of the collection or one item; any other verb is 405.
pub async fn serve(state: &AppState, t: &Target, parts: &axum::http::request::Parts) -> Response {
    let run = async {
        if parts.method != Method::GET {
            return Err(ApiError::method_not_supported(
                t.def.plural,
                parts.method.as_str(),
            ));
        }
        let q = crate::handlers::parse_query(parts.uri.query());
        if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
            return Err(ApiError::method_not_supported(t.def.plural, "watch"));
        }
        let accept = crate::negotiate::accept(&parts.headers)?;
        let items = all(state).await;
        Ok(match &t.name {
            Some(name) => {
                let obj = items
                    .into_iter()
                    .find(|o| o["metadata"]["name"] == name.as_str())
                    .ok_or_else(|| ApiError::not_found(t.def.plural, "", name))?;
                crate::handlers::object_response(t.def.as_ref(), StatusCode::OK, &obj, accept, &q)
            }
            None => {
                let body = match accept.table {
                    Some(v) => crate::table::table(
                        t.def.as_ref(),
                        &items,
                        crate::table::Include::parse(q.get("includeObject").map(String::as_str)),
                        v,
                        json!({}),
                    ),
                    None => json!({
                        "kind": "ComponentStatusList",
                        "apiVersion": "v1",
                        "metadata": {},
                        "items": items,
                    }),
                };
                crate::negotiate::respond(StatusCode::OK, &body, accept.format)
            }
        })
    };
    let mut resp = run.await.unwrap_or_else(IntoResponse::into_response);
    if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{WARNING}\"")) {
        resp.headers_mut().append("warning", v);
    }
    resp
}
