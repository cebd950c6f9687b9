//! `pods/<name>[:<port>]/proxy/<path>` and `services/<[scheme:]name[:port]>/proxy/<path>`:
//! the request goes to the pod's IP (the port given, else the first container port, else
//! 80) or to one ready endpoint of the Service's port, as upstream's `ResourceLocation`s
//! pick them, and the answer streams back. This is what `kubectl proxy` followed by
//! `curl localhost:8001/api/v1/namespaces/default/services/web:80/proxy/` reaches, and
//! `kubectl get --raw .../pods/<p>:8080/proxy/metrics`. An `https:` prefix
//! (`pods/https:<p>:8443/proxy/`) reaches the backend over TLS without verifying its
//! certificate, as upstream's proxy transport (`InsecureSkipVerify`: pods and endpoints are
//! dialled by IP); other schemes are refused. Upstream also rewrites links in HTML answers,
//! which is not done here, and upgrades (WebSocket) are not proxied.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

use crate::objects;
use crate::state::AppState;
use crate::status::ApiError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Request headers passed on to the pod: the rest (`Authorization` above all, which upstream
/// strips once it has authenticated the caller) stay behind.
const FORWARDED: &[&str] = &[
    "accept",
    "accept-encoding",
    "content-type",
    "user-agent",
    "x-forwarded-for",
];

/// Answer headers passed back.
const RETURNED: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-length",
    "cache-control",
    "location",
    "set-cookie",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pod,
    Service,
}

impl Kind {
    /// The subresource RBAC authorizes (`pods/proxy`, `services/proxy`).
    pub fn subresource(self) -> &'static str {
        match self {
            Kind::Pod => "pods/proxy",
            Kind::Service => "services/proxy",
        }
    }
}

/// A proxy path: the kind, namespace, the id as given (`name`, `name:port`,
/// `scheme:name:port`) and what follows `proxy` (empty or starting with `/`).
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub kind: Kind,
    pub namespace: &'a str,
    pub id: &'a str,
    pub rest: &'a str,
}

impl Target<'_> {
    /// The object's name, for authorization.
    pub fn name(&self) -> &str {
        parse_id(self.id).1
    }
}

pub fn parse(path: &str) -> Option<Target<'_>> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let (namespace, rest) = rest.split_once('/')?;
    let (kind, rest) = if let Some(r) = rest.strip_prefix("pods/") {
        (Kind::Pod, r)
    } else {
        (Kind::Service, rest.strip_prefix("services/")?)
    };
    let (id, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("proxy")?;
    if namespace.is_empty() || id.is_empty() || !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    Some(Target {
        kind,
        namespace,
        id,
        rest,
    })
}

/// `scheme:name:port`, `name:port` or `name` (upstream's `SplitSchemeNamePort`).
fn parse_id(id: &str) -> (&str, &str, &str) {
    let parts: Vec<&str> = id.split(':').collect();
    match parts.as_slice() {
        [name] => ("", name, ""),
        [name, port] => ("", name, port),
        [scheme, name, port, ..] => (scheme, name, port),
        [] => ("", "", ""),
    }
}

/// The pod's address: its IP and the port given, else its first container port, else 80.
fn pod_address(pod: &Value, port: &str) -> Result<String, ApiError> {
    let name = pod.pointer("/metadata/name").and_then(Value::as_str);
    let ip = pod
        .pointer("/status/podIP")
        .and_then(Value::as_str)
        .filter(|ip| !ip.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "pod {} does not have a pod IP yet",
                name.unwrap_or_default()
            ))
        })?;
    let first = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|c| c.pointer("/ports/0/containerPort").and_then(Value::as_u64));
    let port = match (port, first) {
        ("", Some(p)) => p.to_string(),
        ("", None) => "80".to_string(),
        (p, _) => p.to_string(),
    };
    Ok(join(ip, &port))
}

fn join(ip: &str, port: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// One ready endpoint of the Service's port named or numbered `port` (any port when empty),
/// from the Service's Endpoints, as upstream's service `ResourceLocation`.
fn service_address(svc: &Value, endpoints: &Value, port: &str) -> Result<String, ApiError> {
    let name = svc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let ports = svc.pointer("/spec/ports").and_then(Value::as_array);
    let wanted: Vec<&str> = ports
        .into_iter()
        .flatten()
        .filter(|p| {
            port.is_empty()
                || p["name"].as_str() == Some(port)
                || p["port"].as_u64().is_some_and(|n| n.to_string() == port)
        })
        .map(|p| p["name"].as_str().unwrap_or(""))
        .collect();
    if wanted.is_empty() {
        return Err(ApiError::service_unavailable(format!(
            "no service port {port:?} found for service {name:?}"
        )));
    }
    let subsets = endpoints.get("subsets").and_then(Value::as_array);
    for subset in subsets.into_iter().flatten() {
        let addresses = subset.get("addresses").and_then(Value::as_array);
        let Some(ip) = addresses
            .into_iter()
            .flatten()
            .find_map(|a| a["ip"].as_str())
        else {
            continue;
        };
        let ports = subset.get("ports").and_then(Value::as_array);
        let found = ports
            .into_iter()
            .flatten()
            .find(|p| wanted.contains(&p["name"].as_str().unwrap_or("")));
        if let Some(p) = found.and_then(|p| p["port"].as_u64()) {
            return Ok(join(ip, &p.to_string()));
        }
    }
    Err(ApiError::service_unavailable(format!(
        "no endpoints available for service {name:?}"
    )))
}

/// A proxy request as it arrived (see [`crate::kubelet::ProxyRequest`]).
pub async fn serve(
    state: &AppState,
    target: &Target<'_>,
    req: crate::kubelet::ProxyRequest<'_>,
) -> Result<Response, ApiError> {
    let (scheme, name, port) = parse_id(target.id);
    let tls = match scheme {
        "" | "http" => false,
        "https" => true,
        _ => {
            return Err(ApiError::bad_request(format!(
                "proxying to {scheme:?} is not supported (the schemes are http and https)"
            )))
        }
    };
    let def = |plural: &str| {
        state
            .registry
            .get("", "v1", plural)
            .expect("built-in resource")
    };
    let ns = Some(target.namespace);
    let address = match target.kind {
        Kind::Pod => pod_address(&objects::get(state, def("pods"), ns, name).await?, port)?,
        Kind::Service => {
            let svc = objects::get(state, def("services"), ns, name).await?;
            let endpoints = match objects::get(state, def("endpoints"), ns, name).await {
                Ok(e) => e,
                Err(e) if e.code == 404 => Value::Null,
                Err(e) => return Err(e),
            };
            service_address(&svc, &endpoints, port)?
        }
    };
    let path = if target.rest.is_empty() {
        "/"
    } else {
        target.rest
    };
    let uri = if req.query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", req.query)
    };
    let url = format!("{}://{address}{uri}", if tls { "https" } else { "http" });
    let unreachable = |e: String| {
        ApiError::service_unavailable(format!(
            "error trying to reach {}: {e}",
            what(target.kind, name)
        ))
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address.as_str()))
        .await
        .map_err(|_| unreachable(format!("dial tcp {address}: i/o timeout")))?
        .map_err(|e| unreachable(format!("dial tcp {address}: {e}")))?;
    let mut out = Request::builder().method(req.method).uri(uri);
    for (k, v) in &req.headers {
        if FORWARDED.contains(&k.as_str()) {
            out = out.header(k, v);
        }
    }
    let out = out
        .header(header::HOST, address.as_str())
        .body(Body::from(req.body))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let resp = if tls {
        let host = address
            .rsplit_once(':')
            .map_or(address.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| unreachable(format!("{url}: {e}")))?;
        let io = tls_connector()
            .connect(server, tcp)
            .await
            .map_err(|e| unreachable(format!("{url}: {e}")))?;
        send(TokioIo::new(io), out).await
    } else {
        send(TokioIo::new(tcp), out).await
    }
    .map_err(|e| unreachable(format!("{url}: {e}")))?;
    let (parts, body) = resp.into_parts();
    let mut back = Response::builder().status(parts.status);
    for (k, v) in &parts.headers {
        if RETURNED.contains(&k.as_str()) {
            back = back.header(k, v);
        }
    }
    back.body(Body::new(body))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// One request on a new HTTP/1.1 connection over `io`.
async fn send<I>(
    io: I,
    req: Request<Body>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "proxied connection ended");
        }
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// TLS towards `https:` backends: any certificate (the handshake's signatures still
/// checked), HTTP/1.1, no client certificate, as upstream's pod and service proxy dials.
fn tls_connector() -> &'static TlsConnector {
    static TLS: OnceLock<TlsConnector> = OnceLock::new();
    TLS.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(component::https::any_server_cert(provider))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    })
}

fn what(kind: Kind, name: &str) -> String {
    match kind {
        Kind::Pod => format!("pod {name:?}"),
        Kind::Service => format!("service {name:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn proxy_paths_and_ids() {
        let t =
            parse("/api/v1/namespaces/default/services/https:web:443/proxy/a/b").expect("service");
        assert_eq!(
            (t.kind, t.namespace, t.id, t.rest, t.name()),
            (Kind::Service, "default", "https:web:443", "/a/b", "web")
        );
        let t = parse("/api/v1/namespaces/ns/pods/p:8080/proxy").expect("pod");
        assert_eq!(
            (t.kind, t.id, t.rest, t.name()),
            (Kind::Pod, "p:8080", "", "p")
        );
        assert_eq!(parse("/api/v1/namespaces/ns/pods/p/log"), None);
        assert_eq!(parse("/api/v1/namespaces/ns/pods/p/proxyx"), None);
        assert_eq!(parse("/api/v1/namespaces/ns/configmaps/c/proxy"), None);
    }

    #[test]
    fn addresses_as_upstream_picks_them() {
        let pod = json!({"metadata": {"name": "p"}, "status": {"podIP": "10.42.0.5"},
            "spec": {"containers": [{"name": "a"}, {"name": "b", "ports": [{"containerPort": 8080}]}]}});
        assert_eq!(pod_address(&pod, "").expect("pod"), "10.42.0.5:8080");
        assert_eq!(pod_address(&pod, "9090").expect("pod"), "10.42.0.5:9090");
        let bare = json!({"status": {"podIP": "fd00::5"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pod_address(&bare, "").expect("pod"), "[fd00::5]:80");
        assert_eq!(pod_address(&json!({}), "").expect_err("no ip").code, 400);

        let svc = json!({"metadata": {"name": "web"}, "spec": {"ports": [
            {"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]}});
        let eps = json!({"subsets": [{"addresses": [{"ip": "10.42.0.7"}],
            "ports": [{"name": "metrics", "port": 9100}, {"name": "http", "port": 8080}]}]});
        assert_eq!(
            service_address(&svc, &eps, "80").expect("by number"),
            "10.42.0.7:8080"
        );
        assert_eq!(
            service_address(&svc, &eps, "metrics").expect("by name"),
            "10.42.0.7:9100"
        );
        assert_eq!(
            service_address(&svc, &eps, "nope")
                .expect_err("no port")
                .code,
            503
        );
        let none = json!({"subsets": [{"notReadyAddresses": [{"ip": "10.42.0.8"}], "ports": [{"name": "http", "port": 8080}]}]});
        let err = service_address(&svc, &none, "http").expect_err("no ready endpoint");
        assert_eq!(
            (err.code, err.message.as_str()),
            (503, "no endpoints available for service \"web\"")
        );
    }
}
