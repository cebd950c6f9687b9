//! Joining nodes, the kubeadm way: the server publishes its CA in `kube-public/cluster-info`
//! (readable without credentials) and hands out a join token `K10<sha256 of the CA>::<secret>`.
//! An agent reads cluster-info, checks the CA against the hash in its token and the server's
//! certificate against that CA, and only then sends the secret as its bearer token.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

pub const CLUSTER_INFO: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";

pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The node secret, created once in `<data-dir>/server/node-token` (mode 0600).
pub fn ensure_node_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("server").join("node-token");
    if let Ok(s) = std::fs::read_to_string(&path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_string());
        }
    }
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(secret.as_bytes())?;
    Ok(secret)
}

/// The apiserver's token file: the user's `--token-auth-file` lines, plus the node secret
/// as a bootstrap credential ([`bootstrap_user`], group `system:bootstrappers`): it may only
/// ask for node client certificates (`crate::bootstrap`), which the server approves.
pub fn token_file(
    data_dir: &Path,
    secret: &str,
    user_file: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let mut content = match user_file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading --token-auth-file {}", p.display()))?,
        None => String::new(),
    };
    if !content.is_empty() && !content.ends_with('\n') {
        content.push('\n');
    }
    let user = bootstrap_user(secret);
    content.push_str(&format!(
        "{secret},{user},{user},\"system:bootstrappers\"\n"
    ));
    let path = data_dir.join("server").join("tokens.csv");
    std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The user the join secret authenticates as: `system:bootstrap:<id>`, the id six hex
/// characters of the secret's hash (upstream's bootstrap tokens are `<id>.<secret>`).
pub fn bootstrap_user(secret: &str) -> String {
    format!("system:bootstrap:{}", &sha256_hex(secret.as_bytes())[..6])
}

pub fn join_token(ca_pem: &str, secret: &str) -> String {
    format!("K10{}::{secret}", sha256_hex(ca_pem.as_bytes()))
}

/// `(ca hash, secret)` from a join token, or an error saying what is wrong with it.
pub fn parse_token(token: &str) -> anyhow::Result<(String, String)> {
    let rest = token
        .trim()
        .strip_prefix("K10")
        .context("--token must look like K10<ca-hash>::<secret> (as `kaze server` prints it)")?;
    let (hash, secret) = rest
        .split_once("::")
        .context("--token is missing the '::' between the CA hash and the secret")?;
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("--token's CA hash must be 64 hex characters");
    }
    if secret.is_empty() {
        bail!("--token has an empty secret");
    }
    Ok((hash.to_lowercase(), secret.to_string()))
}

/// A verifier that accepts the server's certificate only to remember it: it is checked
/// against the CA once the CA itself has been checked against the token.
#[derive(Debug)]
struct Capture {
    seen: Mutex<Option<(CertificateDer<'static>, Vec<CertificateDer<'static>>)>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut s) = self.seen.lock() {
            *s = Some((
                end_entity.clone().into_owned(),
                intermediates
                    .iter()
                    .map(|c| c.clone().into_owned())
                    .collect(),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Read the cluster CA from `server` (`https://host:port`), verified against `ca_hash` and
/// against the certificate the server presented. Returns the CA PEM.
pub async fn fetch_verified_ca(server: &str, ca_hash: &str) -> anyhow::Result<String> {
    let rest = server
        .strip_prefix("https://")
        .context("--server must be an https:// URL")?;
    let hostport = rest.trim_end_matches('/');
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_matches(['[', ']']).to_string(),
            p.parse::<u16>().context("--server has a bad port")?,
        ),
        None => (hostport.to_string(), 6443),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let capture = Arc::new(Capture {
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let name = ServerName::try_from(host.clone())
        .context("--server host is not a valid name or address")?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name.clone(), tcp)
        .await
        .context("TLS handshake with the server")?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {CLUSTER_INFO} HTTP/1.1\r\nHost: {hostport}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    tls.read_to_end(&mut resp)
        .await
        .or_else(|e| if resp.is_empty() { Err(e) } else { Ok(0) })?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response from the server")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "reading cluster-info from {server}: {}",
            head.lines().next().unwrap_or("")
        );
    }
    // The body may be chunked; the JSON object is what lies between the outer braces.
    let json_text = &body
        [body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(body.len().saturating_sub(1))];
    let cm: serde_json::Value = serde_json::from_str(json_text).context("parsing cluster-info")?;
    let ca_pem = cm
        .pointer("/data/ca.crt")
        .and_then(|v| v.as_str())
        .context("cluster-info has no data.ca.crt")?
        .to_string();
    let got = sha256_hex(ca_pem.as_bytes());
    if got != ca_hash {
        bail!("the server's CA (sha256 {got}) does not match the token's ({ca_hash}): wrong --server or --token");
    }
    let (leaf, intermediates) = capture
        .seen
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .context("no server certificate seen")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.context("parsing the cluster CA")?)
            .context("adding the cluster CA")?;
    }
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()?;
    verifier
        .verify_server_cert(&leaf, &intermediates, &name, &[], UnixTime::now())
        .context("the server's certificate is not signed by the cluster CA in the token")?;
    Ok(ca_pem)
}

/// A kubeconfig for `server` with the CA and a bearer token (the join secret: the agent's
/// bootstrap credential).
pub fn kubeconfig(server: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kaze\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: kubelet-bootstrap\n  user:\n    token: {token}\ncontexts:\n- name: kaze\n  context:\n    cluster: kaze\n    user: kubelet-bootstrap\n\
         current-context: kaze\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_say_why() {
        let t = join_token("CA PEM", "s3cret");
        let (hash, secret) = parse_token(&t).expect("valid");
        assert_eq!(hash, sha256_hex(b"CA PEM"));
        assert_eq!(secret, "s3cret");
        for (bad, why) in [
            ("abc", "K10<ca-hash>::<secret>"),
            ("K10abc", "'::'"),
            ("K10abc::x", "64 hex"),
            (&format!("K10{}::", sha256_hex(b"x")), "empty secret"),
        ] {
            let err = parse_token(bad).expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
