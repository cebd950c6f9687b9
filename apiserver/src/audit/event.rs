//! `audit.k8s.io/v1` Event, as upstream serializes it (one JSON object per line), and
//! upstream's `legacy` one-line text form.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::policy::{Level, Stage};
use super::Format;

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl From<&crate::auth::UserInfo> for UserInfo {
    fn from(u: &crate::auth::UserInfo) -> Self {
        UserInfo {
            username: u.name.clone(),
            uid: u.uid.clone(),
            groups: u.groups.clone(),
            extra: u.extra.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

/// The part of the request every stage's event shares.
#[derive(Debug)]
pub struct Common {
    pub level: Level,
    pub audit_id: String,
    pub request_uri: String,
    pub verb: String,
    pub user: UserInfo,
    pub impersonated_user: Option<UserInfo>,
    pub source_ips: Vec<String>,
    pub user_agent: String,
    pub object_ref: Option<ObjectRef>,
    pub received: jiff::Timestamp,
}

/// One stage's event. The request's shared part is reference-counted: a watch's three
/// events do not copy it.
#[derive(Debug)]
pub struct Event {
    pub audit_id: String,
    pub common: Arc<Common>,
    pub stage: Stage,
    pub stage_time: jiff::Timestamp,
    pub response_status: Option<Value>,
    pub request_object: Option<Arc<Value>>,
    pub response_object: Option<Value>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    kind: &'static str,
    api_version: &'static str,
    level: Level,
    #[serde(rename = "auditID")]
    audit_id: &'a str,
    stage: &'static str,
    #[serde(rename = "requestURI")]
    request_uri: &'a str,
    verb: &'a str,
    user: &'a UserInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    impersonated_user: Option<&'a UserInfo>,
    #[serde(rename = "sourceIPs")]
    source_ips: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    user_agent: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_ref: Option<&'a ObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_status: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_object: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_object: Option<&'a Value>,
    request_received_timestamp: String,
    stage_timestamp: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

/// Upstream's timestamps: RFC 3339 with microseconds, UTC.
fn micro(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

impl Event {
    /// The line the log backend writes, newline included.
    pub fn line(&self, format: Format) -> Vec<u8> {
        match format {
            Format::Json => {
                let mut out = serde_json::to_vec(&self.json()).unwrap_or_default();
                out.push(b'\n');
                out
            }
            Format::Legacy => {
                let mut s = self.legacy();
                s.push('\n');
                s.into_bytes()
            }
        }
    }

    /// The event's JSON, no newline (an EventList item).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json()).unwrap_or_default()
    }

    /// Upstream's truncated event: without the request and response objects, annotated
    /// `audit.k8s.io/truncated: "true"`.
    pub fn to_json_truncated(&self) -> Vec<u8> {
        let mut annotations = self.annotations.clone();
        annotations.insert("audit.k8s.io/truncated".into(), "true".into());
        let mut w = self.json();
        w.request_object = None;
        w.response_object = None;
        w.annotations = &annotations;
        serde_json::to_vec(&w).unwrap_or_default()
    }

    /// The event as upstream writes it (its field order).
    fn json(&self) -> Wire<'_> {
        let c = &*self.common;
        Wire {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level: c.level,
            audit_id: &c.audit_id,
            stage: self.stage.as_str(),
            request_uri: &c.request_uri,
            verb: &c.verb,
            user: &c.user,
            impersonated_user: c.impersonated_user.as_ref(),
            source_ips: &c.source_ips,
            user_agent: &c.user_agent,
            object_ref: c.object_ref.as_ref(),
            response_status: self.response_status.as_ref(),
            request_object: self.request_object.as_deref(),
            response_object: self.response_object.as_ref(),
            request_received_timestamp: micro(c.received),
            stage_timestamp: micro(self.stage_time),
            annotations: &self.annotations,
        }
    }

    /// Upstream's `EventString`.
    fn legacy(&self) -> String {
        let c = &*self.common;
        let quoted = |v: &[String]| {
            v.iter()
                .map(|g| format!("{g:?}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let (user, groups) = if c.user.username.is_empty() {
            ("<none>".to_string(), "<none>".to_string())
        } else if c.user.groups.is_empty() {
            (c.user.username.clone(), "<none>".to_string())
        } else {
            (c.user.username.clone(), quoted(&c.user.groups))
        };
        let (as_user, as_groups) = match &c.impersonated_user {
            Some(u) => (u.username.clone(), quoted(&u.groups)),
            None => ("<self>".to_string(), "<lookup>".to_string()),
        };
        let namespace = c
            .object_ref
            .as_ref()
            .map(|r| r.namespace.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or("<none>");
        let response = self
            .response_status
            .as_ref()
            .and_then(|s| s.get("code"))
            .map(|c| c.to_string())
            .unwrap_or_else(|| "<deferred>".into());
        let ip = c
            .source_ips
            .first()
            .map(String::as_str)
            .unwrap_or("<unknown>");
        format!(
            "{} AUDIT: id={:?} stage={:?} ip={ip:?} method={:?} user={user:?} groups={groups:?} as={as_user:?} asgroups={as_groups:?} user-agent={:?} namespace={namespace:?} uri={:?} response=\"{response}\"",
            c.received,
            c.audit_id,
            self.stage.as_str(),
            c.verb,
            c.user_agent,
            c.request_uri,
        )
    }
}

impl Serialize for Level {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        let t: jiff::Timestamp = "2026-11-26T20:31:02.123456789Z".parse().unwrap();
        Event {
            audit_id: "id-1".into(),
            common: Arc::new(Common {
                level: Level::Metadata,
                audit_id: "id-1".into(),
                request_uri: "/api/v1/namespaces/a/secrets/s".into(),
                verb: "get".into(),
                user: UserInfo {
                    username: "alice".into(),
                    uid: String::new(),
                    groups: vec!["devs".into(), "system:authenticated".into()],
                    extra: Default::default(),
                },
                impersonated_user: None,
                source_ips: vec!["127.0.0.1".into()],
                user_agent: "kubectl/v1.37.0".into(),
                object_ref: Some(ObjectRef {
                    resource: "secrets".into(),
                    namespace: "a".into(),
                    name: "s".into(),
                    api_version: "v1".into(),
                    ..Default::default()
                }),
                received: t,
            }),
            stage: Stage::ResponseComplete,
            stage_time: t,
            response_status: Some(serde_json::json!({"metadata": {}, "code": 200})),
            request_object: None,
            response_object: None,
            annotations: [("authorization.k8s.io/decision".into(), "allow".into())].into(),
        }
    }

    #[test]
    fn json_lines_are_upstreams_event() {
        let line = event().line(Format::Json);
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["kind"], "Event");
        assert_eq!(v["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(v["level"], "Metadata");
        assert_eq!(v["auditID"], "id-1");
        assert_eq!(v["stage"], "ResponseComplete");
        assert_eq!(v["sourceIPs"], serde_json::json!(["127.0.0.1"]));
        assert_eq!(
            v["objectRef"],
            serde_json::json!({"resource": "secrets", "namespace": "a", "name": "s", "apiVersion": "v1"})
        );
        assert_eq!(v["requestReceivedTimestamp"], "2026-11-26T20:31:02.123456Z");
        assert_eq!(v["stageTimestamp"], "2026-11-26T20:31:02.123456Z");
        assert!(v.get("requestObject").is_none());
        assert!(v.get("impersonatedUser").is_none());
        // upstream's field order
        let text = String::from_utf8(line).unwrap();
        assert!(
            text.starts_with(r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"id-1","stage":"ResponseComplete","requestURI":"#),
            "{text}"
        );
    }

    #[test]
    fn legacy_lines_are_upstreams_event_string() {
        let line = String::from_utf8(event().line(Format::Legacy)).unwrap();
        assert_eq!(
            line,
            "2026-11-26T20:31:02.123456789Z AUDIT: id=\"id-1\" stage=\"ResponseComplete\" ip=\"127.0.0.1\" method=\"get\" user=\"alice\" groups=\"\\\"devs\\\",\\\"system:authenticated\\\"\" as=\"<self>\" asgroups=\"<lookup>\" user-agent=\"kubectl/v1.37.0\" namespace=\"a\" uri=\"/api/v1/namespaces/a/secrets/s\" response=\"200\"\n"
        );
    }
}
