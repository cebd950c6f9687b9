//! Protobuf messages → Go's JSON form of the same Kubernetes types.
//!
//! gogo's marshaller writes every non-pointer field, so "set" can't be told from "zero" for
//! numbers, bools and structs: those are kept (`replicas: 0`, `emptyDir: {}` mean something),
//! except the plain Go fields upstream's JSON omits when zero ([`OMITTED_ZEROS`]).
//! Empty singular strings are dropped instead, because an empty Go string field means unset
//! and JSON clients omit it. A handful of types have their own JSON form (below).

use std::collections::HashMap;

use base64::Engine;
use serde_json::{Map, Number, Value};

use super::wire::{Reader, FIXED64, LEN, VARINT};
use super::{Field, Kind, Label, ProtobufError, Schema};

/// Nesting deeper than any real object, checked so a hostile body can't exhaust the stack.
const MAX_DEPTH: usize = 64;

const QUANTITY: &str = "apimachinery.pkg.api.resource.Quantity";
const QUANTITY_VALUE: &str = "apimachinery.pkg.api.resource.QuantityValue";
const TIME: &str = "apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "apimachinery.pkg.apis.meta.v1.FieldsV1";
const INT_OR_STRING: &str = "apimachinery.pkg.util.intstr.IntOrString";
const RAW_EXTENSION: &str = "apimachinery.pkg.runtime.RawExtension";
/// Go named slices (`type ExtraValue []string`) that protobuf wraps as {1 items}.
const ITEM_LISTS: &[&str] = &[
    "api.authentication.v1.ExtraValue",
    "api.authorization.v1.ExtraValue",
    "api.certificates.v1.ExtraValue",
    "apimachinery.pkg.apis.meta.v1.Verbs",
];

/// Go fields that are plain (not pointer) bools and numbers tagged `omitempty`: gogo writes
/// them even when zero, and upstream's JSON leaves a zero out, so a zero is dropped here.
/// Without it a `kubectl create deployment` stored `stdin: false`, `hostIPC: false`,
/// `generation: 0` (in the template) and `hostPort: 0`, which showed in `-o yaml` and made the
/// Deployment controller see `kubectl rollout undo`'s template (typed, zeros omitted) as
/// new. Pointer fields (`automountServiceAccountToken`, `runAsUser`, `replicas`, ...) are not
/// listed: their zero is a value.
const OMITTED_ZEROS: &[(&str, &[&str])] = &[
    ("apimachinery.pkg.apis.meta.v1.ObjectMeta", &["generation"]),
    (
        "api.core.v1.PodSpec",
        &["hostNetwork", "hostPID", "hostIPC"],
    ),
    ("api.core.v1.Container", &["stdin", "stdinOnce", "tty"]),
    (
        "api.core.v1.EphemeralContainerCommon",
        &["stdin", "stdinOnce", "tty"],
    ),
    ("api.core.v1.VolumeMount", &["readOnly"]),
    ("api.core.v1.ContainerPort", &["hostPort"]),
    ("api.core.v1.ServicePort", &["nodePort"]),
    (
        "api.core.v1.ServiceSpec",
        &["publishNotReadyAddresses", "healthCheckNodePort"],
    ),
    (
        "api.core.v1.Probe",
        &[
            "initialDelaySeconds",
            "timeoutSeconds",
            "periodSeconds",
            "successThreshold",
            "failureThreshold",
        ],
    ),
    (
        "api.core.v1.PersistentVolumeClaimVolumeSource",
        &["readOnly"],
    ),
    ("api.core.v1.NodeSpec", &["unschedulable"]),
    ("api.apps.v1.DeploymentSpec", &["minReadySeconds", "paused"]),
    ("api.apps.v1.ReplicaSetSpec", &["minReadySeconds"]),
    ("api.apps.v1.DaemonSetSpec", &["minReadySeconds"]),
    ("api.apps.v1.StatefulSetSpec", &["minReadySeconds"]),
    ("api.networking.v1.ServiceBackendPort", &["number"]),
];

fn omitted_zero(message: &str, field: &str, v: &Value) -> bool {
    let zero = match v {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        _ => false,
    };
    zero && OMITTED_ZEROS
        .iter()
        .any(|(m, fields)| *m == message && fields.contains(&field))
}

/// Decode a message into a JSON object; `depth` counts the messages around it.
pub fn object(
    schema: &Schema,
    message: &str,
    bytes: &[u8],
    depth: usize,
) -> Result<Map<String, Value>, ProtobufError> {
    if depth > MAX_DEPTH {
        return Err(ProtobufError::Invalid {
            what: "message",
            context: message.to_string(),
            reason: format!("nested more than {MAX_DEPTH} levels deep"),
        });
    }
    let Some(msg) = schema.messages.get(message) else {
        return Err(ProtobufError::Schema {
            reason: format!("no message {message}"),
        });
    };
    let mut out = Map::new();
    // Repeated and map fields accumulate across records; they join `out` at the end.
    let mut lists: HashMap<&str, Vec<Value>> = HashMap::new();
    let mut maps: HashMap<&str, Map<String, Value>> = HashMap::new();
    let mut r = Reader::new(bytes, message);
    while !r.is_empty() {
        let (tag, wt) = r.key()?;
        let Some(field) = msg.fields.get(&tag) else {
            r.skip(wt, tag)?;
            continue;
        };
        let ctx = || {
            let name = field.json.as_deref().unwrap_or("(inline)");
            format!("field {name} ({tag}) of {message}")
        };
        let name = field.json.as_deref().unwrap_or_default();
        match field.label {
            Label::Single => match (one(schema, field, &mut r, wt, depth, &ctx)?, &field.json) {
                // Go-embedded struct: its fields belong to this object.
                (Some(Value::Object(inner)), None) => out.extend(inner),
                (Some(v), Some(_)) if !omitted_zero(message, name, &v) => {
                    out.insert(name.to_string(), v);
                }
                _ => {
                    out.remove(name);
                }
            },
            Label::Repeated => {
                let list = lists.entry(name).or_default();
                let numeric = matches!(
                    field.kind,
                    Kind::Bool | Kind::Int32 | Kind::Int64 | Kind::Double
                );
                if wt == LEN && numeric {
                    // Packed: one record holding every element.
                    let packed = r
                        .len_delimited("packed list")
                        .map_err(|e| within(e, ctx()))?;
                    let context = ctx();
                    let mut p = Reader::new(packed, &context);
                    let element_wt = if field.kind == Kind::Double {
                        FIXED64
                    } else {
                        VARINT
                    };
                    while !p.is_empty() {
                        list.extend(one(schema, field, &mut p, element_wt, depth, &ctx)?);
                    }
                } else {
                    let v = one(schema, field, &mut r, wt, depth, &ctx)?;
                    list.push(v.unwrap_or(Value::Null));
                }
            }
            Label::Map => {
                let (key, value) = map_entry(schema, field, &mut r, wt, depth, &ctx)?;
                maps.entry(name).or_default().insert(key, value);
            }
        }
    }
    for (name, list) in lists {
        out.insert(name.to_string(), Value::Array(list));
    }
    for (name, map) in maps {
        out.insert(name.to_string(), Value::Object(map));
    }
    Ok(out)
}

/// One value of a field's kind. `None` means "leave the field out".
fn one(
    schema: &Schema,
    field: &Field,
    r: &mut Reader<'_>,
    wt: u8,
    depth: usize,
    ctx: &dyn Fn() -> String,
) -> Result<Option<Value>, ProtobufError> {
    let expected = match field.kind {
        Kind::Bool | Kind::Int32 | Kind::Int64 => VARINT,
        Kind::Double => FIXED64,
        Kind::String | Kind::Bytes | Kind::Message(_) => LEN,
    };
    if wt != expected {
        return Err(ProtobufError::WrongWireType {
            context: ctx(),
            expected,
            found: wt,
        });
    }
    let keep_empty = field.label != Label::Single;
    let value = match &field.kind {
        Kind::Bool => Value::Bool(r.varint("bool").map_err(|e| within(e, ctx()))? != 0),
        // int32 travels as a sign-extended 64-bit varint: truncation restores negatives.
        Kind::Int32 => Value::from(r.varint("int32").map_err(|e| within(e, ctx()))? as i32),
        Kind::Int64 => Value::from(r.varint("int64").map_err(|e| within(e, ctx()))? as i64),
        Kind::Double => {
            let bits = r.fixed64("double").map_err(|e| within(e, ctx()))?;
            Number::from_f64(f64::from_bits(bits)).map_or(Value::Null, Value::Number)
        }
        Kind::String => {
            let s = r.string("string").map_err(|e| within(e, ctx()))?;
            if s.is_empty() && !keep_empty {
                return Ok(None);
            }
            Value::String(s)
        }
        Kind::Bytes => {
            let b = r.len_delimited("bytes").map_err(|e| within(e, ctx()))?;
            if b.is_empty() && !keep_empty {
                return Ok(None);
            }
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Kind::Message(name) => {
            let bytes = r.len_delimited("message").map_err(|e| within(e, ctx()))?;
            return message_value(schema, name, bytes, depth + 1);
        }
    };
    Ok(Some(value))
}

/// A map entry {1 key, 2 value}; absent parts take their zero value.
fn map_entry(
    schema: &Schema,
    field: &Field,
    r: &mut Reader<'_>,
    wt: u8,
    depth: usize,
    ctx: &dyn Fn() -> String,
) -> Result<(String, Value), ProtobufError> {
    if wt != LEN {
        return Err(ProtobufError::WrongWireType {
            context: ctx(),
            expected: LEN,
            found: wt,
        });
    }
    let entry = r.len_delimited("map entry").map_err(|e| within(e, ctx()))?;
    let context = ctx();
    let mut e = Reader::new(entry, &context);
    let (mut key, mut value) = (String::new(), None);
    while !e.is_empty() {
        match e.key()? {
            (1, LEN) => key = e.string("map key")?,
            (1, found) => {
                return Err(ProtobufError::WrongWireType {
                    context: format!("map key of {context}"),
                    expected: LEN,
                    found,
                })
            }
            (2, wt) => value = Some(one(schema, field, &mut e, wt, depth, ctx)?),
            (tag, wt) => e.skip(wt, tag)?,
        }
    }
    let value = match (value, &field.kind) {
        (Some(v), _) => v,
        (None, Kind::Message(name)) => message_value(schema, name, &[], depth + 1)?,
        (None, kind) => Some(zero(kind)),
    };
    Ok((key, value.unwrap_or(Value::Null)))
}

/// What an absent scalar map value means (protobuf omits zero values inside map entries).
fn zero(kind: &Kind) -> Value {
    match kind {
        Kind::String | Kind::Bytes => Value::String(String::new()),
        Kind::Bool => Value::Bool(false),
        Kind::Int32 | Kind::Int64 | Kind::Double => Value::from(0),
        Kind::Message(_) => Value::Null, // map_entry decodes an empty message instead
    }
}

/// A message's JSON value, including the types whose JSON form is not an object.
fn message_value(
    schema: &Schema,
    name: &str,
    bytes: &[u8],
    depth: usize,
) -> Result<Option<Value>, ProtobufError> {
    let special = |f: fn(Scalars<'_>, &str, usize) -> Result<Option<Value>, ProtobufError>| {
        f(Scalars::read(bytes, name)?, name, depth)
    };
    match name {
        QUANTITY | QUANTITY_VALUE => special(|s, _, _| Ok(s.string(1)?.map(Value::String))),
        TIME => special(|s, _, _| s.timestamp(false)),
        MICRO_TIME => special(|s, _, _| s.timestamp(true)),
        DURATION => special(|s, _, _| Ok(Some(Value::String(go_duration(s.int(1)))))),
        INT_OR_STRING => special(|s, _, _| {
            // type 1 is String; anything else (0, or absent) is Int.
            Ok(Some(if s.int(1) == 1 {
                Value::String(s.string(3)?.unwrap_or_default())
            } else {
                Value::from(s.int(2) as i32)
            }))
        }),
        RAW_EXTENSION | FIELDS_V1 => special(raw_json),
        n if ITEM_LISTS.contains(&n) => {
            let mut items = object(schema, name, bytes, depth)?;
            Ok(Some(
                items.remove("items").unwrap_or(Value::Array(Vec::new())),
            ))
        }
        _ => object(schema, name, bytes, depth).map(|o| Some(Value::Object(o))),
    }
}

/// `RawExtension.raw` / `FieldsV1.Raw`: embedded JSON, or (for an object a protobuf client
/// embedded) another `k8s\0` body.
fn raw_json(s: Scalars<'_>, name: &str, depth: usize) -> Result<Option<Value>, ProtobufError> {
    let Some(raw) = s.bytes(1) else {
        return Ok(None);
    };
    if raw.starts_with(super::MAGIC) {
        return super::decode_nested(raw, depth + 1).map(Some);
    }
    serde_json::from_slice(raw)
        .map(Some)
        .map_err(|e| ProtobufError::Invalid {
            what: "embedded JSON",
            context: name.to_string(),
            reason: e.to_string(),
        })
}

/// The fields of a small fixed-layout message, by tag (last occurrence wins).
struct Scalars<'a> {
    fields: Vec<(u32, Scalar<'a>)>,
    context: &'a str,
}

enum Scalar<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

impl<'a> Scalars<'a> {
    fn read(bytes: &'a [u8], context: &'a str) -> Result<Self, ProtobufError> {
        let mut r = Reader::new(bytes, context);
        let mut fields = Vec::new();
        while !r.is_empty() {
            match r.key()? {
                (tag, VARINT) => fields.push((tag, Scalar::Int(r.varint("varint")?))),
                (tag, LEN) => fields.push((tag, Scalar::Bytes(r.len_delimited("bytes")?))),
                (tag, wt) => r.skip(wt, tag)?,
            }
        }
        Ok(Scalars { fields, context })
    }

    fn int(&self, tag: u32) -> i64 {
        self.fields
            .iter()
            .rev()
            .find_map(|(t, v)| match v {
                Scalar::Int(i) if *t == tag => Some(*i as i64),
                _ => None,
            })
            .unwrap_or(0)
    }

    fn bytes(&self, tag: u32) -> Option<&'a [u8]> {
        self.fields.iter().rev().find_map(|(t, v)| match v {
            Scalar::Bytes(b) if *t == tag && !b.is_empty() => Some(*b),
            _ => None,
        })
    }

    fn string(&self, tag: u32) -> Result<Option<String>, ProtobufError> {
        self.bytes(tag)
            .map(|b| {
                String::from_utf8(b.to_vec()).map_err(|e| ProtobufError::Invalid {
                    what: "string",
                    context: self.context.to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// meta.v1 Time / MicroTime {1 seconds, 2 nanos}: RFC 3339 in UTC, whole seconds for
    /// Time and microseconds for MicroTime (Go truncates). The zero time is left out: Go
    /// writes a non-pointer Time even when unset.
    fn timestamp(&self, micros: bool) -> Result<Option<Value>, ProtobufError> {
        let (seconds, nanos) = (self.int(1), self.int(2));
        if seconds == 0 && nanos == 0 {
            return Ok(None);
        }
        let ts = i32::try_from(nanos)
            .ok()
            .filter(|n| (0..1_000_000_000).contains(n))
            .and_then(|n| jiff::Timestamp::new(seconds, n).ok())
            .ok_or_else(|| ProtobufError::Invalid {
                what: "timestamp",
                context: self.context.to_string(),
                reason: format!("{seconds}s {nanos}ns is out of range"),
            })?;
        let base = ts.strftime("%Y-%m-%dT%H:%M:%S");
        Ok(Some(Value::String(if micros {
            format!("{base}.{:06}Z", ts.subsec_nanosecond() / 1000)
        } else {
            format!("{base}Z")
        })))
    }
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `1.5s`, `100ms`, `0s`.
pub fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    let body = if u < 1_000_000_000 {
        let (unit, scale, digits) = match u {
            0..1_000 => ("ns", 1, 0),
            1_000..1_000_000 => ("µs", 1_000, 3),
            _ => ("ms", 1_000_000, 6),
        };
        format!("{}{}{unit}", u / scale, fraction(u % scale, digits))
    } else {
        let secs = u / 1_000_000_000;
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        let frac = fraction(u % 1_000_000_000, 9);
        match (h, m) {
            (0, 0) => format!("{s}{frac}s"),
            (0, m) => format!("{m}m{s}{frac}s"),
            (h, m) => format!("{h}h{m}m{s}{frac}s"),
        }
    };
    format!("{sign}{body}")
}

/// `.5`, `.25`, or nothing: a fraction of `digits` digits without trailing zeros.
pub fn fraction(value: u64, digits: usize) -> String {
    if value == 0 || digits == 0 {
        return String::new();
    }
    let s = format!("{value:0digits$}");
    format!(".{}", s.trim_end_matches('0'))
}

/// Say which field a reader error happened in.
fn within(e: ProtobufError, context: String) -> ProtobufError {
    match e {
        ProtobufError::Truncated { what, .. } => ProtobufError::Truncated { what, context },
        ProtobufError::Invalid { what, reason, .. } => ProtobufError::Invalid {
            what,
            context,
            reason,
        },
        other => other,
    }
}
