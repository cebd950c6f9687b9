//! Create-only "review" resources that are answered, never stored: `kubectl auth can-i`
//! (SelfSubjectAccessReview, answered by the RBAC authorizer) and `kubectl auth whoami`
//! (SelfSubjectReview), and TokenReview.

use serde_json::{json, Value};

use crate::auth::UserInfo;
use crate::rbac::Attributes;
use crate::state::AppState;
use crate::status::ApiError;

/// How a `create` of a review resource is answered.
#[derive(Clone, Copy, Debug)]
pub enum Review {
    /// From memory, for the requesting user.
    Answer(fn(&AppState, &UserInfo, Value) -> Result<Value, ApiError>),
    /// TokenReview: the authenticators, which may read the store.
    Token,
}

impl Review {
    pub async fn answer(
        self,
        state: &AppState,
        user: &UserInfo,
        body: Value,
    ) -> Result<Value, ApiError> {
        match self {
            Review::Answer(f) => f(state, user, body),
            Review::Token => crate::serviceaccount::token_review(state, body).await,
        }
    }
}

pub fn self_subject_access_review(
    state: &AppState,
    user: &UserInfo,
    mut body: Value,
) -> Result<Value, ApiError> {
    if !body.get("spec").is_some_and(|s| {
        s.get("resourceAttributes").is_some() || s.get("nonResourceAttributes").is_some()
    }) {
        return Err(ApiError::invalid(
            "SelfSubjectAccessReview",
            "authorization.k8s.io",
            "",
            vec![("spec.resourceAttributes".into(), "FieldValueRequired", "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into())],
        ));
    }
    let spec = &body["spec"];
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let attrs = match spec.get("resourceAttributes") {
        Some(r) => {
            let sub = text(r, "subresource");
            let mut resource = text(r, "resource");
            if !sub.is_empty() {
                resource = format!("{resource}/{sub}");
            }
            let opt = |k: &str| Some(text(r, k)).filter(|s| !s.is_empty());
            Attributes::Resource {
                verb: text(r, "verb"),
                group: text(r, "group"),
                resource,
                namespace: opt("namespace"),
                name: opt("name"),
            }
        }
        None => {
            let n = &spec["nonResourceAttributes"];
            Attributes::NonResource {
                verb: text(n, "verb"),
                path: text(n, "path"),
            }
        }
    };
    let (allowed, reason) = state.rbac.authorize(user, &attrs);
    body["status"] = json!({"allowed": allowed, "reason": reason});
    Ok(body)
}

pub fn self_subject_review(
    _state: &AppState,
    user: &UserInfo,
    mut body: Value,
) -> Result<Value, ApiError> {
    body["status"] = json!({"userInfo": crate::serviceaccount::user_json(user)});
    Ok(body)
}
