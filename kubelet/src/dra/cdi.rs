//! Container Device Interface specs (the CDI spec, cncf-tags/container-device-interface):
//! what a DRA driver's CDI device ids (`vendor.com/class=name`) stand for, applied to the
//! OCI spec kaze builds. containerd 1.6 has no CDI support, and kaze writes the runtime
//! spec itself ([`crate::spec`]), so the kubelet does what containerd's CRI plugin does
//! with `CDIDevices`.
//!
//! Specs are JSON or YAML files (`.json`, `.yaml`, `.yml`) in the spec dirs
//! (`/etc/cdi`, then `/var/run/cdi`, which wins when both name a device): `{cdiVersion,
//! kind: "vendor.com/class", devices: [{name, containerEdits}], containerEdits}`. The
//! spec-level edits are applied once per spec a container uses, then each device's.
//!
//! Applied: `env`, `deviceNodes` (created in the container and allowed in its devices
//! cgroup; type, major and minor are read from the host node when the spec leaves them out)
//! and `mounts`. Not applied: `hooks` (OCI hooks run by runc, which kaze's spec does not
//! carry; a spec with hooks is logged), `intelRdt` and `additionalGids`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

/// Upstream CDI's default spec dirs, lowest priority first.
pub const DEFAULT_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub cdi_version: String,
    pub kind: String,
    #[serde(default)]
    pub devices: Vec<SpecDevice>,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecDevice {
    pub name: String,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

/// What using a device changes in a container.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Read so a spec with hooks parses; not applied (see the module doc).
    #[serde(default)]
    pub hooks: Vec<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    /// The path in the container.
    pub path: String,
    /// The node on the host (`path` when absent).
    #[serde(default)]
    pub host_path: Option<String>,
    /// `c`, `b`, `u` or `p`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub major: Option<i64>,
    #[serde(default)]
    pub minor: Option<i64>,
    #[serde(default)]
    pub file_mode: Option<u32>,
    /// The devices cgroup access (`rwm` when absent).
    #[serde(default)]
    pub permissions: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("CDI device {id:?}: not a fully qualified name (vendor.com/class=name)")]
    BadName { id: String },
    #[error("CDI device {id:?}: unresolvable, no spec in {dirs} defines it")]
    Unresolvable { id: String, dirs: String },
    #[error("CDI device node {path:?}: reading the host's {host_path:?}: {source}")]
    HostNode {
        path: String,
        host_path: String,
        #[source]
        source: std::io::Error,
    },
}

/// `vendor.com/class=name` split into kind and name.
pub fn parse_id(id: &str) -> Result<(&str, &str), CdiError> {
    let bad = || CdiError::BadName { id: id.to_string() };
    let (kind, name) = id.split_once('=').ok_or_else(bad)?;
    let (vendor, class) = kind.split_once('/').ok_or_else(bad)?;
    if vendor.is_empty() || class.is_empty() || name.is_empty() || class.contains('/') {
        return Err(bad());
    }
    Ok((kind, name))
}

/// The specs in `dirs`, later dirs overriding earlier ones per kind and device name.
/// Unreadable or malformed files are skipped with a warning (as CDI's cache does).
#[derive(Debug, Default)]
pub struct Registry {
    /// kind -> (spec-level edits per spec file, device name -> (spec file, device edits))
    devices: BTreeMap<String, BTreeMap<String, (PathBuf, ContainerEdits)>>,
    spec_edits: BTreeMap<PathBuf, ContainerEdits>,
    dirs: Vec<PathBuf>,
}

impl Registry {
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut reg = Registry {
            dirs: dirs.to_vec(),
            ..Default::default()
        };
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "yaml" | "yml")
                    )
                })
                .collect();
            files.sort();
            for file in files {
                match read_spec(&file) {
                    Ok(spec) => reg.add(file, spec),
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "skipping a CDI spec")
                    }
                }
            }
        }
        reg
    }

    fn add(&mut self, file: PathBuf, spec: Spec) {
        if !spec.container_edits.hooks.is_empty()
            || spec
                .devices
                .iter()
                .any(|d| !d.container_edits.hooks.is_empty())
        {
            tracing::info!(file = %file.display(), "CDI spec has hooks: kaze does not run them");
        }
        let kind = self.devices.entry(spec.kind.clone()).or_default();
        for d in spec.devices {
            kind.insert(d.name, (file.clone(), d.container_edits));
        }
        self.spec_edits.insert(file, spec.container_edits);
    }

    /// The edits for `ids` (fully qualified names), in order: each spec's own edits once,
    /// before its first device's.
    pub fn resolve(&self, ids: &[String]) -> Result<ContainerEdits, CdiError> {
        let mut out = ContainerEdits::default();
        let mut specs_done: Vec<&Path> = Vec::new();
        for id in ids {
            let (kind, name) = parse_id(id)?;
            let Some((file, edits)) = self.devices.get(kind).and_then(|k| k.get(name)) else {
                return Err(CdiError::Unresolvable {
                    id: id.clone(),
                    dirs: self
                        .dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            if !specs_done.contains(&file.as_path()) {
                specs_done.push(file);
                if let Some(spec) = self.spec_edits.get(file) {
                    out.append(spec);
                }
            }
            out.append(edits);
        }
        Ok(out)
    }
}

fn read_spec(file: &Path) -> Result<Spec, String> {
    let text = std::fs::read(file).map_err(|e| e.to_string())?;
    let spec: Spec = if file.extension().and_then(|e| e.to_str()) == Some("json") {
        serde_json::from_slice(&text).map_err(|e| e.to_string())?
    } else {
        serde_yaml::from_slice(&text).map_err(|e| e.to_string())?
    };
    if spec.kind.split_once('/').is_none() {
        return Err(format!("kind {:?} is not vendor.com/class", spec.kind));
    }
    Ok(spec)
}

impl ContainerEdits {
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.device_nodes.is_empty() && self.mounts.is_empty()
    }

    /// Add `other`'s edits after these.
    pub fn append(&mut self, other: &ContainerEdits) {
        self.env.extend(other.env.iter().cloned());
        self.device_nodes.extend(other.device_nodes.iter().cloned());
        self.mounts.extend(other.mounts.iter().cloned());
    }

    /// Fill in the device nodes' type, major and minor from the host where the spec left
    /// them out (as CDI's `fillMissingInfo`). Done when the container is made, so a node
    /// the driver creates late is still found.
    pub fn with_host_info(mut self) -> Result<ContainerEdits, CdiError> {
        for d in &mut self.device_nodes {
            if d.kind.is_some() && d.major.is_some() && d.minor.is_some() {
                continue;
            }
            let host_path = d.host_path.clone().unwrap_or_else(|| d.path.clone());
            let (kind, major, minor) =
                crate::sys::device_numbers(Path::new(&host_path)).map_err(|source| {
                    CdiError::HostNode {
                        path: d.path.clone(),
                        host_path: host_path.clone(),
                        source,
                    }
                })?;
            d.kind.get_or_insert_with(|| kind.to_string());
            d.major.get_or_insert(major as i64);
            d.minor.get_or_insert(minor as i64);
        }
        Ok(self)
    }

    /// Apply to an OCI runtime spec (as [`crate::spec::oci_spec`] makes it): variables
    /// set (a name the container has is overridden, as CDI's), mounts added, device nodes
    /// created and allowed in the devices cgroup.
    pub fn apply(&self, oci: &mut Value) {
        if let Some(env) = oci
            .pointer_mut("/process/env")
            .and_then(Value::as_array_mut)
        {
            for kv in &self.env {
                let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
                env.retain(|e| {
                    e.as_str()
                        .is_none_or(|e| e.split_once('=').map_or(e, |(k, _)| k) != key)
                });
                env.push(json!(kv));
            }
        }
        for m in &self.mounts {
            let options = if m.options.is_empty() {
                vec!["rbind".to_string(), "rw".to_string()]
            } else {
                m.options.clone()
            };
            push(
                oci,
                "mounts",
                json!({
                    "destination": m.container_path,
                    "type": m.kind.as_deref().unwrap_or("bind"),
                    "source": m.host_path,
                    "options": options,
                }),
            );
        }
        for d in &self.device_nodes {
            let kind = d.kind.as_deref().unwrap_or("c");
            let mut node = json!({
                "path": d.path,
                "type": kind,
                "major": d.major.unwrap_or(0),
                "minor": d.minor.unwrap_or(0),
            });
            if let Some(mode) = d.file_mode {
                node["fileMode"] = json!(mode);
            }
            if let Some(uid) = d.uid {
                node["uid"] = json!(uid);
            }
            if let Some(gid) = d.gid {
                node["gid"] = json!(gid);
            }
            let linux = &mut oci["linux"];
            push(linux, "devices", node);
            let rule = json!({
                "allow": true,
                "type": kind,
                "major": d.major.unwrap_or(0),
                "minor": d.minor.unwrap_or(0),
                "access": d.permissions.as_deref().unwrap_or("rwm"),
            });
            push(&mut linux["resources"], "devices", rule);
        }
    }
}

/// Append `v` to the array `obj[key]`, making it if absent.
fn push(obj: &mut Value, key: &str, v: Value) {
    if !obj.get(key).is_some_and(Value::is_array) {
        obj[key] = json!([]);
    }
    if let Some(a) = obj[key].as_array_mut() {
        a.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join(name), text).expect("write");
    }

    #[test]
    fn ids_are_fully_qualified_names() {
        assert_eq!(
            parse_id("example.com/gpu=gpu-0").expect("id"),
            ("example.com/gpu", "gpu-0")
        );
        for bad in ["gpu-0", "example.com=gpu-0", "/gpu=x", "a/b=", "a/b/c=d"] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn specs_resolve_from_json_and_yaml_and_the_later_dir_wins() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (etc, run) = (tmp.path().join("etc"), tmp.path().join("run"));
        write(
            &etc,
            "a.json",
            r#"{"cdiVersion": "0.6.0", "kind": "example.com/gpu",
                "containerEdits": {"env": ["GPU_VENDOR=example"]},
                "devices": [{"name": "g0", "containerEdits": {"env": ["G=old"]}},
                            {"name": "g1", "containerEdits": {"env": ["G1=1"],
                             "mounts": [{"hostPath": "/h", "containerPath": "/c", "options": ["ro", "bind"]}]}}]}"#,
        );
        write(
            &run,
            "b.yaml",
            "cdiVersion: 0.6.0\nkind: example.com/gpu\ndevices:\n- name: g0\n  containerEdits:\n    env: [G=new]\n    deviceNodes:\n    - path: /dev/g0\n      type: c\n      major: 195\n      minor: 0\n",
        );
        write(&run, "junk.json", "{not json");
        let reg = Registry::load(&[etc, run]);
        let edits = reg
            .resolve(&["example.com/gpu=g0".into(), "example.com/gpu=g1".into()])
            .expect("resolve");
        // g0 now comes from b.yaml (no spec-level edits); g1 from a.json with its spec's
        assert_eq!(edits.env, ["G=new", "GPU_VENDOR=example", "G1=1"]);
        assert_eq!(edits.device_nodes.len(), 1);
        assert_eq!(edits.mounts[0].container_path, "/c");
        let err = reg
            .resolve(&["example.com/gpu=g9".into()])
            .expect_err("unknown");
        assert!(err.to_string().contains("unresolvable"), "{err}");
    }

    #[test]
    fn edits_reach_the_oci_spec() {
        let mut oci = json!({
            "process": {"env": ["PATH=/bin", "G=image"]},
            "mounts": [],
            "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}},
        });
        let edits = ContainerEdits {
            env: vec!["G=cdi".into(), "H=1".into()],
            device_nodes: vec![DeviceNode {
                path: "/dev/g0".into(),
                kind: Some("c".into()),
                major: Some(195),
                minor: Some(3),
                permissions: Some("rw".into()),
                ..Default::default()
            }],
            mounts: vec![Mount {
                host_path: "/h".into(),
                container_path: "/c".into(),
                ..Default::default()
            }],
            hooks: vec![],
        };
        edits.apply(&mut oci);
        assert_eq!(oci["process"]["env"], json!(["PATH=/bin", "G=cdi", "H=1"]));
        assert_eq!(oci["mounts"][0]["destination"], "/c");
        assert_eq!(oci["mounts"][0]["type"], "bind");
        assert_eq!(
            oci["linux"]["devices"],
            json!([{"path": "/dev/g0", "type": "c", "major": 195, "minor": 3}])
        );
        assert_eq!(
            oci["linux"]["resources"]["devices"][1],
            json!({"allow": true, "type": "c", "major": 195, "minor": 3, "access": "rw"})
        );
    }

    #[test]
    fn missing_device_numbers_come_from_the_host() {
        let edits = ContainerEdits {
            device_nodes: vec![DeviceNode {
                path: "/dev/null".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
        .with_host_info()
        .expect("/dev/null");
        let d = &edits.device_nodes[0];
        assert_eq!(
            (d.kind.as_deref(), d.major, d.minor),
            (Some("c"), Some(1), Some(3))
        );
        let missing = ContainerEdits {
            device_nodes: vec![DeviceNode {
                path: "/dev/nope-kaze".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(missing.with_host_info().is_err());
    }
}
