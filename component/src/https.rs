//! Serving an axum router over HTTPS (rustls; HTTP/2, or HTTP/1.1 with upgrades, by ALPN)
//! until shutdown, with a bounded drain; and a self-signed certificate for servers whose
//! clients do not verify one (the kubelet's, as upstream's apiserver without
//! `--kubelet-certificate-authority`).
//!
//! A server can ask its clients for certificates ([`ClientCerts::Request`]): the handshake
//! then only proves that the client holds the key; the chain a client presented reaches the
//! handlers as a [`PeerCertificates`] request extension, to be verified there (a
//! [`ClientCa`], which also reads the subject: user = CN, groups = O), so that a missing or
//! untrusted certificate is an HTTP 401 the client can read (as upstream's kubelet and
//! apiserver do with Go's `tls.RequestClientCert`), not a failed handshake.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection the server closes at shutdown stays readable for the client's last
/// frames (Go's http2 server waits `goAwayTimeout`, 1 s, before it closes; its HTTP/1 server
/// lingers 500 ms after `CloseWrite`).
const LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{action}: {message}")]
    Tls {
        action: &'static str,
        message: String,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The certificate chain a client presented in the TLS handshake (leaf first), as a request
/// extension. Only the possession of the leaf's key is proven: verify the chain before
/// trusting it.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<[CertificateDer<'static>]>);

/// Whether a server asks its clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// Never ask.
    None,
    /// Ask, take any (or none), and pass it on as [`PeerCertificates`].
    Request,
}

/// Asks for a client certificate and accepts any, checking only the handshake signature
/// (the client holds the key); the chain is verified by the handlers.
#[derive(Debug)]
struct RequestAny(Arc<rustls::crypto::CryptoProvider>);

impl ClientCertVerifier for RequestAny {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: Go clients send their certificate only if it matches a hint, or if
        // there are none.
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature(&self.0, false, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature(&self.0, true, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A handshake signature checked with `provider`'s algorithms (TLS 1.3 or 1.2).
fn signature(
    provider: &rustls::crypto::CryptoProvider,
    tls13: bool,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let algorithms = &provider.signature_verification_algorithms;
    if tls13 {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    } else {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }
}

/// Accepts any server certificate, still checking the handshake's signatures: what
/// upstream's kubelet does for HTTPS probes and hooks (`InsecureSkipVerify`), and its
/// apiserver towards kubelets without `--kubelet-certificate-authority`.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature(&self.0, false, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature(&self.0, true, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A [`ServerCertVerifier`] accepting any certificate (see [`AnyServerCert`]), for
/// `provider`.
pub fn any_server_cert(
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Arc<dyn ServerCertVerifier> {
    Arc::new(AnyServerCert(provider))
}

/// A verifier that asks clients for a certificate and accepts any (or none), checking only
/// that the client holds the key, for servers building their own [`rustls::ServerConfig`]:
/// verify the chain later with a [`ClientCa`] (the [`PeerCertificates`] extension).
pub fn request_client_certs() -> Arc<dyn ClientCertVerifier> {
    Arc::new(RequestAny(Arc::new(
        rustls::crypto::ring::default_provider(),
    )))
}

/// The CA client certificates must chain to (a `--client-ca-file`), for checking the
/// [`PeerCertificates`] a server took with [`ClientCerts::Request`].
/// Clones share the CA: one [`ClientCa::from_file_reloading`] made follows its file for all.
#[derive(Clone)]
pub struct ClientCa {
    verifier: Arc<std::sync::RwLock<Arc<dyn ClientCertVerifier>>>,
}

/// How often a reloading [`ClientCa`] looks at its file (upstream's dynamic CA file content
/// reacts to file events and re-reads the file every minute regardless).
pub const CLIENT_CA_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa").finish_non_exhaustive()
    }
}

/// Who a verified client certificate names: upstream's x509 authenticator takes the
/// subject's common name as the user and its organizations as the groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertUser {
    pub name: String,
    pub groups: Vec<String>,
}

/// Why a client certificate was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The chain does not verify against the CA (unknown issuer, expired, not for client
    /// authentication, ...).
    #[error("verifying the client certificate: {0}")]
    Invalid(String),
    /// Verified, but the subject could not be read.
    #[error("cannot read the client certificate's subject")]
    Unreadable,
    /// Verified, but the subject has no common name (upstream: not authenticated by the
    /// certificate, other authenticators may still be).
    #[error("the client certificate has no common name")]
    NoCommonName,
}

impl ClientCa {
    /// The CA certificates in `pem` (one or more).
    pub fn from_pem(pem: &[u8]) -> Result<ClientCa, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| TlsError::Tls {
                action: "parsing the client CA",
                message: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| TlsError::Tls {
                action: "loading a client CA certificate",
                message: e.to_string(),
            })?;
        }
        if roots.is_empty() {
            return Err(TlsError::Tls {
                action: "parsing the client CA",
                message: "no certificate in it".into(),
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Tls {
                    action: "building the client certificate verifier",
                    message: e.to_string(),
                })?;
        Ok(ClientCa {
            verifier: Arc::new(std::sync::RwLock::new(verifier)),
        })
    }

    /// [`ClientCa::from_file`] that follows the file while it is in use, as upstream's
    /// `--client-ca-file` does: every [`CLIENT_CA_RELOAD_INTERVAL`] a changed file replaces
    /// the CA for every clone (a certificate of a CA added to the file authenticates, one of
    /// a CA removed stops); a changed file that holds no usable CA is logged and the last
    /// good CA kept. Outside a tokio runtime the CA is read once.
    pub fn from_file_reloading(path: &Path) -> Result<ClientCa, TlsError> {
        let ca = ClientCa::from_file(path)?;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Ok(ca);
        };
        let shared = Arc::downgrade(&ca.verifier);
        let path = path.to_path_buf();
        let mut last = std::fs::read(&path).ok();
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(CLIENT_CA_RELOAD_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // every clone is gone: nobody checks certificates with it any more
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let pem = match tokio::fs::read(&path).await {
                    Ok(pem) => pem,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "reading the client CA file; keeping the CA loaded before");
                        continue;
                    }
                };
                if last.as_ref() == Some(&pem) {
                    continue;
                }
                match ClientCa::from_pem(&pem) {
                    Ok(new) => {
                        let verifier = new.verifier.read().unwrap_or_else(|e| e.into_inner()).clone();
                        *shared.write().unwrap_or_else(|e| e.into_inner()) = verifier;
                        tracing::info!(path = %path.display(), "loaded the changed client CA file");
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "the client CA file changed but holds no usable CA; keeping the CA loaded before");
                    }
                }
                last = Some(pem);
            }
        });
        Ok(ca)
    }

    /// The CA certificates in the PEM file at `path`.
    pub fn from_file(path: &Path) -> Result<ClientCa, TlsError> {
        let pem = std::fs::read(path).map_err(|source| TlsError::Io {
            action: "reading",
            path: path.display().to_string(),
            source,
        })?;
        ClientCa::from_pem(&pem)
    }

    /// Check that `chain` (leaf first, then intermediates) chains to the CA, is valid now
    /// and is for client authentication; then who its subject is (CN, O values).
    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<CertUser, CertError> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| CertError::Invalid("an empty certificate chain".into()))?;
        let verifier = self
            .verifier
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| CertError::Invalid(e.to_string()))?;
        let (name, groups) = subject(leaf.as_ref()).ok_or(CertError::Unreadable)?;
        let name = name
            .filter(|n| !n.is_empty())
            .ok_or(CertError::NoCommonName)?;
        Ok(CertUser { name, groups })
    }
}

/// A server config from a certificate and key kept in `dir` (`server.crt`, `server.key`),
/// generated self-signed for `names` on first use and reused after (so a restart keeps it).
pub fn self_signed(
    dir: &Path,
    names: &[String],
    client_certs: ClientCerts,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let io = |action, path: &Path| {
        let path = path.display().to_string();
        move |source| TlsError::Io {
            action,
            path,
            source,
        }
    };
    let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
    if !crt.exists() || !key.exists() {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let cert =
            rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| TlsError::Tls {
                action: "generating a self-signed certificate",
                message: e.to_string(),
            })?;
        std::fs::write(&crt, cert.cert.pem()).map_err(io("writing", &crt))?;
        std::fs::write(&key, cert.signing_key.serialize_pem()).map_err(io("writing", &key))?;
    }
    let crt_pem = std::fs::read(&crt).map_err(io("reading", &crt))?;
    let key_pem = std::fs::read(&key).map_err(io("reading", &key))?;
    server_config(&crt_pem, &key_pem, client_certs)
}

/// A server config with a self-signed certificate for `names` made now and kept in memory
/// only (upstream's secure serving without `--cert-dir` or `--tls-cert-file`).
pub fn ephemeral_self_signed(
    names: &[String],
    client_certs: ClientCerts,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| TlsError::Tls {
        action: "generating a self-signed certificate",
        message: e.to_string(),
    })?;
    server_config(
        cert.cert.pem().as_bytes(),
        cert.signing_key.serialize_pem().as_bytes(),
        client_certs,
    )
}

/// A server config with the certificate (chain) and key in these PEM files
/// (`--tls-cert-file`, `--tls-private-key-file`).
pub fn from_files(
    crt: &Path,
    key: &Path,
    client_certs: ClientCerts,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let read = |action, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Io {
            action,
            path: path.display().to_string(),
            source,
        })
    };
    server_config(&read("reading", crt)?, &read("reading", key)?, client_certs)
}

fn server_config(
    crt_pem: &[u8],
    key_pem: &[u8],
    client_certs: ClientCerts,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Tls {
            action: "parsing the certificate",
            message: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Tls {
        action: "parsing the private key",
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Tls {
            action: "choosing TLS versions",
            message: e.to_string(),
        })?;
    let builder = match client_certs {
        ClientCerts::None => builder.with_no_client_auth(),
        ClientCerts::Request => builder.with_client_cert_verifier(Arc::new(RequestAny(provider))),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Tls {
            action: "loading the certificate",
            message: e.to_string(),
        })?;
    Ok(Arc::new(config))
}

/// Concurrent HTTP/2 streams a client may open on one connection when the server does not
/// say otherwise: Go's `net/http` default, which upstream's kubelet, scheduler and
/// controller-manager serve with (kube-apiserver raises it with
/// `--http2-max-streams-per-connection`).
pub const DEFAULT_HTTP2_MAX_STREAMS: u32 = 250;

/// The ALPN protocols [`serve`] offers, preferred first: `h2`, then `http/1.1` (which
/// upstream's clients force for exec/attach/port-forward upgrades).
pub fn alpn_protocols() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// Serve `app` on `listener` over TLS until `shutdown`, then drain open connections for a
/// few seconds; HTTP/2 with [`DEFAULT_HTTP2_MAX_STREAMS`] streams per connection.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    shutdown: CancellationToken,
) {
    serve_with(listener, tls, app, shutdown, DEFAULT_HTTP2_MAX_STREAMS).await
}

/// [`serve`], allowing `http2_max_streams` concurrent streams on each HTTP/2 connection.
///
/// Clients choose the protocol by ALPN (`tls`'s own protocols are replaced by
/// [`alpn_protocols`]); HTTP/1.1 connections keep upgrades (WebSocket, SPDY). At shutdown
/// an HTTP/2 connection gets a GOAWAY, an HTTP/1.1 connection is closed after its current
/// response, and both have the drain timeout to finish the responses in flight.
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    shutdown: CancellationToken,
    http2_max_streams: u32,
) {
    let mut tls = Arc::unwrap_or_clone(tls);
    tls.alpn_protocols = alpn_protocols();
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(http2_max_streams)
        // Go's `http.DefaultMaxHeaderBytes` (hyper's h2 default is 16 KiB, below what its
        // HTTP/1.1 side accepts): a request with big headers works over either protocol
        .max_header_list_size(1 << 20);
    let builder = Arc::new(builder);
    let mut conns = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (acceptor, app, shutdown, builder) = (
            acceptor.clone(),
            app.clone(),
            shutdown.clone(),
            builder.clone(),
        );
        // As Go's net package does for every TCP connection (and so upstream's servers):
        // without it, Nagle's algorithm holds a small write (a watch event, an HTTP/2
        // frame) behind an unacknowledged one until the peer's delayed ACK, ~40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "setting TCP_NODELAY");
        }
        if peer.ip().is_loopback() {
            no_bbr_on_loopback(&tcp, peer);
        }
        // A second handle on the socket keeps it open after hyper drops the connection at
        // shutdown (see `linger`).
        let lingering = tcp_handle(&tcp, peer);
        conns.spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let certs = match tls.get_ref().1.peer_certificates() {
                Some(chain) if !chain.is_empty() => {
                    let chain: Arc<[CertificateDer<'static>]> =
                        chain.iter().map(|c| c.clone().into_owned()).collect();
                    Some(PeerCertificates(chain))
                }
                _ => None,
            };
            // Requests (each HTTP/2 stream is one) carry the peer's address as axum's
            // `ConnectInfo` (the apiserver's audit `sourceIPs`) and its certificates; not a
            // router layer, which deepens every request's poll stack (debug builds
            // overflowed tokio's 2 MiB).
            let inner = TowerToHyperService::new(app);
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    if let Some(certs) = &certs {
                        req.extensions_mut().insert(certs.clone());
                    }
                    hyper::service::Service::call(&inner, req)
                },
            );
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                    if let Some(socket) = lingering {
                        linger(socket, peer).await;
                    }
                }
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
        conns.abort_all();
    }
}

/// A second handle on a connection's socket, for [`linger`].
fn tcp_handle(
    tcp: &tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<tokio::net::TcpStream> {
    let socket = socket2::SockRef::from(tcp).try_clone();
    match socket.map(std::net::TcpStream::from) {
        Ok(socket) => match tokio::net::TcpStream::from_std(socket) {
            Ok(socket) => Some(socket),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "registering a second socket handle");
                None
            }
        },
        Err(e) => {
            tracing::debug!(%peer, error = %e, "duplicating the socket");
            None
        }
    }
}

/// Closes a connection the server ended (GOAWAY at shutdown) without resetting it: the
/// client's last frames (a WINDOW_UPDATE for the final DATA, its TLS close_notify) may still
/// be on the way, and a socket closed with unread data answers them with a TCP RST, which
/// fails the client's next write with EPIPE ("broken pipe") although every stream ended
/// cleanly. So the write side is shut and what arrives is read and discarded until the
/// client closes its side or [`LINGER`] passes, as Go's servers do.
async fn linger(socket: tokio::net::TcpStream, peer: std::net::SocketAddr) {
    use tokio::io::AsyncReadExt;
    let mut socket = socket;
    // hyper has sent its close_notify and FIN already when the TLS stream shut down; this
    // only makes sure of the FIN (an error here means it was sent)
    let _ = socket2::SockRef::from(&socket).shutdown(std::net::Shutdown::Write);
    let drained = tokio::time::timeout(LINGER, async {
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::debug!(%peer, "the client kept its side open {LINGER:?} after the server closed; closing");
    }
}

/// A loopback connection of a host whose default congestion control is BBR goes back to
/// CUBIC. BBR paces what a socket sends at its bandwidth estimate, and a connection that
/// sends in bursts (a watch event fanned out to the hundred HTTP/2 streams of one client is
/// ~300 KB at once, then nothing for a while) has a low, application-limited estimate: on this
/// VM (`net.ipv4.tcp_congestion_control = bbr`) one event in fifty left the apiserver
/// 20-45 ms late, half of it in the first 65 KB segment and the rest one pacing interval
/// later. On loopback there is no bottleneck for BBR to model; CUBIC sends the burst at
/// once (watch p99 7-9 ms against 25-50 ms, `cargo xtask bench apiserver`). Connections
/// from other hosts keep the operator's choice.
fn no_bbr_on_loopback(tcp: &tokio::net::TcpStream, peer: std::net::SocketAddr) {
    let sock = socket2::SockRef::from(tcp);
    match sock.tcp_congestion() {
        Ok(name) if name.starts_with(b"bbr") => {
            if let Err(e) = sock.set_tcp_congestion(b"cubic") {
                tracing::debug!(%peer, error = %e, "setting TCP_CONGESTION cubic");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(%peer, error = %e, "reading TCP_CONGESTION"),
    }
}

// === DER ===
// Just enough to read a verified certificate's subject: webpki checks the chain but does not
// expose names, and a full X.509 parser is a large dependency for two attributes.

/// One DER TLV: `(tag, contents, rest)` (lengths up to 4 bytes), for the few certificate
/// fields kaze reads or rewrites itself.
pub fn tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, buf) = buf.split_first()?;
    let (&first, mut buf) = buf.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || buf.len() < n {
            return None;
        }
        let len = buf[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        buf = &buf[n..];
        len
    };
    (buf.len() >= len).then(|| (tag, &buf[..len], &buf[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];

/// The subject's common name and organizations (every O attribute, in order, from every
/// RDN, as Go's `pkix.Name` collects them) of a DER certificate; None if it is not one.
pub fn subject(cert: &[u8]) -> Option<(Option<String>, Vec<String>)> {
    let (SEQUENCE, cert, _) = tlv(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // version [0] is optional; then serial, signature algorithm, issuer, validity, subject.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, mut name, _) = tlv(rest)? else {
        return None;
    };
    let (mut cn, mut orgs) = (None, Vec::new());
    while !name.is_empty() {
        let (SET, mut set, next) = tlv(name)? else {
            return None;
        };
        name = next;
        while !set.is_empty() {
            let (SEQUENCE, attr, next) = tlv(set)? else {
                return None;
            };
            set = next;
            let (OID, oid, value) = tlv(attr)? else {
                return None;
            };
            let (_, value, _) = tlv(value)?;
            let value = String::from_utf8_lossy(value).into_owned();
            if oid == OID_CN {
                cn = Some(value);
            } else if oid == OID_O {
                orgs.push(value);
            }
        }
    }
    Some((cn, orgs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener whose congestion control is BBR, on loopback (root loads `tcp_bbr` if it
    /// is not loaded yet).
    fn bbr_listener() -> std::net::TcpListener {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let sock = socket2::SockRef::from(&listener);
        if sock.set_tcp_congestion(b"bbr").is_err() {
            let _ = std::process::Command::new("modprobe")
                .arg("tcp_bbr")
                .status();
            sock.set_tcp_congestion(b"bbr")
                .expect("TCP_CONGESTION bbr (is the tcp_bbr module available?)");
        }
        listener
    }

    /// The server side of a loopback connection leaves BBR for CUBIC (read back from the
    /// kernel with `ss`); a connection accepted without `serve_with` keeps the listener's
    /// BBR, so the check can fail.
    #[tokio::test]
    async fn loopback_connections_leave_bbr() {
        let plain = bbr_listener();
        let _client =
            std::net::TcpStream::connect(plain.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = plain.accept().expect("accept");
        let inherited = socket2::SockRef::from(&accepted)
            .tcp_congestion()
            .expect("TCP_CONGESTION");
        assert!(
            inherited.starts_with(b"bbr"),
            "an accepted socket inherits the listener's congestion control"
        );

        let listener = bbr_listener();
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let listener = TcpListener::from_std(listener).expect("listener");
        let tls = ephemeral_self_signed(&["localhost".into()], ClientCerts::None).expect("tls");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_with(
            listener,
            tls,
            axum::Router::new(),
            shutdown.clone(),
            100,
        ));
        let client = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let out = std::process::Command::new("ss")
                .args(["-tinH", "state", "established"])
                .arg(format!("( sport = :{port} )"))
                .output()
                .expect("ss");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if text.contains("cubic") && !text.contains("bbr") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server side of a loopback connection is still not CUBIC: {text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(client);
        shutdown.cancel();
        server.await.expect("server");
    }

    fn ca(cn: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).expect("ca");
        (rcgen::Issuer::new(params, key), cert.pem())
    }

    fn client(
        issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
        cn: Option<&str>,
        orgs: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        // (rcgen's default subject has a CN)
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        // rcgen keeps one value per attribute type: a second O goes in under its OID as a
        // custom type, which encodes the same.
        for (i, o) in orgs.iter().enumerate() {
            let ty = match i {
                0 => rcgen::DnType::OrganizationName,
                _ => rcgen::DnType::CustomDnType(vec![2, 5, 4, 10]),
            };
            params.distinguished_name.push(ty, *o);
        }
        params.extended_key_usages = vec![usage];
        params.signed_by(&key, issuer).expect("sign").der().clone()
    }

    #[test]
    fn reads_the_subject_of_a_certificate() {
        let (issuer, _) = ca("test-ca");
        let client_auth = rcgen::ExtendedKeyUsagePurpose::ClientAuth;
        let der = client(&issuer, Some("jane"), &["devs", "ops"], client_auth.clone());
        assert_eq!(
            subject(der.as_ref()),
            Some((
                Some("jane".to_string()),
                vec!["devs".to_string(), "ops".to_string()]
            ))
        );
        let der = client(&issuer, Some("bob"), &[], client_auth);
        assert_eq!(subject(der.as_ref()), Some((Some("bob".into()), vec![])));
        assert_eq!(subject(&der.as_ref()[..40]), None, "truncated");
        assert_eq!(subject(b"not a certificate"), None);
        assert_eq!(subject(&[]), None);
    }

    #[test]
    fn client_ca_verifies_chains_and_names_the_user() {
        let (issuer, ca_pem) = ca("cluster-ca");
        let (other, _) = ca("cluster-ca");
        let ca = ClientCa::from_pem(ca_pem.as_bytes()).expect("ca");
        let client_auth = rcgen::ExtendedKeyUsagePurpose::ClientAuth;

        let jane = client(&issuer, Some("jane"), &["devs"], client_auth.clone());
        assert_eq!(
            ca.verify(&[jane]),
            Ok(CertUser {
                name: "jane".into(),
                groups: vec!["devs".into()]
            })
        );
        // same subject, same CA name, another key: not signed by this CA
        let forged = client(&other, Some("jane"), &["devs"], client_auth.clone());
        assert!(matches!(ca.verify(&[forged]), Err(CertError::Invalid(_))));
        let server_only = client(
            &issuer,
            Some("jane"),
            &[],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        assert!(matches!(
            ca.verify(&[server_only]),
            Err(CertError::Invalid(_))
        ));
        let nameless = client(&issuer, None, &["devs"], client_auth);
        assert_eq!(ca.verify(&[nameless]), Err(CertError::NoCommonName));
        assert!(matches!(ca.verify(&[]), Err(CertError::Invalid(_))));

        assert!(ClientCa::from_pem(b"").is_err());
        assert!(ClientCa::from_file(Path::new("/nonexistent/ca.crt")).is_err());
    }
}
