//! A Swagger 2.0 JSON document as gnostic's `openapi_v2.Document` protobuf message (what
//! upstream's `/openapi/v2` answers client-go with: `ParseDocument` of the JSON, then
//! `proto.Marshal`). Field numbers are those of gnostic's `openapiv2/OpenAPIv2.proto`.
//!
//! Extensions, defaults, examples and enum values are gnostic `Any`s carrying their value as
//! YAML text; JSON is YAML, so they carry their JSON. Only what the converted document holds
//! is encoded; anything else is left out.

use serde_json::{Map, Value};

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;

/// One message being written.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u64, wire: u64) {
        self.varint(field << 3 | wire);
    }

    fn bytes(&mut self, field: u64, b: &[u8]) {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    /// A proto3 string: left out when empty.
    fn string(&mut self, field: u64, v: Option<&Value>) {
        if let Some(s) = v.and_then(Value::as_str).filter(|s| !s.is_empty()) {
            self.bytes(field, s.as_bytes());
        }
    }

    /// A repeated string from a JSON string or array of strings.
    fn strings(&mut self, field: u64, v: Option<&Value>) {
        match v {
            Some(Value::String(s)) => self.bytes(field, s.as_bytes()),
            Some(Value::Array(list)) => {
                for s in list.iter().filter_map(Value::as_str) {
                    self.bytes(field, s.as_bytes());
                }
            }
            _ => {}
        }
    }

    fn bool(&mut self, field: u64, v: Option<&Value>) {
        if v.and_then(Value::as_bool) == Some(true) {
            self.key(field, VARINT);
            self.varint(1);
        }
    }

    fn int64(&mut self, field: u64, v: Option<&Value>) {
        if let Some(n) = v.and_then(Value::as_i64).filter(|n| *n != 0) {
            self.key(field, VARINT);
            self.varint(n as u64);
        }
    }

    fn double(&mut self, field: u64, v: Option<&Value>) {
        if let Some(n) = v.and_then(Value::as_f64).filter(|n| *n != 0.0) {
            self.key(field, FIXED64);
            self.0.extend_from_slice(&n.to_le_bytes());
        }
    }

    fn message(&mut self, field: u64, m: Msg) {
        self.bytes(field, &m.0);
    }

    /// `Any { yaml = 2 }` in `field` for each value (one unless `v` is a repeated field).
    fn any(&mut self, field: u64, v: &Value) {
        self.message(field, any(v));
    }

    /// The `x-` keys of `o` as `repeated NamedAny` in `field`.
    fn extensions(&mut self, field: u64, o: &Map<String, Value>) {
        for (k, v) in o.iter().filter(|(k, _)| k.starts_with("x-")) {
            let mut named = Msg::default();
            named.bytes(1, k.as_bytes());
            named.message(2, any(v));
            self.message(field, named);
        }
    }
}

fn any(v: &Value) -> Msg {
    let mut m = Msg::default();
    m.bytes(2, v.to_string().as_bytes());
    m
}

fn obj(v: Option<&Value>) -> Option<&Map<String, Value>> {
    v.and_then(Value::as_object)
}

/// A map of `name -> T` as gnostic's `repeated Named<T> { name = 1; value = 2 }` in `field`.
fn named(out: &mut Msg, field: u64, o: &Map<String, Value>, value: impl Fn(&Value) -> Msg) {
    for (k, v) in o {
        let mut n = Msg::default();
        n.bytes(1, k.as_bytes());
        n.message(2, value(v));
        out.message(field, n);
    }
}

pub fn encode(doc: &Value) -> Vec<u8> {
    let mut m = Msg::default();
    let Some(d) = doc.as_object() else {
        return m.0;
    };
    m.string(1, d.get("swagger"));
    if let Some(info) = obj(d.get("info")) {
        let mut i = Msg::default();
        i.string(1, info.get("title"));
        i.string(2, info.get("version"));
        i.string(3, info.get("description"));
        i.extensions(7, info);
        m.message(2, i);
    }
    m.string(3, d.get("host"));
    m.string(4, d.get("basePath"));
    m.strings(5, d.get("schemes"));
    m.strings(6, d.get("consumes"));
    m.strings(7, d.get("produces"));
    if let Some(paths) = obj(d.get("paths")) {
        let mut p = Msg::default();
        p.extensions(1, paths);
        for (k, v) in paths.iter().filter(|(k, _)| !k.starts_with("x-")) {
            let mut n = Msg::default();
            n.bytes(1, k.as_bytes());
            n.message(2, path_item(v));
            p.message(2, n);
        }
        m.message(8, p);
    }
    if let Some(defs) = obj(d.get("definitions")) {
        let mut ds = Msg::default();
        named(&mut ds, 1, defs, schema);
        m.message(9, ds);
    }
    for requirement in d
        .get("security")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(12, security_requirement(requirement));
    }
    if let Some(defs) = obj(d.get("securityDefinitions")) {
        let mut ds = Msg::default();
        named(&mut ds, 1, defs, security_definition);
        m.message(13, ds);
    }
    m.extensions(16, d);
    m.0
}

/// `SecurityRequirement { repeated NamedStringArray additional_properties = 1 }`.
fn security_requirement(v: &Value) -> Msg {
    let mut m = Msg::default();
    if let Some(o) = v.as_object() {
        named(&mut m, 1, o, |scopes| {
            let mut a = Msg::default();
            a.strings(1, Some(scopes));
            a
        });
    }
    m
}

/// `SecurityDefinitionsItem`: basic (1) or apiKey (2); kaze has only those.
fn security_definition(v: &Value) -> Msg {
    let mut item = Msg::default();
    let Some(o) = v.as_object() else {
        return item;
    };
    let mut s = Msg::default();
    s.string(1, o.get("type"));
    if o.get("type").and_then(Value::as_str) == Some("basic") {
        s.string(2, o.get("description"));
        s.extensions(3, o);
        item.message(1, s);
    } else {
        s.string(2, o.get("name"));
        s.string(3, o.get("in"));
        s.string(4, o.get("description"));
        s.extensions(5, o);
        item.message(2, s);
    }
    item
}

fn path_item(v: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(o) = v.as_object() else {
        return m;
    };
    m.string(1, o.get("$ref"));
    for (field, method) in [
        (2, "get"),
        (3, "put"),
        (4, "post"),
        (5, "delete"),
        (6, "options"),
        (7, "head"),
        (8, "patch"),
    ] {
        if let Some(op) = obj(o.get(method)) {
            m.message(field, operation(op));
        }
    }
    for p in o
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(9, parameters_item(p));
    }
    m.extensions(10, o);
    m
}

fn operation(o: &Map<String, Value>) -> Msg {
    let mut m = Msg::default();
    m.strings(1, o.get("tags"));
    m.string(2, o.get("summary"));
    m.string(3, o.get("description"));
    m.string(5, o.get("operationId"));
    m.strings(6, o.get("produces"));
    m.strings(7, o.get("consumes"));
    for p in o
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(8, parameters_item(p));
    }
    if let Some(responses) = obj(o.get("responses")) {
        let mut rs = Msg::default();
        for (code, r) in responses.iter().filter(|(k, _)| !k.starts_with("x-")) {
            let mut n = Msg::default();
            n.bytes(1, code.as_bytes());
            n.message(2, response_value(r));
            rs.message(1, n);
        }
        rs.extensions(2, responses);
        m.message(9, rs);
    }
    m.strings(10, o.get("schemes"));
    m.bool(11, o.get("deprecated"));
    for requirement in o
        .get("security")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(12, security_requirement(requirement));
    }
    m.extensions(13, o);
    m
}

/// `ResponseValue`: a `Response` (1) or a `JsonReference` (2).
fn response_value(v: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(o) = v.as_object() else {
        return m;
    };
    if o.contains_key("$ref") {
        m.message(2, json_reference(o));
        return m;
    }
    let mut r = Msg::default();
    r.string(1, o.get("description"));
    if let Some(s) = o.get("schema") {
        // SchemaItem { Schema schema = 1 }
        let mut item = Msg::default();
        item.message(1, schema(s));
        r.message(2, item);
    }
    r.extensions(5, o);
    m.message(1, r);
    m
}

fn json_reference(o: &Map<String, Value>) -> Msg {
    let mut m = Msg::default();
    m.string(1, o.get("$ref"));
    m.string(2, o.get("description"));
    m
}

/// `ParametersItem`: a `Parameter` (1) or a `JsonReference` (2); a `Parameter` is a
/// `BodyParameter` (1) or a `NonBodyParameter` (2) of header (1), formData (2), query (3)
/// or path (4).
fn parameters_item(v: &Value) -> Msg {
    let mut item = Msg::default();
    let Some(o) = v.as_object() else {
        return item;
    };
    if o.contains_key("$ref") {
        item.message(2, json_reference(o));
        return item;
    }
    let mut parameter = Msg::default();
    let location = o.get("in").and_then(Value::as_str).unwrap_or("");
    if location == "body" {
        let mut b = Msg::default();
        b.string(1, o.get("description"));
        b.string(2, o.get("name"));
        b.string(3, o.get("in"));
        b.bool(4, o.get("required"));
        if let Some(s) = o.get("schema") {
            b.message(5, schema(s));
        }
        b.extensions(6, o);
        parameter.message(1, b);
    } else {
        let (field, allow_empty) = match location {
            "header" => (1, false),
            "formData" => (2, true),
            "path" => (4, false),
            _ => (3, true),
        };
        let mut non_body = Msg::default();
        non_body.message(field, non_body_parameter(o, allow_empty));
        parameter.message(2, non_body);
    }
    item.message(1, parameter);
    item
}

/// The four `*ParameterSubSchema`s share one layout, except that query and formData have
/// `allow_empty_value = 5` and so number the rest one higher.
fn non_body_parameter(o: &Map<String, Value>, allow_empty: bool) -> Msg {
    let mut m = Msg::default();
    m.bool(1, o.get("required"));
    m.string(2, o.get("in"));
    m.string(3, o.get("description"));
    m.string(4, o.get("name"));
    let base = if allow_empty {
        m.bool(5, o.get("allowEmptyValue"));
        6
    } else {
        5
    };
    m.string(base, o.get("type"));
    m.string(base + 1, o.get("format"));
    if let Some(items) = o.get("items") {
        m.message(base + 2, primitives_items(items));
    }
    m.string(base + 3, o.get("collectionFormat"));
    if let Some(d) = o.get("default") {
        m.any(base + 4, d);
    }
    numeric_constraints(&mut m, base + 5, o);
    for e in o
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.any(base + 15, e);
    }
    m.double(base + 16, o.get("multipleOf"));
    m.extensions(base + 17, o);
    m
}

/// maximum, exclusiveMaximum, minimum, exclusiveMinimum, maxLength, minLength, pattern,
/// maxItems, minItems, uniqueItems: numbered in that order from `from` wherever they appear
/// outside `Schema`.
fn numeric_constraints(m: &mut Msg, from: u64, o: &Map<String, Value>) {
    m.double(from, o.get("maximum"));
    m.bool(from + 1, o.get("exclusiveMaximum"));
    m.double(from + 2, o.get("minimum"));
    m.bool(from + 3, o.get("exclusiveMinimum"));
    m.int64(from + 4, o.get("maxLength"));
    m.int64(from + 5, o.get("minLength"));
    m.string(from + 6, o.get("pattern"));
    m.int64(from + 7, o.get("maxItems"));
    m.int64(from + 8, o.get("minItems"));
    m.bool(from + 9, o.get("uniqueItems"));
}

fn primitives_items(v: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(o) = v.as_object() else {
        return m;
    };
    m.string(1, o.get("type"));
    m.string(2, o.get("format"));
    if let Some(items) = o.get("items") {
        m.message(3, primitives_items(items));
    }
    m.string(4, o.get("collectionFormat"));
    if let Some(d) = o.get("default") {
        m.any(5, d);
    }
    numeric_constraints(&mut m, 6, o);
    for e in o
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.any(16, e);
    }
    m.double(17, o.get("multipleOf"));
    m.extensions(18, o);
    m
}

fn schema(v: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(o) = v.as_object() else {
        return m;
    };
    m.string(1, o.get("$ref"));
    m.string(2, o.get("format"));
    m.string(3, o.get("title"));
    m.string(4, o.get("description"));
    if let Some(d) = o.get("default") {
        m.any(5, d);
    }
    m.double(6, o.get("multipleOf"));
    m.double(7, o.get("maximum"));
    m.bool(8, o.get("exclusiveMaximum"));
    m.double(9, o.get("minimum"));
    m.bool(10, o.get("exclusiveMinimum"));
    m.int64(11, o.get("maxLength"));
    m.int64(12, o.get("minLength"));
    m.string(13, o.get("pattern"));
    m.int64(14, o.get("maxItems"));
    m.int64(15, o.get("minItems"));
    m.bool(16, o.get("uniqueItems"));
    m.int64(17, o.get("maxProperties"));
    m.int64(18, o.get("minProperties"));
    m.strings(19, o.get("required"));
    for e in o
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.any(20, e);
    }
    match o.get("additionalProperties") {
        // AdditionalPropertiesItem { oneof { Schema schema = 1; bool boolean = 2; } }: a
        // oneof member is written even when false
        Some(Value::Bool(b)) => {
            let mut a = Msg::default();
            a.key(2, VARINT);
            a.varint(u64::from(*b));
            m.message(21, a);
        }
        Some(s @ Value::Object(_)) => {
            let mut a = Msg::default();
            a.message(1, schema(s));
            m.message(21, a);
        }
        _ => {}
    }
    if let Some(t) = o.get("type") {
        let mut ti = Msg::default();
        ti.strings(1, Some(t));
        m.message(22, ti);
    }
    match o.get("items") {
        Some(s @ Value::Object(_)) => {
            let mut items = Msg::default();
            items.message(1, schema(s));
            m.message(23, items);
        }
        Some(Value::Array(list)) => {
            let mut items = Msg::default();
            for s in list {
                items.message(1, schema(s));
            }
            m.message(23, items);
        }
        _ => {}
    }
    for s in o
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(24, schema(s));
    }
    if let Some(props) = obj(o.get("properties")) {
        let mut p = Msg::default();
        named(&mut p, 1, props, schema);
        m.message(25, p);
    }
    m.string(26, o.get("discriminator"));
    m.bool(27, o.get("readOnly"));
    if let Some(e) = o.get("example") {
        m.any(30, e);
    }
    m.extensions(31, o);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protobuf::wire::{Reader, LEN};
    use serde_json::json;

    /// The length-delimited fields numbered `field` of `msg`.
    fn fields(msg: &[u8], field: u32) -> Vec<&[u8]> {
        let mut r = Reader::new(msg, "test");
        let mut out = Vec::new();
        while !r.is_empty() {
            let (tag, wire) = r.key().expect("key");
            if wire == LEN {
                let b = r.len_delimited("field").expect("bytes");
                if tag == field {
                    out.push(b);
                }
            } else {
                r.skip(wire, tag).expect("skip");
            }
        }
        out
    }

    fn field(msg: &[u8], n: u32) -> &[u8] {
        fields(msg, n)
            .first()
            .copied()
            .unwrap_or_else(|| panic!("no field {n}"))
    }

    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).expect("utf-8")
    }

    /// `Named*` entries (name = 1, value = 2) of the repeated field `n` of `msg`.
    fn named_entry<'a>(msg: &'a [u8], n: u32, name: &str) -> &'a [u8] {
        fields(msg, n)
            .into_iter()
            .find(|e| text(field(e, 1)) == name)
            .map(|e| field(e, 2))
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn encodes_definitions_extensions_and_parameters() {
        let doc = json!({
            "swagger": "2.0",
            "paths": {"/api/v1/pods": {"patch": {
                "operationId": "patchPods",
                "parameters": [
                    {"name": "body", "in": "body", "required": true, "schema": {"$ref": "#/definitions/P"}},
                    {"name": "dryRun", "in": "query", "type": "string", "uniqueItems": true},
                ],
                "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": "Pod"},
            }}},
            "definitions": {"io.k8s.api.core.v1.Pod": {
                "type": "object",
                "required": ["spec"],
                "properties": {"spec": {"$ref": "#/definitions/S", "description": "d"}},
                "x-kubernetes-group-version-kind": [{"group": "", "kind": "Pod", "version": "v1"}],
            }},
        });
        let pb = encode(&doc);
        assert_eq!(text(field(&pb, 1)), "2.0");

        let defs = field(&pb, 9);
        let pod = named_entry(defs, 1, "io.k8s.api.core.v1.Pod");
        assert_eq!(text(field(field(pod, 22), 1)), "object");
        assert_eq!(text(field(pod, 19)), "spec");
        let spec = named_entry(field(pod, 25), 1, "spec");
        assert_eq!(text(field(spec, 1)), "#/definitions/S");
        assert_eq!(text(field(spec, 4)), "d");
        let gvk = named_entry(pod, 31, "x-kubernetes-group-version-kind");
        let yaml: Value = serde_json::from_str(text(field(gvk, 2))).expect("JSON in the yaml");
        assert_eq!(yaml[0]["kind"], "Pod");

        let item = named_entry(field(&pb, 8), 2, "/api/v1/pods");
        let patch = field(item, 8);
        assert_eq!(text(field(patch, 5)), "patchPods");
        let params = fields(patch, 8);
        let body = field(field(params[0], 1), 1);
        assert_eq!(text(field(field(body, 5), 1)), "#/definitions/P");
        // ParametersItem.parameter -> Parameter.non_body -> NonBodyParameter.query
        let query = field(field(field(params[1], 1), 2), 3);
        assert_eq!(text(field(query, 4)), "dryRun");
        assert_eq!(text(field(query, 6)), "string");
        assert!(text(field(
            named_entry(patch, 13, "x-kubernetes-group-version-kind"),
            2
        ))
        .contains("\"kind\":\"Pod\""));
    }
}
