//! The `PodSecurity` admission plugin through the real kubectl 1.37: namespace labels
//! enforce the Pod Security Standards with upstream's 403s, `warn` (and workloads under
//! `enforce`) come back as `Warning:` lines, a tightened `enforce` label warns about the
//! pods already there, bad labels are a 422, and the plugin turned off admits everything.

mod common;

use common::TestServer;

const BARE_POD_RESTRICTED: &str = r#"violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#;

fn namespace(s: &TestServer, name: &str, labels: &[&str]) {
    s.kubectl(&["create", "namespace", name]);
    if !labels.is_empty() {
        let mut args = vec!["label", "namespace", name];
        args.extend_from_slice(labels);
        s.kubectl(&args);
    }
}

fn bare_pod(name: &str, ns: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  containers:\n  - name: c\n    image: kaze/busybox:1\n"
    )
}

fn restricted_pod(name: &str, ns: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    seccompProfile:
      type: RuntimeDefault
  containers:
  - name: c
    image: kaze/busybox:1
    securityContext:
      allowPrivilegeEscalation: false
      capabilities:
        drop: [ALL]
        add: [NET_BIND_SERVICE]
"
    )
}

#[test]
fn baseline_refuses_a_privileged_pod_with_upstreams_message() {
    let s = TestServer::start();
    namespace(&s, "base", &["pod-security.kubernetes.io/enforce=baseline"]);
    let err = s.kubectl_fails(
        &[
            "run",
            "p",
            "-n",
            "base",
            "--image=kaze/busybox:1",
            "--privileged",
        ],
        None,
    );
    assert!(
        err.contains(r#"Error from server (Forbidden): pods "p" is forbidden: violates PodSecurity "baseline:latest": privileged (container "p" must not set securityContext.privileged=true)"#),
        "{err}"
    );
    // Nothing was stored; an ordinary pod is fine at baseline, and gets no warning.
    let (ok, _, stderr) = s.kubectl_result(&["get", "pod", "p", "-n", "base"], None);
    assert!(!ok, "{stderr}");
    let (ok, _, stderr) =
        s.kubectl_result(&["run", "q", "-n", "base", "--image=kaze/busybox:1"], None);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("Warning"), "{stderr}");
}

#[test]
fn restricted_admits_a_hardened_pod_and_lists_every_violation_of_a_bare_one() {
    let s = TestServer::start();
    namespace(
        &s,
        "locked",
        &["pod-security.kubernetes.io/enforce=restricted"],
    );
    let (ok, _, stderr) = s.kubectl_result(
        &["create", "-f", "-"],
        Some(&restricted_pod("hardened", "locked")),
    );
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("Warning"), "{stderr}");

    let err = s.kubectl_fails(&["create", "-f", "-"], Some(&bare_pod("bare", "locked")));
    assert!(
        err.contains(&format!(
            r#"Error from server (Forbidden): error when creating "STDIN": pods "bare" is forbidden: {BARE_POD_RESTRICTED}"#
        )),
        "{err}"
    );

    // Updates are checked only when they change what the checks see: labels are fine,
    // an image change is checked again (this pod predates the label, so it now fails).
    namespace(&s, "later", &[]);
    s.kubectl_stdin(&["create", "-f", "-"], Some(&bare_pod("old", "later")));
    s.kubectl(&[
        "label",
        "namespace",
        "later",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    s.kubectl(&["label", "pod", "old", "-n", "later", "tier=web"]);
    let err = s.kubectl_fails(
        &["set", "image", "pod/old", "-n", "later", "c=kaze/busybox:2"],
        None,
    );
    assert!(
        err.contains(r#"pods "old" is forbidden: violates PodSecurity "restricted:latest""#),
        "{err}"
    );
}

#[test]
fn warn_admits_with_a_warning_and_workloads_under_enforce_get_one_too() {
    let s = TestServer::start();
    namespace(&s, "soft", &["pod-security.kubernetes.io/warn=restricted"]);
    let (ok, _, stderr) = s.kubectl_result(&["create", "-f", "-"], Some(&bare_pod("bare", "soft")));
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Warning: would {}",
            BARE_POD_RESTRICTED.replacen("violates", "violate", 1)
        )),
        "{stderr}"
    );
    s.kubectl(&["get", "pod", "bare", "-n", "soft"]);

    // A Deployment in an enforce=restricted namespace is created, with the warning.
    namespace(
        &s,
        "locked",
        &["pod-security.kubernetes.io/enforce=restricted"],
    );
    let (ok, _, stderr) = s.kubectl_result(
        &[
            "create",
            "deployment",
            "web",
            "-n",
            "locked",
            "--image=kaze/busybox:1",
        ],
        None,
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(r#"Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "busybox" must set securityContext.allowPrivilegeEscalation=false)"#),
        "{stderr}"
    );
    s.kubectl(&["get", "deployment", "web", "-n", "locked"]);
}

#[test]
fn tightening_enforce_warns_about_existing_pods_and_bad_labels_are_invalid() {
    let s = TestServer::start();
    namespace(&s, "dev", &[]);
    for name in ["web-2", "web-1"] {
        s.kubectl(&[
            "run",
            name,
            "-n",
            "dev",
            "--image=kaze/busybox:1",
            "--privileged",
        ]);
    }
    s.kubectl(&["run", "fine", "-n", "dev", "--image=kaze/busybox:1"]);
    let (ok, _, stderr) = s.kubectl_result(
        &[
            "label",
            "namespace",
            "dev",
            "pod-security.kubernetes.io/enforce=baseline",
        ],
        None,
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(r#"Warning: existing pods in namespace "dev" violate the new PodSecurity enforce level "baseline:latest""#),
        "{stderr}"
    );
    assert!(
        stderr.contains("Warning: web-1 (and 1 other pod): privileged"),
        "{stderr}"
    );
    assert!(!stderr.contains("fine"), "{stderr}");

    let err = s.kubectl_fails(
        &[
            "label",
            "namespace",
            "dev",
            "--overwrite",
            "pod-security.kubernetes.io/enforce=strict",
        ],
        None,
    );
    assert!(
        err.contains(r#"metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "strict": must be one of privileged, baseline, restricted"#),
        "{err}"
    );
}

#[test]
fn the_plugin_turned_off_admits_everything() {
    let s = TestServer::start_with(|c| c.disable_admission_plugins.push("PodSecurity".into()));
    namespace(
        &s,
        "locked",
        &["pod-security.kubernetes.io/enforce=restricted"],
    );
    let (ok, _, stderr) = s.kubectl_result(
        &[
            "run",
            "p",
            "-n",
            "locked",
            "--image=kaze/busybox:1",
            "--privileged",
        ],
        None,
    );
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("Warning"), "{stderr}");
}

#[test]
fn an_admission_configuration_file_sets_defaults_and_exemptions() {
    let config = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(
        config.path(),
        "apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults:
      enforce: baseline
    exemptions:
      usernames: [alice]
      namespaces: [free]
",
    )
    .expect("writing the config");
    let path = config.path().to_path_buf();
    let s = TestServer::start_with_tokens("alice-token,alice,1,\"system:masters\"\n", |c| {
        c.admission_control_config_file = Some(path)
    });
    // An unlabelled namespace gets the default enforce level.
    namespace(&s, "plain", &[]);
    let privileged = ["run", "p", "--image=kaze/busybox:1", "--privileged", "-n"];
    let err = s.kubectl_fails(&[&privileged[..], &["plain"]].concat(), None);
    assert!(
        err.contains(
            r#"pods "p" is forbidden: violates PodSecurity "baseline:latest": privileged"#
        ),
        "{err}"
    );
    // A label overrides the default; an exempt namespace and an exempt user are not checked.
    namespace(
        &s,
        "open",
        &["pod-security.kubernetes.io/enforce=privileged"],
    );
    s.kubectl(&[&privileged[..], &["open"]].concat());
    namespace(&s, "free", &[]);
    s.kubectl(&[&privileged[..], &["free"]].concat());
    let (ok, _, stderr) = s.kubectl_result(
        &[&["--token", "alice-token"][..], &privileged[..], &["plain"]].concat(),
        None,
    );
    assert!(ok, "{stderr}");
}
