//! The cluster CA, the apiserver's serving certificate and its client certificate for
//! kubelets (`kubelet-client.crt`: CN `kube-apiserver-kubelet-client`, O `system:masters`,
//! as kubeadm and k3s issue it), generated on first start and kept in
//! `<data-dir>/server/tls/` so kubeconfigs written earlier stay valid across restarts.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// PEM material the server uses and hands out.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub(crate) const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVING_CERT: &str = "serving.crt";
const SERVING_KEY: &str = "serving.key";
pub(crate) const KUBELET_CLIENT_CERT: &str = "kubelet-client.crt";
pub(crate) const KUBELET_CLIENT_KEY: &str = "kubelet-client.key";
/// Who the apiserver is to kubelets.
const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";
const KUBELET_CLIENT_ORG: &str = "system:masters";

fn tls_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |e| Error::Tls {
        reason: format!("{what}: {e}"),
    }
}

/// Load the CA and serving certificate from `dir`, creating what is missing. A serving
/// certificate whose names no longer cover `sans` is reissued from the same CA.
pub fn ensure(dir: &Path, sans: &[String]) -> Result<TlsMaterial, Error> {
    std::fs::create_dir_all(dir).map_err(Error::io("creating TLS directory", dir))?;
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();

    let (ca_pem, ca_key_pem) = match (read(CA_CERT), read(CA_KEY)) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let key = KeyPair::generate().map_err(tls_err("generating CA key"))?;
            let params = ca_params()?;
            let cert = params
                .self_signed(&key)
                .map_err(tls_err("self-signing CA"))?;
            let (c, k) = (cert.pem(), key.serialize_pem());
            write_private(dir, CA_KEY, &k)?;
            write_private(dir, CA_CERT, &c)?;
            // A new CA invalidates any old serving and client certificate.
            let _ = std::fs::remove_file(dir.join(SERVING_CERT));
            let _ = std::fs::remove_file(dir.join(KUBELET_CLIENT_CERT));
            (c, k)
        }
    };

    let wanted = sans_marker(sans);
    let fresh = read("serving.sans").is_some_and(|m| m == wanted);
    let (cert_pem, key_pem) = match (fresh, read(SERVING_CERT), read(SERVING_KEY)) {
        (true, Some(c), Some(k)) => (c, k),
        _ => {
            let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(tls_err("loading CA key"))?;
            // The issuer only needs the CA's subject and key: rebuilding the same parameters
            // avoids an X.509 parser dependency.
            let issuer = Issuer::new(ca_params()?, ca_key);
            let key = KeyPair::generate().map_err(tls_err("generating serving key"))?;
            let mut params = CertificateParams::new(sans.to_vec())
                .map_err(tls_err("serving certificate names"))?;
            params
                .distinguished_name
                .push(DnType::CommonName, "kube-apiserver");
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let cert = params
                .signed_by(&key, &issuer)
                .map_err(tls_err("signing serving certificate"))?;
            let (c, k) = (cert.pem(), key.serialize_pem());
            write_private(dir, SERVING_KEY, &k)?;
            write_private(dir, SERVING_CERT, &c)?;
            write_private(dir, "serving.sans", &wanted)?;
            (c, k)
        }
    };
    if read(KUBELET_CLIENT_CERT).is_none() || read(KUBELET_CLIENT_KEY).is_none() {
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(tls_err("loading CA key"))?;
        let issuer = Issuer::new(ca_params()?, ca_key);
        let key = KeyPair::generate().map_err(tls_err("generating kubelet client key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(tls_err("kubelet client certificate params"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, KUBELET_CLIENT_CN);
        params
            .distinguished_name
            .push(DnType::OrganizationName, KUBELET_CLIENT_ORG);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(tls_err("signing kubelet client certificate"))?;
        write_private(dir, KUBELET_CLIENT_KEY, &key.serialize_pem())?;
        write_private(dir, KUBELET_CLIENT_CERT, &cert.pem())?;
    }
    Ok(TlsMaterial {
        ca_pem,
        cert_pem,
        key_pem,
    })
}

fn ca_params() -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err("CA params"))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "kaze-ca");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn sans_marker(sans: &[String]) -> String {
    let mut v = sans.to_vec();
    v.sort();
    v.join("\n")
}

/// Write a file only its owner can read (keys, tokens).
pub(crate) fn write_private(dir: &Path, name: &str, contents: &str) -> Result<(), Error> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(&tmp).map_err(Error::io("writing", &tmp))?;
    f.write_all(contents.as_bytes())
        .map_err(Error::io("writing", &tmp))?;
    f.sync_all().map_err(Error::io("syncing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io("renaming into place", &path))?;
    Ok(())
}

/// The names the serving certificate must cover: loopback, the host name, the in-cluster
/// service names, and every address clients use (bind, advertise, the service IP).
pub fn default_sans(addresses: &[IpAddr], extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = vec![
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            sans.push(host.to_string());
        }
    }
    sans.extend(
        addresses
            .iter()
            .filter(|ip| !ip.is_unspecified())
            .map(IpAddr::to_string),
    );
    sans.extend(extra.iter().cloned());
    sans.sort();
    sans.dedup();
    sans
}

/// A rustls server config for the material; HTTP/1.1 only (watch streams are chunked
/// responses, and upgrades for exec/port-forward are HTTP/1.1 too).
pub fn server_config(m: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>, Error> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(m.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Tls {
            reason: format!("parsing serving certificate: {e}"),
        })?;
    let key = PrivateKeyDer::from_pem_slice(m.key_pem.as_bytes()).map_err(|e| Error::Tls {
        reason: format!("parsing serving key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls {
            reason: format!("choosing TLS versions: {e}"),
        })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls {
            reason: format!("loading serving certificate: {e}"),
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
