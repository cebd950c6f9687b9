//! An API client whose client certificate is re-read from its files while it runs: what
//! upstream's kubelet does with `--rotate-certificates` (client-go's certificate manager
//! and `connrotation` dialer). A kubeconfig whose user names `client-certificate` and
//! `client-key` files gets one ([`crate::client`]); the files are checked every
//! [`RELOAD_INTERVAL`], and once both hold a new matching pair, new TLS handshakes present
//! it and every open connection is closed, as upstream does, so that no request goes out on a
//! connection authenticated with the old (soon expired) certificate. Watches on the closed
//! connections end and are started again by their watchers.
//!
//! Sessions are not resumed: a resumed session would present the old certificate again.
//! A certificate and key that do not belong together (read between the writes of the two
//! files) are not taken; the next check reads them again.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// How often the certificate files are checked for a new pair.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("building the API client: {0}")]
    Kube(#[from] kube::Error),
}

/// The client certificate every handshake presents, and the connections made with it.
#[derive(Debug)]
struct Identity {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Loaded>,
    /// Cancelled (and replaced) when the certificate changes: closes the connections
    /// opened before.
    connections: Mutex<CancellationToken>,
}

#[derive(Debug)]
struct Loaded {
    /// The files' modification times when read.
    stamp: (SystemTime, SystemTime),
    key: Arc<CertifiedKey>,
}

fn modified(path: &Path) -> Result<SystemTime, ReloadError> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|source| ReloadError::Read {
            path: path.display().to_string(),
            source,
        })
}

impl Identity {
    /// The pair in the files now, if the certificate and the key belong together.
    fn load(
        cert: &Path,
        key: &Path,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<Loaded, ReloadError> {
        let stamp = (modified(cert)?, modified(key)?);
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| ReloadError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        let parse = |path: &Path, message: String| ReloadError::Parse {
            path: path.display().to_string(),
            message,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
            .collect::<Result<_, _>>()
            .map_err(|e| parse(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(parse(cert, "no certificate in it".into()));
        }
        let der =
            PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| parse(key, e.to_string()))?;
        let signer = provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| parse(key, e.to_string()))?;
        let certified = CertifiedKey::new(chain, signer);
        certified
            .keys_match()
            .map_err(|e| parse(cert, format!("does not match {}: {e}", key.display())))?;
        Ok(Loaded {
            stamp,
            key: Arc::new(certified),
        })
    }

    /// Take a new pair from the files if they changed; on success close the connections
    /// made with the old one.
    fn reload_if_changed(&self) {
        let stamp = match (modified(&self.cert), modified(&self.key)) {
            (Ok(c), Ok(k)) => (c, k),
            _ => return,
        };
        if stamp == read(&self.current).stamp {
            return;
        }
        match Identity::load(&self.cert, &self.key, &self.provider) {
            Ok(loaded) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
                let old = std::mem::take(
                    &mut *self.connections.lock().unwrap_or_else(|p| p.into_inner()),
                );
                old.cancel();
                tracing::info!(cert = %self.cert.display(), "client certificate changed; new connections use it");
            }
            // half-written (or replaced again): the next check reads them again
            Err(e) => tracing::debug!(error = %e, "client certificate files not usable yet"),
        }
    }

    fn connection_token(&self) -> CancellationToken {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn read(lock: &RwLock<Loaded>) -> std::sync::RwLockReadGuard<'_, Loaded> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

impl ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(read(&self.current).key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client for `config` whose user's certificate is read from `cert` and `key` (see the
/// module docs). `config`'s other settings that kaze uses are kept: the server and its CA,
/// the default namespace, connect timeout, extra headers (the User-Agent) and kube-rs's
/// retries of 429/503/504. `http` picks the HTTP versions it speaks ([`stack`]).
pub fn client(
    config: kube::Config,
    cert: PathBuf,
    key: PathBuf,
    http: crate::Http,
) -> Result<kube::Client, ReloadError> {
    let mut tls = config.rustls_client_config()?;
    let provider = tls.crypto_provider().clone();
    let current = RwLock::new(Identity::load(&cert, &key, &provider)?);
    let identity = Arc::new(Identity {
        cert,
        key,
        provider,
        current,
        connections: Mutex::new(CancellationToken::new()),
    });
    tls.client_auth_cert_resolver = identity.clone();
    // A resumed TLS session carries the certificate of the handshake it resumes: the server
    // would go on seeing the old one. Full handshakes only (Go's client, upstream's, keeps
    // no session cache by default either).
    tls.resumption = rustls::client::Resumption::disabled();
    spawn_reloader(Arc::downgrade(&identity));
    let tracked = Tracked {
        inner: tcp(&config),
        identity,
    };
    Ok(stack(config, tls, tracked, http)?)
}

/// The TCP connector of `config`'s clients.
pub(crate) fn tcp(config: &kube::Config) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    http
}

/// How long an HTTP/2 connection may stay silent before it is pinged, and how long the
/// ping may take before the connection is closed (client-go's `ReadIdleTimeout` and
/// `PingTimeout`): every watch shares the connection, so a dead one must not go unnoticed.
const H2_READ_IDLE: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest HTTP/2 DATA frame this client accepts (SETTINGS_MAX_FRAME_SIZE).
const H2_MAX_FRAME: u32 = 1 << 20;

/// kube-rs's client stack (base URI, extra headers, retries, auth) over hyper-util's pooled
/// client, with TLS `tls` over `tcp`. With [`crate::Http::Alpn`] the TLS handshake offers
/// `h2` then `http/1.1` and the pool shares one HTTP/2 connection among all requests and
/// watches, as client-go does; else HTTP/1.1 only (a connection per concurrent request).
pub(crate) fn stack<C>(
    config: kube::Config,
    tls: rustls::ClientConfig,
    tcp: C,
    http: crate::Http,
) -> Result<kube::Client, kube::Error>
where
    C: tower::Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: Read + Write + Connection + Send + Unpin + 'static,
    C::Future: Send + Unpin + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = match http {
        crate::Http::Http1 => builder.enable_http1().wrap_connector(tcp),
        crate::Http::Alpn => builder.enable_all_versions().wrap_connector(tcp),
    };
    let mut client = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    if http == crate::Http::Alpn {
        client
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(H2_READ_IDLE)
            .http2_keep_alive_timeout(H2_PING_TIMEOUT);
        // Accept DATA frames of up to 1 MiB (hyper asks for 16 KiB by default): a
        // LIST of 10k pods (27.5 MiB) arrives in ~30 DATA frames instead of ~1,800, which
        // cut the apiserver's and the client's CPU per LIST by about a third
        // (`cargo xtask bench apiserver`, session 13).
        client.http2_max_frame_size(H2_MAX_FRAME);
    }
    let http_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        client.build(https);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .layer(config.extra_headers_layer()?)
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .map_err(tower::BoxError::from)
        .service(http_client);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// Check the files every [`RELOAD_INTERVAL`] while the client (any clone of it) lives.
fn spawn_reloader(identity: Weak<Identity>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RELOAD_INTERVAL).await;
            match identity.upgrade() {
                Some(id) => id.reload_if_changed(),
                None => return,
            }
        }
    });
}

// === impl Tracked ===

/// A connector whose connections close when the client certificate changes.
#[derive(Clone)]
struct Tracked {
    inner: HttpConnector,
    identity: Arc<Identity>,
}

impl tower::Service<Uri> for Tracked {
    type Response = TrackedIo<<HttpConnector as tower::Service<Uri>>::Response>;
    type Error = <HttpConnector as tower::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let closed = self.identity.connection_token().cancelled_owned();
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(TrackedIo {
                io,
                closed: Box::pin(closed),
            })
        })
    }
}

/// A connection that fails its reads and writes once `closed` completes (the certificate
/// it was opened with was replaced).
struct TrackedIo<T> {
    io: T,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

fn rotated() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "closed: the client certificate was rotated",
    )
}

impl<T: Read + Unpin> Read for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if self.closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(rotated()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(rotated()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<T: Connection> Connection for TrackedIo<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}
