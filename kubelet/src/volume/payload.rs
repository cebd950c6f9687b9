//! What a configMap, secret, downwardAPI or projected volume contains: a map from relative
//! path to bytes and mode, computed as upstream's `MakePayload`/`CollectData` do. Pure
//! functions of the pod and the objects, unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod};

use crate::pod::spec::parse_quantity;

/// Mode of volume files when neither the item nor `defaultMode` gives one (the API's
/// default for `defaultMode`).
pub const DEFAULT_MODE: u32 = 0o644;

/// One file of a volume payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Relative path -> file. Paths are validated by [`validate_path`] before writing.
pub type Payload = BTreeMap<String, FileProjection>;

/// Why a payload cannot be built (the message after `MountVolume.SetUp failed ... :`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// A non-optional ConfigMap/Secret is absent (`configmap "x" not found`).
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// An `items` key the object does not have, for a non-optional source.
    #[error("{}", missing_key_message(kind, key))]
    MissingKey { kind: &'static str, key: String },
    #[error("invalid path {path:?}: {reason}")]
    Path { path: String, reason: &'static str },
    #[error("unable to extract field {field}: {reason}")]
    Field { field: String, reason: String },
}

fn missing_key_message(kind: &str, key: &str) -> String {
    match kind {
        "secret" => format!("references non-existent secret key: {key}"),
        _ => format!("configmap references non-existent config key: {key}"),
    }
}

/// Upstream's payload path rules: relative, not empty, no `..` element, no leading `..`.
pub fn validate_path(path: &str) -> Result<(), PayloadError> {
    let bad = |reason| {
        Err(PayloadError::Path {
            path: path.into(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("must not be empty");
    }
    if path.starts_with('/') {
        return bad("must be relative");
    }
    if path.len() > 4096 {
        return bad("must be less than or equal to 4096 characters");
    }
    if path.split('/').any(|e| e == "..") {
        return bad("must not contain '..'");
    }
    if path.starts_with("..") {
        return bad("must not start with '..'");
    }
    Ok(())
}

/// A ConfigMap's or Secret's keys as a payload. `data` is None when the object does not
/// exist; `items` (when given) pick keys and name their paths; item modes override
/// `default_mode`. A missing object or key is an error unless `optional`.
pub fn keys_payload(
    kind: &'static str,
    name: &str,
    data: Option<&BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
) -> Result<Payload, PayloadError> {
    let Some(data) = data else {
        return if optional {
            Ok(Payload::new())
        } else {
            Err(PayloadError::NotFound {
                kind,
                name: name.into(),
            })
        };
    };
    let mut out = Payload::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                out.insert(
                    k.clone(),
                    FileProjection {
                        data: v.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                let Some(v) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(PayloadError::MissingKey {
                        kind,
                        key: item.key.clone(),
                    });
                };
                out.insert(
                    item.path.clone(),
                    FileProjection {
                        data: v.clone(),
                        mode: item.mode.map_or(default_mode, mode_bits),
                    },
                );
            }
        }
    }
    for path in out.keys() {
        validate_path(path)?;
    }
    Ok(out)
}

/// An API mode (`int32`, e.g. 0400 written as 256) as permission bits.
pub fn mode_bits(mode: i32) -> u32 {
    (mode as u32) & 0o7777
}

/// Upstream's `fieldpath.FormatMap`: sorted `key="value"` lines, values quoted as Go's %q.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `strconv.Quote` for the characters labels and annotations contain in practice.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A downward-API `fieldRef` as a volume file's content (upstream's
/// `ExtractFieldPathAsString`: the fields a volume may carry).
pub fn field_value(pod: &Pod, path: &str) -> Result<String, PayloadError> {
    let m = &pod.metadata;
    let unsupported = || PayloadError::Field {
        field: path.into(),
        reason: "unsupported fieldPath".into(),
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(m.labels.as_ref()),
        "metadata.annotations" => format_map(m.annotations.as_ref()),
        _ => {
            let (kind, key) = path.split_once('[').ok_or_else(unsupported)?;
            let key = key
                .strip_suffix(']')
                .ok_or_else(unsupported)?
                .trim_matches('\'')
                .trim_matches('"');
            let map = match kind {
                "metadata.labels" => m.labels.as_ref(),
                "metadata.annotations" => m.annotations.as_ref(),
                _ => return Err(unsupported()),
            };
            map.and_then(|l| l.get(key)).cloned().unwrap_or_default()
        }
    })
}

/// The node's allocatable resources, the value of an unset limit (as upstream merges node
/// allocatable into container limits for the downward API).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Allocatable {
    pub cpu_cores: f64,
    pub memory_bytes: f64,
    pub ephemeral_storage_bytes: f64,
}

/// A `resourceFieldRef` value: the container's limit or request divided by `divisor`
/// (default 1) and rounded up, as upstream's `ExtractContainerResourceValue`.
pub fn resource_value(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    node: &Allocatable,
) -> Result<String, PayloadError> {
    let err = |reason: String| PayloadError::Field {
        field: resource.into(),
        reason,
    };
    let divisor = match divisor.filter(|d| !d.is_empty()) {
        None => 1.0,
        Some(d) => parse_quantity(d)
            .filter(|v| *v > 0.0)
            .ok_or_else(|| err(format!("invalid divisor {d:?}")))?,
    };
    let r = c.resources.as_ref();
    let get = |map: Option<
        &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
               key: &str|
     -> Result<Option<f64>, PayloadError> {
        match map.and_then(|m| m.get(key)) {
            None => Ok(None),
            Some(q) => parse_quantity(&q.0)
                .map(Some)
                .ok_or_else(|| err(format!("cannot parse quantity {:?}", q.0))),
        }
    };
    let limits = r.and_then(|r| r.limits.as_ref());
    let requests = r.and_then(|r| r.requests.as_ref());
    let (value, is_cpu) = match resource {
        "limits.cpu" => (get(limits, "cpu")?.unwrap_or(node.cpu_cores), true),
        "limits.memory" => (get(limits, "memory")?.unwrap_or(node.memory_bytes), false),
        "limits.ephemeral-storage" => (
            get(limits, "ephemeral-storage")?.unwrap_or(node.ephemeral_storage_bytes),
            false,
        ),
        // An unset request defaults to the limit (API defaulting), else 0.
        "requests.cpu" => (
            get(requests, "cpu")?.or(get(limits, "cpu")?).unwrap_or(0.0),
            true,
        ),
        "requests.memory" => (
            get(requests, "memory")?
                .or(get(limits, "memory")?)
                .unwrap_or(0.0),
            false,
        ),
        "requests.ephemeral-storage" => (
            get(requests, "ephemeral-storage")?
                .or(get(limits, "ephemeral-storage")?)
                .unwrap_or(0.0),
            false,
        ),
        other => return Err(err(format!("unsupported container resource : {other}"))),
    };
    // CPU is compared in millicores, the rest in base units, as upstream.
    let scaled = if is_cpu {
        ((value * 1000.0).round() / (divisor * 1000.0).round()).ceil()
    } else {
        (value.round() / divisor).ceil()
    };
    Ok(format!("{}", scaled as i64))
}

/// The container or init container of `pod` named `name` (the first one for `""`), whose
/// resources a `resourceFieldRef` reads.
pub fn container_named<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    pod.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == name || name.is_empty())
}

/// A downwardAPI volume's (or projection's) files.
pub fn downward_payload(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    node: &Allocatable,
) -> Result<Payload, PayloadError> {
    let mut out = Payload::new();
    for item in items {
        validate_path(&item.path)?;
        let data = if let Some(f) = &item.field_ref {
            field_value(pod, &f.field_path)?
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or_default();
            let c = container_named(pod, name).ok_or_else(|| PayloadError::Field {
                field: r.resource.clone(),
                reason: format!("container {name:?} not found"),
            })?;
            resource_value(
                c,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
                node,
            )?
        } else {
            String::new()
        };
        out.insert(
            item.path.trim_end_matches('/').to_string(),
            FileProjection {
                data: data.into_bytes(),
                mode: item.mode.map_or(default_mode, mode_bits),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
