//! Content negotiation: request bodies in JSON or YAML (and the patch media types),
//! responses in JSON, YAML or as a `meta.k8s.io` Table.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::status::ApiError;

/// Upstream's limit on request bodies.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    Json,
    Yaml,
    JsonPatch,
    MergePatch,
    StrategicMergePatch,
    ApplyPatch,
    Protobuf,
}

pub fn body_type(headers: &HeaderMap) -> Result<BodyType, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Ok(match essence.as_str() {
        "" | "application/json" | "*/*" => BodyType::Json,
        "application/yaml" | "application/x-yaml" | "text/yaml" => BodyType::Yaml,
        "application/json-patch+json" => BodyType::JsonPatch,
        "application/merge-patch+json" => BodyType::MergePatch,
        "application/strategic-merge-patch+json" => BodyType::StrategicMergePatch,
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => BodyType::ApplyPatch,
        // client-go's typed clients (kubectl's `create <generator>` commands) send protobuf.
        e if crate::protobuf::is_protobuf(e) => BodyType::Protobuf,
        _ => return Err(ApiError::unsupported_media_type(ct)),
    })
}

/// Decode a body as JSON (or YAML when that is its type) into a value.
pub fn decode(body: &Bytes, ty: BodyType) -> Result<Value, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::too_large(format!(
            "the request body of {} bytes is over the {MAX_BODY_BYTES}-byte limit",
            body.len()
        )));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    match ty {
        // Upstream answers 400 to a body it cannot decode.
        BodyType::Protobuf => crate::protobuf::decode(body)
            .map_err(|e| ApiError::bad_request(format!("decoding protobuf body: {e}"))),
        BodyType::Yaml | BodyType::ApplyPatch => serde_yaml::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML request body: {e}"))),
        _ => serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON request body: {e}"))),
    }
}

/// An object body: decode and insist on a JSON object.
pub fn decode_object(body: &Bytes, ty: BodyType) -> Result<Value, ApiError> {
    let v = decode(body, ty)?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a single object (got a JSON array or scalar)",
        ));
    }
    Ok(v)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

/// What the client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept {
    pub format: Format,
    /// `as=Table` (`Some(version)`: "v1" or "v1beta1").
    pub table: Option<&'static str>,
    /// `as=PartialObjectMetadata[List]`
    pub partial_metadata: bool,
}

pub fn accept(headers: &HeaderMap) -> Result<Accept, ApiError> {
    let raw = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    // Take the first alternative we can produce, in the client's order.
    for alt in raw.split(',') {
        let mut parts = alt.split(';').map(str::trim);
        let essence = parts.next().unwrap_or("").to_ascii_lowercase();
        let params: Vec<(String, String)> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let param = |k: &str| {
            params
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.as_str())
        };
        let format = match essence.as_str() {
            "application/json" | "*/*" | "application/*" | "" => Format::Json,
            "application/yaml" => Format::Yaml,
            _ => continue,
        };
        match param("as") {
            None => {
                return Ok(Accept {
                    format,
                    table: None,
                    partial_metadata: false,
                })
            }
            Some("Table") if param("g") == Some("meta.k8s.io") => {
                let version = match param("v") {
                    Some("v1") => "v1",
                    Some("v1beta1") => "v1beta1",
                    _ => continue,
                };
                return Ok(Accept {
                    format,
                    table: Some(version),
                    partial_metadata: false,
                });
            }
            Some("PartialObjectMetadata" | "PartialObjectMetadataList")
                if param("g") == Some("meta.k8s.io") =>
            {
                return Ok(Accept {
                    format,
                    table: None,
                    partial_metadata: true,
                })
            }
            // Aggregated discovery and anything else: the discovery handlers look at the raw
            // header themselves; for resources fall through to other alternatives.
            Some(_) => continue,
        }
    }
    Err(ApiError::not_acceptable(raw))
}

/// Encode `value` with `status`.
pub fn respond(status: StatusCode, value: &Value, format: Format) -> Response {
    match format {
        Format::Json => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(value).unwrap_or_default(),
        )
            .into_response(),
        Format::Yaml => (
            status,
            [(header::CONTENT_TYPE, "application/yaml")],
            serde_yaml::to_string(value).unwrap_or_default(),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: header::HeaderName, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(k, v.parse().expect("header value"));
        m
    }

    #[test]
    fn kubectl_table_accept_header_asks_for_a_table() {
        let a = accept(&h(
            header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
        ))
        .expect("acceptable");
        assert_eq!(a.table, Some("v1"));
        let a = accept(&h(
            header::ACCEPT,
            "application/vnd.kubernetes.protobuf, application/json",
        ))
        .expect("json");
        assert_eq!(
            a,
            Accept {
                format: Format::Json,
                table: None,
                partial_metadata: false
            }
        );
        assert!(accept(&h(header::ACCEPT, "application/vnd.kubernetes.protobuf")).is_err());
    }

    #[test]
    fn bodies_in_json_and_yaml_and_errors() {
        let yaml = Bytes::from_static(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n");
        assert_eq!(
            decode_object(&yaml, BodyType::Yaml).expect("yaml")["metadata"]["name"],
            "x"
        );
        let err =
            decode_object(&Bytes::from_static(b"{not json"), BodyType::Json).expect_err("bad");
        assert_eq!(err.code, 400);
        let big = Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]);
        assert_eq!(decode(&big, BodyType::Json).expect_err("big").code, 413);
        assert_eq!(
            body_type(&h(header::CONTENT_TYPE, "text/plain"))
                .expect_err("415")
                .code,
            415
        );
    }
}
