//! The plugin's configuration from upstream's `--admission-control-config-file`: an
//! `AdmissionConfiguration` whose `PodSecurity` plugin entry holds (inline, or in the file
//! its `path` names, relative to the configuration file) a `PodSecurityConfiguration`:
//!
//! ```yaml
//! apiVersion: apiserver.config.k8s.io/v1
//! kind: AdmissionConfiguration
//! plugins:
//! - name: PodSecurity
//!   configuration:
//!     apiVersion: pod-security.admission.config.k8s.io/v1
//!     kind: PodSecurityConfiguration
//!     defaults: {enforce: baseline, enforce-version: latest, warn: restricted}
//!     exemptions: {usernames: [], runtimeClasses: [], namespaces: [kube-system]}
//! ```
//!
//! Other plugins' entries are ignored. Unset defaults are `privileged` and `latest`.

use std::path::Path;

use serde_json::Value;

use super::{parse_level, parse_version, LevelVersion, PodSecurity, Policy};

/// Read the configuration from an `AdmissionConfiguration` file (YAML or JSON).
pub fn load(path: &Path) -> Result<PodSecurity, String> {
    let doc = read(path)?;
    if doc.get("kind").and_then(Value::as_str) != Some("AdmissionConfiguration") {
        return Err(format!(
            "{}: kind must be AdmissionConfiguration",
            path.display()
        ));
    }
    let entry = doc
        .get("plugins")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p.get("name").and_then(Value::as_str) == Some("PodSecurity"));
    let Some(entry) = entry else {
        return Ok(PodSecurity::default());
    };
    let config = match (
        entry.get("configuration"),
        entry.get("path").and_then(Value::as_str),
    ) {
        (Some(c), _) if !c.is_null() => c.clone(),
        (_, Some(p)) => read(&path.parent().unwrap_or(Path::new(".")).join(p))?,
        _ => return Ok(PodSecurity::default()),
    };
    parse(&config).map_err(|e| format!("{}: PodSecurity: {e}", path.display()))
}

fn read(path: &Path) -> Result<Value, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))
}

/// A `PodSecurityConfiguration`.
pub fn parse(config: &Value) -> Result<PodSecurity, String> {
    if let Some(kind) = config.get("kind").and_then(Value::as_str) {
        if kind != "PodSecurityConfiguration" {
            return Err(format!(
                "kind must be PodSecurityConfiguration, not {kind:?}"
            ));
        }
    }
    let defaults = config.get("defaults").cloned().unwrap_or(Value::Null);
    let mut policy = Policy::default();
    for (mode, lv) in [
        ("enforce", &mut policy.enforce),
        ("audit", &mut policy.audit),
        ("warn", &mut policy.warn),
    ] {
        *lv = default_for(&defaults, mode)?;
    }
    let list = |f: &str| -> Result<Vec<String>, String> {
        match config.pointer(&format!("/exemptions/{f}")) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .ok_or_else(|| format!("exemptions.{f}: entries must be non-empty strings"))
                })
                .collect(),
            Some(_) => Err(format!("exemptions.{f} must be a list")),
        }
    };
    Ok(PodSecurity {
        defaults: policy,
        exempt_usernames: list("usernames")?,
        exempt_runtime_classes: list("runtimeClasses")?,
        exempt_namespaces: list("namespaces")?,
    })
}

fn default_for(defaults: &Value, mode: &str) -> Result<LevelVersion, String> {
    let get = |k: &str| {
        defaults
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let level = match get(mode) {
        None => super::Level::Privileged,
        Some(l) => parse_level(l).map_err(|_| {
            format!("defaults.{mode}: {l:?}: must be one of privileged, baseline, restricted")
        })?,
    };
    let key = format!("{mode}-version");
    let version = match get(&key) {
        None => super::Version::LATEST,
        Some(v) => parse_version(v)
            .map_err(|_| format!(r#"defaults.{key}: {v:?}: must be "latest" or "v1.x""#))?,
    };
    Ok(LevelVersion { level, version })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_inline_configuration_sets_defaults_and_exemptions() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admission.yaml");
        std::fs::write(
            &file,
            "apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: EventRateLimit
  path: nowhere.yaml
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults:
      enforce: baseline
      enforce-version: v1.30
      warn: restricted
    exemptions:
      usernames: [admin]
      namespaces: [kube-system]
",
        )
        .unwrap();
        let c = load(&file).unwrap();
        assert_eq!(c.defaults.enforce.to_string(), "baseline:v1.30");
        assert_eq!(c.defaults.warn.to_string(), "restricted:latest");
        assert_eq!(c.defaults.audit.to_string(), "privileged:latest");
        assert_eq!(c.exempt_usernames, ["admin"]);
        assert_eq!(c.exempt_namespaces, ["kube-system"]);
        assert!(c.exempt_runtime_classes.is_empty());
    }

    #[test]
    fn a_path_entry_is_read_relative_to_the_file_and_bad_levels_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("psa.yaml"),
            "kind: PodSecurityConfiguration\ndefaults:\n  enforce: restricted\n",
        )
        .unwrap();
        let file = dir.path().join("admission.yaml");
        std::fs::write(
            &file,
            "kind: AdmissionConfiguration\nplugins:\n- name: PodSecurity\n  path: psa.yaml\n",
        )
        .unwrap();
        assert_eq!(
            load(&file).unwrap().defaults.enforce.to_string(),
            "restricted:latest"
        );

        let err = parse(&json!({"defaults": {"warn": "strict"}})).unwrap_err();
        assert_eq!(
            err,
            r#"defaults.warn: "strict": must be one of privileged, baseline, restricted"#
        );
        // No PodSecurity entry: upstream's defaults.
        std::fs::write(&file, "kind: AdmissionConfiguration\nplugins: []\n").unwrap();
        assert_eq!(load(&file).unwrap().defaults, Policy::default());
    }
}
