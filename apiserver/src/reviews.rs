//! Create-only "review" resources that are answered, never stored: `kubectl auth can-i`
//! (SelfSubjectAccessReview, answered by the RBAC authorizer), `kubectl auth can-i --list`
//! (SelfSubjectRulesReview, the requester's RBAC rules), `kubectl auth whoami`
//! (SelfSubjectReview), SubjectAccessReview and LocalSubjectAccessReview (the authorizer's
//! answer for the user in the spec, what webhook authorizers of other components ask), and
//! TokenReview.

use serde_json::{json, Value};

use crate::auth::UserInfo;
use crate::rbac::Attributes;
use crate::state::AppState;
use crate::status::ApiError;

/// How a `create` of a review resource is answered.
#[derive(Clone, Copy, Debug)]
pub enum Review {
    /// From memory, for the requesting user and the URL's namespace (namespaced reviews).
    Answer(fn(&AppState, &UserInfo, Option<&str>, Value) -> Result<Value, ApiError>),
    /// TokenReview: the authenticators, which may read the store.
    Token,
    /// Not a review: ComponentStatus, computed on GET and never stored
    /// (`crate::componentstatus`).
    ComponentStatus,
}

impl Review {
    pub async fn answer(
        self,
        state: &AppState,
        user: &UserInfo,
        namespace: Option<&str>,
        body: Value,
    ) -> Result<Value, ApiError> {
        match self {
            Review::Answer(f) => f(state, user, namespace, body),
            Review::Token => crate::serviceaccount::token_review(state, body).await,
            Review::ComponentStatus => Err(ApiError::method_not_supported(
                "componentstatuses",
                "create",
            )),
        }
    }
}

pub fn self_subject_access_review(
    state: &AppState,
    user: &UserInfo,
    _namespace: Option<&str>,
    mut body: Value,
) -> Result<Value, ApiError> {
    let attrs = access_attributes(&body, "SelfSubjectAccessReview")?;
    let (allowed, reason) = state.rbac.authorize(user, &attrs);
    body["status"] = json!({"allowed": allowed, "reason": reason});
    Ok(body)
}

/// The attributes a (Self|Local)SubjectAccessReview's spec asks about.
fn access_attributes(body: &Value, kind: &str) -> Result<Attributes, ApiError> {
    let spec = &body["spec"];
    let (res, non_res) = (
        spec.get("resourceAttributes").filter(|v| !v.is_null()),
        spec.get("nonResourceAttributes").filter(|v| !v.is_null()),
    );
    if res.is_some() == non_res.is_some() {
        let why = if res.is_some() {
            "Invalid value: \"{...}\": cannot be specified in combination with resourceAttributes"
        } else {
            "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified"
        };
        let (field, reason) = if res.is_some() {
            ("spec.nonResourceAttributes", "FieldValueInvalid")
        } else {
            ("spec.resourceAttributes", "FieldValueRequired")
        };
        return Err(ApiError::invalid(
            kind,
            "authorization.k8s.io",
            "",
            vec![(field.into(), reason, why.into())],
        ));
    }
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let attrs = match res {
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
                // upstream's fieldSelector.rawSelector (AuthorizeWithSelectors)
                field_selector: r
                    .pointer("/fieldSelector/rawSelector")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            }
        }
        None => {
            let n = non_res.unwrap_or(&Value::Null);
            Attributes::NonResource {
                verb: text(n, "verb"),
                path: text(n, "path"),
            }
        }
    };
    Ok(attrs)
}

/// SubjectAccessReview: may the user, groups, uid and extra of the spec do what it asks?
pub fn subject_access_review(
    state: &AppState,
    _requester: &UserInfo,
    _namespace: Option<&str>,
    mut body: Value,
) -> Result<Value, ApiError> {
    let user = spec_user(&body, "SubjectAccessReview")?;
    let attrs = access_attributes(&body, "SubjectAccessReview")?;
    let (allowed, reason) = state.rbac.authorize(&user, &attrs);
    body["status"] = json!({"allowed": allowed, "reason": reason});
    Ok(body)
}

/// LocalSubjectAccessReview: a SubjectAccessReview of resources in the URL's namespace.
pub fn local_subject_access_review(
    state: &AppState,
    _requester: &UserInfo,
    namespace: Option<&str>,
    mut body: Value,
) -> Result<Value, ApiError> {
    const KIND: &str = "LocalSubjectAccessReview";
    let ns = namespace.unwrap_or_default();
    if ns.is_empty() {
        return Err(ApiError::bad_request(
            "namespace is required on this type: ",
        ));
    }
    match body.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(n) if !n.is_empty() && n != ns => return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => body["metadata"]["namespace"] = json!(ns),
    }
    if body
        .pointer("/spec/nonResourceAttributes")
        .is_some_and(|v| !v.is_null())
    {
        return Err(ApiError::invalid(
            KIND,
            "authorization.k8s.io",
            "",
            vec![(
                "spec.nonResourceAttributes".into(),
                "FieldValueInvalid",
                "Invalid value: \"{...}\": disallowed on this kind of request".into(),
            )],
        ));
    }
    let user = spec_user(&body, KIND)?;
    let attrs = access_attributes(&body, KIND)?;
    if !matches!(&attrs, Attributes::Resource { namespace: Some(n), .. } if n == ns) {
        return Err(ApiError::bad_request(format!(
            "spec.resourceAttributes.namespace must match namespace: {ns}"
        )));
    }
    let (allowed, reason) = state.rbac.authorize(&user, &attrs);
    body["status"] = json!({"allowed": allowed, "reason": reason});
    Ok(body)
}

/// The user a SubjectAccessReview asks about (upstream: a user or a group is required).
fn spec_user(body: &Value, kind: &str) -> Result<UserInfo, ApiError> {
    let spec = &body["spec"];
    let text = |k: &str| {
        spec.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let strings = crate::rbac::strings;
    let user = UserInfo {
        name: text("user"),
        uid: text("uid"),
        groups: strings(spec.get("groups")),
        extra: spec
            .get("extra")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), strings(Some(v))))
                    .collect()
            })
            .unwrap_or_default(),
    };
    if user.name.is_empty() && user.groups.is_empty() {
        return Err(ApiError::invalid(
            kind,
            "authorization.k8s.io",
            "",
            vec![(
                "spec.user".into(),
                "FieldValueInvalid",
                "Invalid value: \"\": at least one of user or group must be specified".into(),
            )],
        ));
    }
    Ok(user)
}

/// SelfSubjectRulesReview (`kubectl auth can-i --list`): the requester's RBAC rules in
/// `spec.namespace`.
pub fn self_subject_rules_review(
    state: &AppState,
    user: &UserInfo,
    _namespace: Option<&str>,
    mut body: Value,
) -> Result<Value, ApiError> {
    let ns = body
        .pointer("/spec/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let rules = state.rbac.rules_for(user, &ns);
    body["status"] = json!({
        "resourceRules": rules.resource_rules,
        "nonResourceRules": rules.non_resource_rules,
        "incomplete": false,
    });
    Ok(body)
}

pub fn self_subject_review(
    _state: &AppState,
    user: &UserInfo,
    _namespace: Option<&str>,
    mut body: Value,
) -> Result<Value, ApiError> {
    body["status"] = json!({"userInfo": crate::serviceaccount::user_json(user)});
    Ok(body)
}
