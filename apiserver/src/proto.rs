//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which client-go's typed
//! clients send — kubectl's `create namespace|configmap|secret|deployment|...` among them.
//! The envelope is upstream's: the magic `k8s\0`, then a `runtime.Unknown` holding the type
//! meta and the object's own message. Objects are turned into the same JSON the JSON path
//! sees, from a table of the messages those clients send; a field kaze does not know is a
//! clear 415 rather than a silently dropped value.

use base64::Engine;
use serde_json::{json, Map, Value};

/// How a field is encoded and shown in JSON.
#[derive(Debug, Clone, Copy)]
enum Ty {
    Str,
    /// Bytes, base64 in JSON.
    Bytes,
    /// A non-pointer integer: zero means unset.
    Int,
    /// A pointer integer: zero is a value (`replicas: 0`).
    IntP,
    Bool,
    BoolP,
    Msg(&'static str),
    MapStr,
    MapBytes,
    MapMsg(&'static str),
    Time,
    IntOrString,
    Quantity,
    /// Fields clients do not set on writes (status): skipped.
    Ignore,
}

use Ty::*;

/// (field number, JSON name, type, repeated)
type Field = (u32, &'static str, Ty, bool);

const R: bool = true;
const O: bool = false;

fn message(name: &str) -> Option<&'static [Field]> {
    Some(match name {
        "Unknown" => &[
            (1, "typeMeta", Msg("TypeMeta"), O),
            (2, "raw", Bytes, O),
            (3, "contentEncoding", Str, O),
            (4, "contentType", Str, O),
        ],
        "TypeMeta" => &[(1, "apiVersion", Str, O), (2, "kind", Str, O)],
        "ObjectMeta" => &[
            (1, "name", Str, O),
            (2, "generateName", Str, O),
            (3, "namespace", Str, O),
            (4, "selfLink", Str, O),
            (5, "uid", Str, O),
            (6, "resourceVersion", Str, O),
            (7, "generation", Int, O),
            (8, "creationTimestamp", Time, O),
            (9, "deletionTimestamp", Time, O),
            (10, "deletionGracePeriodSeconds", IntP, O),
            (11, "labels", MapStr, O),
            (12, "annotations", MapStr, O),
            (13, "ownerReferences", Msg("OwnerReference"), R),
            (14, "finalizers", Str, R),
            (17, "managedFields", Ignore, R),
        ],
        "OwnerReference" => &[
            (1, "kind", Str, O),
            (3, "name", Str, O),
            (4, "uid", Str, O),
            (5, "apiVersion", Str, O),
            (6, "controller", BoolP, O),
            (7, "blockOwnerDeletion", BoolP, O),
        ],
        "LabelSelector" => &[
            (1, "matchLabels", MapStr, O),
            (2, "matchExpressions", Msg("LabelSelectorRequirement"), R),
        ],
        "LabelSelectorRequirement" => &[
            (1, "key", Str, O),
            (2, "operator", Str, O),
            (3, "values", Str, R),
        ],
        "LocalObjectReference" => &[(1, "name", Str, O)],
        "ObjectReference" => &[
            (1, "kind", Str, O),
            (2, "namespace", Str, O),
            (3, "name", Str, O),
            (4, "uid", Str, O),
            (5, "apiVersion", Str, O),
            (6, "resourceVersion", Str, O),
            (7, "fieldPath", Str, O),
        ],
        "Namespace" => &[
            (1, "metadata", Msg("ObjectMeta"), O),
            (2, "spec", Msg("NamespaceSpec"), O),
            (3, "status", Ignore, O),
        ],
        "NamespaceSpec" => &[(1, "finalizers", Str, R)],
        "ConfigMap" => &[
            (1, "metadata", Msg("ObjectMeta"), O),
            (2, "data", MapStr, O),
            (3, "binaryData", MapBytes, O),
            (4, "immutable", BoolP, O),
        ],
        "Secret" => &[
            (1, "metadata", Msg("ObjectMeta"), O),
            (2, "data", MapBytes, O),
            (3, "type", Str, O),
            (4, "stringData", MapStr, O),
            (5, "immutable", BoolP, O),
        ],
        "ServiceAccount" => &[
            (1, "metadata", Msg("ObjectMeta"), O),
            (2, "secrets", Msg("ObjectReference"), R),
            (3, "imagePullSecrets", Msg("LocalObjectReference"), R),
            (4, "automountServiceAccountToken", BoolP, O),
        ],
        "Service" => &[
            (1, "metadata", Msg("ObjectMeta"), O),
            (2, "spec", Msg("ServiceSpec"), O),
            (3, "status", Ignore, O),
        ],
        "ServiceSpec" => &[
            (1, "ports", Msg("ServicePort"), R),
            (2, "selector", MapStr, O),
            (3, "clusterIP", Str, O),
            (4, "type", Str, O),
            (5, "externalIPs", Str, R),
            (7, "sessionAffinity", Str, O),
            (8, "loadBalancerIP", Str, O),
            (9, "loadBalancerSourceRanges", Str, R),
            (10, "externalName", Str, O),
            (11, "externalTrafficPolicy", Str, O),
            (12, "healthCheckNodePort", Int, O),
            (13, "publishNotReadyAddresses", Bool, O),
            (17, "ipFamilyPolicy", Str, O),
            (18, "clusterIPs", Str, R),
            (19, "ipFamilies", Str, R),
            (20, "allocateLoadBalancerNodePorts", BoolP, O),
            (21, "loadBalancerClass", Str, O),
            (22, "internalTrafficPolicy", Str, O),
            (23, "trafficDistribution", Str, O),
        ],
        "ServicePort" => &[
            (1, "name", Str, O),
            (2, "protocol", Str, O),
            (3, "port", Int, O),
            (4, "targetPort", IntOrString, O),
            (5, "nodePort", Int, O),
            (6, "appProtocol", Str, O),
        ],
        "Pod" => &[
            (1, "metadata", Msg("ObjectMeta"), O),
            (2, "spec", Msg("PodSpec"), O),
            (3, "status", Ignore, O),
        ],
        "PodTemplateSpec" => &[
            (1, "metadata", Msg("ObjectMeta"), O),
            (2, "spec", Msg("PodSpec"), O),
        ],
        "PodSpec" => &[
            (2, "containers", Msg("Container"), R),
            (3, "restartPolicy", Str, O),
            (4, "terminationGracePeriodSeconds", IntP, O),
            (5, "activeDeadlineSeconds", IntP, O),
            (6, "dnsPolicy", Str, O),
            (7, "nodeSelector", MapStr, O),
            (8, "serviceAccountName", Str, O),
            (9, "serviceAccount", Str, O),
            (10, "nodeName", Str, O),
            (11, "hostNetwork", Bool, O),
            (12, "hostPID", Bool, O),
            (13, "hostIPC", Bool, O),
            (15, "imagePullSecrets", Msg("LocalObjectReference"), R),
            (16, "hostname", Str, O),
            (17, "subdomain", Str, O),
            (19, "schedulerName", Str, O),
            (20, "initContainers", Msg("Container"), R),
            (21, "automountServiceAccountToken", BoolP, O),
            (24, "priorityClassName", Str, O),
            (25, "priority", IntP, O),
            (29, "runtimeClassName", Str, O),
            (30, "enableServiceLinks", BoolP, O),
            (31, "preemptionPolicy", Str, O),
        ],
        "Container" => &[
            (1, "name", Str, O),
            (2, "image", Str, O),
            (3, "command", Str, R),
            (4, "args", Str, R),
            (5, "workingDir", Str, O),
            (6, "ports", Msg("ContainerPort"), R),
            (7, "env", Msg("EnvVar"), R),
            (8, "resources", Msg("ResourceRequirements"), O),
            (13, "terminationMessagePath", Str, O),
            (14, "imagePullPolicy", Str, O),
            (16, "stdin", Bool, O),
            (17, "stdinOnce", Bool, O),
            (18, "tty", Bool, O),
            (20, "terminationMessagePolicy", Str, O),
            (24, "restartPolicy", Str, O),
        ],
        "ContainerPort" => &[
            (1, "name", Str, O),
            (2, "hostPort", Int, O),
            (3, "containerPort", Int, O),
            (4, "protocol", Str, O),
            (5, "hostIP", Str, O),
        ],
        "EnvVar" => &[(1, "name", Str, O), (2, "value", Str, O)],
        "ResourceRequirements" => &[
            (1, "limits", MapMsg("Quantity"), O),
            (2, "requests", MapMsg("Quantity"), O),
        ],
        "ResourceQuota" => &[
            (1, "metadata", Msg("ObjectMeta"), O),
            (2, "spec", Msg("ResourceQuotaSpec"), O),
            (3, "status", Ignore, O),
        ],
        "ResourceQuotaSpec" => &[(1, "hard", MapMsg("Quantity"), O), (2, "scopes", Str, R)],
        "Deployment" => &[
            (1, "metadata", Msg("ObjectMeta"), O),
            (2, "spec", Msg("DeploymentSpec"), O),
            (3, "status", Ignore, O),
        ],
        "DeploymentSpec" => &[
            (1, "replicas", IntP, O),
            (2, "selector", Msg("LabelSelector"), O),
            (3, "template", Msg("PodTemplateSpec"), O),
            (4, "strategy", Msg("DeploymentStrategy"), O),
            (5, "minReadySeconds", Int, O),
            (6, "revisionHistoryLimit", IntP, O),
            (7, "paused", Bool, O),
            (9, "progressDeadlineSeconds", IntP, O),
        ],
        "DeploymentStrategy" => &[(1, "type", Str, O)],
        "Job" => &[
            (1, "metadata", Msg("ObjectMeta"), O),
            (2, "spec", Msg("JobSpec"), O),
            (3, "status", Ignore, O),
        ],
        "JobSpec" => &[
            (1, "parallelism", IntP, O),
            (2, "completions", IntP, O),
            (3, "activeDeadlineSeconds", IntP, O),
            (4, "selector", Msg("LabelSelector"), O),
            (5, "manualSelector", BoolP, O),
            (6, "template", Msg("PodTemplateSpec"), O),
            (7, "backoffLimit", IntP, O),
            (8, "ttlSecondsAfterFinished", IntP, O),
            (9, "completionMode", Str, O),
            (10, "suspend", BoolP, O),
        ],
        "CronJob" => &[
            (1, "metadata", Msg("ObjectMeta"), O),
            (2, "spec", Msg("CronJobSpec"), O),
            (3, "status", Ignore, O),
        ],
        "CronJobSpec" => &[
            (1, "schedule", Str, O),
            (2, "startingDeadlineSeconds", IntP, O),
            (3, "concurrencyPolicy", Str, O),
            (4, "suspend", BoolP, O),
            (5, "jobTemplate", Msg("JobTemplateSpec"), O),
            (6, "successfulJobsHistoryLimit", IntP, O),
            (7, "failedJobsHistoryLimit", IntP, O),
            (8, "timeZone", Str, O),
        ],
        "JobTemplateSpec" => &[
            (1, "metadata", Msg("ObjectMeta"), O),
            (2, "spec", Msg("JobSpec"), O),
        ],
        "SelfSubjectAccessReview" => &[
            (1, "metadata", Msg("ObjectMeta"), O),
            (2, "spec", Msg("SelfSubjectAccessReviewSpec"), O),
            (3, "status", Ignore, O),
        ],
        "SelfSubjectAccessReviewSpec" => &[
            (1, "resourceAttributes", Msg("ResourceAttributes"), O),
            (2, "nonResourceAttributes", Msg("NonResourceAttributes"), O),
        ],
        "ResourceAttributes" => &[
            (1, "namespace", Str, O),
            (2, "verb", Str, O),
            (3, "group", Str, O),
            (4, "version", Str, O),
            (5, "resource", Str, O),
            (6, "subresource", Str, O),
            (7, "name", Str, O),
            (8, "fieldSelector", Ignore, O),
            (9, "labelSelector", Ignore, O),
        ],
        "NonResourceAttributes" => &[(1, "path", Str, O), (2, "verb", Str, O)],
        "SelfSubjectReview" => &[
            (1, "metadata", Msg("ObjectMeta"), O),
            (2, "status", Ignore, O),
        ],
        _ => return None,
    })
}

/// The go zero time (0001-01-01T00:00:00Z) means "unset".
const GO_ZERO_TIME: i64 = -62_135_596_800;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or("truncated field")?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    fn skip(&mut self, wire: u64) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            w => Err(format!("unsupported wire type {w}")),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), String> {
        if self.pos + n > self.buf.len() {
            return Err("truncated field".into());
        }
        self.pos += n;
        Ok(())
    }
}

/// Raw (field number, wire type, varint value or bytes) entries of one message.
enum Raw<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn entries(buf: &[u8]) -> Result<Vec<(u32, Raw<'_>)>, String> {
    let mut r = Reader { buf, pos: 0 };
    let mut out = Vec::new();
    while r.pos < buf.len() {
        let key = r.varint()?;
        let (num, wire) = (
            u32::try_from(key >> 3).map_err(|_| "field number overflow")?,
            key & 7,
        );
        match wire {
            0 => out.push((num, Raw::Varint(r.varint()?))),
            2 => out.push((num, Raw::Bytes(r.bytes()?))),
            w => r.skip(w)?,
        }
    }
    Ok(out)
}

fn str_of(raw: &Raw<'_>) -> Result<String, String> {
    match raw {
        Raw::Bytes(b) => {
            String::from_utf8(b.to_vec()).map_err(|_| "string field is not UTF-8".to_string())
        }
        Raw::Varint(_) => Err("expected a length-delimited field".into()),
    }
}

fn varint_of(raw: &Raw<'_>) -> Result<u64, String> {
    match raw {
        Raw::Varint(v) => Ok(*v),
        Raw::Bytes(_) => Err("expected a varint field".into()),
    }
}

fn bytes_of<'a>(raw: &Raw<'a>) -> Result<&'a [u8], String> {
    match raw {
        Raw::Bytes(b) => Ok(b),
        Raw::Varint(_) => Err("expected a length-delimited field".into()),
    }
}

/// One value of `ty`, or `None` when it is the "unset" value.
fn scalar(ty: Ty, raw: &Raw<'_>) -> Result<Option<Value>, String> {
    Ok(match ty {
        Str => Some(json!(str_of(raw)?)).filter(|v| v != ""),
        Bytes => Some(json!(
            base64::engine::general_purpose::STANDARD.encode(bytes_of(raw)?)
        )),
        // Integers are two's complement varints: int32 -1 arrives as 2^64-1.
        Int => Some(json!(varint_of(raw)? as i64)).filter(|v| v != 0),
        IntP => Some(json!(varint_of(raw)? as i64)),
        Bool => Some(json!(varint_of(raw)? != 0)).filter(|v| v != false),
        BoolP => Some(json!(varint_of(raw)? != 0)),
        Msg(name) => Some(decode_message(name, bytes_of(raw)?)?),
        Time => {
            let mut secs = 0i64;
            for (num, r) in entries(bytes_of(raw)?)? {
                if num == 1 {
                    secs = varint_of(&r)? as i64;
                }
            }
            if secs == GO_ZERO_TIME {
                None
            } else {
                let ts = jiff::Timestamp::from_second(secs)
                    .map_err(|e| format!("time out of range: {e}"))?;
                Some(json!(crate::meta::format_ts(ts)))
            }
        }
        IntOrString => {
            let (mut kind, mut int, mut s) = (0u64, 0i64, String::new());
            for (num, r) in entries(bytes_of(raw)?)? {
                match num {
                    1 => kind = varint_of(&r)?,
                    2 => int = varint_of(&r)? as i64,
                    3 => s = str_of(&r)?,
                    _ => {}
                }
            }
            Some(if kind == 1 { json!(s) } else { json!(int) })
        }
        Quantity => {
            let mut s = String::new();
            for (num, r) in entries(bytes_of(raw)?)? {
                if num == 1 {
                    s = str_of(&r)?;
                }
            }
            Some(json!(s))
        }
        MapStr | MapBytes | MapMsg(_) | Ignore => unreachable!("handled by decode_message"),
    })
}

fn decode_message(name: &str, buf: &[u8]) -> Result<Value, String> {
    let fields = message(name).ok_or_else(|| format!("message {name} is not known"))?;
    let mut out = Map::new();
    for (num, raw) in entries(buf)? {
        let &(_, field, ty, repeated) = fields
            .iter()
            .find(|f| f.0 == num)
            .ok_or_else(|| format!("field {num} of {name} is not known to kaze"))?;
        match ty {
            Ignore => {}
            MapStr | MapBytes | MapMsg(_) => {
                let (mut k, mut v) = (String::new(), None);
                for (n, r) in entries(bytes_of(&raw)?)? {
                    match n {
                        1 => k = str_of(&r)?,
                        2 => {
                            v =
                                Some(match ty {
                                    MapStr => json!(str_of(&r)?),
                                    MapBytes => json!(base64::engine::general_purpose::STANDARD
                                        .encode(bytes_of(&r)?)),
                                    MapMsg(m) => scalar(m_ty(m), &r)?.unwrap_or(Value::Null),
                                    _ => unreachable!(),
                                })
                        }
                        _ => {}
                    }
                }
                let entry = out.entry(field).or_insert_with(|| json!({}));
                entry[k] = v.unwrap_or_else(|| {
                    if matches!(ty, MapMsg(_)) {
                        Value::Null
                    } else {
                        json!("")
                    }
                });
            }
            _ if repeated => {
                let entry = out.entry(field).or_insert_with(|| json!([]));
                let v = match ty {
                    Str => json!(str_of(&raw)?),
                    _ => scalar(ty, &raw)?.unwrap_or_else(|| json!({})),
                };
                entry.as_array_mut().expect("made an array").push(v);
            }
            _ => {
                if let Some(v) = scalar(ty, &raw)? {
                    out.insert(field.to_string(), v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

fn m_ty(name: &'static str) -> Ty {
    if name == "Quantity" {
        Quantity
    } else {
        Msg(name)
    }
}

/// Decode a protobuf request body into the object's JSON form.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or("the body does not start with the Kubernetes protobuf magic k8s\\0")?;
    let unknown = decode_message("Unknown", rest)?;
    let kind = unknown
        .pointer("/typeMeta/kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let api_version = unknown
        .pointer("/typeMeta/apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let raw = unknown
        .get("raw")
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default();
    let known =
        message(&kind).is_some() && !matches!(kind.as_str(), "Unknown" | "TypeMeta" | "ObjectMeta");
    if !known {
        return Err(format!(
            "protobuf bodies of kind {kind:?} are not supported yet: send JSON or YAML"
        ));
    }
    let mut obj =
        decode_message(&kind, &raw).map_err(|e| format!("decoding protobuf {kind}: {e}"))?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(num << 3 | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        let meta = field(1, b"cfg");
        let entry = [field(1, b"k"), field(2, b"v")].concat();
        let cm = [field(1, &meta), field(2, &entry)].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let unknown = [field(1, &type_meta), field(2, &cm)].concat();
        let body = [b"k8s\0".to_vec(), unknown].concat();
        let v = decode(&body).expect("decodes");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"k": "v"}})
        );
    }

    #[test]
    fn unknown_fields_and_kinds_are_errors() {
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let unknown = [field(1, &type_meta), field(2, &field(9, b"x"))].concat();
        let err = decode(&[b"k8s\0".to_vec(), unknown].concat()).expect_err("unknown field");
        assert!(err.contains("field 9 of ConfigMap"), "{err}");
        let type_meta = [field(1, b"v1"), field(2, b"Node")].concat();
        let err =
            decode(&[b"k8s\0".to_vec(), field(1, &type_meta)].concat()).expect_err("unknown kind");
        assert!(err.contains("\"Node\""), "{err}");
        assert!(decode(b"{}").is_err());
    }
}
