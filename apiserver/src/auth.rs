//! Authentication: client certificates, then bearer tokens (upstream's union authenticator
//! order).
//!
//! - x509: a client certificate that verifies against `--client-ca-file` (default: the
//!   cluster CA) is the user its subject names: CN the user, each O a group (kubeadm's
//!   `admin.conf` is `CN=kubernetes-admin, O=system:masters`). A certificate that does not
//!   verify authenticates nobody, and unless a token does, the request is a 401 even on the
//!   public paths (upstream's x509 authenticator errs, and an error does not fall through to
//!   anonymous). One without a CN is as no certificate.
//! - bearer tokens: the admin token is generated on first start and kept in
//!   `<data-dir>/server/admin.token`; more tokens come from `--token-auth-file` (upstream's
//!   CSV format); JWTs are service-account tokens (`crate::serviceaccount`).
//!
//! Every authenticated user is in `system:authenticated`. Requests without a known
//! certificate or token get 401, except the health and version endpoints that upstream
//! opens to anonymous callers. Authorization (RBAC) is a separate layer.
//!
//! Impersonation (upstream's `WithImpersonation` filter, `kubectl --as`): after
//! authentication, `Impersonate-User`, `Impersonate-Uid`, `Impersonate-Group` and
//! `Impersonate-Extra-<key>` headers make the request run as the user they name, once the
//! authenticated requester is authorized (RBAC) to `impersonate` each of them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use component::https::{CertError, ClientCa, PeerCertificates};
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::state::AppState;
use crate::status::ApiError;
use crate::Error;

/// Who a request is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// Upstream's `extra` (for ServiceAccount tokens: the bound pod and node, the token's id).
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Default)]
pub struct Tokens {
    by_token: HashMap<String, UserInfo>,
    admin: String,
}

impl Tokens {
    /// Load (or create) the admin token and read the token file, if any.
    pub fn load(server_dir: &Path, token_file: Option<&Path>) -> Result<Tokens, Error> {
        let path = server_dir.join("admin.token");
        let admin = match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let t = format!(
                    "{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                );
                crate::tls::write_private(server_dir, "admin.token", &t)?;
                t
            }
        };
        let mut by_token = HashMap::new();
        by_token.insert(
            admin.clone(),
            UserInfo {
                name: "kaze-admin".into(),
                uid: "kaze-admin".into(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
                extra: Default::default(),
            },
        );
        if let Some(file) = token_file {
            let text =
                std::fs::read_to_string(file).map_err(Error::io("reading token file", file))?;
            for (token, user) in parse_token_file(&text).map_err(|reason| Error::Config {
                reason: format!("--token-auth-file {}: {reason}", file.display()),
            })? {
                by_token.insert(token, user);
            }
        }
        Ok(Tokens { by_token, admin })
    }

    pub fn admin_token(&self) -> &str {
        &self.admin
    }

    pub fn authenticate(&self, token: &str) -> Option<&UserInfo> {
        // Walk every entry so the time taken does not depend on where a match is.
        let mut found = None;
        for (t, u) in &self.by_token {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(u);
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `token,user,uid[,"group1,group2"]` per line; `#` comments and blank lines skipped.
pub fn parse_token_file(text: &str) -> Result<Vec<(String, UserInfo)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, groups) = match line.find('"') {
            Some(q) => (&line[..q], line[q..].trim_matches('"')),
            None => (line, ""),
        };
        let fields: Vec<&str> = head
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        if fields.len() < 3 {
            return Err(format!(
                "line {}: expected token,user,uid[,\"groups\"]",
                i + 1
            ));
        }
        let mut groups: Vec<String> = groups
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect();
        groups.push("system:authenticated".into());
        out.push((
            fields[0].to_string(),
            UserInfo {
                name: fields[1].to_string(),
                uid: fields[2].to_string(),
                groups,
                extra: Default::default(),
            },
        ));
    }
    Ok(out)
}

/// `kube-public/cluster-info`, readable without credentials (as kubeadm makes it).
pub const CLUSTER_INFO_PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";

/// kubeadm's bootstrap ConfigMap: joining nodes read the server's CA from it before they
/// have any credential (they check it against the hash in their join token).
pub const CLUSTER_INFO: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";

/// What anonymous callers may do, as upstream's default RBAC allows it.
fn is_public(method: &axum::http::Method, path: &str) -> bool {
    let health = ["/healthz", "/livez", "/readyz", "/version"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")));
    health || (method == axum::http::Method::GET && path == CLUSTER_INFO)
}

/// The authentication layer: attaches [`UserInfo`] to the request or answers 401.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let (mut user, cert_error) = match req.extensions().get::<PeerCertificates>() {
        Some(chain) => match authenticate_cert(&state.client_ca, &chain.0) {
            Ok(user) => (user, None),
            Err(e) => (None, Some(e)),
        },
        None => (None, None),
    };
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    if user.is_none() {
        user = token.and_then(|t| state.tokens.authenticate(t)).cloned();
    }
    if let Some(t) =
        token.filter(|t| user.is_none() && crate::serviceaccount::jwt::looks_like_jwt(t))
    {
        user = crate::serviceaccount::authenticate(&state, t).await;
    }
    if let (None, Some(e)) = (&user, &cert_error) {
        tracing::debug!(error = %e, path = %req.uri().path(), "client certificate refused");
        if let Some(a) = &state.audit {
            crate::audit::unauthenticated(a, &req);
        }
        crate::router::discard_body(req.into_body()).await;
        return ApiError::unauthorized().into_response();
    }
    if has_impersonation(req.headers()) {
        let requester = user.clone().unwrap_or_else(UserInfo::anonymous);
        match impersonate(&state.rbac, req.headers(), &requester) {
            Ok(acting_as) => {
                strip_impersonation(req.headers_mut());
                // the audit log names who impersonates as well as who is impersonated
                req.extensions_mut()
                    .insert(crate::audit::Impersonator(requester));
                user = Some(acting_as);
            }
            Err(e) => {
                if let Some(a) = &state.audit {
                    crate::audit::refused(a, &req, &requester, &e);
                }
                crate::router::discard_body(req.into_body()).await;
                return e.into_response();
            }
        }
    }
    match user {
        Some(user) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        None if is_public(req.method(), req.uri().path()) => next.run(req).await,
        // kubeadm's bootstrap convention: the cluster's CA is public so joining nodes can
        // check it against the hash in their token before they send the token anywhere.
        None if req.method() == axum::http::Method::GET
            && req.uri().path() == CLUSTER_INFO_PATH =>
        {
            next.run(req).await
        }
        None => {
            if let Some(a) = &state.audit {
                crate::audit::unauthenticated(a, &req);
            }
            crate::router::discard_body(req.into_body()).await;
            ApiError::unauthorized().into_response()
        }
    }
}

/// Upstream's x509 authenticator: who a client certificate chain is, if it verifies (None:
/// it names nobody, having no CN); an error if it does not verify.
fn authenticate_cert(
    ca: &ClientCa,
    chain: &[CertificateDer<'static>],
) -> Result<Option<UserInfo>, CertError> {
    match ca.verify(chain) {
        Ok(cert) => {
            let mut groups = cert.groups;
            if !groups.iter().any(|g| g == AUTHENTICATED) {
                groups.push(AUTHENTICATED.into());
            }
            Ok(Some(UserInfo {
                name: cert.name,
                uid: String::new(),
                groups,
                extra: Default::default(),
            }))
        }
        Err(CertError::NoCommonName) => Ok(None),
        Err(e) => Err(e),
    }
}

impl UserInfo {
    /// Who an unauthenticated request is.
    /// A user with no uid or extras (unit tests).
    #[cfg(test)]
    pub fn named(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            extra: Default::default(),
        }
    }

    pub fn anonymous() -> UserInfo {
        UserInfo {
            name: ANONYMOUS.into(),
            uid: String::new(),
            groups: vec![UNAUTHENTICATED.into()],
            extra: Default::default(),
        }
    }
}

const ANONYMOUS: &str = "system:anonymous";
const AUTHENTICATED: &str = "system:authenticated";
const UNAUTHENTICATED: &str = "system:unauthenticated";
const SA_PREFIX: &str = "system:serviceaccount:";

const IMPERSONATE_USER: &str = "impersonate-user";
const IMPERSONATE_UID: &str = "impersonate-uid";
const IMPERSONATE_GROUP: &str = "impersonate-group";
const IMPERSONATE_EXTRA: &str = "impersonate-extra-";

fn is_impersonation_header(name: &str) -> bool {
    // header names are lower case in `http`
    name == IMPERSONATE_USER
        || name == IMPERSONATE_UID
        || name == IMPERSONATE_GROUP
        || name.starts_with(IMPERSONATE_EXTRA)
}

fn has_impersonation(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| is_impersonation_header(k.as_str()))
}

/// Upstream removes the headers once acted on (nothing downstream, e.g. a kubelet a request
/// is proxied to, sees them).
fn strip_impersonation(headers: &mut HeaderMap) {
    let names: Vec<_> = headers
        .keys()
        .filter(|k| is_impersonation_header(k.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// `system:serviceaccount:<ns>:<name>` with valid names: (namespace, name).
fn split_service_account(user: &str) -> Option<(&str, &str)> {
    let (ns, name) = user.strip_prefix(SA_PREFIX)?.split_once(':')?;
    let dns = |s: &str, dots: bool| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
            })
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
    };
    (dns(ns, false) && ns.len() <= 63 && dns(name, true)).then_some((ns, name))
}

/// Go's `url.PathUnescape`; a malformed key is kept as sent (as upstream does).
fn path_unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                None => return s.to_string(),
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// Who `requester` acts as with the impersonation headers in `headers` (upstream's
/// impersonation filter): each thing asked for must be allowed by RBAC as verb
/// `impersonate` — `users` (core) named the user, or `serviceaccounts` in its namespace for
/// `system:serviceaccount:<ns>:<name>`; `groups` (core) per group; `uids`
/// (authentication.k8s.io) for the uid; `userextras/<key>` (authentication.k8s.io) per extra
/// value. A refusal is upstream's 403; groups, uid or extras without a user are a 400.
pub fn impersonate(
    rbac: &crate::rbac::Authorizer,
    headers: &HeaderMap,
    requester: &UserInfo,
) -> Result<UserInfo, ApiError> {
    use crate::rbac::Attributes;
    let text = |v: &axum::http::HeaderValue| {
        v.to_str().map(str::to_string).map_err(|_| {
            ApiError::bad_request("impersonation headers must be valid ASCII".to_string())
        })
    };
    let first = |name: &str| -> Result<String, ApiError> {
        headers
            .get(name)
            .map(text)
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let user = first(IMPERSONATE_USER)?;
    let uid = first(IMPERSONATE_UID)?;
    let groups: Vec<String> = headers
        .get_all(IMPERSONATE_GROUP)
        .iter()
        .map(text)
        .collect::<Result<_, _>>()?;
    let mut extra: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(IMPERSONATE_EXTRA) {
            extra
                .entry(path_unescape(key))
                .or_default()
                .push(text(value)?);
        }
    }
    // (resource, group, namespace, name) to be allowed to impersonate
    let mut asked: Vec<(String, &str, Option<String>, String)> = Vec::new();
    let mut acting = UserInfo {
        name: user.clone(),
        uid: uid.clone(),
        groups: Vec::new(),
        extra: Default::default(),
    };
    if user.is_empty() {
        let mut what: Vec<String> = groups.iter().map(|g| format!("group {g:?}")).collect();
        what.extend(extra.keys().map(|k| format!("user extra {k:?}")));
        if !uid.is_empty() {
            what.push(format!("uid {uid:?}"));
        }
        return Err(ApiError::bad_request(format!(
            "requested [{}] without impersonating a user",
            what.join(", ")
        )));
    }
    match split_service_account(&user) {
        Some((ns, name)) => {
            asked.push(("serviceaccounts".into(), "", Some(ns.into()), name.into()));
            if groups.is_empty() {
                acting.groups = vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                ];
            }
        }
        None => asked.push(("users".into(), "", None, user.clone())),
    }
    for g in &groups {
        asked.push(("groups".into(), "", None, g.clone()));
        acting.groups.push(g.clone());
    }
    for (key, values) in &extra {
        for v in values {
            let resource = format!("userextras/{key}");
            asked.push((resource, "authentication.k8s.io", None, v.clone()));
        }
    }
    if !uid.is_empty() {
        asked.push(("uids".into(), "authentication.k8s.io", None, uid.clone()));
    }
    for (resource, group, namespace, name) in asked {
        let attrs = Attributes::Resource {
            verb: "impersonate".into(),
            group: group.into(),
            resource: resource.clone(),
            namespace,
            name: Some(name.clone()),
            field_selector: None,
        };
        if !rbac.authorize(requester, &attrs).0 {
            return Err(ApiError::unauthorized_action(
                resource.split('/').next().unwrap_or(&resource),
                group,
                Some(&name),
                &requester.name,
                &attrs.describe(),
            ));
        }
    }
    acting.extra = extra;
    // the impersonated user is authenticated (unless it is the anonymous one) whatever
    // groups were asked for, unless system:unauthenticated was
    let has = |g: &str| acting.groups.iter().any(|x| x == g);
    if acting.name != ANONYMOUS {
        if !has(AUTHENTICATED) && !has(UNAUTHENTICATED) {
            acting.groups.push(AUTHENTICATED.into());
        }
    } else if !has(UNAUTHENTICATED) {
        acting.groups.push(UNAUTHENTICATED.into());
    }
    Ok(acting)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_token_csv() {
        let users =
            parse_token_file("# c\nabc,alice,1001,\"dev,ops\"\nxyz,bob,1002\n").expect("valid");
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].0, "abc");
        assert_eq!(
            users[0].1.groups,
            vec!["dev", "ops", "system:authenticated"]
        );
        assert_eq!(users[1].1.name, "bob");
        assert!(parse_token_file("onlytoken\n").is_err());
    }

    #[test]
    fn health_version_and_cluster_info_are_public_but_api_is_not() {
        use axum::http::Method;
        assert!(is_public(&Method::GET, "/healthz"));
        assert!(is_public(&Method::GET, "/readyz/ping"));
        assert!(is_public(&Method::GET, "/version"));
        assert!(!is_public(&Method::GET, "/api/v1/pods"));
        assert!(!is_public(&Method::GET, "/healthzx"));
        assert!(is_public(&Method::GET, CLUSTER_INFO));
        assert!(
            !is_public(&Method::PUT, CLUSTER_INFO),
            "anonymous callers only read it"
        );
        assert!(!is_public(
            &Method::GET,
            "/api/v1/namespaces/kube-public/configmaps/other"
        ));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo::named(name, groups)
    }

    #[test]
    fn masters_impersonate_users_groups_and_extras() {
        let rbac = crate::rbac::Authorizer::default();
        let admin = user("kaze-admin", &["system:masters", AUTHENTICATED]);
        let h = headers(&[
            ("Impersonate-User", "jane"),
            ("Impersonate-Group", "devs"),
            ("Impersonate-Group", "ops"),
            ("Impersonate-Uid", "u-1"),
            ("Impersonate-Extra-Scopes", "view"),
            ("Impersonate-Extra-Example.com%2fteam", "a"),
        ]);
        assert!(has_impersonation(&h));
        let jane = impersonate(&rbac, &h, &admin).expect("masters may impersonate");
        assert_eq!(jane.name, "jane");
        assert_eq!(jane.uid, "u-1");
        assert_eq!(jane.groups, vec!["devs", "ops", AUTHENTICATED]);
        assert_eq!(jane.extra["scopes"], vec!["view"]);
        assert_eq!(jane.extra["example.com/team"], vec!["a"]);

        let sa = impersonate(
            &rbac,
            &headers(&[("Impersonate-User", "system:serviceaccount:dev:build")]),
            &admin,
        )
        .expect("allowed");
        assert_eq!(
            sa.groups,
            vec![
                "system:serviceaccounts",
                "system:serviceaccounts:dev",
                AUTHENTICATED
            ]
        );
        let anon = impersonate(&rbac, &headers(&[("Impersonate-User", ANONYMOUS)]), &admin)
            .expect("allowed");
        assert_eq!(anon.groups, vec![UNAUTHENTICATED]);
    }

    #[test]
    fn impersonation_needs_rbac_and_a_user() {
        let rbac = crate::rbac::Authorizer::default();
        let bob = user("bob", &[AUTHENTICATED]);
        let err = impersonate(&rbac, &headers(&[("Impersonate-User", "jane")]), &bob)
            .expect_err("bob may not");
        let status = err.to_status();
        assert_eq!(status["code"], 403);
        assert_eq!(
            status["message"],
            "users \"jane\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        );
        let err = impersonate(
            &rbac,
            &headers(&[("Impersonate-User", "system:serviceaccount:dev:build")]),
            &bob,
        )
        .expect_err("bob may not");
        assert_eq!(
            err.to_status()["message"],
            "serviceaccounts \"build\" is forbidden: User \"bob\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"dev\""
        );
        let admin = user("kaze-admin", &["system:masters"]);
        for h in [
            headers(&[("Impersonate-Group", "devs")]),
            headers(&[("Impersonate-Uid", "1")]),
            headers(&[("Impersonate-Extra-X", "1")]),
        ] {
            let err = impersonate(&rbac, &h, &admin).expect_err("no user");
            assert_eq!(err.to_status()["code"], 400, "{:?}", err.to_status());
        }
        assert!(!has_impersonation(&headers(&[(
            "Authorization",
            "Bearer x"
        )])));
    }

    #[test]
    fn service_account_names_and_extra_keys() {
        assert_eq!(
            split_service_account("system:serviceaccount:kube-system:default"),
            Some(("kube-system", "default"))
        );
        assert_eq!(split_service_account("system:serviceaccount:a:b:c"), None);
        assert_eq!(split_service_account("system:serviceaccount::b"), None);
        assert_eq!(split_service_account("jane"), None);
        assert_eq!(path_unescape("a%2Fb"), "a/b");
        assert_eq!(path_unescape("a%zz"), "a%zz");
    }
}
