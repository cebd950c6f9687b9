//! Serving an axum router over HTTPS (rustls, HTTP/1.1 with upgrades) until shutdown, with
//! a bounded drain; and a self-signed certificate for servers whose clients do not verify
//! one (the kubelet's, as upstream's apiserver without `--kubelet-certificate-authority`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
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

/// A server config from a certificate and key kept in `dir` (`server.crt`, `server.key`),
/// generated self-signed for `names` on first use and reused after (so a restart keeps it).
pub fn self_signed(dir: &Path, names: &[String]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
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
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Tls {
        action: "choosing TLS versions",
        message: e.to_string(),
    })?
    .with_no_client_auth()
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
