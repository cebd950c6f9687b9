//! The admin kubeconfig written to `<data-dir>/kubeconfig.yaml`.

use std::path::Path;

use base64::Engine;

use crate::Error;

pub fn render(server_url: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kaze
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
users:
- name: kaze-admin
  user:
    token: {token}
contexts:
- name: kaze
  context:
    cluster: kaze
    user: kaze-admin
    namespace: default
current-context: kaze
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
