//! The LimitRanger admission plugin through the real kubectl 1.37: a namespace's LimitRange
//! gives pods the requests and limits they lack (and says so in the `kubernetes.io/limit-ranger`
//! annotation), and refuses pods, in-place resizes and PersistentVolumeClaims outside its
//! `min`/`max`/`maxLimitRequestRatio` with upstream's messages.

mod common;

use common::{json, TestServer};

const RANGE: &str = r#"
apiVersion: v1
kind: LimitRange
metadata: {name: limits, namespace: team}
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 256Mi}
    defaultRequest: {cpu: 100m}
    max: {cpu: "1"}
    maxLimitRequestRatio: {memory: "4"}
  - type: Pod
    max: {cpu: 1500m}
  - type: PersistentVolumeClaim
    min: {storage: 1Gi}
    max: {storage: 10Gi}
"#;

fn pod(name: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: team}}\nspec:\n  containers:\n  - name: c\n    image: kaze/busybox:1\n    resources: {resources}\n"
    )
}

#[test]
fn limit_ranges_default_and_bound_pods_and_claims() {
    let s = TestServer::start();
    s.kubectl(&["create", "namespace", "team"]);
    s.kubectl_stdin(&["apply", "-f", "-"], Some(RANGE));

    // defaults for what a container lacks, said in the annotation; the QoS class follows
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&pod("plain", "{}")));
    let p = json(&s, &["get", "pod", "plain", "-n", "team", "-o", "json"]);
    let r = &p["spec"]["containers"][0]["resources"];
    assert_eq!(r["limits"]["cpu"], "500m", "{p}");
    assert_eq!(r["limits"]["memory"], "256Mi", "{p}");
    assert_eq!(r["requests"]["cpu"], "100m", "{p}");
    assert_eq!(
        r["requests"]["memory"], "256Mi",
        "defaultRequest from default: {p}"
    );
    assert_eq!(
        p["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c"
    );
    assert_eq!(p["status"]["qosClass"], "Burstable");

    // upstream's refusals
    let big = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some(&pod("big", "{limits: {cpu: '2'}}")),
    );
    assert!(
        big.contains(r#"pods "big" is forbidden: [maximum cpu usage per Container is 1, but limit is 2, maximum cpu usage per Pod is 1500m, but limit is 2]"#),
        "{big}"
    );
    let greedy = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some(&pod(
            "greedy",
            "{requests: {memory: 64Mi}, limits: {memory: 1Gi}}",
        )),
    );
    assert!(
        greedy.contains(r#"pods "greedy" is forbidden: memory max limit to request ratio per Container is 4, but provided ratio is 16.000000"#),
        "{greedy}"
    );
    let claim = |name: &str, size: &str| {
        format!("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: team}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: {size}}}}}\n")
    };
    let small = s.kubectl_fails(&["apply", "-f", "-"], Some(&claim("small", "500Mi")));
    assert!(
        small.contains(r#"persistentvolumeclaims "small" is forbidden: minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"#),
        "{small}"
    );
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&claim("fits", "2Gi")));
    // expanding a bound claim past the maximum is refused as a create would be; within it,
    // taken
    s.kubectl(&[
        "patch",
        "pvc",
        "fits",
        "-n",
        "team",
        "--subresource",
        "status",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"phase":"Bound","capacity":{"storage":"2Gi"}}}"#,
    ]);
    let expand = |size: &str| {
        s.kubectl_result(
            &[
                "patch",
                "pvc",
                "fits",
                "-n",
                "team",
                "--type",
                "merge",
                "-p",
                &format!(r#"{{"spec":{{"resources":{{"requests":{{"storage":"{size}"}}}}}}}}"#),
            ],
            None,
        )
    };
    let (ok, _, err) = expand("20Gi");
    assert!(
        !ok && err.contains(r#"persistentvolumeclaims "fits" is forbidden: maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi"#),
        "{err}"
    );
    let (ok, _, err) = expand("5Gi");
    assert!(ok, "{err}");

    // an in-place resize past the maximum is refused; within it, taken
    let resize = |cpu: &str| {
        s.kubectl_result(
            &["patch", "pod", "plain", "-n", "team", "--subresource", "resize", "-p",
              &format!(r#"{{"spec":{{"containers":[{{"name":"c","resources":{{"limits":{{"cpu":"{cpu}"}}}}}}]}}}}"#)],
            None,
        )
    };
    let (ok, _, err) = resize("1200m");
    assert!(
        !ok && err.contains("maximum cpu usage per Container is 1, but limit is 1200m"),
        "{err}"
    );
    let (ok, _, err) = resize("800m");
    assert!(ok, "{err}");

    // another namespace has no LimitRange: nothing is added
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata: {name: free, namespace: default}\nspec:\n  containers:\n  - name: c\n    image: kaze/busybox:1\n"),
    );
    let free = json(&s, &["get", "pod", "free", "-o", "json"]);
    assert!(
        free["spec"]["containers"][0]["resources"]
            .as_object()
            .is_none_or(|r| r.is_empty()),
        "{free}"
    );
    assert_eq!(free["status"]["qosClass"], "BestEffort");
}
