//! Each check failing and passing, with upstream's messages; label parsing; which updates
//! are checked; the warnings about existing pods.

use serde_json::{json, Value};

use super::checks::{detail, evaluate, reasons};
use super::*;

const BASELINE: LevelVersion = LevelVersion {
    level: Level::Baseline,
    version: Version::LATEST,
};
const RESTRICTED: LevelVersion = LevelVersion {
    level: Level::Restricted,
    version: Version::LATEST,
};

/// A container that passes every restricted check.
fn good_container(name: &str) -> Value {
    json!({"name": name, "image": "i", "securityContext": {
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
    }})
}

/// A pod that passes every restricted check, with `patch` merged into its spec (top-level
/// keys replaced) and `c` merged into the first container's securityContext.
fn pod(spec_patch: Value, container_sc: Value) -> Value {
    let mut c = good_container("c");
    if let Value::Object(m) = container_sc {
        for (k, v) in m {
            c["securityContext"][k] = v;
        }
    }
    let mut spec = json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [c],
    });
    if let Value::Object(m) = spec_patch {
        for (k, v) in m {
            spec[k] = v;
        }
    }
    spec
}

fn message(lv: LevelVersion, meta: &Value, spec: &Value) -> String {
    detail(&evaluate(lv, meta, spec))
}

#[test]
fn the_fully_restricted_pod_passes_both_levels() {
    let spec = pod(json!({}), json!({}));
    assert_eq!(message(RESTRICTED, &json!({}), &spec), "");
    assert_eq!(message(BASELINE, &json!({}), &spec), "");
    // privileged checks nothing
    let wild = pod(json!({"hostNetwork": true}), json!({"privileged": true}));
    let privileged = LevelVersion {
        level: Level::Privileged,
        version: Version::LATEST,
    };
    assert!(evaluate(privileged, &json!({}), &wild).is_empty());
}

#[test]
fn baseline_checks_fail_with_upstreams_messages_and_pass_when_fixed() {
    // (what, spec patch, container securityContext patch, pod annotations, message, passing spec patch, passing sc patch)
    let cases: Vec<(&str, Value, Value, Value, &str, Value, Value)> = vec![
        (
            "hostProcess",
            json!({}),
            json!({"windowsOptions": {"hostProcess": true}}),
            json!({}),
            r#"hostProcess (container "c" must not set securityContext.windowsOptions.hostProcess=true)"#,
            json!({}),
            json!({"windowsOptions": {"hostProcess": false}}),
        ),
        (
            "host namespaces",
            json!({"hostNetwork": true, "hostPID": true, "hostIPC": true}),
            json!({}),
            json!({}),
            "host namespaces (hostIPC, hostNetwork, hostPID)",
            json!({"hostNetwork": false}),
            json!({}),
        ),
        (
            "privileged",
            json!({}),
            json!({"privileged": true}),
            json!({}),
            r#"privileged (container "c" must not set securityContext.privileged=true)"#,
            json!({}),
            json!({"privileged": false}),
        ),
        (
            "capabilities",
            json!({}),
            json!({"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN", "CHOWN", "NET_RAW"]}}),
            json!({}),
            r#"non-default capabilities (container "c" must not include "NET_RAW", "SYS_ADMIN" in securityContext.capabilities.add)"#,
            json!({}),
            json!({"capabilities": {"add": ["CHOWN", "KILL"]}}),
        ),
        (
            "hostPath",
            json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}, {"name": "tmp", "emptyDir": {}}]}),
            json!({}),
            json!({}),
            r#"hostPath volumes (volume "root")"#,
            json!({"volumes": [{"name": "tmp", "emptyDir": {}}]}),
            json!({}),
        ),
        (
            "hostPorts",
            json!({}),
            json!({}),
            json!({}),
            r#"hostPort (container "c" uses hostPorts 80, 8080)"#,
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 80}]}]}),
            json!({}),
        ),
        (
            "AppArmor",
            json!({"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}),
            json!({}),
            json!({"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}),
            r#"forbidden AppArmor profiles (pod and annotation must not set AppArmor profile type to "Unconfined", "container.apparmor.security.beta.kubernetes.io/c="unconfined"")"#,
            json!({"securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}}}),
            json!({"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"}}),
        ),
        (
            "SELinux",
            json!({}),
            json!({"seLinuxOptions": {"type": "spc_t", "user": "root"}}),
            json!({}),
            r#"seLinuxOptions (container "c" set forbidden securityContext.seLinuxOptions: type "spc_t"; user may not be set)"#,
            json!({}),
            json!({"seLinuxOptions": {"type": "container_t", "level": "s0:c1"}}),
        ),
        (
            "procMount",
            json!({}),
            json!({"procMount": "Unmasked"}),
            json!({}),
            r#"procMount (container "c" must not set securityContext.procMount to "Unmasked")"#,
            json!({}),
            json!({"procMount": "Default"}),
        ),
        (
            "seccomp",
            json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
            json!({"seccompProfile": {"type": "Unconfined"}}),
            json!({}),
            r#"seccompProfile (pod and container "c" must not set securityContext.seccompProfile.type to "Unconfined")"#,
            json!({"securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "p"}}}),
            json!({}),
        ),
        (
            "sysctls",
            json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}, {"name": "vm.swappiness", "value": "1"}]}}),
            json!({}),
            json!({}),
            "forbidden sysctls (kernel.msgmax, vm.swappiness)",
            json!({"securityContext": {"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]}}),
            json!({}),
        ),
        (
            "probe hosts",
            json!({}),
            json!({}),
            json!({}),
            r#"probe or lifecycle host (container "c" uses probe or lifecycle hosts "10.0.0.1", "example.com")"#,
            json!({"containers": [{"name": "c", "livenessProbe": {"httpGet": {"port": 80}}}]}),
            json!({}),
        ),
    ];
    for (what, spec_patch, sc, annotations, want, ok_spec, ok_sc) in cases {
        let mut spec = pod(json!({}), sc);
        for (k, v) in spec_patch.as_object().unwrap() {
            spec[k] = v.clone();
        }
        match what {
            "hostPorts" => {
                spec["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81, "hostPort": 80}])
            }
            "probe hosts" => {
                spec["containers"][0]["livenessProbe"] =
                    json!({"httpGet": {"port": 80, "host": "example.com"}});
                spec["containers"][0]["lifecycle"] =
                    json!({"preStop": {"tcpSocket": {"port": 80, "host": "10.0.0.1"}}});
            }
            _ => {}
        }
        let meta = json!({ "annotations": annotations });
        assert_eq!(message(BASELINE, &meta, &spec), want, "{what} at baseline");
        // A restricted namespace refuses the same thing (first, before restricted checks),
        // but for the two checks restricted replaces with stricter ones.
        if !matches!(what, "capabilities" | "seccomp") {
            assert!(
                message(RESTRICTED, &meta, &spec).starts_with(want),
                "{what} at restricted"
            );
        }

        let mut fixed = pod(json!({}), ok_sc);
        for (k, v) in ok_spec.as_object().unwrap() {
            fixed[k] = v.clone();
        }
        assert_eq!(message(BASELINE, &json!({}), &fixed), "", "{what} fixed");
    }
}

#[test]
fn restricted_checks_fail_with_upstreams_messages_and_pass_when_fixed() {
    let cases: Vec<(&str, Value, Value, &str, Value, Value)> = vec![
        (
            "volume types",
            json!({"volumes": [{"name": "nfs", "nfs": {"server": "s", "path": "/"}}, {"name": "cm", "configMap": {"name": "x"}}, {"name": "git", "gitRepo": {"repository": "r"}}]}),
            json!({}),
            r#"restricted volume types (volumes ["git" "nfs"] have restricted types)"#,
            json!({"volumes": [{"name": "cm", "configMap": {"name": "x"}}, {"name": "p", "projected": {"sources": []}}, {"name": "pvc", "persistentVolumeClaim": {"claimName": "c"}}]}),
            json!({}),
        ),
        (
            "privilege escalation",
            json!({}),
            json!({"allowPrivilegeEscalation": true}),
            r#"allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false)"#,
            json!({}),
            json!({"allowPrivilegeEscalation": false}),
        ),
        (
            "runAsNonRoot explicitly false",
            json!({"securityContext": {"runAsNonRoot": false, "seccompProfile": {"type": "RuntimeDefault"}}}),
            json!({"runAsNonRoot": false}),
            r#"runAsNonRoot != true (pod and container "c" must not set securityContext.runAsNonRoot=false)"#,
            json!({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}),
            json!({"runAsNonRoot": true}),
        ),
        (
            "runAsUser 0",
            json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}}}),
            json!({"runAsUser": 0}),
            r#"runAsUser=0 (pod and container "c" must not set runAsUser=0)"#,
            json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}}),
            json!({}),
        ),
        (
            "seccomp unset",
            json!({"securityContext": {"runAsNonRoot": true}}),
            json!({}),
            r#"seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#,
            json!({"securityContext": {"runAsNonRoot": true}}),
            json!({"seccompProfile": {"type": "RuntimeDefault"}}),
        ),
        (
            "capabilities",
            json!({}),
            json!({"capabilities": {"drop": ["NET_RAW"], "add": ["NET_BIND_SERVICE", "CHOWN"]}}),
            r#"unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]; container "c" must not include "CHOWN" in securityContext.capabilities.add)"#,
            json!({}),
            json!({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}),
        ),
    ];
    for (what, spec_patch, sc, want, ok_spec, ok_sc) in cases {
        let mut spec = pod(spec_patch, sc);
        if what == "seccomp unset" {
            spec["containers"][0]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("seccompProfile");
        }
        assert_eq!(message(RESTRICTED, &json!({}), &spec), want, "{what}");
        if what != "capabilities" {
            // Baseline does not look at these (its capability check is the baseline one).
            assert_eq!(
                message(BASELINE, &json!({}), &spec),
                "",
                "{what} at baseline"
            );
        }
        let fixed = pod(ok_spec, ok_sc);
        assert_eq!(message(RESTRICTED, &json!({}), &fixed), "", "{what} fixed");
    }
}

#[test]
fn a_bare_pod_under_restricted_gets_upstreams_whole_message() {
    let spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
    assert_eq!(
        message(RESTRICTED, &json!({}), &spec),
        r#"allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
    );
    assert_eq!(message(BASELINE, &json!({}), &spec), "");
    // Init and ephemeral containers count, init containers first.
    let spec = json!({"initContainers": [{"name": "i"}], "containers": [{"name": "c"}], "ephemeralContainers": [{"name": "e"}]});
    assert!(message(RESTRICTED, &json!({}), &spec)
        .starts_with(r#"allowPrivilegeEscalation != false (containers "i", "c", "e" must set"#));
}

#[test]
fn versions_gate_the_checks_that_came_later() {
    let spec = pod(json!({}), json!({"runAsUser": 0}));
    let v = |minor| LevelVersion {
        level: Level::Restricted,
        version: Version::v1(minor),
    };
    assert!(message(v(23), &json!({}), &spec).contains("runAsUser=0"));
    assert_eq!(message(v(22), &json!({}), &spec), "");
    // Before 1.19 seccomp was annotations.
    let meta = json!({"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}});
    let base = |minor| LevelVersion {
        level: Level::Baseline,
        version: Version::v1(minor),
    };
    assert_eq!(
        message(base(18), &meta, &spec),
        r#"seccompProfile (forbidden annotation seccomp.security.alpha.kubernetes.io/pod="unconfined")"#
    );
    assert_eq!(message(base(19), &meta, &spec), "");
    // hostUsers: false relaxes runAsNonRoot from 1.34 on.
    let mut userns = pod(
        json!({"hostUsers": false, "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}),
        json!({}),
    );
    assert_eq!(message(RESTRICTED, &json!({}), &userns), "");
    userns["hostUsers"] = json!(true);
    assert!(message(RESTRICTED, &json!({}), &userns).starts_with("runAsNonRoot != true"));
}

#[test]
fn labels_parse_as_upstream_with_warn_following_a_stricter_enforce() {
    let labels = |pairs: &[(&str, &str)]| {
        let m: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| (format!("pod-security.kubernetes.io/{k}"), json!(v)))
            .collect();
        m
    };
    let (p, errs) = policy(
        Some(&labels(&[("enforce", "restricted")])),
        &Policy::default(),
    );
    assert!(errs.is_empty());
    assert_eq!(p.enforce.to_string(), "restricted:latest");
    assert_eq!(p.warn.to_string(), "restricted:latest");
    assert_eq!(p.audit.to_string(), "privileged:latest");

    let (p, _) = policy(
        Some(&labels(&[
            ("enforce", "baseline"),
            ("enforce-version", "v1.25"),
            ("warn", "restricted"),
        ])),
        &Policy::default(),
    );
    assert_eq!(p.enforce.to_string(), "baseline:v1.25");
    assert_eq!(p.warn.to_string(), "restricted:latest");

    let (p, errs) = policy(
        Some(&labels(&[
            ("enforce", "strict"),
            ("warn-version", "v1.025"),
        ])),
        &Policy::default(),
    );
    // A bad level fails closed, a bad version is latest.
    assert_eq!(p.enforce.level, Level::Restricted);
    assert_eq!(p.warn.version, Version::LATEST);
    assert_eq!(
        errs,
        vec![
            (
                "pod-security.kubernetes.io/enforce".to_string(),
                "strict".to_string(),
                "must be one of privileged, baseline, restricted".to_string()
            ),
            (
                "pod-security.kubernetes.io/warn-version".to_string(),
                "v1.025".to_string(),
                r#"must be "latest" or "v1.x""#.to_string()
            ),
        ]
    );
    assert_eq!(policy(None, &Policy::default()).0, Policy::default());
}

#[test]
fn only_significant_pod_updates_are_checked() {
    let old = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}, "status": {"phase": "Pending"}});
    let mut labels_and_status = old.clone();
    labels_and_status["metadata"]["labels"]["a"] = json!("2");
    labels_and_status["status"]["phase"] = json!("Running");
    assert!(!significant_pod_update(&labels_and_status, &old));

    let mut image = old.clone();
    image["spec"]["containers"][0]["image"] = json!("i:2");
    assert!(significant_pod_update(&image, &old));

    let mut ephemeral = old.clone();
    ephemeral["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox"}]);
    assert!(significant_pod_update(&ephemeral, &old));
    assert!(!significant_pod_update(&ephemeral, &ephemeral));

    let mut seccomp = old.clone();
    seccomp["metadata"]["annotations"] =
        json!({"seccomp.security.alpha.kubernetes.io/pod": "unconfined"});
    assert!(significant_pod_update(&seccomp, &old));
}

#[test]
fn existing_pods_are_grouped_by_their_violations() {
    let bad = |name: &str| json!({"metadata": {"name": name}, "spec": {"hostNetwork": true, "containers": [{"name": "c"}]}});
    let priv_pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "securityContext": {"privileged": true}}]}});
    let fine = json!({"metadata": {"name": "ok"}, "spec": {"containers": [{"name": "c"}]}});
    let pods = vec![bad("web-2"), bad("web-1"), bad("web-3"), priv_pod, fine];
    let got = existing_pod_warnings(&PodSecurity::default(), "dev", BASELINE, &pods);
    assert_eq!(
        got,
        [
            r#"existing pods in namespace "dev" violate the new PodSecurity enforce level "baseline:latest""#,
            "p: privileged",
            "web-1 (and 2 other pods): host namespaces",
        ]
    );
    assert!(
        existing_pod_warnings(&PodSecurity::default(), "dev", BASELINE, &[fine_pod()]).is_empty()
    );
    assert_eq!(
        reasons(&evaluate(BASELINE, &json!({}), &bad("x")["spec"])),
        "host namespaces"
    );
}

fn fine_pod() -> Value {
    json!({"metadata": {"name": "ok"}, "spec": {"containers": [{"name": "c"}]}})
}

#[test]
fn runtime_class_exemptions_skip_the_checks() {
    let config = PodSecurity {
        exempt_runtime_classes: vec!["kata".into()],
        ..Default::default()
    };
    assert!(runtime_class_exempt(
        &config,
        &json!({"runtimeClassName": "kata"})
    ));
    assert!(!runtime_class_exempt(
        &config,
        &json!({"runtimeClassName": "runc"})
    ));
    assert!(!runtime_class_exempt(&config, &json!({})));
}
