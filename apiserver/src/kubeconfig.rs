//! The admin kubeconfig written to `<data-dir>/kubeconfig.yaml`.

use std::path::Path;

use base64::Engine;

use crate::Error;

pub fn render(server_url: &str, ca_pem: &str, token: &str) -> String {
    with_user(
        server_url,
        ca_pem,
        "kaze-admin",
        "kaze",
        &format!("token: {token}"),
    )
}

/// A kubeconfig of one cluster (`server_url`, trusting `ca_pem`), one user `name` whose
/// `user:` block is `credentials` (YAML lines at that level), and one context `context`.
fn with_user(
    server_url: &str,
    ca_pem: &str,
    name: &str,
    context: &str,
    credentials: &str,
) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let credentials = credentials.replace('\n', "\n    ");
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kaze
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
users:
- name: {name}
  user:
    {credentials}
contexts:
- name: {context}
  context:
    cluster: kaze
    user: {name}
    namespace: default
current-context: {context}
"
    )
}

pub fn write(path: &Path, server_url: &str, ca_pem: &str, token: &str) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io("creating kubeconfig directory", dir))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Config {
            reason: format!("kubeconfig path {} has no file name", path.display()),
        })?;
    crate::tls::write_private(dir, name, &render(server_url, ca_pem, token))
}

/// A kubeconfig for `user` in `groups` that authenticates with a client certificate signed
/// by the cluster CA in `data_dir` (`<data-dir>/server/tls/ca.key`), valid `valid_days`, as
/// `kubeadm kubeconfig user` writes one: what `kaze kubeconfig --user` prints. `server` is
/// the URL to put in (default: the admin kubeconfig's). The apiserver takes the certificate
/// as long as its `--client-ca-file` is the cluster CA (the default).
pub fn for_user(
    data_dir: &Path,
    user: &str,
    groups: &[String],
    valid_days: u32,
    server: Option<&str>,
) -> Result<String, Error> {
    if user.is_empty() {
        return Err(Error::Config {
            reason: "a user name is needed (the certificate's common name)".into(),
        });
    }
    let tls_dir = data_dir.join("server").join("tls");
    let ca_path = tls_dir.join(crate::tls::CA_CERT);
    let ca_pem =
        std::fs::read_to_string(&ca_path).map_err(Error::io("reading the cluster CA", &ca_path))?;
    let server = match server {
        Some(s) => s.to_string(),
        None => admin_server_url(data_dir)?,
    };
    let (cert_pem, key_pem) = crate::tls::issue_client_cert(&tls_dir, user, groups, valid_days)?;
    Ok(render_client_cert(
        &server, &ca_pem, user, &cert_pem, &key_pem,
    ))
}

/// The server URL in the admin kubeconfig the apiserver wrote in `data_dir`.
fn admin_server_url(data_dir: &Path) -> Result<String, Error> {
    let path = crate::kubeconfig_path(data_dir);
    let text = std::fs::read_to_string(&path).map_err(Error::io(
        "reading the admin kubeconfig (for the server URL)",
        &path,
    ))?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| Error::Config {
        reason: format!("{}: {e}", path.display()),
    })?;
    doc["clusters"][0]["cluster"]["server"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| Error::Config {
            reason: format!("{}: no clusters[0].cluster.server", path.display()),
        })
}

/// A kubeconfig whose user authenticates with a client certificate.
pub fn render_client_cert(
    server_url: &str,
    ca_pem: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // JSON strings are YAML strings: any user name stays one scalar
    let quoted = |s: &str| serde_json::Value::from(s).to_string();
    let credentials = format!(
        "client-certificate-data: {}\nclient-key-data: {}",
        b64(cert_pem),
        b64(key_pem)
    );
    with_user(
        server_url,
        ca_pem,
        &quoted(user),
        &quoted(&format!("{user}@kaze")),
        &credentials,
    )
}
