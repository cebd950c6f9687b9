//! Plain HTTP requests with curl against a test server, as the admin or a user it
//! impersonates, and a request that holds the server busy: a create whose body is only half
//! sent until released.

use std::io::Write;
use std::process::{Child, Command, Stdio};

use super::TestServer;

pub const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

/// A response: status code, headers (lower-case names), body.
pub struct Reply {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn parse(out: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(out).replace("\r\n", "\n");
        // curl -i prints a 100 Continue block first when the server sends one
        let mut blocks = text.split("\n\n");
        let mut head = blocks.next().unwrap_or("");
        while head.contains(" 100 ") {
            head = blocks.next().unwrap_or("");
        }
        let body: Vec<&str> = blocks.collect();
        let mut lines = head.lines();
        let code = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Reply {
            code,
            headers,
            body: body.join("\n\n"),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn schema_uid(&self) -> Option<&str> {
        self.header("x-kubernetes-pf-flowschema-uid")
    }

    pub fn level_uid(&self) -> Option<&str> {
        self.header("x-kubernetes-pf-prioritylevel-uid")
    }
}

/// curl as the admin, acting as `user` when given (impersonation: APF sees that user).
pub fn curl_cmd(s: &TestServer, user: Option<&str>, args: &[&str]) -> Command {
    let server = s.server();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i", "--http1.1", "--cacert"])
        .arg(server.ca_file())
        .args(["-H", &format!("Authorization: Bearer {}", server.token())])
        .args(["-H", "Expect:"]);
    if let Some(u) = user {
        cmd.args(["-H", &format!("Impersonate-User: {u}")]);
    }
    cmd.args(args);
    cmd
}

pub fn get(s: &TestServer, user: Option<&str>, path: &str) -> Reply {
    let url = format!("{}{path}", s.server().url());
    let out = curl_cmd(s, user, &[&url]).output().expect("running curl");
    Reply::parse(&out.stdout)
}

pub fn get_later(s: &TestServer, user: &str, path: &str) -> Child {
    let url = format!("{}{path}", s.server().url());
    curl_cmd(s, Some(user), &[&url])
        .stdout(Stdio::piped())
        .spawn()
        .expect("running curl")
}

pub fn finish(child: Child) -> Reply {
    let out = child.wait_with_output().expect("curl's output");
    Reply::parse(&out.stdout)
}

/// A create as `user` whose body is only half sent: it holds a seat until [`Holder::release`].
pub struct Holder {
    child: Option<Child>,
}

impl Holder {
    pub fn start(s: &TestServer, user: &str, name: &str) -> Holder {
        Holder::start_at(s, Some(user), CONFIGMAPS, name)
    }

    /// [`Holder::start`] at `path` (which may carry a query), as `user` or the admin.
    pub fn start_at(s: &TestServer, user: Option<&str>, path: &str, name: &str) -> Holder {
        let url = format!("{}{path}", s.server().url());
        let mut child = curl_cmd(
            s,
            user,
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-T",
                "-",
                &url,
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running curl");
        let stdin = child.stdin.as_mut().expect("curl's stdin");
        write!(
            stdin,
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"#
        )
        .expect("writing half a body");
        stdin.flush().expect("flushing");
        Holder { child: Some(child) }
    }

    pub fn release(mut self) -> Reply {
        let mut child = self.child.take().expect("running");
        {
            let mut stdin = child.stdin.take().expect("curl's stdin");
            stdin
                .write_all(br#""data":{"a":"b"}}"#)
                .expect("writing the rest");
        }
        finish(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of the first metric line starting with `series` (name and labels), 0 if none.
pub fn metric(s: &TestServer, series: &str) -> f64 {
    let m = get(s, None, "/metrics");
    m.body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// How many core/v1 ConfigMap requests of `verb` (upstream's metric verb) at `scope` the
/// server answered with `code` (`apiserver_request_total`), and how many of those it ended in
/// self-defense (`apiserver_request_terminations_total`).
pub fn configmap_requests(s: &TestServer, verb: &str, scope: &str, code: u16) -> (f64, f64) {
    let at = |dry_run: &str| {
        format!(
            r#"verb="{verb}",{dry_run}group="",version="v1",resource="configmaps",subresource="",scope="{scope}",component="apiserver",code="{code}"}}"#
        )
    };
    (
        metric(
            s,
            &format!("apiserver_request_total{{{}", at(r#"dry_run="","#)),
        ),
        metric(
            s,
            &format!("apiserver_request_terminations_total{{{}", at("")),
        ),
    )
}

/// A create at `path` as the admin whose body is only half sent, over a TLS connection of
/// its own (curl would not read an answer before its upload ends): the server's answer and
/// how long after the request it came, if it came within `limit`.
pub fn half_sent_answer(
    s: &TestServer,
    path: &str,
    limit: std::time::Duration,
) -> Option<(Reply, std::time::Duration)> {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    let server = s.server();
    s.rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(server.ca_pem().as_bytes()) {
            roots.add(cert.expect("CA pem")).expect("CA cert");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let addr = server.local_addr();
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .expect("TLS handshake");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{{\"apiVersion\":\"v1\",",
            server.token()
        );
        tls.write_all(head.as_bytes()).await.expect("writing");
        tls.flush().await.expect("flushing");
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        let read = tokio::time::timeout(limit, async {
            let mut buf = [0u8; 8192];
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
                // the whole answer: headers, then content-length bytes
                let text = String::from_utf8_lossy(&out).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                        .and_then(|v| v.parse::<usize>().ok());
                    if len.is_some_and(|n| body.len() >= n) {
                        break;
                    }
                }
            }
        })
        .await;
        let took = started.elapsed();
        (read.is_ok() && !out.is_empty()).then(|| (Reply::parse(&out), took))
    })
}
