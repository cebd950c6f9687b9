//! How aggregated API servers know a request comes from this apiserver, and for whom: the
//! front-proxy client certificate the apiserver presents (`--proxy-client-cert-file`, or one
//! it issues itself from a request-header CA it keeps in its data dir, as k3s does), the
//! user in upstream's `X-Remote-*` headers, and the `kube-system/extension-apiserver-authentication`
//! ConfigMap extension servers read to trust both (upstream's `clusterauthenticationtrust`
//! controller; `--requestheader-*` flags).

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use crate::auth::UserInfo;
use crate::backend::Identity;
use crate::objects::{self, Part};
use crate::state::AppState;
use crate::status::ApiError;
use crate::Error;

pub const CONFIGMAP: &str = "extension-apiserver-authentication";
pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
/// The Role upstream's bootstrap policy gives extension servers to read the ConfigMap.
pub const READER_ROLE: &str = "extension-apiserver-authentication-reader";

/// The aggregation layer's flags (kube-apiserver's names). The header defaults are what
/// kubeadm and k3s pass (kube-apiserver's own flags default to nothing, which would tell
/// extension servers to read no user at all).
#[derive(Debug, Clone, clap::Args)]
pub struct AggregatorOptions {
    /// Client certificate (PEM) the apiserver presents to aggregated API servers (default:
    /// `<data-dir>/server/tls/client-auth-proxy.crt`, CN `system:auth-proxy`, issued from
    /// the request-header CA the apiserver generates, `request-header-ca.crt`).
    #[arg(long = "proxy-client-cert-file", requires = "proxy_client_key_file")]
    pub proxy_client_cert_file: Option<PathBuf>,

    /// The key of `--proxy-client-cert-file`.
    #[arg(long = "proxy-client-key-file", requires = "proxy_client_cert_file")]
    pub proxy_client_key_file: Option<PathBuf>,

    /// CA (PEM) that signed the proxy client certificate, published to extension servers
    /// (default: the generated request-header CA when the proxy certificate is the default).
    #[arg(long = "requestheader-client-ca-file")]
    pub requestheader_client_ca_file: Option<PathBuf>,

    /// Common names a proxy client certificate may have, published to extension servers
    /// (empty: any the CA signed).
    #[arg(long = "requestheader-allowed-names", value_delimiter = ',', default_values_t = [String::from("system:auth-proxy")])]
    pub requestheader_allowed_names: Vec<String>,

    /// Headers carrying the user name.
    #[arg(long = "requestheader-username-headers", value_delimiter = ',', default_values_t = [String::from("X-Remote-User")])]
    pub requestheader_username_headers: Vec<String>,

    /// Headers carrying the user's uid.
    #[arg(long = "requestheader-uid-headers", value_delimiter = ',', default_values_t = [String::from("X-Remote-Uid")])]
    pub requestheader_uid_headers: Vec<String>,

    /// Headers carrying the user's groups.
    #[arg(long = "requestheader-group-headers", value_delimiter = ',', default_values_t = [String::from("X-Remote-Group")])]
    pub requestheader_group_headers: Vec<String>,

    /// Header prefixes carrying the user's extra values.
    #[arg(long = "requestheader-extra-headers-prefix", value_delimiter = ',', default_values_t = [String::from("X-Remote-Extra-")])]
    pub requestheader_extra_headers_prefix: Vec<String>,

    /// How often every aggregated API server is checked while it passes (upstream: 30 s;
    /// failing ones are retried sooner, with back-off). Not a flag: tests shorten it.
    #[arg(skip = Duration::from_secs(30))]
    pub availability_resync: Duration,
}

impl Default for AggregatorOptions {
    fn default() -> AggregatorOptions {
        AggregatorOptions {
            proxy_client_cert_file: None,
            proxy_client_key_file: None,
            requestheader_client_ca_file: None,
            requestheader_allowed_names: vec!["system:auth-proxy".into()],
            requestheader_username_headers: vec!["X-Remote-User".into()],
            requestheader_uid_headers: vec!["X-Remote-Uid".into()],
            requestheader_group_headers: vec!["X-Remote-Group".into()],
            requestheader_extra_headers_prefix: vec!["X-Remote-Extra-".into()],
            availability_resync: Duration::from_secs(30),
        }
    }
}

/// The options resolved at start: the identity presented and what is published.
#[derive(Debug, Clone, Default)]
pub struct FrontProxy {
    /// None only in unit tests.
    pub identity: Option<Identity>,
    /// `--client-ca-file` (default the cluster CA), PEM: `client-ca-file` in the ConfigMap.
    pub client_ca_pem: String,
    /// `requestheader-client-ca-file` in the ConfigMap; None: not published.
    pub requestheader_ca_pem: Option<String>,
    pub options: AggregatorOptions,
}

impl FrontProxy {
    /// Load (or, by default, issue in `tls_dir`) the proxy client certificate.
    pub fn load(
        options: &AggregatorOptions,
        tls_dir: &Path,
        client_ca_pem: String,
    ) -> Result<Self, Error> {
        let flags = ("--proxy-client-cert-file", "--proxy-client-key-file");
        let (identity, default_ca) = match (
            &options.proxy_client_cert_file,
            &options.proxy_client_key_file,
        ) {
            (Some(cert), Some(key)) => (Identity::load(cert, key, flags)?, None),
            _ => {
                crate::tls::ensure_front_proxy(tls_dir)?;
                let identity = Identity::load(
                    &tls_dir.join(crate::tls::PROXY_CLIENT_CERT),
                    &tls_dir.join(crate::tls::PROXY_CLIENT_KEY),
                    flags,
                )?;
                (
                    identity,
                    Some(tls_dir.join(crate::tls::REQUEST_HEADER_CA_CERT)),
                )
            }
        };
        let ca_file = options.requestheader_client_ca_file.clone().or(default_ca);
        let requestheader_ca_pem = match ca_file {
            Some(f) => Some(
                std::fs::read_to_string(&f)
                    .map_err(Error::io("reading --requestheader-client-ca-file", &f))?,
            ),
            None => {
                tracing::warn!("no --requestheader-client-ca-file: aggregated API servers cannot verify the proxy client certificate from the extension-apiserver-authentication ConfigMap");
                None
            }
        };
        Ok(FrontProxy {
            identity: Some(identity),
            client_ca_pem,
            requestheader_ca_pem,
            options: options.clone(),
        })
    }
}

// === headers ===

/// Request headers a client may not pass on to an aggregated server: credentials, and the
/// user headers only the apiserver sets.
pub fn strip_client_identity(headers: &mut HeaderMap) {
    let drop: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k == "authorization" || k.starts_with("impersonate-") || k.starts_with("x-remote-")
        })
        .cloned()
        .collect();
    for k in drop {
        headers.remove(k);
    }
}

/// Upstream's `SetAuthProxyHeaders`: `X-Remote-User`, `X-Remote-Uid` (when there is one),
/// one `X-Remote-Group` per group and `X-Remote-Extra-<key>` per extra value (the key
/// path-escaped).
pub fn set_user_headers(headers: &mut HeaderMap, user: &UserInfo) {
    strip_client_identity(headers);
    let value = |s: &str| HeaderValue::from_str(s).ok();
    if let Some(v) = value(&user.name) {
        headers.insert("x-remote-user", v);
    }
    if let Some(v) = value(&user.uid).filter(|_| !user.uid.is_empty()) {
        headers.insert("x-remote-uid", v);
    }
    for g in &user.groups {
        if let Some(v) = value(g) {
            headers.append("x-remote-group", v);
        }
    }
    for (key, values) in &user.extra {
        let Ok(name) =
            HeaderName::from_bytes(format!("x-remote-extra-{}", path_escape(key)).as_bytes())
        else {
            continue;
        };
        for v in values.iter().filter_map(|v| value(v)) {
            headers.append(name.clone(), v);
        }
    }
}

/// Go's `url.PathEscape`: everything but unreserved characters and `$&+,/:;=@` %-encoded.
fn path_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+:=@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// === the ConfigMap ===

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// The PEM certificates of `a` followed by those of `b` not already in `a`.
fn union_pem(a: &str, b: &str) -> String {
    let blocks = |s: &str| -> Vec<String> {
        s.split_inclusive("-----END CERTIFICATE-----")
            .map(str::trim)
            .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
            .map(String::from)
            .collect()
    };
    let mut out = blocks(a);
    for block in blocks(b) {
        if !out.contains(&block) {
            out.push(block);
        }
    }
    out.iter().map(|b| format!("{b}\n")).collect()
}

/// The JSON string arrays `a` and `b` as one, `a`'s entries first.
fn union_list(a: &str, b: &str) -> String {
    let parse = |s: &str| serde_json::from_str::<Vec<String>>(s).unwrap_or_default();
    let mut out = parse(a);
    for item in parse(b) {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    json_list(&out)
}

/// What this apiserver publishes, merged into what the ConfigMap holds (other apiservers on
/// the same store publish their CAs too, and extension servers must trust all of them).
pub fn merged_data(existing: &Value, front: &FrontProxy) -> Value {
    let o = &front.options;
    let mut ours = vec![("client-ca-file", front.client_ca_pem.clone(), true)];
    if let Some(ca) = &front.requestheader_ca_pem {
        ours.extend([
            ("requestheader-client-ca-file", ca.clone(), true),
            (
                "requestheader-allowed-names",
                json_list(&o.requestheader_allowed_names),
                false,
            ),
            (
                "requestheader-username-headers",
                json_list(&o.requestheader_username_headers),
                false,
            ),
            (
                "requestheader-uid-headers",
                json_list(&o.requestheader_uid_headers),
                false,
            ),
            (
                "requestheader-group-headers",
                json_list(&o.requestheader_group_headers),
                false,
            ),
            (
                "requestheader-extra-headers-prefix",
                json_list(&o.requestheader_extra_headers_prefix),
                false,
            ),
        ]);
    }
    let mut data = existing.as_object().cloned().unwrap_or_default();
    for (key, value, pem) in ours {
        let merged = match data.get(key).and_then(Value::as_str) {
            Some(old) if pem => union_pem(old, &value),
            Some(old) => union_list(old, &value),
            None => value,
        };
        data.insert(key.into(), json!(merged));
    }
    Value::Object(data)
}

/// Publish `kube-system/extension-apiserver-authentication` and the Role that lets extension
/// servers read it (upstream's bootstrap `extension-apiserver-authentication-reader`).
pub async fn publish(state: &AppState) -> Result<(), ApiError> {
    let front = &state.aggregator.front_proxy;
    let cms = state
        .registry
        .get("", "v1", "configmaps")
        .expect("configmaps are built in");
    let fresh = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CONFIGMAP, "namespace": CONFIGMAP_NAMESPACE},
        "data": merged_data(&Value::Null, front),
    });
    match objects::create(
        state,
        cms,
        Some(CONFIGMAP_NAMESPACE),
        fresh,
        Default::default(),
    )
    .await
    {
        Ok(_) => {}
        Err(e) if e.reason == "AlreadyExists" => {
            objects::guaranteed_update(
                state,
                cms,
                Some(CONFIGMAP_NAMESPACE),
                CONFIGMAP,
                None,
                false,
                |cur| {
                    let mut new = cur.clone();
                    new["data"] = merged_data(cur.get("data").unwrap_or(&Value::Null), front);
                    objects::prepare_update(cms, cur, new, Part::Main, false)
                },
            )
            .await?;
        }
        Err(e) => return Err(e),
    }
    let roles = state
        .registry
        .get("rbac.authorization.k8s.io", "v1", "roles")
        .expect("roles are built in");
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": READER_ROLE, "namespace": CONFIGMAP_NAMESPACE,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CONFIGMAP], "verbs": ["get", "list", "watch"]}],
    });
    match objects::create(
        state,
        roles,
        Some(CONFIGMAP_NAMESPACE),
        role,
        Default::default(),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "AlreadyExists" => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n";
    const B: &str = "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";

    #[test]
    fn published_data_merges_with_other_apiservers() {
        let front = FrontProxy {
            identity: None,
            client_ca_pem: A.into(),
            requestheader_ca_pem: Some(B.into()),
            options: AggregatorOptions::default(),
        };
        let data = merged_data(&Value::Null, &front);
        assert_eq!(data["client-ca-file"], A);
        assert_eq!(data["requestheader-client-ca-file"], B);
        assert_eq!(
            data["requestheader-username-headers"],
            "[\"X-Remote-User\"]"
        );
        assert_eq!(data["requestheader-group-headers"], "[\"X-Remote-Group\"]");
        assert_eq!(
            data["requestheader-extra-headers-prefix"],
            "[\"X-Remote-Extra-\"]"
        );
        assert_eq!(
            data["requestheader-allowed-names"],
            "[\"system:auth-proxy\"]"
        );
        // another apiserver's CA and allowed name stay, ours are added once
        let other = json!({"client-ca-file": B, "requestheader-allowed-names": "[\"front-proxy-client\"]", "other": "x"});
        let data = merged_data(&other, &front);
        assert_eq!(data["client-ca-file"], format!("{}{}", B, A));
        assert_eq!(
            data["requestheader-allowed-names"],
            "[\"front-proxy-client\",\"system:auth-proxy\"]"
        );
        assert_eq!(data["other"], "x");
        assert_eq!(merged_data(&data, &front), data, "idempotent");
    }

    #[test]
    fn user_headers_replace_what_the_client_sent() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        h.insert("x-remote-user", HeaderValue::from_static("mallory"));
        h.insert("x-remote-extra-evil", HeaderValue::from_static("1"));
        h.insert("impersonate-user", HeaderValue::from_static("root"));
        h.insert("accept", HeaderValue::from_static("application/json"));
        let user = UserInfo {
            name: "alice".into(),
            uid: "u-1".into(),
            groups: vec!["devs".into(), "system:authenticated".into()],
            extra: [(
                "scopes.example.com/a b".to_string(),
                vec!["x".to_string(), "y".to_string()],
            )]
            .into_iter()
            .collect(),
        };
        set_user_headers(&mut h, &user);
        let all = |k: &str| -> Vec<&str> {
            h.get_all(k)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        assert_eq!(all("x-remote-user"), ["alice"]);
        assert_eq!(all("x-remote-uid"), ["u-1"]);
        assert_eq!(all("x-remote-group"), ["devs", "system:authenticated"]);
        assert_eq!(all("x-remote-extra-scopes.example.com%2Fa%20b"), ["x", "y"]);
        assert!(h.get("x-remote-extra-evil").is_none());
        assert!(h.get("authorization").is_none());
        assert!(h.get("impersonate-user").is_none());
        assert_eq!(all("accept"), ["application/json"]);
    }
}
