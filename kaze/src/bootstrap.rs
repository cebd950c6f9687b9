//! The kubelet's TLS bootstrap, as upstream's kubelet (and k3s's agent) does it: with the
//! join token (a bootstrap credential: user `system:bootstrap:<id>`, group
//! `system:bootstrappers`, which may only ask for client certificates) the agent generates a
//! key, submits a `kubernetes.io/kube-apiserver-client-kubelet` CertificateSigningRequest for
//! `system:node:<node name>` in `system:nodes`, waits for the server's approver and signer,
//! and writes `<data-dir>/agent/client-kubelet.crt` and `.key` (0600) and a kubeconfig with
//! them. On the next start a certificate of the cluster CA for the same node with more than
//! a fifth of its lifetime left is used again; one closer to its expiry is renewed with
//! itself as the credential (the node's own `selfnodeclient` permission), an expired one with
//! the join token.
//!
//! While the agent runs ([`rotate`], upstream's `--rotate-certificates`), the certificate is
//! renewed the same way once 70–90% (jittered) of its lifetime has passed, and written over
//! the same files (each atomically, the key first). The kubeconfig names the files rather
//! than holding the data, so the kubelet's client (`component::reloading`) presents the new
//! certificate on new connections and closes the old ones, without a restart.
//!
//! The node's Service proxy and pod routes run as upstream's kube-proxy does, as user
//! `system:kube-proxy` (bound to `system:node-proxier`: they list every Node, Service and
//! EndpointSlice, which the Node authorizer does not let a node do): the agent gets that
//! certificate the same way, with a `kubernetes.io/kube-apiserver-client` request made with
//! the join token (the server approves it for a bootstrap token and that subject only),
//! kept in `client-kube-proxy.crt`/`.key` and `kube-proxy-kubeconfig.yaml`, reused and
//! renewed as the node's (always with the join token: the identity is not a node's).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};

/// How long to wait for the server to approve and sign.
const SIGN_TIMEOUT: Duration = Duration::from_secs(120);

/// Whose client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The kubelet's: `system:node:<name>` in `system:nodes`.
    Node(String),
    /// The Service proxy's and the pod routes': `system:kube-proxy`.
    KubeProxy,
}

impl Identity {
    fn user(&self) -> String {
        match self {
            Identity::Node(name) => format!("system:node:{name}"),
            Identity::KubeProxy => apiserver::KUBE_PROXY_USER.to_string(),
        }
    }

    fn groups(&self) -> &'static [&'static str] {
        match self {
            Identity::Node(_) => &["system:nodes"],
            Identity::KubeProxy => &[],
        }
    }

    fn signer(&self) -> &'static str {
        match self {
            Identity::Node(_) => "kubernetes.io/kube-apiserver-client-kubelet",
            Identity::KubeProxy => "kubernetes.io/kube-apiserver-client",
        }
    }

    /// The request's `generateName`.
    fn prefix(&self) -> &'static str {
        match self {
            Identity::Node(_) => "node-csr-",
            Identity::KubeProxy => "kube-proxy-csr-",
        }
    }

    /// Whether the certificate may renew itself (a node may: `selfnodeclient`); the
    /// kube-proxy's is always asked for with the join token.
    fn renews_itself(&self) -> bool {
        matches!(self, Identity::Node(_))
    }
}

/// A client certificate's files in `dir` (`<data-dir>/agent`).
pub struct Paths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Paths {
    /// The node's (the kubelet's).
    pub fn new(dir: &Path) -> Paths {
        Paths {
            cert: dir.join("client-kubelet.crt"),
            key: dir.join("client-kubelet.key"),
            kubeconfig: dir.join("kubeconfig.yaml"),
        }
    }

    /// The Service proxy's and pod routes' (`system:kube-proxy`; k3s's file names for the
    /// certificate).
    pub fn kube_proxy(dir: &Path) -> Paths {
        Paths {
            cert: dir.join("client-kube-proxy.crt"),
            key: dir.join("client-kube-proxy.key"),
            kubeconfig: dir.join(KUBE_PROXY_KUBECONFIG),
        }
    }
}

/// The kube-proxy identity's kubeconfig in `<data-dir>/agent` (agents and `kaze server`).
pub const KUBE_PROXY_KUBECONFIG: &str = "kube-proxy-kubeconfig.yaml";

/// What an existing certificate is good for.
#[derive(Debug, PartialEq, Eq)]
enum Existing {
    /// Valid for long enough: use it.
    Fresh,
    /// Valid, but renew it (with itself as the credential).
    Renew,
    /// Missing, expired, for another node or not of this cluster: bootstrap.
    Unusable,
}

/// A kubeconfig for `server` (trusting `ca_pem`) whose user is `who`'s client
/// certificate, getting one first if there is none worth using (see the module docs).
/// `bootstrap` is the join token's kubeconfig.
pub async fn kubeconfig(
    paths: &Paths,
    server: &str,
    ca_pem: &str,
    who: &Identity,
    bootstrap: &Path,
) -> anyhow::Result<PathBuf> {
    let user = who.user();
    let existing = check_existing(paths, ca_pem, &user, who.groups());
    if existing == Existing::Fresh {
        tracing::info!(user = %user, cert = %paths.cert.display(), "using this node's client certificate");
        write_kubeconfig(paths, server, ca_pem, &user)?;
        return Ok(paths.kubeconfig.clone());
    }
    let credential = match existing {
        Existing::Renew if who.renews_itself() => {
            write_kubeconfig(paths, server, ca_pem, &user)?;
            tracing::info!(user = %user, "renewing this node's client certificate");
            paths.kubeconfig.clone()
        }
        _ => bootstrap.to_path_buf(),
    };
    let client =
        component::client_as(Some(&credential), &component::user_agent("kubelet", None)).await?;
    let (cert_pem, key_pem) = request_certificate(&client, who).await?;
    write_private(&paths.key, &key_pem)?;
    write_private(&paths.cert, &cert_pem)?;
    write_kubeconfig(paths, server, ca_pem, &user)?;
    tracing::info!(user = %user, cert = %paths.cert.display(), "got this node's client certificate");
    Ok(paths.kubeconfig.clone())
}

/// The node's kubeconfig: its user's certificate and key by file name (`client-certificate`,
/// `client-key`, as upstream's kubelet writes it), so that clients reload them.
fn write_kubeconfig(paths: &Paths, server: &str, ca_pem: &str, user: &str) -> anyhow::Result<()> {
    let text = apiserver::client_cert_kubeconfig(server, ca_pem, user, "", "");
    let mut config = kube::config::Kubeconfig::from_yaml(&text).context("the node's kubeconfig")?;
    for named in &mut config.auth_infos {
        if let Some(info) = named.auth_info.as_mut() {
            info.client_certificate_data = None;
            info.client_key_data = None;
            info.client_certificate = Some(paths.cert.display().to_string());
            info.client_key = Some(paths.key.display().to_string());
        }
    }
    // JSON is YAML
    let text = serde_json::to_string_pretty(&config).context("the node's kubeconfig")?;
    write_private(&paths.kubeconfig, &text)
}

/// Write a file only its owner reads (atomically: a crash leaves the old one).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

/// Whether the certificate in `paths` is for `user` in exactly `groups`, from the cluster
/// CA, valid now, and for how much longer.
fn check_existing(paths: &Paths, ca_pem: &str, user: &str, groups: &[&str]) -> Existing {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let (Ok(cert_pem), true) = (std::fs::read_to_string(&paths.cert), paths.key.exists()) else {
        return Existing::Unusable;
    };
    let Ok(der) = CertificateDer::from_pem_slice(cert_pem.as_bytes()) else {
        return Existing::Unusable;
    };
    let Ok(ca) = component::https::ClientCa::from_pem(ca_pem.as_bytes()) else {
        return Existing::Unusable;
    };
    match ca.verify(std::slice::from_ref(&der)) {
        Ok(who) if who.name == user && who.groups == groups => {}
        _ => return Existing::Unusable,
    }
    let Ok((_, x)) = x509_parser::parse_x509_certificate(&der) else {
        return Existing::Unusable;
    };
    let (from, to) = (
        x.validity().not_before.timestamp(),
        x.validity().not_after.timestamp(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if (to - now) * 5 > (to - from) {
        Existing::Fresh
    } else {
        Existing::Renew
    }
}

/// When to renew the certificate in `cert`: at a random point between 70% and 90% of its
/// lifetime (client-go's certificate manager), as seconds since the epoch; None if it cannot
/// be read.
fn rotation_deadline(cert: &Path) -> Option<i64> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let pem = std::fs::read(cert).ok()?;
    let der = CertificateDer::from_pem_slice(&pem).ok()?;
    let (_, x) = x509_parser::parse_x509_certificate(&der).ok()?;
    let (from, to) = (
        x.validity().not_before.timestamp(),
        x.validity().not_after.timestamp(),
    );
    let mut b = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).ok()?;
    let jitter = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX);
    Some(deadline_at(from, to, jitter))
}

/// `from + (0.7 + 0.2 * jitter) * (to - from)`, `jitter` in [0, 1].
fn deadline_at(from: i64, to: i64, jitter: f64) -> i64 {
    from + ((to - from) as f64 * (0.7 + 0.2 * jitter.clamp(0.0, 1.0))).round() as i64
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Renew `who`'s client certificate while the agent runs (see the module docs) until
/// `shutdown`: at the deadline a new key and request, with the current certificate as the
/// credential if it may renew itself and has not expired, else the join token; a failure
/// is retried after 2 s, doubling up to 5 minutes.
pub async fn rotate(
    paths: Paths,
    who: Identity,
    bootstrap: PathBuf,
    shutdown: component::CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_secs(2);
    loop {
        let deadline = rotation_deadline(&paths.cert).unwrap_or_else(now_secs);
        let wait = Duration::from_secs(deadline.saturating_sub(now_secs()).max(0) as u64);
        tracing::info!(cert = %paths.cert.display(), in_secs = wait.as_secs(), "next client certificate rotation");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        match renew(&paths, &who, &bootstrap).await {
            Ok(()) => backoff = Duration::from_secs(2),
            Err(e) => {
                tracing::warn!(user = %who.user(), error = format!("{e:#}"), retry_in = ?backoff, "rotating a client certificate of this node");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
        }
    }
}

/// One renewal: the request made with the certificate's own kubeconfig while it is valid
/// and may renew itself, else with the join token's; the key written before the certificate.
async fn renew(paths: &Paths, who: &Identity, bootstrap: &Path) -> anyhow::Result<()> {
    let credential = if !who.renews_itself() || cert_expired(&paths.cert) {
        bootstrap
    } else {
        paths.kubeconfig.as_path()
    };
    let client =
        component::client_as(Some(credential), &component::user_agent("kubelet", None)).await?;
    let (cert_pem, key_pem) = request_certificate(&client, who).await?;
    write_private(&paths.key, &key_pem)?;
    write_private(&paths.cert, &cert_pem)?;
    tracing::info!(user = %who.user(), cert = %paths.cert.display(), "rotated a client certificate of this node");
    Ok(())
}

fn cert_expired(cert: &Path) -> bool {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let not_after = std::fs::read(cert).ok().and_then(|pem| {
        let der = CertificateDer::from_pem_slice(&pem).ok()?;
        let (_, x) = x509_parser::parse_x509_certificate(&der).ok()?;
        Some(x.validity().not_after.timestamp())
    });
    not_after.is_none_or(|t| t <= now_secs())
}

/// Submit a client certificate request for `who` and wait for it to be signed:
/// (certificate PEM, key PEM).
async fn request_certificate(
    client: &kube::Client,
    who: &Identity,
) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .context("certificate request parameters")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    for group in who.groups() {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, *group);
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, who.user());
    let request = params
        .serialize_request(&key)
        .context("making the certificate request")?
        .pem()
        .context("encoding the certificate request")?;
    let csr: CertificateSigningRequest = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": who.prefix()},
        "spec": {
            "request": base64(&request),
            "signerName": who.signer(),
            "usages": ["digital signature", "client auth"],
        },
    }))?;
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let created = match api.create(&PostParams::default(), &csr).await {
        Ok(c) => c,
        Err(kube::Error::Api(s)) if s.code == 401 => {
            bail!("the server refused the join token (401 Unauthorized): copy it again from <server data-dir>/server/token")
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "submitting a certificate request for {}",
                who.user()
            )))
        }
    };
    let name = created.metadata.name.unwrap_or_default();
    tracing::info!(csr = %name, user = %who.user(), "waiting for a client certificate to be approved and signed");
    let deadline = tokio::time::Instant::now() + SIGN_TIMEOUT;
    loop {
        let csr = api
            .get(&name)
            .await
            .with_context(|| format!("reading certificate request {name}"))?;
        let status = csr.status.unwrap_or_default();
        for c in status.conditions.iter().flatten() {
            if matches!(c.type_.as_str(), "Denied" | "Failed") {
                bail!(
                    "certificate request {name} was {}: {}",
                    c.type_.to_lowercase(),
                    c.message.as_deref().unwrap_or("")
                );
            }
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            let pem = String::from_utf8(cert.0).context("the issued certificate is not PEM")?;
            return Ok((pem, key.serialize_pem()));
        }
        if tokio::time::Instant::now() > deadline {
            bail!("certificate request {name} was not signed within {SIGN_TIMEOUT:?} (is it approved? `kubectl certificate approve {name}`)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_falls_between_70_and_90_percent_of_the_lifetime() {
        assert_eq!(deadline_at(1000, 2000, 0.0), 1700);
        assert_eq!(deadline_at(1000, 2000, 1.0), 1900);
        assert_eq!(deadline_at(1000, 2000, 0.5), 1800);
        assert_eq!(deadline_at(1000, 2000, 7.0), 1900);
    }

    #[test]
    fn existing_certificates_are_used_renewed_or_replaced() {
        const NODES: &[&str] = &["system:nodes"];
        let dir = tempfile::tempdir().expect("dir");
        let paths = Paths::new(dir.path());
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("p");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let issue = |cn: &str, from: i64, to: i64| {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("p");
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, "system:nodes");
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("now")
                .as_secs() as i64;
            let at =
                |s: i64| rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs((now + s) as u64);
            p.not_before = at(from);
            p.not_after = at(to);
            let cert = p.signed_by(&key, &issuer).expect("sign");
            std::fs::write(&paths.cert, cert.pem()).expect("cert");
            std::fs::write(&paths.key, key.serialize_pem()).expect("key");
        };
        let ca = ca_cert.pem();
        assert_eq!(
            check_existing(&paths, &ca, "system:node:a", NODES),
            Existing::Unusable
        );
        issue("system:node:a", -3600, 3600 * 24);
        assert_eq!(
            check_existing(&paths, &ca, "system:node:a", NODES),
            Existing::Fresh
        );
        assert_eq!(
            check_existing(&paths, &ca, "system:node:b", NODES),
            Existing::Unusable
        );
        issue("system:node:a", -3600 * 24, 3600);
        assert_eq!(
            check_existing(&paths, &ca, "system:node:a", NODES),
            Existing::Renew
        );
        // the groups must be exactly the identity's: the kube-proxy's has none
        issue("system:kube-proxy", -3600, 3600 * 24);
        assert_eq!(
            check_existing(&paths, &ca, "system:kube-proxy", &[]),
            Existing::Unusable
        );
        issue("system:node:a", -3600 * 24, -60);
        assert_eq!(
            check_existing(&paths, &ca, "system:node:a", NODES),
            Existing::Unusable
        );
    }
}
