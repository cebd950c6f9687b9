use super::*;
use serde_json::json;

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn items(v: serde_json::Value) -> Vec<KeyToPath> {
    serde_json::from_value(v).unwrap()
}

fn file(d: &str, mode: u32) -> FileProjection {
    FileProjection {
        data: d.as_bytes().to_vec(),
        mode,
    }
}

#[test]
fn every_key_becomes_a_file_with_the_default_mode() {
    let d = data(&[("a.conf", "x=1"), ("b", "2")]);
    let p = keys_payload("configmap", "cfg", Some(&d), None, 0o640, false).unwrap();
    assert_eq!(
        p,
        Payload::from([
            ("a.conf".into(), file("x=1", 0o640)),
            ("b".into(), file("2", 0o640))
        ])
    );
}

#[test]
fn items_pick_keys_name_paths_and_override_modes() {
    let d = data(&[("a", "1"), ("b", "2"), ("c", "3")]);
    let it =
        items(json!([{"key": "a", "path": "dir/a.txt", "mode": 0o400}, {"key": "b", "path": "b"}]));
    let p = keys_payload("secret", "s", Some(&d), Some(&it), 0o644, false).unwrap();
    assert_eq!(
        p,
        Payload::from([
            ("dir/a.txt".into(), file("1", 0o400)),
            ("b".into(), file("2", 0o644))
        ])
    );
}

#[test]
fn missing_objects_and_keys_follow_optional() {
    let err = keys_payload("configmap", "cfg", None, None, 0o644, false).unwrap_err();
    assert_eq!(err.to_string(), "configmap \"cfg\" not found");
    let err = keys_payload("secret", "s", None, None, 0o644, false).unwrap_err();
    assert_eq!(err.to_string(), "secret \"s\" not found");
    assert!(keys_payload("configmap", "cfg", None, None, 0o644, true)
        .unwrap()
        .is_empty());

    let d = data(&[("a", "1")]);
    let it = items(json!([{"key": "nope", "path": "x"}, {"key": "a", "path": "a"}]));
    let err = keys_payload("configmap", "cfg", Some(&d), Some(&it), 0o644, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "configmap references non-existent config key: nope"
    );
    let err = keys_payload("secret", "s", Some(&d), Some(&it), 0o644, false).unwrap_err();
    assert_eq!(err.to_string(), "references non-existent secret key: nope");
    let p = keys_payload("configmap", "cfg", Some(&d), Some(&it), 0o644, true).unwrap();
    assert_eq!(p.keys().collect::<Vec<_>>(), vec!["a"]);
}

#[test]
fn paths_must_stay_inside_the_volume() {
    for bad in ["", "/abs", "a/../b", "..", "..x/y"] {
        assert!(validate_path(bad).is_err(), "{bad:?}");
    }
    for good in ["a", "a/b/c", "x..y"] {
        assert!(validate_path(good).is_ok(), "{good:?}");
    }
    let d = data(&[("a", "1")]);
    let it = items(json!([{"key": "a", "path": "../etc/passwd"}]));
    assert!(keys_payload("configmap", "c", Some(&d), Some(&it), 0o644, false).is_err());
}

#[test]
fn modes_are_permission_bits() {
    assert_eq!(mode_bits(256), 0o400);
    assert_eq!(mode_bits(0o755), 0o755);
    assert_eq!(mode_bits(-1), 0o7777);
}

fn pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "team", "uid": "u-1",
                     "labels": {"tier": "front", "app": "web"},
                     "annotations": {"note": "say \"hi\"\n\tbye"}},
        "spec": {"containers": [{"name": "app", "image": "x",
                  "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "250m"}}},
                 {"name": "bare", "image": "x"}]},
    }))
    .unwrap()
}

#[test]
fn labels_and_annotations_are_formatted_like_upstream() {
    let p = pod();
    assert_eq!(
        field_value(&p, "metadata.labels").unwrap(),
        "app=\"web\"\ntier=\"front\""
    );
    assert_eq!(
        field_value(&p, "metadata.annotations").unwrap(),
        "note=\"say \\\"hi\\\"\\n\\tbye\""
    );
    assert_eq!(field_value(&p, "metadata.labels['tier']").unwrap(), "front");
    assert_eq!(field_value(&p, "metadata.name").unwrap(), "web");
    assert_eq!(field_value(&p, "metadata.namespace").unwrap(), "team");
    assert_eq!(field_value(&p, "metadata.uid").unwrap(), "u-1");
    assert!(field_value(&p, "spec.nodeName").is_err());
    assert_eq!(go_quote("é\u{1}"), "\"é\\x01\"");
}

#[test]
fn resource_fields_divide_and_round_up() {
    let node = Allocatable {
        cpu_cores: 2.0,
        memory_bytes: 8.0 * 1024.0 * 1024.0 * 1024.0,
        ephemeral_storage_bytes: 0.0,
    };
    let spec = pod().spec.unwrap();
    let (app, bare) = (&spec.containers[0], &spec.containers[1]);
    assert_eq!(resource_value(app, "limits.cpu", None, &node).unwrap(), "1");
    assert_eq!(
        resource_value(app, "limits.cpu", Some("1m"), &node).unwrap(),
        "500"
    );
    assert_eq!(
        resource_value(app, "requests.cpu", Some("1m"), &node).unwrap(),
        "250"
    );
    assert_eq!(
        resource_value(app, "limits.memory", None, &node).unwrap(),
        "67108864"
    );
    assert_eq!(
        resource_value(app, "limits.memory", Some("1Mi"), &node).unwrap(),
        "64"
    );
    // The request defaults to the limit.
    assert_eq!(
        resource_value(app, "requests.memory", Some("1Mi"), &node).unwrap(),
        "64"
    );
    // Unset limits are the node's allocatable.
    assert_eq!(
        resource_value(bare, "limits.cpu", None, &node).unwrap(),
        "2"
    );
    assert_eq!(
        resource_value(bare, "limits.memory", Some("1Gi"), &node).unwrap(),
        "8"
    );
    assert_eq!(
        resource_value(bare, "requests.cpu", None, &node).unwrap(),
        "0"
    );
    assert!(resource_value(app, "limits.gpu", None, &node).is_err());
}

#[test]
fn downward_items_become_files() {
    let node = Allocatable {
        cpu_cores: 2.0,
        memory_bytes: 1.0,
        ephemeral_storage_bytes: 0.0,
    };
    let items: Vec<DownwardAPIVolumeFile> = serde_json::from_value(json!([
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
        {"path": "meta/labels", "fieldRef": {"fieldPath": "metadata.labels"}, "mode": 0o600},
        {"path": "cpu", "resourceFieldRef": {"containerName": "app", "resource": "limits.cpu", "divisor": "1m"}},
    ]))
    .unwrap();
    let p = downward_payload(&pod(), &items, 0o644, &node).unwrap();
    assert_eq!(
        p,
        Payload::from([
            ("name".into(), file("web", 0o644)),
            (
                "meta/labels".into(),
                file("app=\"web\"\ntier=\"front\"", 0o600)
            ),
            ("cpu".into(), file("500", 0o644)),
        ])
    );
    let bad: Vec<DownwardAPIVolumeFile> = serde_json::from_value(json!([
        {"path": "x", "resourceFieldRef": {"containerName": "nope", "resource": "limits.cpu"}},
    ]))
    .unwrap();
    assert!(downward_payload(&pod(), &bad, 0o644, &node).is_err());
}
