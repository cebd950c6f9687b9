//! The cluster CA, the apiserver's serving certificate and its client certificate for
//! kubelets (`kubelet-client.crt`: CN `kube-apiserver-kubelet-client`, O `system:masters`,
//! as kubeadm and k3s issue it), generated on first start and kept in
//! `<data-dir>/server/tls/` so kubeconfigs written earlier stay valid across restarts.

use component::https::tlv;
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
pub(crate) const CA_KEY: &str = "ca.key";
const SERVING_CERT: &str = "serving.crt";
const SERVING_KEY: &str = "serving.key";
pub(crate) const KUBELET_CLIENT_CERT: &str = "kubelet-client.crt";
pub(crate) const KUBELET_CLIENT_KEY: &str = "kubelet-client.key";
/// Who the apiserver is to kubelets.
const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";
const KUBELET_CLIENT_ORG: &str = "system:masters";
/// The front-proxy (request-header) CA and the client certificate it signs, which the
/// apiserver presents to aggregated API servers (k3s's file names and CN).
pub(crate) const REQUEST_HEADER_CA_CERT: &str = "request-header-ca.crt";
const REQUEST_HEADER_CA_KEY: &str = "request-header-ca.key";
const REQUEST_HEADER_CA_CN: &str = "kaze-request-header-ca";
pub(crate) const PROXY_CLIENT_CERT: &str = "client-auth-proxy.crt";
pub(crate) const PROXY_CLIENT_KEY: &str = "client-auth-proxy.key";
const PROXY_CLIENT_CN: &str = "system:auth-proxy";

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
        write_client_cert(
            dir,
            &issuer,
            (KUBELET_CLIENT_CN, Some(KUBELET_CLIENT_ORG)),
            (KUBELET_CLIENT_KEY, KUBELET_CLIENT_CERT),
            "signing kubelet client certificate",
        )?;
    }
    Ok(TlsMaterial {
        ca_pem,
        cert_pem,
        key_pem,
    })
}

fn ca_params() -> Result<CertificateParams, Error> {
    ca_params_named("kaze-ca")
}

fn ca_params_named(cn: &str) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err("CA params"))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// The request-header CA and the proxy client certificate in `dir`, created when missing
/// (a new CA gets a new client certificate). The CA signs nothing else, so the certificate
/// is no credential for the apiserver itself (its users are verified against the cluster CA).
pub fn ensure_front_proxy(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(Error::io("creating TLS directory", dir))?;
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let ca_key_pem = match (read(REQUEST_HEADER_CA_CERT), read(REQUEST_HEADER_CA_KEY)) {
        (Some(_), Some(k)) => k,
        _ => {
            let key = KeyPair::generate().map_err(tls_err("generating request-header CA key"))?;
            let cert = ca_params_named(REQUEST_HEADER_CA_CN)?
                .self_signed(&key)
                .map_err(tls_err("self-signing request-header CA"))?;
            let k = key.serialize_pem();
            write_private(dir, REQUEST_HEADER_CA_KEY, &k)?;
            write_private(dir, REQUEST_HEADER_CA_CERT, &cert.pem())?;
            let _ = std::fs::remove_file(dir.join(PROXY_CLIENT_CERT));
            k
        }
    };
    if read(PROXY_CLIENT_CERT).is_some() && read(PROXY_CLIENT_KEY).is_some() {
        return Ok(());
    }
    let ca_key =
        KeyPair::from_pem(&ca_key_pem).map_err(tls_err("loading request-header CA key"))?;
    let issuer = Issuer::new(ca_params_named(REQUEST_HEADER_CA_CN)?, ca_key);
    write_client_cert(
        dir,
        &issuer,
        (PROXY_CLIENT_CN, None),
        (PROXY_CLIENT_KEY, PROXY_CLIENT_CERT),
        "signing proxy client certificate",
    )
}

/// A new key and a client certificate for `(CN, O)` signed by `issuer`, written to
/// `(key file, certificate file)` in `dir`.
fn write_client_cert(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    (cn, org): (&str, Option<&str>),
    (key_file, cert_file): (&str, &str),
    what: &'static str,
) -> Result<(), Error> {
    let key = KeyPair::generate().map_err(tls_err("generating a client key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(tls_err("client certificate params"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    if let Some(org) = org {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).map_err(tls_err(what))?;
    write_private(dir, key_file, &key.serialize_pem())?;
    write_private(dir, cert_file, &cert.pem())
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
/// responses, and upgrades for exec/port-forward are HTTP/1.1 too). It asks clients for a
/// certificate (as upstream's `tls.RequestClientCert`) and takes any, or none.
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
        // Ask for a client certificate without requiring one; the authentication layer
        // verifies it against the client CA (`crate::auth`), so a bad one is a readable 401.
        .with_client_cert_verifier(component::https::request_client_certs())
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls {
            reason: format!("loading serving certificate: {e}"),
        })?;
    cfg.alpn_protocols = component::https::alpn_protocols();
    Ok(Arc::new(cfg))
}

/// A client certificate for `user` in `groups`, signed by the cluster CA kept in `dir`, as
/// `kubeadm kubeconfig user` issues one: subject CN = the user, one O per group (what the
/// x509 authenticator reads back), for client authentication, valid from yesterday for
/// `valid_days`. Returns the certificate and its new key, PEM.
pub fn issue_client_cert(
    dir: &Path,
    user: &str,
    groups: &[String],
    valid_days: u32,
) -> Result<(String, String), Error> {
    let key_path = dir.join(CA_KEY);
    let ca_key_pem =
        std::fs::read_to_string(&key_path).map_err(Error::io("reading the CA key", &key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(tls_err("loading CA key"))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate().map_err(tls_err("generating client key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(tls_err("client certificate params"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, user);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let date = |d: jiff::civil::Date| {
        rcgen::date_time_ymd(d.year().into(), d.month() as u8, d.day() as u8)
    };
    let out_of_range = |e: jiff::Error| Error::Config {
        reason: format!("client certificate validity: {e}"),
    };
    params.not_before = date(today.yesterday().map_err(out_of_range)?);
    params.not_after = date(
        today
            .checked_add(jiff::Span::new().days(i64::from(valid_days)))
            .map_err(out_of_range)?,
    );
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(tls_err("signing client certificate"))?;
    // rcgen keeps one value per attribute type, and a user has any number of groups: put
    // the subject in (O per group, then CN, Go's order) and sign again with the CA's key.
    let malformed = || Error::Tls {
        reason: "rewriting the client certificate's subject: unexpected DER".into(),
    };
    let der = with_subject(cert.der(), &subject_der(user, groups), issuer.key())
        .ok_or_else(malformed)??;
    Ok((pem("CERTIFICATE", &der), key.serialize_pem()))
}

/// The signer of CertificateSigningRequests (upstream's `--cluster-signing-cert-file` and
/// `--cluster-signing-key-file`; kaze's default: the cluster CA in `<data-dir>/server/tls/`).
pub(crate) struct Signer {
    issuer: Issuer<'static, KeyPair>,
    /// The signer certificate's notAfter (seconds since the epoch): nothing it signs outlives it.
    not_after: i64,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

/// What goes into a certificate issued for a request, besides the request's key and names.
#[derive(Debug, Clone)]
pub(crate) struct Issue {
    pub key_usages: Vec<KeyUsagePurpose>,
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    /// How long it is valid from now (the signer's own expiry caps it).
    pub ttl: std::time::Duration,
}

impl Signer {
    /// The signer whose certificate and key are the PEM files `cert` and `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<Signer, Error> {
        let cert_pem = std::fs::read_to_string(cert)
            .map_err(Error::io("reading the signing certificate", cert))?;
        let key_pem =
            std::fs::read_to_string(key).map_err(Error::io("reading the signing key", key))?;
        let key = KeyPair::from_pem(&key_pem).map_err(tls_err("loading the signing key"))?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| Error::Tls {
            reason: format!("parsing the signing certificate {}: {e}", cert.display()),
        })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|e| Error::Tls {
            reason: format!("parsing the signing certificate {}: {e}", cert.display()),
        })?;
        let not_after = parsed.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(tls_err("reading the signing certificate"))?;
        Ok(Signer { issuer, not_after })
    }

    /// A certificate for the key and subject alternative names of `request` (a PEM
    /// `CERTIFICATE REQUEST` whose signature verifies), with the request's subject as
    /// sent (`subject`, its DER `Name`), as upstream's signer issues it: valid from five
    /// minutes ago (clock skew) for `issue.ttl`, at most until the signer expires. PEM.
    pub fn sign(&self, request: &str, subject: &[u8], issue: &Issue) -> Result<String, Error> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(request)
            .map_err(tls_err("reading the certificate request"))?;
        let now = jiff::Timestamp::now().as_second();
        let at = |secs: i64| {
            rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(secs.max(0) as u64)
        };
        let ttl = i64::try_from(issue.ttl.as_secs()).unwrap_or(i64::MAX);
        let params = &mut csr.params;
        params.not_before = at(now - 300);
        params.not_after = at(now.saturating_add(ttl).min(self.not_after));
        params.key_usages = issue.key_usages.clone();
        params.extended_key_usages = issue.extended_key_usages.clone();
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(tls_err("signing the certificate request"))?;
        let malformed = || Error::Tls {
            reason: "putting the request's subject in the certificate: unexpected DER".into(),
        };
        let der = with_subject(cert.der(), subject, self.issuer.key()).ok_or_else(malformed)??;
        Ok(pem("CERTIFICATE", &der))
    }
}

/// A DER `Name`: one RDN per organization, then the common name (UTF8String values).
fn subject_der(cn: &str, orgs: &[String]) -> Vec<u8> {
    const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
    const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
    let rdn = |oid: &[u8], value: &str| {
        let attr = [der(0x06, oid), der(0x0c, value.as_bytes())].concat();
        der(0x31, &der(0x30, &attr))
    };
    let mut rdns: Vec<u8> = orgs.iter().flat_map(|o| rdn(OID_O, o)).collect();
    rdns.extend(rdn(OID_CN, cn));
    der(0x30, &rdns)
}

/// `cert` with its subject replaced by `subject` and signed again by `key` (the key that
/// signed it, so the signature algorithm stays). None: `cert` is not a certificate.
fn with_subject(cert: &[u8], subject: &[u8], key: &KeyPair) -> Option<Result<Vec<u8>, Error>> {
    use rcgen::SigningKey;
    let (0x30, body, _) = tlv(cert)? else {
        return None;
    };
    let (0x30, tbs, rest) = tlv(body)? else {
        return None;
    };
    let (0x30, _, _) = tlv(rest)? else {
        return None;
    };
    let signature_algorithm = &rest[..rest.len() - tlv(rest)?.2.len()];
    // version [0], serial, signature algorithm, issuer, validity; then the subject
    let mut after = tbs;
    if after.first() == Some(&0xa0) {
        after = tlv(after)?.2;
    }
    for _ in 0..4 {
        after = tlv(after)?.2;
    }
    let head = &tbs[..tbs.len() - after.len()];
    let (0x30, _, tail) = tlv(after)? else {
        return None;
    };
    let tbs = der(0x30, &[head, subject, tail].concat());
    let signature = match key.sign(&tbs) {
        Ok(s) => s,
        Err(e) => return Some(Err(tls_err("signing client certificate")(e))),
    };
    let bits = [&[0u8][..], &signature].concat();
    Some(Ok(der(
        0x30,
        &[&tbs[..], signature_algorithm, &der(0x03, &bits)].concat(),
    )))
}

/// DER-encode `contents` under `tag`.
fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let len = contents.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(contents);
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use component::https::{CertUser, ClientCa};

    #[test]
    fn issued_client_certificates_name_the_user_and_every_group() {
        let dir = tempfile::tempdir().expect("dir");
        let material = ensure(dir.path(), &["localhost".into()]).expect("tls");
        let ca = ClientCa::from_pem(material.ca_pem.as_bytes()).expect("ca");
        let issue = |user: &str, groups: &[&str]| -> Vec<CertificateDer<'static>> {
            let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            let (cert_pem, key_pem) =
                issue_client_cert(dir.path(), user, &groups, 365).expect("issue");
            assert!(key_pem.contains("PRIVATE KEY"), "{key_pem}");
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("pem")
        };
        assert_eq!(
            ca.verify(&issue("jane", &["devs", "ops", "system:masters"])),
            Ok(CertUser {
                name: "jane".into(),
                groups: vec!["devs".into(), "ops".into(), "system:masters".into()],
            })
        );
        let chain = issue("bob", &[]);
        assert_eq!(
            ca.verify(&chain),
            Ok(CertUser {
                name: "bob".into(),
                groups: vec![],
            })
        );
        // another data dir's CA did not sign it
        let other = tempfile::tempdir().expect("dir");
        let other = ensure(other.path(), &["localhost".into()]).expect("tls");
        let other = ClientCa::from_pem(other.ca_pem.as_bytes()).expect("ca");
        assert!(other.verify(&chain).is_err());
    }

    #[test]
    fn der_lengths() {
        assert_eq!(der(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = der(0x04, &[0; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        let longer = der(0x04, &[0; 300]);
        assert_eq!(&longer[..4], &[0x04, 0x82, 1, 44]);
        assert_eq!(
            tlv(&longer).map(|(t, c, r)| (t, c.len(), r.len())),
            Some((4, 300, 0))
        );
    }
}
