//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), decoded into
//! the same JSON value a JSON body would give, so the handlers stay JSON-only.
//!
//! client-go's typed clients (kubectl `create <generator>`, `scale`, `drain`) send protobuf.
//! The body is the magic `k8s\0` followed by a `runtime.Unknown` envelope naming the
//! apiVersion and kind and carrying the object as its own protobuf message. The messages'
//! layout comes from `schema.json`, generated from the upstream protos by
//! `cargo xtask gen-proto-schema` (xtask/src/protoschema.rs); `json` turns messages into
//! Go's JSON form.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

mod json;
pub(crate) mod wire;

pub(crate) use json::{fraction, go_duration};

#[cfg(test)]
mod tests;

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The 4-byte prefix of every Kubernetes protobuf body.
const MAGIC: &[u8; 4] = b"k8s\0";

/// The package of meta.k8s.io/v1, whose option kinds (`DeleteOptions`, ...) client-go may
/// label with any group's version.
const META_V1: &str = "apimachinery.pkg.apis.meta.v1";

#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    #[error("decoding protobuf body: it does not start with the magic k8s\\0 (starts with {found:02x?})")]
    BadMagic { found: Vec<u8> },
    #[error("decoding protobuf body: unknown kind `{api_version} {kind}` (no protobuf schema for it: send JSON)")]
    UnknownKind { api_version: String, kind: String },
    #[error("decoding protobuf body: truncated {what} in {context}")]
    Truncated { what: &'static str, context: String },
    #[error("decoding protobuf body: wrong wire type {found} for {context} (expected {expected})")]
    WrongWireType {
        context: String,
        expected: u8,
        found: u8,
    },
    #[error("decoding protobuf body: invalid {what} in {context}: {reason}")]
    Invalid {
        what: &'static str,
        context: String,
        reason: String,
    },
    #[error("decoding protobuf body: content encoding {encoding:?} is not supported")]
    ContentEncoding { encoding: String },
    #[error("decoding protobuf body: the built-in protobuf schema is unreadable: {reason}")]
    Schema { reason: String },
}

/// Whether a Content-Type header names Kubernetes protobuf (parameters ignored).
pub fn is_protobuf(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(MEDIA_TYPE))
}

/// Decode a whole protobuf body (magic + `runtime.Unknown`) into the object's JSON form,
/// with `apiVersion` and `kind` set from the envelope.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    decode_nested(body, 0)
}

/// [`decode`] for a body found `depth` messages deep inside another (a `RawExtension`).
fn decode_nested(body: &[u8], depth: usize) -> Result<Value, ProtobufError> {
    let Some(envelope) = body.strip_prefix(MAGIC) else {
        return Err(ProtobufError::BadMagic {
            found: body.iter().take(4).copied().collect(),
        });
    };
    let unknown = wire::read_unknown(envelope)?;
    if !unknown.content_encoding.is_empty() {
        return Err(ProtobufError::ContentEncoding {
            encoding: unknown.content_encoding,
        });
    }
    let schema = schema()?;
    let message = message_for(schema, &unknown.api_version, &unknown.kind)?;
    let mut object = json::object(schema, message, unknown.raw, depth)?;
    object.insert("apiVersion".into(), Value::String(unknown.api_version));
    object.insert("kind".into(), Value::String(unknown.kind));
    Ok(Value::Object(object))
}

/// The message an apiVersion + kind is encoded as: group `apps` → package `api.apps.<v>`,
/// the core group (`v1`) → `api.core.v1`, `rbac.authorization.k8s.io` → `api.rbac.<v>`,
/// `apiregistration.k8s.io` → `kube_aggregator.pkg.apis.apiregistration.<v>`.
fn message_for<'s>(
    schema: &'s Schema,
    api_version: &str,
    kind: &str,
) -> Result<&'s str, ProtobufError> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group.split('.').next().unwrap_or_default() {
        "" => format!("api.core.{version}"),
        "apiregistration" => format!("kube_aggregator.pkg.apis.apiregistration.{version}"),
        "meta" => format!("apimachinery.pkg.apis.meta.{version}"),
        first => format!("api.{first}.{version}"),
    };
    [format!("{package}.{kind}"), format!("{META_V1}.{kind}")]
        .into_iter()
        .find_map(|name| {
            schema
                .messages
                .get_key_value(&name)
                .map(|(k, _)| k.as_str())
        })
        .filter(|_| !kind.is_empty() && !version.is_empty())
        .ok_or_else(|| ProtobufError::UnknownKind {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        })
}

// === schema ===

/// Every message by full name (`api.core.v1.ConfigMap`).
pub(crate) struct Schema {
    messages: HashMap<String, Message>,
}

pub(crate) struct Message {
    fields: HashMap<u32, Field>,
}

pub(crate) struct Field {
    /// The JSON name; `None` for a Go-embedded (inline) struct whose fields go in the parent.
    json: Option<String>,
    kind: Kind,
    label: Label,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    String,
    Bool,
    Int32,
    Int64,
    Double,
    Bytes,
    /// A message, by full name.
    Message(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Label {
    Single,
    Repeated,
    /// `map<string, kind>`, encoded as repeated {1 key, 2 value} entries.
    Map,
}

fn schema() -> Result<&'static Schema, ProtobufError> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| parse_schema(include_str!("schema.json")))
        .as_ref()
        .map_err(|reason| ProtobufError::Schema {
            reason: reason.clone(),
        })
}

/// Parse schema.json (format described in xtask/src/protoschema.rs).
fn parse_schema(text: &str) -> Result<Schema, String> {
    type Raw = HashMap<String, HashMap<String, Vec<String>>>;
    let raw: Raw = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut messages = HashMap::new();
    for (package, msgs) in raw {
        for (name, specs) in msgs {
            let mut fields = HashMap::with_capacity(specs.len());
            for spec in specs {
                let field = parse_field(&package, &spec)
                    .ok_or_else(|| format!("bad field {spec:?} in {package}.{name}"))?;
                fields.insert(field.0, field.1);
            }
            messages.insert(format!("{package}.{name}"), Message { fields });
        }
    }
    Ok(Schema { messages })
}

/// `"<tag> <jsonName> <type>"`, e.g. `"3 binaryData {y"` or `"1 ^ VolumeSource"`.
fn parse_field(package: &str, spec: &str) -> Option<(u32, Field)> {
    let mut parts = spec.split(' ');
    let tag = parts.next()?.parse().ok()?;
    let json = parts.next()?;
    let ty = parts.next()?;
    let (label, ty) = match ty.as_bytes().first()? {
        b'*' => (Label::Repeated, &ty[1..]),
        b'{' => (Label::Map, &ty[1..]),
        _ => (Label::Single, ty),
    };
    let kind = match ty {
        "s" => Kind::String,
        "b" => Kind::Bool,
        "i" => Kind::Int32,
        "l" => Kind::Int64,
        "d" => Kind::Double,
        "y" => Kind::Bytes,
        m if m.contains('.') => Kind::Message(m.to_string()),
        m => Kind::Message(format!("{package}.{m}")),
    };
    let json = (json != "^").then(|| json.to_string());
    Some((tag, Field { json, kind, label }))
}
