//! Reaching HTTPS servers behind Services, for admission webhooks (`crate::webhooks`) and
//! aggregated API servers (`crate::aggregator`): a Service resolved to its ready endpoints
//! (the apiserver runs on a host that routes to pod IPs, and to 127.0.0.1 for host-network
//! servers, so it dials an endpoint rather than the ClusterIP, which only nodes' service
//! proxies answer), TLS verified against a `caBundle` (or the system's roots, or not at all)
//! with an optional client certificate, and connections kept alive in a [`Pool`].

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{Request, Response};
use base64::Engine;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::registry::ResourceDef;
use crate::selector::{FieldSelector, Filter, LabelSelector};
use crate::state::AppState;
use crate::status::ApiError;
use crate::Error;

// === Services ===

/// Objects of `def` matching `(fields, labels)` selectors, from the watch cache as it is
/// (`resourceVersion=0`): lookups on every call must not cost a store round trip.
pub async fn cached(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    (fields, labels): (&str, &str),
) -> Result<Vec<Value>, ApiError> {
    let opts = crate::list::ListOpts {
        resource_version: Some("0".into()),
        filter: Filter {
            fields: FieldSelector::parse(fields, def.selectable_fields)
                .map_err(ApiError::bad_request)?,
            labels: LabelSelector::parse(labels).map_err(ApiError::bad_request)?,
        },
        ..Default::default()
    };
    Ok(crate::list::list(state, def, ns, &opts).await?.items)
}

fn def<'a>(state: &'a AppState, group: &str, plural: &str) -> Result<&'a ResourceDef, String> {
    state
        .registry
        .get(group, "v1", plural)
        .map(AsRef::as_ref)
        .ok_or_else(|| format!("{plural} are not served"))
}

/// Service `ns/name`: from the watch cache, else (created a moment ago) from the store.
pub async fn service(state: &AppState, ns: &str, name: &str) -> Result<Option<Value>, String> {
    let services = def(state, "", "services")?;
    let by_name = format!("metadata.name={name}");
    let found = cached(state, services, Some(ns), (&by_name, ""))
        .await
        .map_err(|e| e.message)?
        .pop();
    if found.is_some() {
        return Ok(found);
    }
    match crate::objects::get(state, services, Some(ns), name).await {
        Ok(svc) => Ok(Some(svc)),
        Err(e) if e.code == 404 => Ok(None),
        Err(e) => Err(e.message),
    }
}

/// The name of the Service's port `port` (`""` for an unnamed one), if it has that port.
pub fn port_name(svc: &Value, port: u64) -> Option<String> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)?
        .iter()
        .find(|p| p["port"].as_u64() == Some(port))
        .map(|p| {
            p.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        })
}

/// What a Service's Endpoints and EndpointSlices offer for one named port.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Some Endpoints object or EndpointSlice of the Service exists.
    pub found: bool,
    /// Ready addresses serving the port: those of the Endpoints (the first address of
    /// each subset carrying the port), or of the EndpointSlices when the Endpoints have none.
    pub ready: Vec<(String, u16)>,
}

/// The endpoints of Service `ns/name` for its port named `port_name`, from the watch cache.
pub async fn endpoints(
    state: &AppState,
    ns: &str,
    name: &str,
    port_name: &str,
) -> Result<Endpoints, String> {
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
    let mut out = Endpoints::default();
    let by_name = format!("metadata.name={name}");
    let eps = cached(
        state,
        def(state, "", "endpoints")?,
        Some(ns),
        (&by_name, ""),
    )
    .await
    .map_err(|e| e.message)?;
    out.found |= !eps.is_empty();
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
            out.ready.push((ip.to_string(), p));
        }
    }
    if !out.ready.is_empty() {
        return Ok(out);
    }
    let owned = format!("kubernetes.io/service-name={name}");
    let slices = def(state, "discovery.k8s.io", "endpointslices")?;
    let slices = cached(state, slices, Some(ns), ("", owned.as_str()))
        .await
        .map_err(|e| e.message)?;
    out.found |= !slices.is_empty();
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
        out.ready.extend(
            ready
                .filter_map(|e| e.pointer("/addresses/0").and_then(Value::as_str))
                .map(|ip| (ip.to_string(), p)),
        );
    }
    Ok(out)
}

/// Why a Service could not be resolved to an endpoint (its `Display` is the text webhook
/// errors carry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    ServiceNotFound {
        name: String,
    },
    NoPort {
        namespace: String,
        name: String,
        port: u64,
    },
    NoEndpoints {
        name: String,
    },
    Lookup(String),
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unresolved::ServiceNotFound { name } => write!(f, "service \"{name}\" not found"),
            Unresolved::NoPort {
                namespace,
                name,
                port,
            } => write!(f, "service {name}/{namespace} has no port {port}"),
            Unresolved::NoEndpoints { name } => {
                write!(f, "no endpoints available for service \"{name}\"")
            }
            Unresolved::Lookup(e) => f.write_str(e),
        }
    }
}

/// The ready endpoints of Service `ns/name` serving its port `port`: the Service's
/// `targetPort` on the addresses its Endpoints (or EndpointSlices) list. Never empty.
pub async fn resolve_service(
    state: &AppState,
    ns: &str,
    name: &str,
    port: u64,
) -> Result<Vec<(String, u16)>, Unresolved> {
    let svc = service(state, ns, name)
        .await
        .map_err(Unresolved::Lookup)?
        .ok_or_else(|| Unresolved::ServiceNotFound { name: name.into() })?;
    let port_name = port_name(&svc, port).ok_or_else(|| Unresolved::NoPort {
        namespace: ns.into(),
        name: name.into(),
        port,
    })?;
    let found = endpoints(state, ns, name, &port_name)
        .await
        .map_err(Unresolved::Lookup)?;
    if found.ready.is_empty() {
        return Err(Unresolved::NoEndpoints { name: name.into() });
    }
    Ok(found.ready)
}

// === TLS ===

/// How a server's certificate is checked.
#[derive(Debug, Clone, Copy)]
pub enum Verify<'a> {
    /// Against the CAs of a base64 PEM `caBundle` (an empty one trusts nothing).
    CaBundle(&'a str),
    /// Against the host's trust store (`/etc/ssl/certs`, ...): upstream's default when an
    /// APIService has neither `caBundle` nor `insecureSkipTLSVerify`.
    SystemRoots,
    /// Not at all (`insecureSkipTLSVerify`).
    Insecure,
}

/// A client certificate chain and its key, presented to servers that ask.
#[derive(Clone)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    /// The PEM certificate chain in `cert` and its key in `key`; the flag names go into
    /// errors (`--kubelet-client-certificate`, `--proxy-client-cert-file`).
    pub fn load(
        cert: &Path,
        key: &Path,
        flags: (&'static str, &'static str),
    ) -> Result<Identity, Error> {
        let tls_err = |what: String, path: &Path, e: String| Error::Tls {
            reason: format!("{what} {}: {e}", path.display()),
        };
        let (cert_flag, key_flag) = flags;
        let pem = std::fs::read(cert).map_err(Error::io(cert_flag, cert))?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err(format!("parsing {cert_flag}"), cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(tls_err(
                format!("parsing {cert_flag}"),
                cert,
                "no certificate in the file".into(),
            ));
        }
        let pem = std::fs::read(key).map_err(Error::io(key_flag, key))?;
        let parsed = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| tls_err(format!("parsing {key_flag}"), key, e.to_string()))?;
        Ok(Identity {
            chain,
            key: Arc::new(parsed),
        })
    }

    /// A PEM certificate chain and key given inline (a kubeconfig's `-data` fields, or
    /// files it names).
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Identity, String> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("parsing the client certificate: {e}"))?;
        if chain.is_empty() {
            return Err("parsing the client certificate: no certificate in it".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| format!("parsing the client key: {e}"))?;
        Ok(Identity {
            chain,
            key: Arc::new(key),
        })
    }

    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// The host's trust store, read once.
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "reading the system's trusted certificates");
            }
            let mut roots = rustls::RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "system trust store loaded");
            Arc::new(roots)
        })
        .clone()
}

/// A TLS connector checking servers as `verify` says and presenting `identity`, if given.
pub fn connector(verify: Verify<'_>, identity: Option<&Identity>) -> Result<TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match verify {
        Verify::CaBundle(b64) => {
            let mut roots = rustls::RootCertStore::empty();
            let pem = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("caBundle: {e}"))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("caBundle: {e}"))?;
                roots.add(cert).map_err(|e| format!("caBundle: {e}"))?;
            }
            builder.with_root_certificates(roots)
        }
        Verify::SystemRoots => builder.with_root_certificates(system_roots()),
        Verify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(component::https::any_server_cert(provider)),
    };
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain(), id.key())
            .map_err(|e| format!("client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

// === connections ===

/// An I/O error worded as Go's net package words it (what upstream's messages carry).
pub fn go_io_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connect: connection refused".into(),
        K::ConnectionReset => "read: connection reset by peer".into(),
        K::TimedOut => "i/o timeout".into(),
        K::HostUnreachable => "connect: no route to host".into(),
        K::NetworkUnreachable => "connect: network is unreachable".into(),
        _ => e.to_string(),
    }
}

/// Connect to `host:port` over TLS, the server's certificate checked for `server_name`, and
/// start an HTTP/1.1 connection (upgrades allowed) driven by its own task.
pub async fn dial(
    connector: TlsConnector,
    host: &str,
    port: u16,
    server_name: &str,
) -> Result<SendRequest<Body>, String> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: {}", go_io_error(&e)))?;
    let name = match server_name.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?,
    };
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "backend connection ended");
        }
    });
    Ok(sender)
}

/// Idle connections, reused as Go's HTTP transport keeps them alive: a webhook called for
/// every pod create, or an aggregated API server answering every `kubectl get`, would
/// otherwise cost a TCP and TLS handshake per request.
#[derive(Clone, Default)]
pub struct Pool {
    idle: Arc<Mutex<HashMap<PoolKey, Vec<SendRequest<Body>>>>>,
}

/// (address dialled, port, name verified, how TLS is set up): connections are only shared
/// by requests that would have made the same one.
pub type PoolKey = (String, u16, String, String);

/// Idle connections kept per key at most.
const MAX_IDLE: usize = 8;

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("backend::Pool")
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

    /// Send a request on an idle connection for `key`, or on a new one from `dial`. `next`
    /// gives the request, and again when a reused connection turned out closed after taking
    /// it (None: it cannot be rebuilt, e.g. a streamed body; the error is returned). The
    /// connection goes back to the pool once the response body has been read to its end.
    pub async fn send<D>(
        &self,
        key: PoolKey,
        mut next: impl FnMut() -> Option<Request<Body>>,
        dial: D,
    ) -> Result<Response<Pooled>, SendError>
    where
        D: Future<Output = Result<SendRequest<Body>, String>>,
    {
        let mut request =
            next().ok_or_else(|| SendError::from("no request to send".to_string()))?;
        if let Some(mut sender) = self.take(&key) {
            match sender.try_send_request(request).await {
                Ok(resp) => return Ok(self.pooled(key, sender, resp)),
                Err(mut e) => {
                    tracing::debug!(error = %e.error(), "reused backend connection failed; dialling again");
                    request = match e.take_message().or_else(&mut next) {
                        Some(r) => r,
                        None => return Err(SendError::from(&e.into_error())),
                    };
                }
            }
        }
        let mut sender = dial.await?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| SendError::from(&e))?;
        Ok(self.pooled(key, sender, resp))
    }

    fn pooled(
        &self,
        key: PoolKey,
        sender: SendRequest<Body>,
        resp: Response<Incoming>,
    ) -> Response<Pooled> {
        resp.map(|body| Pooled {
            body,
            back: Some((self.clone(), key, sender)),
        })
    }
}

/// Why [`Pool::send`] got no response: the message, and whether the connection was lost
/// under the request (reset by the peer, closed, the response cut short) — upstream's
/// `utilnet.IsConnectionReset`/`IsHTTP2ConnectionLost`, which its webhook clients retry —
/// as opposed to a connection that could not be made or a request that was refused.
#[derive(Debug)]
pub struct SendError {
    pub message: String,
    pub connection_lost: bool,
}

impl From<String> for SendError {
    /// A failure before anything was sent (dialling, TLS): not a lost connection.
    fn from(message: String) -> SendError {
        SendError {
            message,
            connection_lost: false,
        }
    }
}

impl From<&hyper::Error> for SendError {
    fn from(e: &hyper::Error) -> SendError {
        use std::io::ErrorKind;
        let mut io_lost = false;
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                io_lost |= matches!(
                    io.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::BrokenPipe
                );
            }
            source = s.source();
        }
        SendError {
            message: e.to_string(),
            connection_lost: io_lost || e.is_closed() || e.is_incomplete_message(),
        }
    }
}

impl From<SendError> for String {
    fn from(e: SendError) -> String {
        e.message
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A response body that gives its connection back to the [`Pool`] when read to the end
/// (dropped before that, the connection is not reused).
pub struct Pooled {
    body: Incoming,
    back: Option<(Pool, PoolKey, SendRequest<Body>)>,
}

impl hyper::body::Body for Pooled {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some((pool, key, sender)) = self.back.take() {
                pool.put(key, sender);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
