//! TokenRequest (`POST serviceaccounts/<name>/token`), the authenticator for the tokens it
//! issues, and TokenReview, as upstream's `pkg/registry/core/serviceaccount/storage/token.go`
//! and `pkg/serviceaccount/claims.go` do them.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};

use super::jwt::{self, Claims, Kubernetes, Ref};
use super::{keys, ServiceAccounts, Verified, VERIFIED_CACHE};
use crate::auth::UserInfo;
use crate::meta;
use crate::negotiate::{self, Format};
use crate::objects;
use crate::state::AppState;
use crate::status::ApiError;

/// Upstream's bounds on `spec.expirationSeconds`.
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;
const DEFAULT_EXPIRATION: i64 = 3600;
/// What the ServiceAccount admission plugin's volume asks for: such pod-bound tokens are
/// issued for a year (`--service-account-extend-token-expiration`) so clients that never
/// reload them keep working, with `warnafter` saying when the asked life ended.
const WARN_ONLY_EXPIRATION: i64 = super::admission::TOKEN_EXPIRATION;
const EXTENDED_EXPIRATION: i64 = 365 * 24 * 3600;
/// go-jose's default leeway on `exp`/`nbf`, which upstream's validator uses.
const LEEWAY: i64 = 60;
/// A bound object being deleted keeps its tokens valid this long past its deletion
/// timestamp (upstream's grace for objects in graceful deletion).
const DELETION_GRACE: i64 = 60;

const TOKEN_REQUEST: &str = "TokenRequest";
const AUTHN_GROUP: &str = "authentication.k8s.io";

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn invalid(field: &str, value: &Value, why: &str) -> ApiError {
    ApiError::invalid(
        TOKEN_REQUEST,
        AUTHN_GROUP,
        "",
        vec![(
            field.into(),
            "FieldValueInvalid",
            format!("Invalid value: {value}: {why}"),
        )],
    )
}

pub(super) fn core_def<'a>(state: &'a AppState, plural: &str) -> &'a crate::registry::ResourceDef {
    state
        .registry
        .get("", "v1", plural)
        .expect("core kinds are built in")
}

fn obj_ref(obj: &Value) -> Ref {
    Ref {
        name: meta::meta_str(obj, "name").unwrap_or("").into(),
        uid: meta::meta_str(obj, "uid").unwrap_or("").into(),
    }
}

/// `POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`.
pub async fn token_request(
    state: &AppState,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let mut req = negotiate::decode_object(body, negotiate::body_type(headers)?)?;
    if let Some(kind) = req.get("kind").and_then(Value::as_str) {
        if kind != TOKEN_REQUEST {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind (TokenRequest)"
            )));
        }
    }
    let sa = objects::get(state, core_def(state, "serviceaccounts"), Some(ns), name).await?;
    let spec = req.get("spec").cloned().unwrap_or(json!({}));
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| invalid("spec.expirationSeconds", v, "must be an integer"))?,
    };
    if expiration < MIN_EXPIRATION {
        return Err(invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > MAX_EXPIRATION {
        return Err(invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let mut audiences: Vec<String> = match spec.get("audiences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(String::from))
            .collect::<Option<_>>()
            .ok_or_else(|| invalid("spec.audiences", &json!(a), "must be strings"))?,
        Some(v) => return Err(invalid("spec.audiences", v, "must be a list of strings")),
    };
    if audiences.is_empty() {
        audiences = state.service_accounts.audiences.clone();
    }

    let mut claim = Kubernetes {
        namespace: ns.to_string(),
        serviceaccount: obj_ref(&sa),
        pod: None,
        secret: None,
        node: None,
        warnafter: None,
    };
    if let Some(bound) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
        bind(state, ns, name, bound, &mut claim).await?;
    }
    let iat = now();
    let sas = &state.service_accounts;
    let lifetime = if sas.extend_expiration
        && claim.pod.is_some()
        && expiration == WARN_ONLY_EXPIRATION
        && audiences.iter().all(|a| sas.audiences.contains(a))
    {
        claim.warnafter = Some(iat + expiration);
        EXTENDED_EXPIRATION
    } else {
        expiration
    };
    let claims = Claims {
        iss: state.service_accounts.issuer.clone(),
        sub: format!("system:serviceaccount:{ns}:{name}"),
        aud: audiences.clone(),
        exp: iat + lifetime,
        iat,
        nbf: iat,
        jti: meta::new_uid(),
        kubernetes: claim,
    };
    let token = state
        .service_accounts
        .signing
        .sign(&claims)
        .map_err(ApiError::internal)?;
    let mut spec = spec;
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(expiration);
    req["apiVersion"] = json!("authentication.k8s.io/v1");
    req["kind"] = json!(TOKEN_REQUEST);
    if req.get("metadata").is_none_or(Value::is_null) {
        req["metadata"] = json!({"creationTimestamp": null});
    }
    req["spec"] = spec;
    req["status"] = json!({
        "token": token,
        // the life asked for, also for an extended token: clients renew on it
        "expirationTimestamp": meta::format_ts(
            jiff::Timestamp::from_second(iat + expiration).unwrap_or_default()
        ),
    });
    Ok(negotiate::respond(StatusCode::CREATED, &req, Format::Json))
}

/// Check `spec.boundObjectRef` and record it in the claim.
async fn bind(
    state: &AppState,
    ns: &str,
    sa_name: &str,
    bound: &Value,
    claim: &mut Kubernetes,
) -> Result<(), ApiError> {
    let text = |k: &str| bound.get(k).and_then(Value::as_str).unwrap_or("");
    let (kind, name, uid) = (text("kind"), text("name"), text("uid"));
    if name.is_empty() {
        return Err(ApiError::invalid(
            TOKEN_REQUEST,
            AUTHN_GROUP,
            "",
            vec![(
                "spec.boundObjectRef.name".into(),
                "FieldValueRequired",
                "Required value".into(),
            )],
        ));
    }
    let api_version = text("apiVersion");
    if !(api_version.is_empty() || api_version == "v1") {
        return Err(ApiError::bad_request(format!(
            "cannot bind token to object of type {api_version}, Kind={kind}"
        )));
    }
    let (plural, obj_ns) = match kind {
        "Pod" => ("pods", Some(ns)),
        "Secret" => ("secrets", Some(ns)),
        "Node" => ("nodes", None),
        _ => {
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type /v1, Kind={kind}"
            )))
        }
    };
    let obj = objects::get(state, core_def(state, plural), obj_ns, name).await?;
    let r = obj_ref(&obj);
    if !uid.is_empty() && uid != r.uid {
        return Err(ApiError::conflict_message(
            kind,
            "",
            name,
            &format!("the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"),
        ));
    }
    match kind {
        "Pod" => {
            let pod_sa = obj
                .pointer("/spec/serviceAccountName")
                .and_then(Value::as_str)
                .unwrap_or("default");
            if pod_sa != sa_name {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {sa_name:?} to pod running with different serviceaccount name."
                )));
            }
            let node = obj
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty());
            if let Some(node) = node {
                claim.node = objects::get(state, core_def(state, "nodes"), None, node)
                    .await
                    .ok()
                    .map(|n| obj_ref(&n));
            }
            claim.pod = Some(r);
        }
        "Secret" => claim.secret = Some(r),
        _ => claim.node = Some(r),
    }
    Ok(())
}

impl ServiceAccounts {
    fn remembered(&self, token: &str) -> Option<Verified> {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    fn remember(&self, token: &str, claims: &Verified) {
        let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() >= VERIFIED_CACHE {
            // Cheap bound: start over rather than track recency.
            v.clear();
        }
        v.insert(token.to_string(), claims.clone());
    }

    /// The token's claims once its signature checks out: a legacy token's (by its issuer,
    /// upstream's `kubernetes/serviceaccount`) or a bound one's.
    fn verify(&self, token: &str) -> Result<Verified, jwt::Invalid> {
        let raw: Value =
            jwt::verify_as(token, &self.keys.read().unwrap_or_else(|e| e.into_inner()))?;
        let claims = |e: serde_json::Error| jwt::Invalid::Claims(e.to_string());
        if raw.get("iss").and_then(Value::as_str) == Some(jwt::LEGACY_ISSUER) {
            return serde_json::from_value(raw)
                .map(Verified::Legacy)
                .map_err(claims);
        }
        serde_json::from_value(raw)
            .map(Verified::Bound)
            .map_err(claims)
    }

    /// Where apiservers keep their public keys for each other (`<this><kid>`).
    fn keys_prefix(state: &AppState) -> String {
        format!("{}/kaze/serviceaccount-keys/", state.storage.prefix())
    }

    /// Put our public key where other apiservers on the same store find it.
    pub async fn publish(&self, state: &AppState) {
        let key = format!("{}{}", Self::keys_prefix(state), self.signing.kid());
        let pem = keys::public_pem(self.signing.public_point());
        let store = state.storage.store_for("", "serviceaccounts");
        match store.create(&key, Bytes::from(pem)).await {
            Ok(_) | Err(store::StoreError::AlreadyExists { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "publishing the service account public key"),
        }
    }

    /// Add every public key the apiservers on this store published (each under the id of
    /// the key itself, whatever its store key says).
    pub(super) async fn load_published(&self, state: &AppState) {
        let store = state.storage.store_for("", "serviceaccounts");
        match store
            .list(&Self::keys_prefix(state), store::ListOptions::default())
            .await
        {
            Ok(page) => {
                let mut map = self.keys.write().unwrap_or_else(|e| e.into_inner());
                for kv in page.items {
                    if let Some(point) = std::str::from_utf8(&kv.value)
                        .ok()
                        .and_then(keys::point_from_pem)
                    {
                        map.insert(jwt::key_id(&point), point);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing the published service account keys"),
        }
    }

    fn knows(&self, kid: &str) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(kid)
    }

    /// Whether `kid` is known, after reading the published keys if it is not and they were
    /// not read within `refresh::INTERVAL` (see `refresh`).
    async fn learn_key(&self, state: &AppState, kid: &str) -> bool {
        self.key_refresh
            .ensure(
                std::time::Instant::now,
                super::refresh::INTERVAL,
                || self.knows(kid),
                || self.load_published(state),
            )
            .await
    }
}

/// The user of a token and which of `audiences` it is meant for; or why it does not
/// authenticate (logged at debug; the client sees a plain 401).
async fn check(
    state: &AppState,
    token: &str,
    audiences: &[String],
) -> Result<(UserInfo, Vec<String>), String> {
    let sas = &state.service_accounts;
    let verified = match sas.remembered(token) {
        Some(c) => c,
        None => {
            let verified = match sas.verify(token) {
                Err(jwt::Invalid::UnknownKey(kid)) if sas.learn_key(state, &kid).await => {
                    sas.verify(token)
                }
                r => r,
            }
            .map_err(|e| e.to_string())?;
            sas.remember(token, &verified);
            verified
        }
    };
    let claims = match verified {
        Verified::Bound(claims) => *claims,
        Verified::Legacy(legacy) => {
            return super::legacy::check(state, token, &legacy, audiences).await
        }
    };
    if claims.iss != sas.issuer {
        return Err(format!("issuer {:?} is not this apiserver's", claims.iss));
    }
    let t = now();
    if claims.exp + LEEWAY < t {
        return Err("service account token has expired".into());
    }
    if claims.nbf - LEEWAY > t {
        return Err("service account token is not valid yet".into());
    }
    let matched: Vec<String> = audiences
        .iter()
        .filter(|a| claims.aud.contains(a))
        .cloned()
        .collect();
    if matched.is_empty() {
        return Err("token audiences do not include this apiserver's".into());
    }
    let k = &claims.kubernetes;
    let ns = k.namespace.as_str();
    if claims.sub != format!("system:serviceaccount:{ns}:{}", k.serviceaccount.name) {
        return Err("subject does not match the kubernetes.io claim".into());
    }
    let bound = [
        ("serviceaccounts", Some(ns), Some(&k.serviceaccount)),
        ("pods", Some(ns), k.pod.as_ref()),
        ("secrets", Some(ns), k.secret.as_ref()),
        // a pod-bound token names its pod's node for information only, as upstream
        ("nodes", None, k.node.as_ref().filter(|_| k.pod.is_none())),
    ];
    for (plural, ns, r) in bound {
        if let Some(r) = r {
            if !exists(state, plural, ns, r).await {
                return Err(format!(
                    "{plural} {:?} (uid {}) no longer exists",
                    r.name, r.uid
                ));
            }
        }
    }
    // upstream's extra keys, which e.g. a Node authorizer reads
    let mut extra = std::collections::BTreeMap::new();
    let mut put = |key: &str, value: &str| {
        if !value.is_empty() {
            extra.insert(
                format!("authentication.kubernetes.io/{key}"),
                vec![value.to_string()],
            );
        }
    };
    if let Some(pod) = &k.pod {
        put("pod-name", &pod.name);
        put("pod-uid", &pod.uid);
    }
    if let Some(node) = &k.node {
        put("node-name", &node.name);
        put("node-uid", &node.uid);
    }
    if !claims.jti.is_empty() {
        put("credential-id", &format!("JTI={}", claims.jti));
    }
    let user = UserInfo {
        name: claims.sub.clone(),
        uid: k.serviceaccount.uid.clone(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
        extra,
    };
    Ok((user, matched))
}

/// The user of a service-account token meant for this apiserver, if it is valid.
pub async fn authenticate(state: &AppState, token: &str) -> Option<UserInfo> {
    match check(state, token, &state.service_accounts.audiences).await {
        Ok((u, _)) => Some(u),
        Err(why) => {
            tracing::debug!(%why, "service account token refused");
            None
        }
    }
}

/// Whether the object still exists with the token's uid (and is not long deleted). The
/// watch cache answers first; what it does not confirm is read from the store, so an object
/// created a moment ago is found.
pub(super) async fn exists(state: &AppState, plural: &str, ns: Option<&str>, r: &Ref) -> bool {
    let def = core_def(state, plural);
    let live = |obj: &Value| {
        meta::meta_str(obj, "name") == Some(r.name.as_str())
            && meta::meta_str(obj, "uid") == Some(r.uid.as_str())
            && meta::meta_str(obj, "deletionTimestamp")
                .and_then(meta::parse_ts)
                .is_none_or(|d| d.as_second() + DELETION_GRACE >= now())
    };
    if cached(state, def, ns, &r.name).as_ref().is_some_and(live) {
        return true;
    }
    objects::get(state, def, ns, &r.name)
        .await
        .is_ok_and(|o| live(&o))
}

/// The watch cache's copy of `ns/name` (None when it has none; the caller checks the name,
/// as the lookup is by key prefix).
pub(super) fn cached(
    state: &AppState,
    def: &crate::registry::ResourceDef,
    ns: Option<&str>,
    name: &str,
) -> Option<Value> {
    let key = state.key(def, ns, name);
    state
        .cache
        .resource(def)
        .and_then(|rc| rc.list(&key, None, None, Some(1), &mut |_| true))
        .and_then(|snap| snap.items.first().and_then(|c| c.value().ok()))
}

/// `authentication.k8s.io/v1` TokenReview: who a token authenticates as, by the same
/// authenticators requests go through (static tokens, then service-account tokens, which
/// must be meant for `spec.audiences` when given, else for this apiserver).
pub async fn token_review(state: &AppState, mut body: Value) -> Result<Value, ApiError> {
    let token = body
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let wanted: Vec<String> = body
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let audiences = if wanted.is_empty() {
        state.service_accounts.audiences.clone()
    } else {
        wanted.clone()
    };
    // the audiences the token is good for: all of the apiserver's for static tokens, the
    // overlap of the asked and the token's for service-account tokens, as upstream answers
    let result = match state.tokens.authenticate(&token) {
        Some(u) if wanted.is_empty() => Ok((u.clone(), audiences)),
        Some(_) => Err("static tokens are not meant for other audiences".to_string()),
        None if jwt::looks_like_jwt(&token) => check(state, &token, &audiences).await,
        None => Err("invalid bearer token".to_string()),
    };
    body["status"] = match result {
        Ok((u, audiences)) => json!({
            "authenticated": true,
            "user": user_json(&u),
            "audiences": audiences,
        }),
        Err(why) => json!({"authenticated": false, "error": why, "user": {}}),
    };
    Ok(body)
}

/// A user as `authentication.k8s.io/v1` UserInfo.
pub fn user_json(u: &UserInfo) -> Value {
    let mut v = json!({"username": u.name, "uid": u.uid, "groups": u.groups});
    if !u.extra.is_empty() {
        v["extra"] = json!(u.extra);
    }
    v
}
