//! What a container gets from the plugins' `Allocate` answers (upstream's
//! `deviceRunContainerOptions`).

use std::collections::BTreeSet;

use super::proto;

/// What a container gets from the device plugins it uses (upstream's
/// `DeviceRunContainerOptions`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerDevices {
    /// Variables set before the container's own (which win).
    pub env: Vec<(String, String)>,
    /// Mounts and device nodes (CDI devices included).
    pub edits: crate::dra::cdi::ContainerEdits,
    pub annotations: Vec<(String, String)>,
}

/// The plugins' answers for one container merged as upstream's `deviceRunContainerOptions`:
/// the first of two settings of a variable, container path or annotation wins.
pub fn merge<'a>(
    responses: impl Iterator<Item = &'a proto::ContainerAllocateResponse>,
) -> ContainerDevices {
    use crate::dra::cdi;
    let mut out = ContainerDevices::default();
    let mut seen_paths: BTreeSet<String> = BTreeSet::new();
    let mut seen_mounts: BTreeSet<String> = BTreeSet::new();
    for r in responses {
        let sorted = |m: &std::collections::HashMap<String, String>| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> =
                m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            v.sort();
            v
        };
        for (k, v) in sorted(&r.envs) {
            if !out.env.iter().any(|(e, _)| *e == k) {
                out.env.push((k, v));
            }
        }
        for d in &r.devices {
            if seen_paths.insert(d.container_path.clone()) {
                out.edits.device_nodes.push(cdi::DeviceNode {
                    path: d.container_path.clone(),
                    host_path: Some(d.host_path.clone()),
                    permissions: Some(if d.permissions.is_empty() {
                        "rwm".into()
                    } else {
                        d.permissions.clone()
                    }),
                    ..Default::default()
                });
            }
        }
        for m in &r.mounts {
            if seen_mounts.insert(m.container_path.clone()) {
                let access = if m.read_only { "ro" } else { "rw" };
                out.edits.mounts.push(cdi::Mount {
                    host_path: m.host_path.clone(),
                    container_path: m.container_path.clone(),
                    options: vec!["rbind".into(), access.into()],
                    kind: Some("bind".into()),
                });
            }
        }
        for (k, v) in sorted(&r.annotations) {
            if !out.annotations.iter().any(|(e, _)| *e == k) {
                out.annotations.push((k, v));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_merge_with_the_first_setting_winning() {
        let a = proto::ContainerAllocateResponse {
            envs: [("A".to_string(), "1".to_string()), ("B".into(), "1".into())].into(),
            mounts: vec![proto::Mount {
                container_path: "/drivers".into(),
                host_path: "/opt/drivers".into(),
                read_only: true,
            }],
            devices: vec![proto::DeviceSpec {
                container_path: "/dev/gpu0".into(),
                host_path: "/dev/null".into(),
                permissions: String::new(),
            }],
            annotations: [("x".to_string(), "1".to_string())].into(),
            cdi_devices: vec![],
        };
        let b = proto::ContainerAllocateResponse {
            envs: [("A".to_string(), "2".to_string())].into(),
            devices: vec![proto::DeviceSpec {
                container_path: "/dev/gpu0".into(),
                host_path: "/dev/zero".into(),
                permissions: "r".into(),
            }],
            ..Default::default()
        };
        let m = merge([&a, &b].into_iter());
        assert_eq!(m.env, [("A".into(), "1".into()), ("B".into(), "1".into())]);
        assert_eq!(m.edits.device_nodes.len(), 1);
        assert_eq!(
            m.edits.device_nodes[0].host_path.as_deref(),
            Some("/dev/null")
        );
        assert_eq!(m.edits.device_nodes[0].permissions.as_deref(), Some("rwm"));
        assert_eq!(m.edits.mounts[0].options, ["rbind", "ro"]);
        assert_eq!(m.annotations, [("x".into(), "1".into())]);
    }
}
