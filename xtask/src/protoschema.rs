//! `gen-proto-schema`: derive the protobuf schema the apiserver needs to decode Kubernetes
//! protobuf request bodies (`apiserver/src/protobuf/schema.json`).
//!
//! Two sources, both read as text so neither crate becomes a dependency:
//! - `k8s-pb` (prost-generated from upstream's `generated.proto`) gives, per message, each
//!   field's tag, protobuf type, label and message type;
//! - `k8s-openapi` gives the JSON name of each field (`volumeID`, `podIPs`, `$ref`), which the
//!   proto field names don't carry. Fields are matched by their normalised names (lowercase,
//!   underscores removed).
//!
//! Output format, kept compact because the apiserver embeds it: one JSON object keyed by
//! package (`api.core.v1`), each mapping a message name to a list of `"<tag> <jsonName>
//! <type>"` strings. `<type>` is `s` string, `b` bool, `i` int32, `l` int64, `d` double,
//! `y` bytes, or a message name (bare within the package, else `<package>.<Name>`);
//! a leading `*` marks a repeated field and `{` a map with string keys. The JSON name `^`
//! marks a field Go embeds inline: its message's fields belong to the parent JSON object.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The packages kubectl's typed clients write to (plus the ones `create` generators use);
/// packages they reference are added automatically.
const PACKAGES: &[&str] = &[
    "api/core/v1",
    "api/apps/v1",
    "api/batch/v1",
    "api/discovery/v1",
    "api/coordination/v1",
    "api/events/v1",
    "api/policy/v1",
    "api/autoscaling/v1",
    "api/autoscaling/v2",
    "api/networking/v1",
    "api/rbac/v1",
    "api/scheduling/v1",
    "api/authentication/v1",
    "api/authorization/v1",
    "api/certificates/v1",
    "api/admissionregistration/v1",
    "api/node/v1",
    "api/storage/v1",
    "api/flowcontrol/v1",
    "api/resource/v1",
    "kube_aggregator/pkg/apis/apiregistration/v1",
    "apimachinery/pkg/apis/meta/v1",
    "apimachinery/pkg/api/resource",
    "apimachinery/pkg/util/intstr",
    "apimachinery/pkg/runtime",
];

/// Messages with their own JSON form, decoded by hand in the apiserver: their fields are
/// not needed in the schema.
const SPECIAL: &[&str] = &[
    "apimachinery.pkg.api.resource.Quantity",
    "apimachinery.pkg.api.resource.QuantityValue",
    "apimachinery.pkg.apis.meta.v1.Time",
    "apimachinery.pkg.apis.meta.v1.MicroTime",
    "apimachinery.pkg.apis.meta.v1.Duration",
    "apimachinery.pkg.apis.meta.v1.FieldsV1",
    "apimachinery.pkg.util.intstr.IntOrString",
    "apimachinery.pkg.runtime.RawExtension",
];

/// The JSON name marking a Go-embedded (`json:",inline"`) field: its fields go in the parent.
const INLINE: &str = "^";

/// The crate versions the committed schema was generated from (k8s-pb 0.9 carries the
/// Kubernetes 1.37 protos; k8s-openapi 0.29 its `v1_37` module).
const K8S_PB: &str = "k8s-pb-0.9.0";
const K8S_OPENAPI: &str = "k8s-openapi-0.29.0";

/// Which openapi version directory in k8s-openapi to read.
const OPENAPI_VERSION_DIR: &str = "v1_37";

#[derive(Debug)]
struct Field {
    tag: u32,
    /// Normalised proto name: lowercase, no underscores, no `r#`.
    norm: String,
    /// The proto name turned into lowerCamelCase, used when k8s-openapi has no such field.
    camel: String,
    ty: String,
}

/// Packages (dot-separated module paths) → message name → fields.
type Schema = BTreeMap<String, BTreeMap<String, Vec<Field>>>;

/// `cargo xtask gen-proto-schema`: regenerate the committed schema from the two crates'
/// sources in the cargo registry cache.
pub fn run(root: &Path) -> Result<()> {
    let out = root.join("apiserver/src/protobuf/schema.json");
    generate(
        &registry_crate(K8S_PB)?.join("src"),
        &registry_crate(K8S_OPENAPI)?.join("src"),
        &out,
    )?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Where cargo unpacked a crate (`~/.cargo/registry/src/<index>/<name>-<version>`).
fn registry_crate(dir_name: &str) -> Result<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let registry = cargo_home.join("registry").join("src");
    let indexes = std::fs::read_dir(&registry)
        .with_context(|| format!("reading the cargo registry cache {}", registry.display()))?;
    for index in indexes {
        let candidate = index?.path().join(dir_name);
        if candidate.is_dir() {
            return Ok(candidate);
        }
    }
    // k8s-pb is no dependency of the workspace, so `cargo fetch` does not bring it.
    bail!(
        "{dir_name} is not in {}: fetch it once, e.g. `cargo new /tmp/fetch && cd /tmp/fetch && \
         cargo add {} && cargo fetch`",
        registry.display(),
        dir_name
            .rsplit_once('-')
            .map_or(dir_name.to_string(), |(n, v)| format!("{n}@{v}"))
    )
}

pub fn generate(k8s_pb_src: &Path, k8s_openapi_src: &Path, out: &Path) -> Result<()> {
    let mut schema = Schema::new();
    let mut todo: Vec<String> = PACKAGES.iter().map(|p| p.replace('/', ".")).collect();
    while let Some(pkg) = todo.pop() {
        if schema.contains_key(&pkg) {
            continue;
        }
        let file = k8s_pb_src.join(pkg.replace('.', "/")).join("mod.rs");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading k8s-pb module {}", file.display()))?;
        let messages =
            parse_pb_module(&pkg, &text).with_context(|| format!("parsing {}", file.display()))?;
        for field in messages.values().flatten() {
            let target = field.ty.trim_start_matches(['*', '{']);
            if let Some((other, _)) = target.rsplit_once('.') {
                todo.push(other.to_string());
            }
        }
        schema.insert(pkg, messages);
    }
    check_references(&schema)?;

    // k8s-openapi's JSON names, per package and lowercased type name.
    let mut openapi = BTreeMap::new();
    for pkg in schema.keys() {
        let dir = k8s_openapi_src
            .join(OPENAPI_VERSION_DIR)
            .join(pkg.replace('.', "/"));
        openapi.insert(pkg.clone(), openapi_field_names(&dir)?);
    }
    let own = |pkg: &str, name: &str| openapi.get(pkg).and_then(|t| t.get(&name.to_lowercase()));

    // Go embeds some structs with `json:",inline"` (Volume's VolumeSource, Probe's
    // ProbeHandler, ConfigMapKeySelector's LocalObjectReference): protobuf nests them as a
    // field, JSON flattens them into the parent. Spot them as a message field the parent's
    // JSON lacks while it has every field of the embedded message; the embedded message
    // then takes its JSON names from the parent.
    let mut inline: BTreeSet<(String, String, u32)> = BTreeSet::new();
    let mut borrowed: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (pkg, messages) in &schema {
        for (name, fields) in messages {
            let Some(names) = own(pkg, name) else {
                continue;
            };
            let norms: BTreeSet<String> = names.iter().map(|n| normalise(n)).collect();
            for f in fields {
                if norms.contains(&f.norm) || f.ty.starts_with(['*', '{']) {
                    continue;
                }
                let Some((tpkg, tname)) = resolve(pkg, &f.ty) else {
                    continue;
                };
                let Some(target) = schema.get(&tpkg).and_then(|m| m.get(&tname)) else {
                    continue;
                };
                if !target.is_empty() && target.iter().all(|t| norms.contains(&t.norm)) {
                    inline.insert((pkg.clone(), name.clone(), f.tag));
                    borrowed
                        .entry((tpkg, tname))
                        .or_default()
                        .extend(names.iter().cloned());
                }
            }
        }
    }

    let mut json = String::from("{\n");
    let mut unmatched = Vec::new();
    // Fields of messages k8s-openapi has no type for (lists, options, proto-only types).
    let mut untyped = 0;
    for (i, (pkg, messages)) in schema.iter().enumerate() {
        let _ = write!(json, "{}\"{pkg}\": {{", if i > 0 { ",\n" } else { "" });
        let mut first = true;
        for (name, fields) in messages {
            if SPECIAL.contains(&format!("{pkg}.{name}").as_str()) {
                continue;
            }
            let known = own(pkg, name).or_else(|| borrowed.get(&(pkg.clone(), name.clone())));
            let mut specs = Vec::with_capacity(fields.len());
            for f in fields {
                let json_name = if inline.contains(&(pkg.clone(), name.clone(), f.tag)) {
                    INLINE.to_string()
                } else {
                    known
                        .and_then(|names| names.iter().find(|n| normalise(n) == f.norm))
                        .cloned()
                        .unwrap_or_else(|| {
                            if known.is_some() {
                                unmatched.push(format!("{pkg}.{name}.{}", f.camel));
                            } else {
                                untyped += 1;
                            }
                            f.camel.clone()
                        })
                };
                specs.push(format!("\"{} {json_name} {}\"", f.tag, f.ty));
            }
            let _ = write!(
                json,
                "{}\n \"{name}\": [{}]",
                if first { "" } else { "," },
                specs.join(",")
            );
            first = false;
        }
        json.push_str("\n}");
    }
    json.push_str("\n}\n");

    // Not fatal: lowerCamelCase is Go's convention and right for nearly all of them.
    eprintln!(
        "protoschema: {untyped} fields of messages without a k8s-openapi type (lists, options): lowerCamelCase JSON names"
    );
    if !unmatched.is_empty() {
        eprintln!(
            "protoschema: {} fields without a k8s-openapi JSON name, given lowerCamelCase ones: {}",
            unmatched.len(),
            unmatched.join(", ")
        );
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, json).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// The (package, message) a non-repeated field type refers to; `None` for scalars.
fn resolve(pkg: &str, ty: &str) -> Option<(String, String)> {
    if ty.len() <= 1 {
        return None;
    }
    Some(match ty.rsplit_once('.') {
        Some((p, m)) => (p.to_string(), m.to_string()),
        None => (pkg.to_string(), ty.to_string()),
    })
}

/// Every message type a field names must be in the schema, or the decoder would fail at
/// request time instead of here.
fn check_references(schema: &Schema) -> Result<()> {
    for (pkg, messages) in schema {
        for (name, fields) in messages {
            for f in fields {
                let target = f.ty.trim_start_matches(['*', '{']);
                let Some((p, m)) = resolve(pkg, target) else {
                    continue;
                };
                if !schema.get(&p).is_some_and(|msgs| msgs.contains_key(&m)) {
                    bail!(
                        "{pkg}.{name} field {} refers to unknown message {target}",
                        f.tag
                    );
                }
            }
        }
    }
    Ok(())
}

/// Parse one k8s-pb module: `pub struct X {` blocks holding `#[prost(...)]`-annotated fields.
fn parse_pb_module(pkg: &str, text: &str) -> Result<BTreeMap<String, Vec<Field>>> {
    let module: Vec<&str> = pkg.split('.').collect();
    let mut messages = BTreeMap::new();
    let mut current: Option<(String, Vec<Field>)> = None;
    let mut attr: Option<String> = None;
    let mut decl = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(rest) = line.strip_prefix("pub struct ") {
            let name = rest
                .split([' ', '{'])
                .next()
                .unwrap_or_default()
                .to_string();
            if rest.trim_end().ends_with("{}") {
                messages.insert(name, Vec::new());
            } else {
                current = Some((name, Vec::new()));
            }
            continue;
        }
        let Some((name, fields)) = current.as_mut() else {
            continue;
        };
        if line == "}" {
            messages.insert(std::mem::take(name), std::mem::take(fields));
            current = None;
            continue;
        }
        if let Some(a) = trimmed.strip_prefix("#[prost(") {
            attr = Some(a.trim_end_matches(")]").to_string());
            decl.clear();
            continue;
        }
        if attr.is_some() && !trimmed.starts_with("///") {
            decl.push_str(trimmed);
            // A declaration ends with a comma outside any generic brackets.
            let depth = decl.matches('<').count() as i64 - decl.matches('>').count() as i64;
            if decl.ends_with(',') && depth == 0 {
                let a = attr.take().unwrap_or_default();
                let field = parse_field(&module, &a, &decl)
                    .with_context(|| format!("field `{decl}` of {name} (#[prost({a})])"))?;
                fields.push(field);
            }
        }
    }
    if let Some((name, _)) = current {
        bail!("message {name} is not closed");
    }
    Ok(messages)
}

fn parse_field(module: &[&str], attr: &str, decl: &str) -> Result<Field> {
    let tag = attr
        .split("tag = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .context("no tag")?
        .parse()
        .context("bad tag")?;
    let (ident, rust_ty) = decl
        .strip_prefix("pub ")
        .and_then(|d| d.split_once(':'))
        .context("not a `pub name: Type,` declaration")?;
    let ident = ident.trim().trim_start_matches("r#");
    let rust_ty: String = rust_ty
        .trim_end_matches(',')
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();

    let ty = if let Some(kv) = attr.split("btree_map = \"").nth(1) {
        let kv = kv.split('"').next().unwrap_or_default();
        let (k, v) = kv.split_once(", ").context("bad btree_map")?;
        if k != "string" {
            bail!("map keys of type {k} are not supported");
        }
        // The value type is the second generic argument of BTreeMap<String, V>.
        let value_rust = rust_ty
            .split_once(',')
            .map(|(_, v)| v.trim_end_matches('>'))
            .unwrap_or_default();
        format!("{{{}", scalar_or_message(module, v, value_rust)?)
    } else {
        let kind = attr.split([',', ' ']).next().unwrap_or_default();
        let t = scalar_or_message(module, kind, &rust_ty)?;
        if attr.contains(", repeated") {
            format!("*{t}")
        } else {
            t
        }
    };
    Ok(Field {
        tag,
        norm: normalise(ident),
        camel: lower_camel(ident),
        ty,
    })
}

fn scalar_or_message(module: &[&str], kind: &str, rust_ty: &str) -> Result<String> {
    Ok(match kind {
        "string" => "s".into(),
        "bool" => "b".into(),
        "int32" => "i".into(),
        "int64" => "l".into(),
        "double" => "d".into(),
        "bytes" => "y".into(),
        "message" => message_ref(module, rust_ty)?,
        other => bail!("unsupported protobuf type {other}"),
    })
}

/// Turn a Rust type (`Option<super::super::core::v1::PodTemplateSpec>`) into a schema
/// reference: the bare name within the same package, else `<package>.<Name>`.
fn message_ref(module: &[&str], rust_ty: &str) -> Result<String> {
    let mut path = rust_ty;
    for wrapper in [
        "::core::option::Option<",
        "::prost::alloc::vec::Vec<",
        "::prost::alloc::boxed::Box<",
    ] {
        if let Some(inner) = path.strip_prefix(wrapper) {
            path = inner;
        }
    }
    let path = path.trim_end_matches(['>', ',']);
    let parts: Vec<&str> = path.split("::").collect();
    let supers = parts.iter().take_while(|p| **p == "super").count();
    if supers > module.len() {
        bail!("type path {path} leaves the crate");
    }
    let (name, rest) = parts[supers..].split_last().context("empty type path")?;
    let mut target: Vec<&str> = module[..module.len() - supers].to_vec();
    target.extend_from_slice(rest);
    if target == module {
        Ok((*name).to_string())
    } else {
        Ok(format!("{}.{name}", target.join(".")))
    }
}

/// k8s-openapi's JSON field names per type in one module directory, keyed by the lowercased
/// type name (k8s-openapi spells `AWSElasticBlockStoreVolumeSource` where prost spells
/// `AwsElasticBlockStoreVolumeSource`).
fn openapi_field_names(dir: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading k8s-openapi {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("impl crate::serde::Serialize for ") {
                current = rest.split([' ', '<']).next().map(str::to_lowercase);
                continue;
            }
            let Some(ty) = &current else { continue };
            if let Some(rest) = line.split("serialize_field(&mut state, \"").nth(1) {
                if let Some(name) = rest.split('"').next() {
                    out.entry(ty.clone()).or_default().insert(name.to_string());
                }
            }
        }
    }
    Ok(out)
}

fn normalise(name: &str) -> String {
    name.trim_start_matches("r#")
        .chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn lower_camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_across_lines_and_resolves_packages() {
        let src = r#"
/// doc
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ConfigMap {
    /// metadata
    #[prost(message, optional, tag = "1")]
    pub metadata: ::core::option::Option<
        super::super::super::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    >,
    #[prost(btree_map = "string, bytes", tag = "3")]
    pub binary_data: ::prost::alloc::collections::BTreeMap<
        ::prost::alloc::string::String,
        ::prost::alloc::vec::Vec<u8>,
    >,
    #[prost(message, repeated, tag = "4")]
    pub items: ::prost::alloc::vec::Vec<KeyToPath>,
    #[prost(btree_map = "string, message", tag = "5")]
    pub limits: ::prost::alloc::collections::BTreeMap<
        ::prost::alloc::string::String,
        super::super::super::apimachinery::pkg::api::resource::Quantity,
    >,
    #[prost(int32, repeated, packed = "false", tag = "6")]
    pub r#type: ::prost::alloc::vec::Vec<i32>,
}
pub struct Empty {}
"#;
        let msgs = parse_pb_module("api.core.v1", src).expect("parse");
        let tys: Vec<(u32, &str, &str)> = msgs["ConfigMap"]
            .iter()
            .map(|f| (f.tag, f.norm.as_str(), f.ty.as_str()))
            .collect();
        assert_eq!(
            tys,
            [
                (1, "metadata", "apimachinery.pkg.apis.meta.v1.ObjectMeta"),
                (3, "binarydata", "{y"),
                (4, "items", "*KeyToPath"),
                (5, "limits", "{apimachinery.pkg.api.resource.Quantity"),
                (6, "type", "*i"),
            ]
        );
        assert!(msgs["Empty"].is_empty());
        assert_eq!(normalise("volume_id"), normalise("volumeID"));
        assert_eq!(lower_camel("pod_i_ps"), "podIPs");
    }
}
