//! Serving an axum router over HTTPS (rustls, HTTP/1.1 with upgrades) until shutdown, with
//! a bounded drain; and a self-signed certificate for servers whose clients do not verify
//! one (the kubelet's, as upstream's apiserver without `--kubelet-certificate-authority`).
//!
//! A server can ask its clients for certificates ([`ClientCerts::Request`]): the handshake
//! then only proves that the client holds the key; the chain a client presented reaches the
//! handlers as a [`PeerCertificates`] request extension, to be verified there, so that a
//! missing or untrusted certificate is an HTTP 401 the client can read (as upstream's
//! kubelet does with Go's `tls.RequestClientCert`), not a failed handshake.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Tls {
            action: "parsing the certificate",
            message: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Tls {
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

/// Serve `app` on `listener` over TLS until `shutdown`, then drain open connections for a
/// few seconds.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
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
        let (acceptor, app, shutdown) = (acceptor.clone(), app.clone(), shutdown.clone());
        conns.spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let app = match tls.get_ref().1.peer_certificates() {
                Some(chain) if !chain.is_empty() => {
                    let chain: Arc<[CertificateDer<'static>]> =
                        chain.iter().map(|c| c.clone().into_owned()).collect();
                    app.layer(axum::Extension(PeerCertificates(chain)))
                }
                _ => app,
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                .with_upgrades();
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
