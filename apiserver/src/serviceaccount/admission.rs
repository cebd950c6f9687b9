//! Upstream's `ServiceAccount` admission plugin for pod creates: the pod runs as
//! `spec.serviceAccountName` (default `default`), which must exist (403 otherwise, as
//! upstream), and unless `automountServiceAccountToken` is false on the pod or its
//! ServiceAccount, gets the `kube-api-access-<5>` projected volume (a bound token, the
//! cluster CA from `kube-root-ca.crt`, the namespace) mounted read-only at
//! `/var/run/secrets/kubernetes.io/serviceaccount` in every container. Mirror pods are left
//! alone.

use std::time::Duration;

use serde_json::{json, Value};

use crate::meta;
use crate::state::AppState;
use crate::status::ApiError;

pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const VOLUME_PREFIX: &str = "kube-api-access-";
/// What the plugin asks for; the kubelet sees 3607 and upstream's apiserver may extend it.
pub const TOKEN_EXPIRATION: i64 = 3607;
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Upstream looks `default` up this many times (the ServiceAccount controller creates it
/// right after the namespace) before refusing the pod.
const DEFAULT_LOOKUPS: usize = 10;
const LOOKUP_INTERVAL: Duration = Duration::from_millis(150);

/// Admit a pod being created in `ns`.
pub async fn admit(state: &AppState, ns: &str, pod: &mut Value) -> Result<(), ApiError> {
    if !state.service_accounts.admit_pods || is_mirror(pod) {
        return Ok(());
    }
    let spec = &mut pod["spec"];
    let name = [
        spec.get("serviceAccountName"),
        // the deprecated field names it when the new one is empty, as upstream's conversion
        spec.get("serviceAccount"),
    ]
    .into_iter()
    .flatten()
    .filter_map(Value::as_str)
    .find(|s| !s.is_empty())
    .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
    .to_string();
    spec["serviceAccountName"] = json!(name);
    spec["serviceAccount"] = json!(name);

    let sa = lookup(state, ns, &name).await?.ok_or_else(|| {
        ApiError::forbidden(
            "pods",
            "",
            meta::meta_str(pod, "name").unwrap_or(""),
            &format!(
                "error looking up service account {ns}/{name}: serviceaccount \"{name}\" not found"
            ),
        )
    })?;
    if should_automount(&sa, pod) {
        mount_token(pod);
    }
    Ok(())
}

fn is_mirror(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(MIRROR_ANNOTATION))
        .is_some()
}

async fn lookup(state: &AppState, ns: &str, name: &str) -> Result<Option<Value>, ApiError> {
    let def = state
        .registry
        .get("", "v1", "serviceaccounts")
        .expect("serviceaccounts are built in");
    let tries = if name == DEFAULT_SERVICE_ACCOUNT {
        DEFAULT_LOOKUPS
    } else {
        1
    };
    for i in 0..tries {
        if i > 0 {
            tokio::time::sleep(LOOKUP_INTERVAL).await;
        }
        match crate::objects::get(state, def, Some(ns), name).await {
            Ok(sa) => return Ok(Some(sa)),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The pod's `automountServiceAccountToken`, else the ServiceAccount's, else true.
fn should_automount(sa: &Value, pod: &Value) -> bool {
    pod.pointer("/spec/automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            sa.get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true)
}

/// Upstream's `mountServiceAccountToken`: reuse a `kube-api-access-*` volume the pod
/// already has, mount it in every container and init container that has nothing at the
/// token path, and add the volume if any container got the mount.
pub fn mount_token(pod: &mut Value) {
    let spec = &mut pod["spec"];
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .and_then(|vs| {
            vs.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .find(|n| n.starts_with(VOLUME_PREFIX))
                .map(String::from)
        });
    let volume = existing
        .clone()
        .unwrap_or_else(|| format!("{VOLUME_PREFIX}{}", meta::random_suffix()));
    let mount = json!({"name": volume, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let mounts = &mut c["volumeMounts"];
            if !mounts.is_array() {
                *mounts = json!([]);
            }
            let mounts = mounts.as_array_mut().expect("made an array");
            if mounts
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT_PATH))
            {
                continue;
            }
            mounts.push(mount.clone());
            needed = true;
        }
    }
    if existing.is_none() && needed {
        let volumes = &mut spec["volumes"];
        if !volumes.is_array() {
            *volumes = json!([]);
        }
        volumes
            .as_array_mut()
            .expect("made an array")
            .push(token_volume(&volume));
    }
}

/// Upstream's `TokenVolumeSource`.
fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
            "defaultMode": 420,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "i", "image": "x"}],
            "containers": [
                {"name": "a", "image": "x"},
                {"name": "b", "image": "x", "volumeMounts": [{"name": "own", "mountPath": TOKEN_MOUNT_PATH}]},
            ],
            "volumes": [{"name": "own", "emptyDir": {}}],
        }})
    }

    #[test]
    fn mounts_the_projected_volume_where_nothing_is_mounted() {
        let mut p = pod();
        mount_token(&mut p);
        let vols = p["spec"]["volumes"].as_array().expect("volumes");
        assert_eq!(vols.len(), 2);
        let name = vols[1]["name"].as_str().expect("name");
        let suffix = name.strip_prefix(VOLUME_PREFIX).expect("prefix");
        assert_eq!(suffix.len(), 5);
        assert!(suffix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_eq!(vols[1]["projected"]["defaultMode"], 420);
        assert_eq!(
            vols[1]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
        let mount = json!({"name": name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
        assert_eq!(
            p["spec"]["initContainers"][0]["volumeMounts"],
            json!([mount])
        );
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"], json!([mount]));
        // b mounts its own volume there: left alone
        assert_eq!(
            p["spec"]["containers"][1]["volumeMounts"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );

        // admitting again (a re-created object) reuses the volume
        let before = p.clone();
        mount_token(&mut p);
        assert_eq!(p, before);
    }

    #[test]
    fn automount_follows_the_pod_then_the_service_account() {
        let sa_off = json!({"automountServiceAccountToken": false});
        let sa_on = json!({});
        let mut p = pod();
        assert!(should_automount(&sa_on, &p));
        assert!(!should_automount(&sa_off, &p));
        p["spec"]["automountServiceAccountToken"] = json!(true);
        assert!(should_automount(&sa_off, &p));
        p["spec"]["automountServiceAccountToken"] = json!(false);
        assert!(!should_automount(&sa_on, &p));
        assert!(!is_mirror(&p));
        p["metadata"]["annotations"] = json!({MIRROR_ANNOTATION: "abc"});
        assert!(is_mirror(&p));
    }
}
