//! `autoscaling/v1` HorizontalPodAutoscalers beside `autoscaling/v2`, through the real
//! kubectl: one object read and written through both versions (stored as v2), v1's CPU
//! target as v2's metric and back, what v1 cannot express kept in upstream's annotations
//! across a v1 client's apply, both versions in discovery (v2 preferred), listed and
//! printed, and bad v1 input refused with upstream's messages for the converted object.

mod common;

/// The resource as kubectl must name it to get a version other than the preferred one
/// (`hpa.v1.autoscaling` expands the short name to the preferred version).
const V1_HPA: &str = "horizontalpodautoscalers.v1.autoscaling";

use common::{json, TestServer};

const V1: &str = "apiVersion: autoscaling/v1
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: default}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 2
  maxReplicas: 6
  targetCPUUtilizationPercentage: 50
";

#[test]
fn a_v1_hpa_is_the_same_object_as_the_v2_one() {
    let s = TestServer::start();
    let versions = s.kubectl(&["api-versions"]);
    assert!(
        versions.lines().any(|l| l == "autoscaling/v1")
            && versions.lines().any(|l| l == "autoscaling/v2"),
        "{versions}"
    );
    s.kubectl_stdin(&["apply", "-f", "-"], Some(V1));

    // the preferred version (v2) sees the CPU target as a metric
    let v2 = json(&s, &["get", "hpa", "web", "-o", "json"]);
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(
        v2["spec"]["metrics"],
        serde_json::json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 50}}}])
    );
    assert_eq!(v2["spec"]["minReplicas"], 2);
    let v1 = json(&s, &["get", V1_HPA, "web", "-o", "json"]);
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
    assert_eq!(v1["metadata"]["uid"], v2["metadata"]["uid"]);

    // a v2 client adds a memory metric; v1 carries it in upstream's annotation...
    s.kubectl(&[
        "patch",
        "horizontalpodautoscalers.v2.autoscaling",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"metrics":[
            {"type":"Resource","resource":{"name":"cpu","target":{"type":"Utilization","averageUtilization":50}}},
            {"type":"Resource","resource":{"name":"memory","target":{"type":"AverageValue","averageValue":"300Mi"}}}]}}"#,
    ]);
    let v1 = json(&s, &["get", V1_HPA, "web", "-o", "json"]);
    let other = v1["metadata"]["annotations"]["autoscaling.alpha.kubernetes.io/metrics"]
        .as_str()
        .unwrap_or_else(|| panic!("the other metrics annotation: {v1:#}"));
    assert!(other.contains(r#""targetAverageValue":"300Mi""#), "{other}");
    // ...so a v1 client changing the CPU target keeps it
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&V1.replace(
            "targetCPUUtilizationPercentage: 50",
            "targetCPUUtilizationPercentage: 70",
        )),
    );
    let v2 = json(&s, &["get", "hpa", "web", "-o", "json"]);
    let metrics = v2["spec"]["metrics"].as_array().expect("metrics");
    assert_eq!(metrics.len(), 2, "{metrics:#?}");
    assert_eq!(metrics[0]["resource"]["target"]["averageUtilization"], 70);
    assert_eq!(metrics[1]["resource"]["name"], "memory");
    assert!(
        v2["metadata"]["annotations"]
            .get("autoscaling.alpha.kubernetes.io/metrics")
            .is_none(),
        "the annotation is v1's view only, not stored: {v2:#}"
    );

    // listed and printed through either version
    let table = s.kubectl(&["get", V1_HPA]);
    assert!(
        table.contains("Deployment/web") && table.contains("cpu: <unknown>/70%"),
        "{table}"
    );
    let listed = json(&s, &["get", V1_HPA, "-A", "-o", "json"]);
    assert_eq!(
        listed["items"][0]["spec"]["targetCPUUtilizationPercentage"],
        70
    );

    // bad v1 input: upstream validates the converted object
    let err = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some(&V1.replace("maxReplicas: 6", "maxReplicas: 1")),
    );
    assert!(
        err.contains("spec.maxReplicas")
            && err.contains("must be greater than or equal to `minReplicas`"),
        "{err}"
    );
    let explained = s.kubectl(&[
        "explain",
        "hpa.spec.targetCPUUtilizationPercentage",
        "--api-version=autoscaling/v1",
    ]);
    assert!(explained.contains("VERSION:    v1"), "{explained}");
    s.kubectl(&["delete", V1_HPA, "web"]);
    let gone = s.kubectl_fails(&["get", "hpa", "web"], None);
    assert!(
        gone.contains("NotFound") || gone.contains("not found"),
        "{gone}"
    );
}
