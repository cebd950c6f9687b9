//! `--audit-webhook-config-file`: a kubeconfig, read as upstream's webhook reads it through
//! clientcmd: the current context's cluster (`server`, `certificate-authority[-data]`,
//! `insecure-skip-tls-verify`, `tls-server-name`) and user (client certificate and key,
//! `token`/`tokenFile`, `username`/`password`); relative paths are relative to the file.

use std::path::{Path, PathBuf};

use axum::http::HeaderValue;
use base64::Engine;
use serde_yaml::Value;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::TlsConnector;

use crate::backend::{self, Identity, Verify};

/// Where and how audit events are POSTed.
pub struct Target {
    /// The server URL, as errors print it.
    pub url: String,
    /// The `Host` header: the URL's authority, as Go's client sends it.
    pub authority: String,
    pub host: String,
    pub port: u16,
    pub server_name: String,
    pub path_and_query: String,
    /// None for an `http://` server.
    pub tls: Option<TlsConnector>,
    pub authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn b64(s: &str, what: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("{what}: invalid base64: {e}"))
}

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The entry named `name` of the kubeconfig's list `list` (`clusters`, `users`,
/// `contexts`), its inner object (`cluster`, `user`, `context`).
fn named<'a>(doc: &'a Value, list: &str, inner: &str, name: &str) -> Option<&'a Value> {
    doc.get(list)?
        .as_sequence()?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        .map(|e| e.get(inner).unwrap_or(&Value::Null))
}

/// Read the file named by a field (relative to the kubeconfig's directory) or decode the
/// `-data` field next to it.
fn file_or_data(
    dir: &Path,
    obj: &Value,
    file_key: &str,
    data_key: &str,
) -> Result<Option<Vec<u8>>, String> {
    if let Some(data) = s(obj, data_key) {
        return b64(data, data_key).map(Some);
    }
    match s(obj, file_key) {
        Some(f) => {
            let path: PathBuf = dir.join(f);
            std::fs::read(&path)
                .map(Some)
                .map_err(|e| format!("reading {file_key} {}: {e}", path.display()))
        }
        None => Ok(None),
    }
}

/// Load `file` into a [`Target`]; the error says what is wrong (the caller names the file).
pub fn load(file: &Path) -> Result<Target, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("reading the file: {e}"))?;
    let doc: Value =
        serde_yaml::from_str(&text).map_err(|e| format!("parsing the kubeconfig: {e}"))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let context_name = s(&doc, "current-context")
        .ok_or("no current-context (the context naming the webhook's cluster and user)")?;
    let context = named(&doc, "contexts", "context", context_name)
        .ok_or_else(|| format!("context was not found for specified context: {context_name}"))?;
    let cluster_name = s(context, "cluster").unwrap_or("");
    let cluster = named(&doc, "clusters", "cluster", cluster_name).unwrap_or(&Value::Null);
    let server = s(cluster, "server")
        .ok_or_else(|| format!("cluster {cluster_name:?} has no server defined"))?;
    let uri: axum::http::Uri = server
        .parse()
        .map_err(|e| format!("invalid server URL {server:?}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(format!(
                "invalid server URL {server:?}: not http:// or https://"
            ))
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("invalid server URL {server:?}: no host"))?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());

    let insecure = cluster
        .get("insecure-skip-tls-verify")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ca = file_or_data(
        dir,
        cluster,
        "certificate-authority",
        "certificate-authority-data",
    )?;
    if insecure && ca.is_some() {
        // client-go's transport refuses the same
        return Err(
            "specifying a root certificates file with the insecure flag is not allowed".into(),
        );
    }
    let ca_b64 = match &ca {
        Some(pem) => {
            let which = match (
                s(cluster, "certificate-authority-data"),
                s(cluster, "certificate-authority"),
            ) {
                (None, Some(f)) => format!("certificate-authority {}", dir.join(f).display()),
                _ => "certificate-authority-data".to_string(),
            };
            let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("bad {which}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("bad {which}: no PEM certificate in it"));
            }
            Some(base64::engine::general_purpose::STANDARD.encode(pem))
        }
        None => None,
    };

    let user_name = s(context, "user").unwrap_or("");
    let user = named(&doc, "users", "user", user_name).unwrap_or(&Value::Null);
    for unsupported in ["exec", "auth-provider"] {
        if user.get(unsupported).is_some_and(|v| !v.is_null()) {
            return Err(format!("user {user_name:?}: {unsupported} credentials are not supported by kaze's audit webhook"));
        }
    }
    let cert = file_or_data(dir, user, "client-certificate", "client-certificate-data")?;
    let key = file_or_data(dir, user, "client-key", "client-key-data")?;
    let identity = match (cert, key) {
        (Some(c), Some(k)) => {
            Some(Identity::from_pem(&c, &k).map_err(|e| format!("user {user_name:?}: {e}"))?)
        }
        (None, None) => None,
        _ => {
            return Err(format!(
                "user {user_name:?}: a client certificate needs both the certificate and its key"
            ))
        }
    };
    let token = match (s(user, "token"), s(user, "tokenFile")) {
        (Some(t), _) => Some(t.to_string()),
        (None, Some(f)) => {
            let path = dir.join(f);
            Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("reading tokenFile {}: {e}", path.display()))?
                    .trim()
                    .to_string(),
            )
        }
        _ => None,
    };
    let authorization = match (token, s(user, "username")) {
        (Some(t), _) => Some(format!("Bearer {t}")),
        (None, Some(u)) => {
            let p = s(user, "password").unwrap_or("");
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            ))
        }
        _ => None,
    }
    .map(|h| {
        HeaderValue::from_str(&h)
            .map_err(|_| format!("user {user_name:?}: the token is not a valid header value"))
    })
    .transpose()?;

    let tls = if https {
        let verify = match (&ca_b64, insecure) {
            (_, true) => Verify::Insecure,
            (Some(b), false) => Verify::CaBundle(b),
            (None, false) => Verify::SystemRoots,
        };
        Some(backend::connector(verify, identity.as_ref())?)
    } else {
        None
    };
    Ok(Target {
        url: server.to_string(),
        authority: uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default(),
        server_name: s(cluster, "tls-server-name").unwrap_or(&host).to_string(),
        host,
        port,
        path_and_query,
        tls,
        authorization,
    })
}
