//! The kubelet's TLS bootstrap, as upstream's kubelet (and k3s's agent) does it: with the
//! join token (a bootstrap credential: user `system:bootstrap:<id>`, group
//! `system:bootstrappers`, which may only ask for client certificates) the agent generates a
//! key, submits a `kubernetes.io/kube-apiserver-client-kubelet` CertificateSigningRequest for
//! `system:node:<node name>` in `system:nodes`, waits for the server's approver and signer,
//! and writes `<data-dir>/agent/client-kubelet.crt` and `.key` (0600) and a kubeconfig with
//! them. On the next start a certificate of the cluster CA for the same node with more than
//! a fifth of its lifetime left is used again; one closer to its expiry is renewed with
//! itself as the credential (the node's own `selfnodeclient` permission), an expired one with
//! the join token. (A certificate is not renewed while the agent runs.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};

pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// How long to wait for the server to approve and sign.
const SIGN_TIMEOUT: Duration = Duration::from_secs(120);

/// The node's client certificate and key files in `dir` (`<data-dir>/agent`).
pub struct Paths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Paths {
    pub fn new(dir: &Path) -> Paths {
        Paths {
            cert: dir.join("client-kubelet.crt"),
            key: dir.join("client-kubelet.key"),
            kubeconfig: dir.join("kubeconfig.yaml"),
        }
    }
}

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

/// A kubeconfig for `server` (trusting `ca_pem`) whose user is this node's client
/// certificate, getting one first if there is none worth using (see the module docs).
/// `bootstrap` is the join token's kubeconfig.
pub async fn node_kubeconfig(
    paths: &Paths,
    server: &str,
    ca_pem: &str,
    node: &str,
    bootstrap: &Path,
) -> anyhow::Result<PathBuf> {
    let user = format!("system:node:{node}");
    let existing = check_existing(paths, ca_pem, &user);
    if existing == Existing::Fresh {
        tracing::info!(user = %user, cert = %paths.cert.display(), "using this node's client certificate");
        write_kubeconfig(paths, server, ca_pem, &user)?;
        return Ok(paths.kubeconfig.clone());
    }
    let credential = match existing {
        Existing::Renew => {
            write_kubeconfig(paths, server, ca_pem, &user)?;
            tracing::info!(user = %user, "renewing this node's client certificate");
            paths.kubeconfig.clone()
        }
        _ => bootstrap.to_path_buf(),
    };
    let client = component::client(Some(&credential)).await?;
    let (cert_pem, key_pem) = request_certificate(&client, node).await?;
    write_private(&paths.key, &key_pem)?;
    write_private(&paths.cert, &cert_pem)?;
    write_kubeconfig(paths, server, ca_pem, &user)?;
    tracing::info!(user = %user, cert = %paths.cert.display(), "got this node's client certificate");
    Ok(paths.kubeconfig.clone())
}

fn write_kubeconfig(paths: &Paths, server: &str, ca_pem: &str, user: &str) -> anyhow::Result<()> {
    let cert = std::fs::read_to_string(&paths.cert)
        .with_context(|| format!("reading {}", paths.cert.display()))?;
    let key = std::fs::read_to_string(&paths.key)
        .with_context(|| format!("reading {}", paths.key.display()))?;
    let text = apiserver::client_cert_kubeconfig(server, ca_pem, user, &cert, &key);
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

/// Whether the certificate in `paths` is for `user` in `system:nodes`, from the cluster CA,
/// valid now, and for how much longer.
fn check_existing(paths: &Paths, ca_pem: &str, user: &str) -> Existing {
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
        Ok(who) if who.name == user && who.groups == ["system:nodes"] => {}
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

/// Submit a kubelet client certificate request for `node` and wait for it to be signed:
/// (certificate PEM, key PEM).
async fn request_certificate(
    client: &kube::Client,
    node: &str,
) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("generating the node's key")?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .context("certificate request parameters")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    let request = params
        .serialize_request(&key)
        .context("making the certificate request")?
        .pem()
        .context("encoding the certificate request")?;
    let csr: CertificateSigningRequest = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": "node-csr-"},
        "spec": {
            "request": base64(&request),
            "signerName": SIGNER,
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
            return Err(anyhow::Error::new(e).context("submitting the node's certificate request"))
        }
    };
    let name = created.metadata.name.unwrap_or_default();
    tracing::info!(csr = %name, "waiting for the node's client certificate to be approved and signed");
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
    fn existing_certificates_are_used_renewed_or_replaced() {
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
            check_existing(&paths, &ca, "system:node:a"),
            Existing::Unusable
        );
        issue("system:node:a", -3600, 3600 * 24);
        assert_eq!(
            check_existing(&paths, &ca, "system:node:a"),
            Existing::Fresh
        );
        assert_eq!(
            check_existing(&paths, &ca, "system:node:b"),
            Existing::Unusable
        );
        issue("system:node:a", -3600 * 24, 3600);
        assert_eq!(
            check_existing(&paths, &ca, "system:node:a"),
            Existing::Renew
        );
        issue("system:node:a", -3600 * 24, -60);
        assert_eq!(
            check_existing(&paths, &ca, "system:node:a"),
            Existing::Unusable
        );
    }
}
