//! Legacy service-account tokens, as upstream's `pkg/serviceaccount/legacy.go` checks them:
//! the JWTs the controller-manager's `serviceaccount-token` controller writes into
//! `kubernetes.io/service-account-token` Secrets (issuer `kubernetes/serviceaccount`, no
//! audience, no expiry). One authenticates while its Secret exists holding this very token
//! (not being deleted, not labelled `kubernetes.io/legacy-token-invalid-since`) and its
//! ServiceAccount exists with the uid in the token; it is meant for this apiserver's own
//! audiences. Each day a token is used its Secret gets the label
//! `kubernetes.io/legacy-token-last-used: <date>` (upstream's LegacyServiceAccountTokenTracking).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use super::jwt::{LegacyClaims, Ref};
use super::token::{cached, core_def, exists};
use crate::auth::UserInfo;
use crate::meta;
use crate::objects;
use crate::state::AppState;

pub const LAST_USED_LABEL: &str = "kubernetes.io/legacy-token-last-used";
pub const INVALID_SINCE_LABEL: &str = "kubernetes.io/legacy-token-invalid-since";

/// The user of a legacy token and which of `audiences` (this apiserver's, when asked for
/// none in particular) it may be used for; or why not.
pub(super) async fn check(
    state: &AppState,
    token: &str,
    claims: &LegacyClaims,
    audiences: &[String],
) -> Result<(UserInfo, Vec<String>), String> {
    // a token without audiences is valid for the apiserver's own (upstream's implicit ones)
    let own = &state.service_accounts.audiences;
    let matched: Vec<String> = audiences
        .iter()
        .filter(|a| own.contains(a))
        .cloned()
        .collect();
    if matched.is_empty() {
        return Err(format!(
            "token audiences {own:?} is invalid for the target audiences {audiences:?}"
        ));
    }
    let ns = claims.namespace.as_str();
    for (what, v) in [
        ("sub", &claims.sub),
        ("namespace", &claims.namespace),
        ("secretName", &claims.secret_name),
        ("serviceAccountName", &claims.service_account_name),
        ("serviceAccountUID", &claims.service_account_uid),
    ] {
        if v.is_empty() {
            return Err(format!("{what} claim is missing"));
        }
    }
    if claims.sub != format!("system:serviceaccount:{ns}:{}", claims.service_account_name) {
        return Err("sub claim is invalid".into());
    }
    let secret = secret_holding(state, ns, &claims.secret_name, token)
        .await
        .ok_or("Token has been invalidated")?;
    if meta::labels(&secret).is_some_and(|l| l.contains_key(INVALID_SINCE_LABEL)) {
        return Err("Token has been invalidated".into());
    }
    let account = Ref {
        name: claims.service_account_name.clone(),
        uid: claims.service_account_uid.clone(),
    };
    if !exists(state, "serviceaccounts", Some(ns), &account).await {
        return Err(format!(
            "ServiceAccount {ns}/{} (uid {}) no longer exists",
            account.name, account.uid
        ));
    }
    record_use(state, ns, &secret).await;
    let user = UserInfo {
        name: claims.sub.clone(),
        uid: account.uid,
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
        extra: Default::default(),
    };
    Ok((user, matched))
}

/// The Secret `ns/name` if it holds `token` and is not being deleted: the watch cache's copy
/// when it does, else the store's (a Secret written a moment ago).
async fn secret_holding(state: &AppState, ns: &str, name: &str, token: &str) -> Option<Value> {
    let def = core_def(state, "secrets");
    let holds = |s: &Value| {
        meta::meta_str(s, "name") == Some(name)
            && meta::meta_str(s, "deletionTimestamp").is_none()
            && s.pointer("/data/token")
                .and_then(Value::as_str)
                .and_then(|b64| STANDARD.decode(b64).ok())
                .is_some_and(|t| t == token.as_bytes())
    };
    if let Some(s) = cached(state, def, Some(ns), name).filter(holds) {
        return Some(s);
    }
    objects::get(state, def, Some(ns), name)
        .await
        .ok()
        .filter(holds)
}

/// Label the Secret with today's date unless it says today (or tomorrow, a clock ahead)
/// already; once a day per Secret, in the request as upstream does it.
async fn record_use(state: &AppState, ns: &str, secret: &Value) {
    let now = jiff::Timestamp::now();
    let day = |t: jiff::Timestamp| t.strftime("%Y-%m-%d").to_string();
    let (today, tomorrow) = (day(now), day(now + jiff::SignedDuration::from_hours(24)));
    let last = meta::labels(secret)
        .and_then(|l| l.get(LAST_USED_LABEL))
        .and_then(Value::as_str)
        .unwrap_or("");
    if last == today || last == tomorrow {
        return;
    }
    let uid = meta::meta_str(secret, "uid").unwrap_or("").to_string();
    {
        let mut map = state
            .service_accounts
            .legacy_used
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map.get(&uid) == Some(&today) {
            return;
        }
        if map.len() > 4096 {
            map.clear();
        }
        map.insert(uid.clone(), today.clone());
    }
    let name = meta::meta_str(secret, "name").unwrap_or("");
    let def = core_def(state, "secrets");
    let r = objects::guaranteed_update(state, def, Some(ns), name, None, false, |cur| {
        let mut new = cur.clone();
        if meta::meta_str(cur, "uid") == Some(uid.as_str()) {
            let m = meta::metadata_mut(&mut new);
            if !m.get("labels").is_some_and(Value::is_object) {
                m.insert("labels".into(), json!({}));
            }
            m["labels"][LAST_USED_LABEL] = json!(today);
        }
        Ok(new)
    })
    .await;
    if let Err(e) = r {
        tracing::debug!(error = ?e, %ns, %name, "recording a legacy token's use");
    }
}
