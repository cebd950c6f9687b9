//! The secure port of kube-scheduler (10259) and kube-controller-manager (10257), as upstream
//! serves it (`k8s.io/apiserver` secure serving with delegated authentication and
//! authorization):
//! - HTTPS on `--bind-address`:`--secure-port` (0 disables it) with `--tls-cert-file` and
//!   `--tls-private-key-file`, else a self-signed certificate kept in `--cert-dir` (in memory
//!   without one);
//! - callers are authenticated by a client certificate of `--client-ca-file` (without it, of
//!   the `client-ca-file` in `kube-system/extension-apiserver-authentication`, read at start
//!   unless `--authentication-skip-lookup`), else by a bearer token the apiserver's
//!   TokenReview knows; no credentials at all is `system:anonymous`; a token or certificate
//!   that is not accepted is a 401;
//! - `--authorization-always-allow-paths` (`/healthz`, `/readyz`, `/livez`; a trailing `*`
//!   matches a prefix) and the group `system:masters` are always allowed; anyone else needs a
//!   SubjectAccessReview allowing the request's verb on its path (`get` `/metrics`), else 403;
//! - `/healthz`, `/livez`, `/readyz` with the component's named checks (`crate::health`), and
//!   `/metrics` in Prometheus text.
//!
//! The reviews go through `--authentication-kubeconfig` and `--authorization-kubeconfig`;
//! without them kaze uses the component's own `--kubeconfig` (upstream tries the in-cluster
//! service account and otherwise serves only the always-allowed paths). Not done: the
//! front-proxy's request-header authentication (`--requestheader-*`), reloading the client
//! CA while running.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::delegated::{Attributes, User, Webhook};
use crate::https::{CertError, ClientCa, ClientCerts, PeerCertificates};

/// Upstream's secure serving and delegated authentication/authorization flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SecureServing {
    /// The HTTPS port for health and metrics; 0 serves nothing. Default: the component's
    /// upstream port (kube-scheduler 10259, kube-controller-manager 10257).
    #[arg(long = "secure-port")]
    pub secure_port: Option<u16>,
    /// The address the secure port listens on (0.0.0.0: every interface).
    #[arg(long = "bind-address", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Where the self-signed serving certificate is kept when --tls-cert-file is not given
    /// (none: made at every start and kept in memory).
    #[arg(long = "cert-dir")]
    pub cert_dir: Option<PathBuf>,
    /// The serving certificate (PEM, chain after the leaf).
    #[arg(long = "tls-cert-file", requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The serving certificate's key (PEM).
    #[arg(long = "tls-private-key-file", requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// CA whose client certificates authenticate callers (user = CN, groups = O); without it,
    /// the one the apiserver publishes in kube-system/extension-apiserver-authentication.
    #[arg(long = "client-ca-file")]
    pub client_ca_file: Option<PathBuf>,
    /// kubeconfig for TokenReviews (and the client CA lookup); default --kubeconfig.
    #[arg(long = "authentication-kubeconfig")]
    pub authentication_kubeconfig: Option<PathBuf>,
    /// kubeconfig for SubjectAccessReviews; default --kubeconfig.
    #[arg(long = "authorization-kubeconfig")]
    pub authorization_kubeconfig: Option<PathBuf>,
    /// Do not read the client CA from kube-system/extension-apiserver-authentication.
    #[arg(long = "authentication-skip-lookup")]
    pub authentication_skip_lookup: bool,
    /// Paths served without authorization (a trailing * matches a prefix).
    #[arg(
        long = "authorization-always-allow-paths",
        value_delimiter = ',',
        default_value = "/healthz,/readyz,/livez"
    )]
    pub authorization_always_allow_paths: Vec<String>,
    /// How long TokenReview answers are kept.
    #[arg(long = "authentication-token-webhook-cache-ttl", default_value = "10s",
          value_parser = crate::leader::parse_duration)]
    pub authentication_token_webhook_cache_ttl: Duration,
    /// How long allowing SubjectAccessReview answers are kept.
    #[arg(long = "authorization-webhook-cache-authorized-ttl", default_value = "10s",
          value_parser = crate::leader::parse_duration)]
    pub authorization_webhook_cache_authorized_ttl: Duration,
    /// How long denying SubjectAccessReview answers are kept.
    #[arg(long = "authorization-webhook-cache-unauthorized-ttl", default_value = "10s",
          value_parser = crate::leader::parse_duration)]
    pub authorization_webhook_cache_unauthorized_ttl: Duration,
    /// What a port another process holds does (not a flag).
    #[arg(skip)]
    pub busy: Busy,
}

impl SecureServing {
    /// The flags' defaults.
    pub fn defaults() -> SecureServing {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            serving: SecureServing,
        }
        <Defaults as clap::Parser>::parse_from(["serving"]).serving
    }

    /// No secure port (`--secure-port=0`): for tests and embeddings.
    pub fn disabled() -> SecureServing {
        SecureServing {
            secure_port: Some(0),
            ..SecureServing::defaults()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("the serving certificate: {0}")]
    Tls(#[from] crate::https::TlsError),
    #[error("--client-ca-file {path}: {source}")]
    ClientCa {
        path: String,
        #[source]
        source: crate::https::TlsError,
    },
    #[error("{flag}: {source}")]
    Client {
        flag: &'static str,
        #[source]
        source: crate::ClientError,
    },
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// One health check (`Err` says why it fails).
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What a component serves: its checks per endpoint and its metrics.
#[derive(Clone)]
pub struct Endpoints {
    pub healthz: Vec<(&'static str, Check)>,
    pub livez: Vec<(&'static str, Check)>,
    pub readyz: Vec<(&'static str, Check)>,
    /// The body of `/metrics` (Prometheus text format).
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

/// Upstream's `ping` check.
pub fn ping() -> Check {
    Arc::new(|| Ok(()))
}

/// Upstream's `shutdown` readiness check: failing once `shutdown` is cancelled.
pub fn shutdown_check(shutdown: &CancellationToken) -> Check {
    let shutdown = shutdown.clone();
    Arc::new(move || match shutdown.is_cancelled() {
        true => Err("process is shutting down".into()),
        false => Ok(()),
    })
}

/// Upstream's `leaderElection` check (when leader election is on).
pub fn leader_check(elector: &crate::leader::Elector) -> Check {
    let (health, lease) = (elector.health(), elector.args().lease_duration);
    Arc::new(move || health.check(lease))
}

/// The checks of a leader-elected component (kube-scheduler, kube-controller-manager):
/// `/healthz` is `leaderElection` with leader election on, else `ping`; `/livez` is `ping`;
/// `/readyz` is `leaderElection` (when on) and `shutdown`. Metrics are the component's, plus
/// [`leader_metric`].
pub fn leader_elected(
    elector: &crate::leader::Elector,
    shutdown: &CancellationToken,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
) -> Endpoints {
    let leader: Vec<(&'static str, Check)> = match elector.args().leader_elect {
        true => vec![("leaderElection", leader_check(elector))],
        false => vec![],
    };
    let healthz = match leader.is_empty() {
        false => leader.clone(),
        true => vec![("ping", ping())],
    };
    let mut readyz = leader;
    readyz.push(("shutdown", shutdown_check(shutdown)));
    Endpoints {
        healthz,
        livez: vec![("ping", ping())],
        readyz,
        metrics,
    }
}

/// client-go's `leader_election_master_status` gauge for the lease `name`.
pub fn leader_metric(name: &str, leading: bool) -> String {
    format!(
        "# HELP leader_election_master_status Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease. Please make sure to group by name.\n# TYPE leader_election_master_status gauge\nleader_election_master_status{{name=\"{name}\"}} {}\n",
        u8::from(leading)
    )
}

/// A listener, TLS and the authentication/authorization built, ready to serve.
pub struct SecurePort {
    listener: Option<TcpListener>,
    addr: SocketAddr,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    auth: Arc<Auth>,
    component: &'static str,
}

/// Whether a port another process holds is an error (upstream) or waited for (`kaze
/// server`, of which tests run several on one machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Busy {
    #[default]
    Fail,
    Wait,
}

/// Build the secure port of `component` on `--bind-address`:`--secure-port` (`default_port`
/// when not given; None when 0): its certificate, its authenticator and authorizer
/// (`client` is the component's own client, used when no
/// --authentication/authorization-kubeconfig is given) and, with [`Busy::Fail`], its
/// listener.
pub async fn bind(
    component: &'static str,
    default_port: u16,
    args: &SecureServing,
    client: &kube::Client,
) -> Result<Option<SecurePort>, ServingError> {
    let port = args.secure_port.unwrap_or(default_port);
    if port == 0 {
        tracing::info!(component, "--secure-port=0: not serving health or metrics");
        return Ok(None);
    }
    let addr = SocketAddr::new(args.bind_address, port);
    let auth = Arc::new(Auth::new(args, client).await?);
    let client_certs = match auth.ca {
        Some(_) => ClientCerts::Request,
        None => ClientCerts::None,
    };
    let tls = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(crt), Some(key)) => crate::https::from_files(crt, key, client_certs)?,
        _ => {
            let mut names = vec!["localhost".to_string()];
            if !args.bind_address.is_unspecified() {
                names.push(args.bind_address.to_string());
            }
            names.push("127.0.0.1".into());
            names.dedup();
            match &args.cert_dir {
                Some(dir) => crate::https::self_signed(dir, &names, client_certs)?,
                None => crate::https::ephemeral_self_signed(&names, client_certs)?,
            }
        }
    };
    let listener = match args.busy {
        Busy::Fail => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServingError::Bind { addr, source })?,
        ),
        Busy::Wait => None,
    };
    Ok(Some(SecurePort {
        listener,
        addr,
        tls,
        auth,
        component,
    }))
}

impl SecurePort {
    /// The address it listens on (the real port once bound, with `--secure-port` given).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or(self.addr)
    }

    /// Serve `endpoints` until `shutdown`, then drain.
    pub async fn serve(
        self,
        endpoints: Endpoints,
        shutdown: CancellationToken,
    ) -> Result<(), std::convert::Infallible> {
        let (addr, component) = (self.addr, self.component);
        let listener = match self.listener {
            Some(l) => l,
            None => {
                let mut warned = false;
                loop {
                    match TcpListener::bind(addr).await {
                        Ok(l) => break l,
                        Err(e) => {
                            if !warned {
                                tracing::warn!(component, %addr, error = %e, "secure port not served yet; retrying");
                                warned = true;
                            }
                            tokio::select! {
                                _ = shutdown.cancelled() => return Ok(()),
                                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                            }
                        }
                    }
                }
            }
        };
        let endpoints = Arc::new(endpoints);
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(health))
            .route("/healthz/{*check}", axum::routing::get(health))
            .route("/livez", axum::routing::get(health))
            .route("/livez/{*check}", axum::routing::get(health))
            .route("/readyz", axum::routing::get(health))
            .route("/readyz/{*check}", axum::routing::get(health))
            .route("/metrics", axum::routing::get(metrics))
            .with_state(endpoints)
            .layer(axum::middleware::from_fn_with_state(self.auth, middleware));
        tracing::info!(component, %addr, "serving health and metrics securely");
        crate::https::serve(listener, self.tls, app, shutdown).await;
        Ok(())
    }
}

async fn health(State(endpoints): State<Arc<Endpoints>>, req: Request) -> Response {
    let (endpoint, rest) = crate::health::split_path(req.uri().path());
    let checks = match endpoint {
        "healthz" => &endpoints.healthz,
        "livez" => &endpoints.livez,
        _ => &endpoints.readyz,
    };
    let names: Vec<&'static str> = checks.iter().map(|(n, _)| *n).collect();
    let run = |name: &'static str| {
        let check = checks.iter().find(|(n, _)| *n == name).map(|(_, c)| c);
        let result = check.map_or_else(|| Err(format!("no check {name}")), |c| c());
        std::future::ready(result)
    };
    let endpoint = endpoint.to_string();
    crate::health::respond(
        &endpoint,
        &names,
        rest,
        req.uri().query().unwrap_or(""),
        run,
    )
    .await
}

async fn metrics(State(endpoints): State<Arc<Endpoints>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        (endpoints.metrics)() + &crate::process::metrics(),
    )
        .into_response()
}

// === impl Auth ===

/// The delegated authenticator and authorizer.
struct Auth {
    ca: Option<ClientCa>,
    authn: Webhook,
    authz: Webhook,
    always_allow_paths: Vec<String>,
}

/// The group upstream's delegated authorizer allows without asking.
const ALWAYS_ALLOW_GROUP: &str = "system:masters";

impl Auth {
    async fn new(args: &SecureServing, client: &kube::Client) -> Result<Auth, ServingError> {
        let client_for = |flag, path: &Option<PathBuf>| {
            let path = path.clone();
            let client = client.clone();
            async move {
                match path {
                    Some(p) => crate::client(Some(&p))
                        .await
                        .map_err(|source| ServingError::Client { flag, source }),
                    None => Ok(client),
                }
            }
        };
        let authn_client = client_for(
            "--authentication-kubeconfig",
            &args.authentication_kubeconfig,
        )
        .await?;
        let authz_client =
            client_for("--authorization-kubeconfig", &args.authorization_kubeconfig).await?;
        let ca = match &args.client_ca_file {
            Some(path) => Some(ClientCa::from_file_reloading(path).map_err(|source| {
                ServingError::ClientCa {
                    path: path.display().to_string(),
                    source,
                }
            })?),
            None if args.authentication_skip_lookup => None,
            None => lookup_client_ca(&authn_client).await,
        };
        let ttls = crate::delegated::Ttls {
            token: args.authentication_token_webhook_cache_ttl,
            allowed: args.authorization_webhook_cache_authorized_ttl,
            denied: args.authorization_webhook_cache_unauthorized_ttl,
        };
        Ok(Auth {
            ca,
            authn: Webhook::new(authn_client, ttls),
            authz: Webhook::new(authz_client, ttls),
            always_allow_paths: args.authorization_always_allow_paths.clone(),
        })
    }

    /// Who the caller is: a certificate of the client CA, else a token the apiserver knows,
    /// else (no credentials) anonymous.
    async fn authenticate(
        &self,
        chain: Option<&[tokio_rustls::rustls::pki_types::CertificateDer<'static>]>,
        bearer: Option<&str>,
    ) -> Result<User, Response> {
        let mut cert_error = None;
        if let (Some(chain), Some(ca)) = (chain, &self.ca) {
            match ca.verify(chain) {
                Ok(u) => {
                    return Ok(User {
                        name: u.name,
                        groups: u.groups,
                        uid: None,
                    })
                }
                // upstream: a certificate without a CN authenticates no one; try the token
                Err(CertError::NoCommonName) => {}
                Err(e) => cert_error = Some(e),
            }
        }
        if let Some(token) = bearer {
            return match self.authn.authenticate(token).await {
                Ok(Some(user)) => Ok(user),
                Ok(None) => Err(status(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "Unauthorized",
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "authenticating a caller");
                    Err(status(
                        StatusCode::UNAUTHORIZED,
                        "Unauthorized",
                        "Unauthorized",
                    ))
                }
            };
        }
        if let Some(e) = cert_error {
            tracing::debug!(error = %e, "refused a client certificate");
            return Err(status(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized",
            ));
        }
        Ok(User::anonymous())
    }

    async fn authorize(&self, user: &User, method: &str, path: &str) -> Result<(), Response> {
        let allowed_path = self
            .always_allow_paths
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == p,
            });
        if allowed_path || user.groups.iter().any(|g| g == ALWAYS_ALLOW_GROUP) {
            return Ok(());
        }
        // a non-resource request's verb is its method, lower-cased
        let verb = method.to_ascii_lowercase();
        let attributes = Attributes::NonResource {
            verb: verb.clone(),
            path: path.to_string(),
        };
        match self.authz.authorize(user, &attributes).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!(
                    "forbidden: User {:?} cannot {verb} path {path:?}",
                    user.name
                ),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "authorizing a caller");
                Err(status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    &format!("Internal error occurred: {e}"),
                ))
            }
        }
    }
}

/// The `client-ca-file` the apiserver publishes in
/// `kube-system/extension-apiserver-authentication` (upstream tolerates a failed lookup:
/// client certificates then authenticate no one).
async fn lookup_client_ca(client: &kube::Client) -> Option<ClientCa> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), "kube-system");
    let found = api.get_opt("extension-apiserver-authentication").await;
    let pem = match found {
        Ok(Some(cm)) => cm.data.and_then(|d| d.get("client-ca-file").cloned()),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "reading kube-system/extension-apiserver-authentication");
            None
        }
    };
    let ca = pem.and_then(|p| ClientCa::from_pem(p.as_bytes()).ok());
    if ca.is_none() {
        tracing::warn!("no client CA in kube-system/extension-apiserver-authentication and no --client-ca-file: client certificates authenticate no one");
    }
    ca
}

/// A `metav1.Status` error body as upstream's responsewriters write it.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": {}, "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// What a request to a secure port presents: the TLS client chain (from
/// [`PeerCertificates`]) and a bearer token.
pub fn credentials<B>(
    req: &axum::http::Request<B>,
) -> (
    Option<Arc<[tokio_rustls::rustls::pki_types::CertificateDer<'static>]>>,
    Option<String>,
) {
    let chain = req
        .extensions()
        .get::<PeerCertificates>()
        .map(|c| c.0.clone());
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    (chain, bearer)
}

async fn middleware(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let (chain, bearer) = credentials(&req);
    let user = match auth.authenticate(chain.as_deref(), bearer.as_deref()).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match auth
        .authorize(&user, req.method().as_str(), req.uri().path())
        .await
    {
        Ok(()) => next.run(req).await,
        Err(r) => {
            tracing::debug!(user = %user.name, path = %req.uri().path(), "refused a caller");
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_parse_with_upstreams_defaults() {
        let d = SecureServing::defaults();
        assert_eq!(d.bind_address.to_string(), "0.0.0.0");
        assert_eq!(
            d.authorization_always_allow_paths,
            ["/healthz", "/readyz", "/livez"]
        );
        assert_eq!(
            d.authentication_token_webhook_cache_ttl,
            Duration::from_secs(10)
        );
    }
}
