//! Differences an operator walking through a session with upstream kubectl 1.37 met
//! (session 13), each checked against a real apiserver with the real kubectl.

mod common;

use common::{json, write, TestServer};

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: echo
        image: kaze/echo:1
";

/// `kubectl apply` (client-side) and later `kubectl apply --server-side`: kubectl moves the
/// client-side manager's fields to `kubectl` (a JSON patch of managedFields, whose map
/// entries carry `.`) and applies again. The second apply must keep the template's labels
/// (it removed the whole `labels` map, and the Deployment failed validation with
/// "`selector` does not match template `labels`", which kubectl printed as a warning).
#[test]
fn client_side_then_server_side_apply_migrates_without_a_warning() {
    let s = TestServer::start();
    let f = write(&s, "web.yaml", DEPLOYMENT);
    s.kubectl(&["apply", "-f", &f]);
    let (ok, out, err) = s.kubectl_result(&["apply", "--server-side", "-f", &f], None);
    assert!(ok, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "deployment.apps/web serverside-applied");
    assert!(
        !err.contains("Warning"),
        "upstream migrates silently: {err}"
    );
    let d = json(&s, &["get", "deploy", "web", "--show-managed-fields"]);
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["app"], "web");
    let managers: Vec<&str> = d["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(
        managers.contains(&"kubectl") && !managers.contains(&"kubectl-client-side-apply"),
        "the client-side manager's fields moved to kubectl: {managers:?}"
    );
    // and a change applied server-side afterwards lands
    let f = write(
        &s,
        "web.yaml",
        &DEPLOYMENT.replace("replicas: 1", "replicas: 2"),
    );
    let (ok, _, err) = s.kubectl_result(&["apply", "--server-side", "-f", &f], None);
    assert!(ok && !err.contains("Warning"), "{err}");
    let d = json(&s, &["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["app"], "web");
}
