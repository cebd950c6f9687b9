//! Authentication: bearer tokens. The admin token is generated on first start and kept in
//! `<data-dir>/server/admin.token`; more tokens come from `--token-auth-file` (upstream's CSV
//! format); JWTs are service-account tokens (`crate::serviceaccount`). Requests without a known token get 401, except the health and version endpoints
//! that upstream opens to anonymous callers. Authorization (RBAC) is a separate layer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

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
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let mut user = token.and_then(|t| state.tokens.authenticate(t)).cloned();
    if let Some(t) =
        token.filter(|t| user.is_none() && crate::serviceaccount::jwt::looks_like_jwt(t))
    {
        user = crate::serviceaccount::authenticate(&state, t).await;
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
            crate::router::discard_body(req.into_body()).await;
            ApiError::unauthorized().into_response()
        }
    }
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
}
