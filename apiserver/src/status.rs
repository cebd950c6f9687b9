//! Request errors as upstream's `Status` objects, with upstream's reasons, codes and messages
//! (clients match on `reason`; kubectl prints `message`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// A request failure, sent as a `metav1.Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

/// `<resource>` or `<resource>.<group>`, as upstream names a resource in messages.
pub fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

fn details(name: &str, group: &str, kind: &str) -> Value {
    let mut d = json!({ "name": name, "kind": kind });
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn not_found(resource: &str, group: &str, name: &str) -> ApiError {
        ApiError {
            details: Some(details(name, group, resource)),
            ..ApiError::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(resource, group)),
            )
        }
    }

    /// A path that names no resource at all.
    pub fn no_route(path: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn already_exists(resource: &str, group: &str, name: &str) -> ApiError {
        ApiError {
            details: Some(details(name, group, resource)),
            ..ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(resource, group)),
            )
        }
    }

    pub fn conflict(resource: &str, group: &str, name: &str) -> ApiError {
        ApiError {
            details: Some(details(name, group, resource)),
            ..ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    qualified(resource, group)
                ),
            )
        }
    }

    pub fn conflict_message(resource: &str, group: &str, name: &str, why: &str) -> ApiError {
        ApiError {
            details: Some(details(name, group, resource)),
            ..ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": {why}",
                    qualified(resource, group)
                ),
            )
        }
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"))
    }

    pub fn not_acceptable(accept: &str) -> ApiError {
        ApiError::new(406, "NotAcceptable", format!("only the following media types are accepted: application/json, application/yaml (asked for {accept:?})"))
    }

    pub fn method_not_supported(resource: &str, verb: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{verb} is not supported on resources of kind {resource:?}"),
        )
    }

    /// 403 from the authorizer, worded as upstream's: `pods is forbidden: User "alice"
    /// cannot list resource "pods" in API group "" in the namespace "default"`.
    pub fn unauthorized_action(
        resource: &str,
        group: &str,
        name: Option<&str>,
        user: &str,
        action: &str,
    ) -> ApiError {
        let what = match name {
            Some(n) => format!("{} \"{n}\"", qualified(resource, group)),
            None => qualified(resource, group),
        };
        ApiError {
            details: Some(details(name.unwrap_or(""), group, resource)),
            ..ApiError::new(
                403,
                "Forbidden",
                format!("{what} is forbidden: User \"{user}\" cannot {action}"),
            )
        }
    }

    /// 403 for a path outside the API's resources.
    pub fn forbidden_path(user: &str, action: &str) -> ApiError {
        ApiError::new(
            403,
            "Forbidden",
            format!("forbidden: User \"{user}\" cannot {action}"),
        )
    }

    pub fn forbidden(resource: &str, group: &str, name: &str, why: &str) -> ApiError {
        ApiError {
            details: Some(details(name, group, resource)),
            ..ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} \"{name}\" is forbidden: {why}",
                    qualified(resource, group)
                ),
            )
        }
    }

    /// 422 Invalid with one cause per field problem; `causes` are (field, type, message),
    /// e.g. ("metadata.name", "FieldValueRequired", "Required value").
    pub fn invalid(
        kind: &str,
        group: &str,
        name: &str,
        causes: Vec<(String, &'static str, String)>,
    ) -> ApiError {
        let summary: Vec<String> = causes.iter().map(|(f, _, m)| format!("{f}: {m}")).collect();
        let what = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let message = match summary.len() {
            1 => format!("{what} \"{name}\" is invalid: {}", summary[0]),
            _ => format!("{what} \"{name}\" is invalid: [{}]", summary.join(", ")),
        };
        let causes: Vec<Value> = causes
            .into_iter()
            .map(|(field, reason, message)| json!({ "reason": reason, "message": message, "field": field }))
            .collect();
        let mut d = details(name, group, kind);
        d["causes"] = json!(causes);
        ApiError {
            details: Some(d),
            ..ApiError::new(422, "Invalid", message)
        }
    }

    /// A patch that could not be applied to the object.
    pub fn invalid_patch(message: impl Into<String>) -> ApiError {
        ApiError::new(422, "Invalid", message)
    }

    /// 429: the request may succeed later (an eviction a disruption budget forbids now);
    /// `causes` are (reason, message) pairs.
    pub fn too_many_requests(message: impl Into<String>, causes: Vec<(&str, String)>) -> ApiError {
        let causes: Vec<Value> = causes
            .into_iter()
            .map(|(reason, message)| json!({ "reason": reason, "message": message }))
            .collect();
        ApiError {
            details: Some(json!({ "causes": causes })),
            ..ApiError::new(429, "TooManyRequests", message)
        }
    }

    pub fn service_unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    pub fn timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(504, "Timeout", message)
    }

    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// Store failures seen while serving `resource`/`name`.
pub fn from_store(err: store::StoreError, resource: &str, group: &str, name: &str) -> ApiError {
    use store::StoreError as E;
    match err {
        E::AlreadyExists { .. } => ApiError::already_exists(resource, group, name),
        E::NotFound { .. } => ApiError::not_found(resource, group, name),
        E::Conflict { .. } => ApiError::conflict(resource, group, name),
        E::Compacted {
            requested,
            compacted,
        } => ApiError::gone(format!(
            "too old resource version: {requested} ({compacted})"
        )),
        E::FutureRevision { requested, current } => ApiError::timeout(format!(
            "Too large resource version: {requested}, current: {current}"
        )),
        E::TooLarge { size, limit, .. } => ApiError::too_large(format!(
            "etcdserver: request is too large ({size} bytes, limit {limit})"
        )),
        // an undecryptable value: upstream's message, no "storage error" in front
        other @ E::Transform { .. } => ApiError::internal(other.to_string()),
        other => ApiError::internal(format!("storage error: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_follow_upstream() {
        assert_eq!(
            ApiError::not_found("pods", "", "x").message,
            "pods \"x\" not found"
        );
        assert_eq!(
            ApiError::not_found("deployments", "apps", "web").message,
            "deployments.apps \"web\" not found"
        );
        let inv = ApiError::invalid(
            "Pod",
            "",
            "p",
            vec![(
                "metadata.name".into(),
                "FieldValueRequired",
                "Required value".into(),
            )],
        );
        assert_eq!(
            inv.message,
            "Pod \"p\" is invalid: metadata.name: Required value"
        );
        assert_eq!(inv.code, 422);
        let inv = ApiError::invalid(
            "Deployment",
            "apps",
            "d",
            vec![("spec".into(), "FieldValueRequired", "Required value".into())],
        );
        assert_eq!(
            inv.message,
            "Deployment.apps \"d\" is invalid: spec: Required value"
        );
        let s = ApiError::conflict("pods", "", "x").to_status();
        assert_eq!(s["reason"], "Conflict");
        assert_eq!(s["code"], 409);
        assert_eq!(s["details"]["kind"], "pods");
    }
}
