//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which client-go's typed
//! clients send — kubectl's `create namespace|configmap|secret|deployment|...` among them.
//! The envelope is upstream's: the magic `k8s\0`, then a `runtime.Unknown` holding the type
//! meta and the object's own message. Objects are turned into the same JSON the JSON path
//! sees, from a table of the messages those clients send; a field kaze does not know is a
//! clear 415 rather than a silently dropped value.

use base64::Engine;
use serde_json::{json, Map, Value};

mod messages;

use messages::{message, Ty, Ty::*};

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
