//! Upstream's `EncryptionConfiguration` file (`apiserver.config.k8s.io/v1`, and the legacy
//! `v1` `EncryptionConfig`): parsing, upstream's validation with its messages, and the
//! providers per group-resource.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;

use super::providers::{Cipher, Key, Provider, Transformer};

/// A group-resource as the config names it: `secrets` is `("", "secrets")`, `*.apps` is
/// `("apps", "*")`, `*.` every core resource, `*.*` everything.
pub type GroupResource = (String, String);

/// The providers of every configured group-resource (wildcards included).
#[derive(Debug, Default)]
pub struct Transformers {
    by_resource: HashMap<GroupResource, Arc<Transformer>>,
}

impl Transformers {
    /// The providers for a resource: an exact entry, else `*.<group>`, else `*.*`
    /// (upstream's lookup order); `None`: stored as is.
    pub fn get(&self, group: &str, resource: &str) -> Option<&Arc<Transformer>> {
        let lookup = |g: &str, r: &str| self.by_resource.get(&(g.to_string(), r.to_string()));
        lookup(group, resource)
            .or_else(|| lookup(group, "*"))
            .or_else(|| lookup("*", "*"))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    resources: Vec<ResourceConfig>,
}

#[derive(Deserialize)]
struct ResourceConfig {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    providers: Vec<ProviderConfig>,
}

#[derive(Deserialize)]
struct ProviderConfig {
    aescbc: Option<KeysConfig>,
    aesgcm: Option<KeysConfig>,
    secretbox: Option<KeysConfig>,
    identity: Option<serde::de::IgnoredAny>,
    kms: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct KeysConfig {
    #[serde(default)]
    keys: Vec<KeyConfig>,
}

#[derive(Deserialize)]
struct KeyConfig {
    #[serde(default)]
    name: String,
    #[serde(default)]
    secret: String,
}

/// Read, validate and build `path`; errors are upstream's, e.g. `error while parsing file:
/// resources[0].providers[0].aescbc.keys[0].secret: Invalid value: "REDACTED": secret is
/// not of the expected length, got 8, expected one of [16 24 32]`.
pub fn load(path: &Path) -> Result<Transformers, String> {
    let data = std::fs::read(path).map_err(|e| {
        format!(
            "error while parsing file: error opening encryption provider configuration file {:?}: {e}",
            path.display().to_string()
        )
    })?;
    parse(&data, &path.display().to_string())
}

/// [`load`] of a file's contents (`name` for messages).
pub fn parse(data: &[u8], name: &str) -> Result<Transformers, String> {
    let file = decode(data, name).map_err(|e| format!("error while parsing file: {e}"))?;
    build(&file).map_err(|e| format!("error while building transformers: {e}"))
}

fn decode(data: &[u8], name: &str) -> Result<File, String> {
    if data.is_empty() {
        return Err(format!(
            "encryption provider configuration file {name:?} is empty"
        ));
    }
    // YAML is a superset of JSON: one parser for both, as upstream's decoder
    let file: File = serde_yaml::from_slice(data).map_err(|e| e.to_string())?;
    match (file.api_version.as_str(), file.kind.as_str()) {
        ("apiserver.config.k8s.io/v1", "EncryptionConfiguration") | ("v1", "EncryptionConfig") => {}
        (_, "") => return Err("Object 'Kind' is missing in the file".into()),
        (av, kind) => {
            return Err(format!(
                "no kind {kind:?} is registered for version {av:?} (want apiVersion apiserver.config.k8s.io/v1, kind EncryptionConfiguration)"
            ))
        }
    }
    let errs = validate(&file);
    match errs.len() {
        0 => Ok(file),
        1 => Err(errs.into_iter().next().unwrap_or_default()),
        _ => Err(format!("[{}]", errs.join(", "))),
    }
}

/// `schema.ParseGroupResource`: up to the first dot is the resource, the rest the group.
fn parse_gr(s: &str) -> GroupResource {
    match s.split_once('.') {
        Some((r, g)) => (g.to_string(), r.to_string()),
        None => (String::new(), s.to_string()),
    }
}

/// How upstream prints a group-resource in messages (`*.` for every core resource).
fn gr_string((g, r): &GroupResource) -> String {
    if g.is_empty() && r == "*" {
        "*.".into()
    } else if g.is_empty() {
        r.clone()
    } else {
        format!("{r}.{g}")
    }
}

/// Go's `%#v` of a `[]string`, as `field.Invalid` prints one.
fn go_strings(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[]string{{{}}}", items.join(", "))
}

/// Upstream's `ValidateEncryptionConfiguration`, message for message (KMS aside: kaze
/// refuses KMS providers when building).
fn validate(file: &File) -> Vec<String> {
    let mut errs = Vec::new();
    let required =
        |path: &str, what: &str| format!("{path}: Required value: at least one {what} is required");
    if file.resources.is_empty() {
        errs.push(required("resources", "resources"));
        return errs;
    }
    for (i, conf) in file.resources.iter().enumerate() {
        let r = format!("resources[{i}].resources");
        let p = format!("resources[{i}].providers");
        if conf.resources.is_empty() {
            errs.push(required(&r, &r));
        }
        errs.extend(validate_overlap(&conf.resources, &r));
        errs.extend(validate_names(&conf.resources, &r));
        if conf.providers.is_empty() {
            errs.push(required(&p, &p));
        }
        for (j, provider) in conf.providers.iter().enumerate() {
            let path = format!("{p}[{j}]");
            let found = [
                provider.kms.is_some(),
                provider.aesgcm.is_some(),
                provider.aescbc.is_some(),
                provider.secretbox.is_some(),
                provider.identity.is_some(),
            ]
            .iter()
            .filter(|f| **f)
            .count();
            if found == 0 {
                errs.push(format!("{path}: Invalid value: {{}}: provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, Identity"));
                continue;
            }
            if found > 1 {
                errs.push(format!("{path}: Invalid value: {{}}: more than one provider specified in a single element, should split into different list elements"));
                continue;
            }
            if let Some((cipher, keys)) = keyed(provider) {
                errs.extend(validate_keys(
                    &keys.keys,
                    &format!("{path}.{}.keys", cipher.name()),
                    cipher.key_sizes(),
                ));
            }
        }
    }
    errs
}

fn keyed(p: &ProviderConfig) -> Option<(Cipher, &KeysConfig)> {
    None.or(p.aesgcm.as_ref().map(|k| (Cipher::AesGcm, k)))
        .or(p.aescbc.as_ref().map(|k| (Cipher::AesCbc, k)))
        .or(p.secretbox.as_ref().map(|k| (Cipher::Secretbox, k)))
}

fn validate_overlap(resources: &[String], path: &str) -> Vec<String> {
    if resources.len() < 2 {
        return Vec::new();
    }
    let grs: Vec<GroupResource> = resources.iter().map(|r| parse_gr(r)).collect();
    let (mut duplicate, mut overlap) = (false, false);
    for (i, a) in grs.iter().enumerate() {
        for (j, b) in grs.iter().enumerate() {
            if i == j {
                continue;
            }
            if a == b && !duplicate {
                duplicate = true;
                continue;
            }
            if overlap {
                continue;
            }
            if a.0 == "*" && a.1 == "*" {
                overlap = true;
                continue;
            }
            if a.0 != b.0 {
                continue;
            }
            if a.1 == "*" || b.1 == "*" {
                overlap = true;
            }
        }
    }
    let mut errs = Vec::new();
    let value = go_strings(resources);
    if duplicate {
        errs.push(format!(
            "{path}: Invalid value: {value}: the same resource cannot be specified multiple times"
        ));
    }
    if overlap {
        errs.push(format!("{path}: Invalid value: {value}: using overlapping resources such as 'secrets' and '*.' in the same resource list is not allowed as they will be masked"));
    }
    errs
}

fn validate_names(resources: &[String], path: &str) -> Vec<String> {
    let mut errs = Vec::new();
    for (j, res) in resources.iter().enumerate() {
        let bad = |why: &str| format!("{path}[{j}]: Invalid value: {res:?}: {why}");
        let (group, resource) = parse_gr(res);
        if res.to_lowercase() != *res {
            errs.push(bad("resource name should not contain capital letters"));
        } else if res == "*" {
            errs.push(bad("use '*.' to encrypt all the resources from core API group or *.* to encrypt all resources"));
        } else if matches!(
            res.as_str(),
            "apiserveripinfo" | "serviceipallocations" | "servicenodeportallocations"
        ) {
            errs.push(bad(
                "resources which do not have REST API/s cannot be encrypted",
            ));
        } else if group == "events.k8s.io" {
            errs.push(bad("'*.events.k8s.io' objects are stored using the 'events' API group in etcd. Use 'events' instead in the config file"));
        } else if group == "extensions" {
            errs.push(bad(
                "'extensions' group has been removed and cannot be used for encryption",
            ));
        } else if group == "*" && resource != "*" {
            errs.push(bad(
                "encrypting the same resource across groups is not supported",
            ));
        }
    }
    errs
}

fn validate_keys(keys: &[KeyConfig], path: &str, sizes: &[usize]) -> Vec<String> {
    if keys.is_empty() {
        return vec![format!(
            "{path}: Required value: at least one keys is required"
        )];
    }
    let mut errs = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if key.name.is_empty() {
            errs.push(format!(
                "{p}.name: Required value: name is a mandatory field for a key"
            ));
        }
        if key.secret.is_empty() {
            errs.push(format!(
                "{p}.secret: Required value: secret is a mandatory field for a key"
            ));
            continue;
        }
        match base64::engine::general_purpose::STANDARD.decode(&key.secret) {
            Err(_) => errs.push(format!(
                "{p}.secret: Invalid value: \"REDACTED\": secrets must be base64 encoded"
            )),
            Ok(secret) if !sizes.contains(&secret.len()) => {
                let want: Vec<String> = sizes.iter().map(usize::to_string).collect();
                errs.push(format!(
                    "{p}.secret: Invalid value: \"REDACTED\": secret is not of the expected length, got {}, expected one of [{}]",
                    secret.len(),
                    want.join(" ")
                ));
            }
            Ok(_) => {}
        }
    }
    errs
}

fn build(file: &File) -> Result<Transformers, String> {
    let mut lists: HashMap<GroupResource, Vec<Provider>> = HashMap::new();
    for (i, conf) in file.resources.iter().enumerate() {
        let mut providers = Vec::new();
        for (j, p) in conf.providers.iter().enumerate() {
            if p.kms.is_some() {
                return Err(format!(
                    "resources[{i}].providers[{j}].kms: KMS providers are not supported by kaze; use aescbc, aesgcm or secretbox"
                ));
            }
            if p.identity.is_some() {
                providers.push(Provider::Identity);
                continue;
            }
            let Some((cipher, keys)) = keyed(p) else {
                continue;
            };
            let keys = keys
                .keys
                .iter()
                .map(|k| {
                    let secret = base64::engine::general_purpose::STANDARD
                        .decode(&k.secret)
                        .map_err(|e| {
                            format!("could not obtain secret for named key {}: {e}", k.name)
                        })?;
                    Ok(Key {
                        name: k.name.clone(),
                        secret,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            providers.push(Provider::Keyed { cipher, keys });
        }
        for res in &conf.resources {
            let gr = parse_gr(res);
            for earlier in [(gr.0.clone(), "*".to_string()), ("*".into(), "*".into())] {
                if lists.contains_key(&earlier) {
                    return Err(format!(
                        "resource {:?} is masked by earlier rule {:?}",
                        gr_string(&gr),
                        gr_string(&earlier)
                    ));
                }
            }
            lists
                .entry(gr)
                .or_default()
                .extend(providers.iter().cloned());
        }
    }
    Ok(Transformers {
        by_resource: lists
            .into_iter()
            .map(|(gr, providers)| (gr, Arc::new(Transformer { providers })))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY32: &str = "c2VjcmV0IGlzIHNlY3VyZSwgaXMgaXQ/IHJlYWxseT8="; // 32 bytes

    fn err(yaml: &str) -> String {
        parse(yaml.as_bytes(), "enc.yaml").expect_err("refused")
    }

    #[test]
    fn wildcards_resolve_as_upstream() {
        let t = parse(
            format!(
                "apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers: [{{aescbc: {{keys: [{{name: k1, secret: {KEY32}}}]}}}}]
- resources: ['*.apps']
  providers: [{{secretbox: {{keys: [{{name: k2, secret: {KEY32}}}]}}}}]
- resources: ['*.*']
  providers: [{{identity: {{}}}}]
"
            )
            .as_bytes(),
            "f",
        )
        .expect("valid");
        let first = |g: &str, r: &str| match t.get(g, r).map(|t| &t.providers[0]) {
            Some(Provider::Keyed { cipher, .. }) => cipher.name(),
            Some(Provider::Identity) => "identity",
            None => "none",
        };
        assert_eq!(first("", "secrets"), "aescbc");
        assert_eq!(first("apps", "deployments"), "secretbox");
        assert_eq!(first("", "configmaps"), "identity");
    }

    #[test]
    fn without_a_wildcard_other_resources_have_no_providers() {
        let t = parse(
            format!(
                "kind: EncryptionConfig\napiVersion: v1\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - name: k\n        secret: {KEY32}\n"
            )
            .as_bytes(),
            "f",
        )
        .expect("the legacy kind is accepted");
        assert!(t.get("", "secrets").is_some());
        assert!(t.get("", "configmaps").is_none());
    }

    #[test]
    fn bad_configs_are_refused_with_upstreams_messages() {
        let head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n";
        assert_eq!(
            err(&format!("{head}resources: []\n")),
            "error while parsing file: resources: Required value: at least one resources is required"
        );
        assert_eq!(
            err(&format!("{head}resources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: k\n        secret: c2VjcmV0\n")),
            "error while parsing file: resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 6, expected one of [16 24 32]"
        );
        assert_eq!(
            err(&format!("{head}resources:\n- resources: [secrets]\n  providers:\n  - secretbox:\n      keys:\n      - name: k\n        secret: '%%%'\n")),
            "error while parsing file: resources[0].providers[0].secretbox.keys[0].secret: Invalid value: \"REDACTED\": secrets must be base64 encoded"
        );
        assert_eq!(
            err(&format!("{head}resources:\n- resources: [secrets]\n  providers:\n  - aesgcm: {{keys: []}}\n")),
            "error while parsing file: resources[0].providers[0].aesgcm.keys: Required value: at least one keys is required"
        );
        assert!(err(&format!("{head}resources:\n- resources: [Secrets, '*']\n  providers: [{{identity: {{}}}}]\n"))
            .contains("resources[0].resources[0]: Invalid value: \"Secrets\": resource name should not contain capital letters, resources[0].resources[1]: Invalid value: \"*\": use '*.' to encrypt all the resources"));
        assert!(err(&format!(
            "{head}resources:\n- resources: [secrets, '*.']\n  providers: [{{identity: {{}}}}]\n"
        ))
        .contains("using overlapping resources such as 'secrets' and '*.'"));
        assert!(err(&format!("{head}resources:\n- resources: [events.events.k8s.io]\n  providers: [{{identity: {{}}}}]\n"))
            .contains("Use 'events' instead in the config file"));
        assert_eq!(
            err(&format!("{head}resources:\n- resources: ['*.']\n  providers: [{{identity: {{}}}}]\n- resources: [secrets]\n  providers: [{{identity: {{}}}}]\n")),
            "error while building transformers: resource \"secrets\" is masked by earlier rule \"*.\""
        );
        assert!(err(&format!("{head}resources:\n- resources: [secrets]\n  providers:\n  - kms: {{name: p, endpoint: 'unix:///k.sock'}}\n"))
            .contains("KMS providers are not supported by kaze"));
        assert!(err(&format!("{head}resources:\n- resources: [secrets]\n  providers: [{{aescbc: {{keys: [{{name: k, secret: {KEY32}}}]}}, identity: {{}}}}]\n"))
            .contains("more than one provider specified in a single element"));
        assert!(err("apiVersion: v1\nkind: ConfigMap\n").contains("no kind \"ConfigMap\""));
        assert_eq!(
            err(""),
            "error while parsing file: encryption provider configuration file \"enc.yaml\" is empty"
        );
    }
}
