//! Who may call the kubelet's server (`--client-ca-file`, `--anonymous-auth`), as upstream's
//! kubelet does with x509 authentication:
//! - with `--client-ca-file`, a caller is the subject of a client certificate that CA
//!   signed (user = CN, groups = O); the apiserver presents one
//!   (`kube-apiserver-kubelet-client`, group `system:masters`). No certificate, or one the CA
//!   did not sign: 401. A verified caller outside `system:masters`: 403, unless the
//!   apiserver's SubjectAccessReview allows it (below).
//! - without it nobody can be authenticated: container logs stay readable, but exec,
//!   attach and port-forward (anything but `/containerLogs` and `/healthz`) are refused.
//! - `--anonymous-auth=true` lets callers without a certificate in, exec included: for a
//!   trusted network only. A certificate that fails verification is still a 401 (as
//!   upstream, where a failed x509 check does not fall through to anonymous).
//!
//! `/healthz` is open to everyone. With an apiserver (the kubelet has a kubeconfig), as
//! upstream's `--authentication-token-webhook` and `--authorization-mode=Webhook`: a
//! request with `Authorization: Bearer <token>` and no client certificate is authenticated
//! by a TokenReview, and any authenticated caller outside `system:masters` (token or
//! certificate) is authorized by a SubjectAccessReview of `nodes/<subresource>` named after
//! this node (`stats`, `metrics`, `log`, `spec`, `proxy` for the rest; verb from the method):
//! `Forbidden (user=..., verb=get, resource=nodes, subresource=stats)` when denied. Reviews
//! are cached (tokens 2 min, allowed 5 min, denied 30 s).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use component::https::{CertError, ClientCa, ClientCerts};
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::NodeError;

/// The group whose members may use every endpoint (the apiserver's client certificate).
pub const ADMIN_GROUP: &str = "system:masters";

/// Paths anyone may read when no CA is configured (and `/healthz` always).
const OPEN_WITHOUT_CA: &[&str] = &["/containerLogs/"];

pub use component::delegated::User;

/// The kubelet server's authentication and authorization.
pub struct Auth {
    /// Verifies client certificates against `--client-ca-file`.
    ca: Option<ClientCa>,
    ca_file: Option<PathBuf>,
    anonymous: bool,
    /// Bearer tokens and users outside `system:masters`, checked by the apiserver.
    webhook: Option<Webhook>,
}

/// Upstream's `--authentication-token-webhook` and `--authorization-mode=Webhook`: a bearer
/// token is a TokenReview, a request a SubjectAccessReview of `nodes/<subresource>` on this
/// node (`component::delegated`).
struct Webhook {
    reviews: component::delegated::Webhook,
    node: String,
}

/// The kubelet's cache lifetimes (upstream's `authentication.webhook.cacheTTL` 2 min,
/// `authorization.webhook.cacheAuthorizedTTL` 5 min, `cacheUnauthorizedTTL` 30 s).
const TTLS: component::delegated::Ttls = component::delegated::Ttls {
    token: std::time::Duration::from_secs(120),
    allowed: std::time::Duration::from_secs(300),
    denied: std::time::Duration::from_secs(30),
};

/// The SubjectAccessReview attributes of a kubelet request, as upstream's kubelet forms
/// them: `nodes/<subresource>` named after the node, the verb from the method.
pub fn request_attributes(method: &str, path: &str) -> (&'static str, &'static str) {
    let verb = match method {
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "get",
    };
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    let subresource = if under("/stats") {
        "stats"
    } else if under("/metrics") {
        "metrics"
    } else if under("/logs") {
        "log"
    } else if under("/spec") {
        "spec"
    } else if under("/configz") {
        "configz"
    } else if under("/healthz") {
        "healthz"
    } else {
        "proxy"
    };
    (verb, subresource)
}

impl Webhook {
    /// Who `token` is, per the apiserver (None: not a valid token).
    async fn authenticate(&self, token: &str) -> Result<Option<User>, Refusal> {
        self.reviews
            .authenticate(token)
            .await
            .map_err(|e| internal(e.to_string()))
    }

    /// Whether `user` may `method` `path` on this node, per the apiserver.
    async fn authorize(&self, user: &User, method: &str, path: &str) -> Result<(), Refusal> {
        let (verb, subresource) = request_attributes(method, path);
        let attributes = component::delegated::Attributes::Resource {
            verb: verb.into(),
            resource: "nodes".into(),
            subresource: subresource.into(),
            name: self.node.clone(),
        };
        let allowed = self
            .reviews
            .authorize(user, &attributes)
            .await
            .map_err(|e| internal(e.to_string()))?;
        if allowed {
            return Ok(());
        }
        Err(Refusal {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "Forbidden (user={}, verb={verb}, resource=nodes, subresource={subresource})",
                user.name
            ),
        })
    }
}

fn internal(message: String) -> Refusal {
    Refusal {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("Internal Server Error: {message}"),
    }
}

/// What [`Auth::decide`] found before the apiserver is asked.
enum Decision {
    Allow,
    Refuse(Refusal),
    /// A verified user outside `system:masters`: allowed only by a SubjectAccessReview.
    Review(User),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("ca_file", &self.ca_file)
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

/// Why a request is refused: the status (401 or 403) and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain")],
            self.message,
        )
            .into_response()
    }
}

fn unauthorized(message: String) -> Refusal {
    Refusal {
        status: StatusCode::UNAUTHORIZED,
        message,
    }
}

impl Auth {
    /// Load `--client-ca-file` (if given) and warn about what is left open.
    pub fn new(
        client_ca_file: Option<&Path>,
        anonymous: bool,
        port: u16,
    ) -> Result<Auth, NodeError> {
        let ca = match client_ca_file {
            None => None,
            Some(path) => Some(ClientCa::from_file_reloading(path).map_err(|e| {
                NodeError::Flag(format!("--client-ca-file {}: {e}", path.display()))
            })?),
        };
        match (client_ca_file, anonymous) {
            (_, true) => tracing::warn!(
                port,
                "--anonymous-auth=true: anyone who can reach the kubelet's port may read logs \
                 and exec into, attach to and port-forward into this node's pods"
            ),
            (None, false) => tracing::warn!(
                port,
                "no --client-ca-file: the kubelet cannot authenticate callers, so it refuses \
                 exec, attach and port-forward to everyone (the apiserver included) and serves \
                 container logs to anyone who can reach its port; pass --client-ca-file (the \
                 cluster CA)"
            ),
            (Some(_), false) => {}
        }
        Ok(Auth {
            ca,
            ca_file: client_ca_file.map(Path::to_path_buf),
            anonymous,
            webhook: None,
        })
    }

    /// Check bearer tokens and callers outside `system:masters` with the apiserver behind
    /// `client` (TokenReview, SubjectAccessReview on `nodes/<subresource>` of `node`).
    pub fn with_webhook(mut self, client: kube::Client, node: &str) -> Auth {
        self.webhook = Some(Webhook {
            reviews: component::delegated::Webhook::new(client, TTLS),
            node: node.into(),
        });
        self
    }

    /// Let `method` `path` through, or say why not (401, 403): [`Auth::check`], and with
    /// the webhook, bearer tokens and SubjectAccessReviews for other users.
    pub async fn authorize(
        &self,
        method: &str,
        path: &str,
        chain: Option<&[CertificateDer<'static>]>,
        bearer: Option<&str>,
    ) -> Result<(), Refusal> {
        let Some(webhook) = &self.webhook else {
            return self.check(path, chain);
        };
        let decision = match (chain, bearer) {
            // a token, and no certificate to go by: who the apiserver says it is
            (None, Some(token)) if path != "/healthz" => match webhook.authenticate(token).await? {
                Some(user) if user.groups.iter().any(|g| g == ADMIN_GROUP) => Decision::Allow,
                Some(user) => Decision::Review(user),
                None => Decision::Refuse(unauthorized("Unauthorized".into())),
            },
            _ => self.decide(path, chain),
        };
        match decision {
            Decision::Allow => Ok(()),
            Decision::Refuse(r) => Err(r),
            Decision::Review(user) => webhook.authorize(&user, method, path).await,
        }
    }

    /// Whether the TLS server asks for client certificates.
    pub fn client_certs(&self) -> ClientCerts {
        if self.ca.is_some() {
            ClientCerts::Request
        } else {
            ClientCerts::None
        }
    }

    /// The subject of `chain` if `--client-ca-file` signed it.
    fn verify(
        &self,
        client_ca: &ClientCa,
        chain: &[CertificateDer<'static>],
    ) -> Result<User, Refusal> {
        let ca = self
            .ca_file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let user = client_ca.verify(chain).map_err(|e| match e {
            CertError::Invalid(why) => unauthorized(format!(
                "Unauthorized: the client certificate is not valid for this kubelet ({why}); \
                 it takes certificates signed by its --client-ca-file {ca}"
            )),
            other => unauthorized(format!("Unauthorized: {other}")),
        })?;
        Ok(User {
            name: user.name,
            groups: user.groups,
            uid: None,
        })
    }

    /// Let the request for `path` through, or say why not (401 or 403), by certificate
    /// alone: a verified caller outside `system:masters` is refused.
    pub fn check(
        &self,
        path: &str,
        chain: Option<&[CertificateDer<'static>]>,
    ) -> Result<(), Refusal> {
        match self.decide(path, chain) {
            Decision::Allow => Ok(()),
            Decision::Refuse(r) => Err(r),
            Decision::Review(user) => Err(Refusal {
                status: StatusCode::FORBIDDEN,
                message: format!(
                    "Forbidden: user {:?} (groups {:?}) may not use {path}: the kubelet admits only \
                     the group {ADMIN_GROUP} (the apiserver's client certificate)",
                    user.name, user.groups
                ),
            }),
        }
    }

    fn decide(&self, path: &str, chain: Option<&[CertificateDer<'static>]>) -> Decision {
        match self.decide_inner(path, chain) {
            Ok(d) => d,
            Err(r) => Decision::Refuse(r),
        }
    }

    fn decide_inner(
        &self,
        path: &str,
        chain: Option<&[CertificateDer<'static>]>,
    ) -> Result<Decision, Refusal> {
        if path == "/healthz" {
            return Ok(Decision::Allow);
        }
        let Some(client_ca) = &self.ca else {
            if self.anonymous || OPEN_WITHOUT_CA.iter().any(|p| path.starts_with(p)) {
                return Ok(Decision::Allow);
            }
            return Err(unauthorized(
                "Unauthorized: this kubelet has no --client-ca-file, so it cannot authenticate \
                 callers and refuses exec, attach and port-forward (start it with \
                 --client-ca-file set to the cluster CA, or --anonymous-auth=true to let anyone \
                 in)"
                .into(),
            ));
        };
        let user = match chain {
            Some(chain) => self.verify(client_ca, chain)?,
            None if self.anonymous => return Ok(Decision::Allow),
            None => {
                return Err(unauthorized(
                    "Unauthorized: a client certificate signed by the cluster CA is required \
                     (the apiserver presents one: --kubelet-client-certificate)"
                        .into(),
                ))
            }
        };
        if user.groups.iter().any(|g| g == ADMIN_GROUP) {
            return Ok(Decision::Allow);
        }
        Ok(Decision::Review(user))
    }
}

/// The axum middleware: [`Auth::check`] with the chain the TLS layer passed on.
pub async fn middleware(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let (chain, bearer) = component::serving::credentials(&req);
    let verdict = auth
        .authorize(
            req.method().as_str(),
            req.uri().path(),
            chain.as_deref(),
            bearer.as_deref(),
        )
        .await;
    match verdict {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            tracing::debug!(path = %req.uri().path(), status = %refusal.status, "refused a caller");
            refusal.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test-ca");
        let cert = params.self_signed(&key).expect("ca");
        (rcgen::Issuer::new(params, key), cert.pem())
    }

    fn client(
        issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
        cn: &str,
        orgs: &[&str],
    ) -> CertificateDer<'static> {
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
        params.signed_by(&key, issuer).expect("sign").der().clone()
    }

    #[test]
    fn decides_like_the_module_says() {
        let dir = tempfile::tempdir().expect("dir");
        let (issuer, ca_pem) = ca();
        let (other, _) = ca();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, ca_pem).expect("write ca");
        let admin = vec![client(
            &issuer,
            "kube-apiserver-kubelet-client",
            &["system:masters"],
        )];
        let dev = vec![client(&issuer, "dev", &["devs"])];
        let stranger = vec![client(
            &other,
            "kube-apiserver-kubelet-client",
            &["system:masters"],
        )];
        let status = |r: Result<(), Refusal>| r.err().map(|r| r.status.as_u16());
        let exec = "/exec/default/p/c";

        let auth = Auth::new(Some(&ca_file), false, 10250).expect("auth");
        assert_eq!(auth.client_certs(), ClientCerts::Request);
        assert_eq!(status(auth.check("/healthz", None)), None);
        assert_eq!(status(auth.check(exec, None)), Some(401));
        assert_eq!(
            status(auth.check("/containerLogs/default/p/c", None)),
            Some(401)
        );
        assert_eq!(status(auth.check(exec, Some(&stranger))), Some(401));
        assert_eq!(status(auth.check(exec, Some(&dev))), Some(403));
        assert_eq!(status(auth.check(exec, Some(&admin))), None);

        let open = Auth::new(Some(&ca_file), true, 10250).expect("auth");
        assert_eq!(status(open.check(exec, None)), None);
        assert_eq!(status(open.check(exec, Some(&stranger))), Some(401));

        let no_ca = Auth::new(None, false, 10250).expect("auth");
        assert_eq!(no_ca.client_certs(), ClientCerts::None);
        for path in [exec, "/attach/default/p/c", "/portForward/default/p"] {
            assert_eq!(status(no_ca.check(path, None)), Some(401), "{path}");
        }
        assert_eq!(
            status(no_ca.check("/containerLogs/default/p/c", None)),
            None
        );
        let no_ca_open = Auth::new(None, true, 10250).expect("auth");
        assert_eq!(status(no_ca_open.check(exec, None)), None);

        let err = Auth::new(Some(&dir.path().join("nope")), false, 10250).expect_err("missing");
        assert!(err.to_string().contains("--client-ca-file"), "{err}");
    }
}
