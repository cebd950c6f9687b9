//! Create-only "review" resources that are answered, never stored: `kubectl auth can-i`
//! (SelfSubjectAccessReview) and `kubectl auth whoami` (SelfSubjectReview). There is no
//! authorization layer yet, so every authenticated user is allowed everything — and the
//! answer says so.

use serde_json::{json, Value};

use crate::auth::UserInfo;
use crate::status::ApiError;

/// Answers a `create` of a review resource for `user`.
pub type Review = fn(&UserInfo, Value) -> Result<Value, ApiError>;

pub fn self_subject_access_review(_user: &UserInfo, mut body: Value) -> Result<Value, ApiError> {
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
    body["status"] = json!({"allowed": true, "reason": "kaze has no authorization layer yet: every authenticated user may do everything"});
    Ok(body)
}

pub fn self_subject_review(user: &UserInfo, mut body: Value) -> Result<Value, ApiError> {
    body["status"] =
        json!({"userInfo": {"username": user.name, "uid": user.uid, "groups": user.groups}});
    Ok(body)
}
