//! Talking to the kubelet's server directly, as the apiserver does: TLS (the kubelet's
//! self-signed serving certificate is not checked, as upstream's apiserver without
//! `--kubelet-certificate-authority`) with or without a client certificate.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A client certificate chain and its key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// From PEM files, e.g. the apiserver's `kubelet-client.crt` and `.key`.
    pub fn from_files(cert: &Path, key: &Path) -> Identity {
        let pem = std::fs::read(cert).expect("reading the client certificate");
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .expect("parsing the client certificate");
        let key = PrivateKeyDer::from_pem_file(key).expect("reading the client key");
        Identity { chain, key }
    }

    /// The apiserver's own client certificate for kubelets.
    pub fn apiserver(server: &apiserver::RunningServer) -> Identity {
        let (cert, key) = server.kubelet_client_files();
        Identity::from_files(cert, key)
    }

    /// A client certificate for `cn` in the groups `orgs`, signed by `issuer`.
    pub fn signed_by(
        issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
        cn: &str,
        orgs: &[&str],
    ) -> Identity {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, issuer).expect("signing");
        Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key"),
        }
    }
}

fn ca_params(cn: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A CA of its own, unknown to the cluster.
pub fn other_ca() -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let key = rcgen::KeyPair::generate().expect("key");
    // The same subject as the cluster CA's: only the key tells them apart.
    let params = ca_params("kaze-ca");
    params.self_signed(&key).expect("self-signing");
    rcgen::Issuer::new(params, key)
}

/// The cluster CA (its key from the apiserver's TLS dir), to sign certificates the kubelet
/// accepts as genuine.
pub fn cluster_ca(server: &apiserver::RunningServer) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let key_file = server.ca_file().with_file_name("ca.key");
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(key_file).expect("CA key"))
        .expect("parsing the CA key");
    // The subject the apiserver gives its CA (apiserver/src/tls.rs).
    rcgen::Issuer::new(ca_params("kaze-ca"), key)
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection to the kubelet's server on 127.0.0.1, presenting `id` if given.
pub async fn connect(
    kubelet_port: u16,
    id: Option<&Identity>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)));
    let mut config = match id {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", kubelet_port))
        .await
        .expect("connect to the kubelet");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("tls")
}

/// `GET path` straight to the kubelet: the status code and the body.
pub async fn get(kubelet_port: u16, path: &str, id: Option<&Identity>) -> (u16, String) {
    get_with(kubelet_port, path, id, "").await
}

/// [`get`] with more header lines (`headers`, each ending in `\r\n`).
pub async fn get_with(
    kubelet_port: u16,
    path: &str,
    id: Option<&Identity>,
    headers: &str,
) -> (u16, String) {
    let mut tls = connect(kubelet_port, id).await;
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("request");
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {raw:?}"));
    (code, body.to_string())
}

/// `method path` with `body` straight to the kubelet: the status code and the body.
pub async fn request(
    kubelet_port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    id: Option<&Identity>,
) -> (u16, String) {
    let mut tls = connect(kubelet_port, id).await;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.expect("request");
    tls.write_all(body).await.expect("request body");
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {raw:?}"));
    (code, body.to_string())
}

/// An HTTPS server on 127.0.0.1 with a self-signed certificate (as a pod's HTTPS endpoint
/// usually has), answering every request with the status code in `code`; each request's
/// first line and User-Agent are pushed to `seen`. Returns its port; it runs until the
/// runtime ends.
pub async fn https_server(
    code: Arc<std::sync::atomic::AtomicU16>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
) -> u16 {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let key =
        PrivateKeyDer::from_pem_slice(cert.signing_key.serialize_pem().as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, code, seen) = (acceptor.clone(), code.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let Ok(n) = tls.read(&mut buf).await else {
                    return;
                };
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let agent = req
                    .lines()
                    .find_map(|l| l.strip_prefix("User-Agent: "))
                    .unwrap_or("");
                let first = req.lines().next().unwrap_or("");
                seen.lock()
                    .expect("seen")
                    .push(format!("{first} ({agent})"));
                let code = code.load(std::sync::atomic::Ordering::SeqCst);
                let _ = tls
                    .write_all(format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}
