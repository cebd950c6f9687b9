//! Dynamic admission webhooks through the real kubectl: a real HTTPS webhook server runs in
//! the test (axum over rustls, its certificate signed by a test CA given as `caBundle`) with
//! small real webhooks — one adds a label by JSONPatch, one denies names starting with
//! `bad-`, one sleeps past its timeout, one records what it is sent — reached by `url` and
//! by `service` (a Service whose Endpoints point at the test's server).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, State};
use axum::Json;
use base64::Engine;
use common::{json, TestServer};
use serde_json::{json, Value};
use tokio_rustls::rustls;

/// Every AdmissionReview request the webhooks were sent: (webhook path, request).
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

struct Hooks {
    port: u16,
    ca_bundle: String,
    seen: Seen,
}

impl Hooks {
    /// Requests `path` was sent for objects named `name`.
    fn requests(&self, path: &str, name: &str) -> Vec<Value> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(p, r)| p == path && r["name"] == name)
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{path}", self.port)
    }
}

const LABEL: &str = "kaze.test/mutated";

async fn webhook(
    State(seen): State<Seen>,
    Path(path): Path<String>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Json(review): Json<Value>,
) -> Json<Value> {
    let req = review["request"].clone();
    // recorded with the caller's port, which tells connections apart
    let mut recorded = req.clone();
    recorded["_peerPort"] = json!(peer.port());
    seen.lock().expect("lock").push((path.clone(), recorded));
    let uid = req["uid"].clone();
    let name = req["name"].as_str().unwrap_or("").to_string();
    let mut response = json!({"uid": uid, "allowed": true});
    match path.as_str() {
        "label" => {
            let patch = if req.pointer("/object/metadata/labels").is_some() {
                json!([{"op": "add", "path": format!("/metadata/labels/{}", LABEL.replace('/', "~1")), "value": "yes"}])
            } else {
                json!([{"op": "add", "path": "/metadata/labels", "value": {LABEL: "yes"}}])
            };
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&patch).expect("patch")));
        }
        "sidecar" => {
            let patch = json!([{"op": "add", "path": "/spec/containers/-", "value": {"name": "sidecar", "image": "kaze/busybox:1"}}]);
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&patch).expect("patch")));
        }
        "bad-patch" => {
            let patch = json!([{"op": "replace", "path": "/no/such/field", "value": 1}]);
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&patch).expect("patch")));
        }
        "deny" => {
            response["warnings"] = json!([format!("deny webhook saw {name}")]);
            if name.starts_with("bad-") {
                response["allowed"] = json!(false);
                response["status"] = json!({"code": 403, "reason": "Forbidden", "message": "names starting with bad- are not allowed"});
            }
        }
        "slow" => tokio::time::sleep(Duration::from_secs(4)).await,
        _ => {}
    }
    Json(
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
    )
}

/// The webhook server, its certificate valid for 127.0.0.1, `hooks.webhook-system.svc` and
/// `sliced.webhook-system.svc`.
fn start_hooks(s: &TestServer) -> Hooks {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "webhook-test-ca");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "hooks.webhook-system.svc".to_string(),
        "sliced.webhook-system.svc".to_string(),
    ])
    .expect("params");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let der_key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], der_key)
    .expect("server config");
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/{path}", axum::routing::post(webhook))
        .with_state(seen.clone());
    let listener =
        s.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    // the runtime stops (and with it the server) when the TestServer is dropped
    s.rt.spawn(component::https::serve(
        listener,
        Arc::new(config),
        app,
        shutdown,
    ));
    Hooks {
        port,
        ca_bundle: base64::engine::general_purpose::STANDARD.encode(ca_cert.pem()),
        seen,
    }
}

/// A webhook configuration of `kind` with one webhook per `(name, clientConfig, extra)`;
/// `extra` is YAML indented for a webhook's fields (rules etc.).
fn configuration(kind: &str, name: &str, hooks: &[(&str, String, &str)]) -> String {
    let mut y = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: {kind}\nmetadata:\n  name: {name}\nwebhooks:\n"
    );
    for (hook, client, extra) in hooks {
        y.push_str(&format!(
            "- name: {hook}\n  admissionReviewVersions: [v1]\n  sideEffects: None\n  clientConfig:\n{client}{extra}"
        ));
    }
    y
}

fn url_client(hooks: &Hooks, path: &str) -> String {
    format!(
        "    url: {}\n    caBundle: {}\n",
        hooks.url(path),
        hooks.ca_bundle
    )
}

fn rules(ops: &str, groups: &str, resources: &str) -> String {
    format!(
        "  rules:\n  - operations: {ops}\n    apiGroups: {groups}\n    apiVersions: [\"*\"]\n    resources: {resources}\n"
    )
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn apply(s: &TestServer, yaml: &str) {
    s.kubectl_stdin(&["apply", "-f", "-"], Some(yaml));
}

#[test]
fn mutation_denial_selectors_updates_and_deletes() {
    let s = TestServer::start();
    let hooks = start_hooks(&s);
    apply(&s, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: hooked\n  labels:\n    webhooks: \"on\"\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n");
    // the deny webhook is reached through a Service in front of the test's server
    apply(&s, &format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: webhook-system\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: hooks\n  namespace: webhook-system\nspec:\n  ports:\n  - port: 443\n    targetPort: {p}\n---\napiVersion: v1\nkind: Endpoints\nmetadata:\n  name: hooks\n  namespace: webhook-system\nsubsets:\n- addresses:\n  - ip: 127.0.0.1\n  ports:\n  - port: {p}\n",
        p = hooks.port
    ));
    let selected = "  namespaceSelector:\n    matchLabels:\n      webhooks: \"on\"\n";
    apply(
        &s,
        &configuration(
            "MutatingWebhookConfiguration",
            "add-label",
            &[(
                "label.kaze.test",
                url_client(&hooks, "label"),
                &format!(
                    "{}{selected}",
                    rules("[CREATE, UPDATE]", "[\"\"]", "[configmaps]")
                ),
            )],
        ),
    );
    let service_client = format!(
        "    service:\n      namespace: webhook-system\n      name: hooks\n      path: /deny\n    caBundle: {}\n",
        hooks.ca_bundle
    );
    apply(
        &s,
        &configuration(
            "ValidatingWebhookConfiguration",
            "deny-bad",
            &[
                (
                    "deny.kaze.test",
                    service_client,
                    &rules("[CREATE]", "[\"\"]", "[configmaps]"),
                ),
                (
                    "watched.kaze.test",
                    url_client(&hooks, "record"),
                    &format!(
                        "{}  objectSelector:\n    matchLabels:\n      watched: \"yes\"\n",
                        rules("[\"*\"]", "[\"\"]", "[configmaps]")
                    ),
                ),
                (
                    "status.kaze.test",
                    url_client(&hooks, "status"),
                    &rules("[UPDATE]", "[\"\"]", "[pods/status]"),
                ),
            ],
        ),
    );

    // mutation: the stored object carries the label the webhook added
    eventually("the mutating webhook", || {
        s.kubectl_result(&["create", "configmap", "probe", "-n", "hooked"], None);
        let (_, out, _) =
            s.kubectl_result(&["get", "cm", "probe", "-n", "hooked", "-o", "json"], None);
        let ok = serde_json::from_str::<Value>(&out)
            .is_ok_and(|cm| cm["metadata"]["labels"][LABEL] == "yes");
        s.kubectl_result(&["delete", "cm", "probe", "-n", "hooked"], None);
        ok
    });
    let (ok, _, err) = s.kubectl_result(
        &[
            "create",
            "configmap",
            "good",
            "-n",
            "hooked",
            "--from-literal=a=b",
        ],
        None,
    );
    assert!(ok, "{err}");
    // warnings from the webhook's response reach kubectl
    assert!(err.contains("Warning: deny webhook saw good"), "{err}");
    let good = json(&s, &["get", "cm", "good", "-n", "hooked"]);
    assert_eq!(good["metadata"]["labels"][LABEL], "yes", "{good}");
    assert_eq!(good["data"]["a"], "b");
    let review = &hooks.requests("label", "good")[0];
    assert_eq!(review["operation"], "CREATE");
    assert_eq!(review["namespace"], "hooked");
    assert_eq!(
        review["kind"],
        json!({"group": "", "version": "v1", "kind": "ConfigMap"})
    );
    assert_eq!(
        review["resource"],
        json!({"group": "", "version": "v1", "resource": "configmaps"})
    );
    assert_eq!(review["userInfo"]["username"], "kaze-admin", "{review}");
    assert_eq!(review["dryRun"], false);
    assert_eq!(review["options"]["kind"], "CreateOptions");
    assert!(review["oldObject"].is_null());

    // connections to a webhook are reused: more calls than connections
    for i in 0..5 {
        s.kubectl(&["create", "configmap", &format!("more-{i}"), "-n", "hooked"]);
    }
    let (calls, ports) = {
        let seen = hooks.seen.lock().expect("lock");
        let label: Vec<&Value> = seen
            .iter()
            .filter(|(p, _)| p == "label")
            .map(|(_, r)| r)
            .collect();
        let ports: std::collections::BTreeSet<u64> = label
            .iter()
            .filter_map(|r| r["_peerPort"].as_u64())
            .collect();
        (label.len(), ports.len())
    };
    assert!(
        calls >= 6 && ports < calls,
        "{calls} calls over {ports} connections"
    );

    // namespaceSelector: a namespace without the label is not sent to the mutating webhook
    s.kubectl(&["create", "configmap", "good", "-n", "plain"]);
    let plain = json(&s, &["get", "cm", "good", "-n", "plain"]);
    assert!(plain["metadata"]["labels"].get(LABEL).is_none(), "{plain}");
    assert_eq!(hooks.requests("label", "good").len(), 1);

    // denial: the webhook's message and code, as kubectl prints them
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad-one\n  namespace: plain\n"),
    );
    assert!(
        err.contains("Error from server (Forbidden): error when creating \"STDIN\": admission webhook \"deny.kaze.test\" denied the request: names starting with bad- are not allowed"),
        "{err}"
    );
    let (found, _, _) = s.kubectl_result(&["get", "cm", "bad-one", "-n", "plain"], None);
    assert!(!found, "a denied object is not stored");
    // upstream's webhook metrics
    let metrics = s.kubectl(&["get", "--raw", "/metrics"]);
    for line in [
        "apiserver_admission_webhook_request_total{code=\"200\",name=\"deny.kaze.test\",operation=\"CREATE\",rejected=\"true\",type=\"validating\"} 1",
        "apiserver_admission_webhook_rejection_count{error_type=\"no_error\",name=\"deny.kaze.test\",operation=\"CREATE\",rejection_code=\"403\",type=\"validating\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }

    // UPDATE: the mutating webhook gets the old object, and labels the new one again
    s.kubectl(&[
        "label",
        "cm",
        "good",
        "-n",
        "hooked",
        "color=red",
        "--overwrite",
    ]);
    let updates: Vec<Value> = hooks
        .requests("label", "good")
        .into_iter()
        .filter(|r| r["operation"] == "UPDATE")
        .collect();
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(
        updates[0]["oldObject"]["metadata"]["labels"],
        json!({LABEL: "yes"})
    );
    assert_eq!(updates[0]["object"]["metadata"]["labels"]["color"], "red");
    assert_eq!(updates[0]["options"]["kind"], "UpdateOptions");
    // a patch removing the label gets it back from the webhook
    s.kubectl(&["label", "cm", "good", "-n", "hooked", &format!("{LABEL}-")]);
    let good = json(&s, &["get", "cm", "good", "-n", "hooked"]);
    assert_eq!(
        good["metadata"]["labels"],
        json!({LABEL: "yes", "color": "red"})
    );

    // objectSelector: only objects labelled watched=yes (new or old) go to the recorder
    s.kubectl(&["create", "configmap", "unwatched", "-n", "plain"]);
    assert!(hooks.requests("record", "unwatched").is_empty());
    apply(&s, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\n  namespace: plain\n  labels:\n    watched: \"yes\"\n");
    assert_eq!(hooks.requests("record", "watched").len(), 1);
    // the old object still matches when the label goes away
    s.kubectl(&["label", "cm", "watched", "-n", "plain", "watched-"]);
    assert_eq!(
        hooks.requests("record", "watched")[1]["operation"],
        "UPDATE"
    );

    // DELETE: the old object, no new one
    s.kubectl(&["label", "cm", "watched", "-n", "plain", "watched=yes"]);
    s.kubectl(&["delete", "cm", "watched", "-n", "plain"]);
    let deletes: Vec<Value> = hooks
        .requests("record", "watched")
        .into_iter()
        .filter(|r| r["operation"] == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(deletes[0]["object"].is_null());
    assert_eq!(deletes[0]["oldObject"]["metadata"]["name"], "watched");
    assert_eq!(deletes[0]["options"]["kind"], "DeleteOptions");

    // subresources: `pods/status` matches status updates, not the pod itself
    apply(&s, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: plain\nspec:\n  containers:\n  - name: c\n    image: kaze/busybox:1\n");
    assert!(hooks.requests("status", "p").is_empty());
    s.kubectl(&[
        "patch",
        "pod",
        "p",
        "-n",
        "plain",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"message":"hello"}}"#,
    ]);
    let status = hooks.requests("status", "p");
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0]["subResource"], "status");
    assert_eq!(status[0]["object"]["status"]["message"], "hello");

    // the table printer: NAME WEBHOOKS AGE
    let table = s.kubectl(&["get", "validatingwebhookconfigurations"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "WEBHOOKS", "AGE"]);
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row[..2], ["deny-bad", "3"], "{table}");
}

#[test]
fn failure_policies_timeouts_and_configurations_are_never_sent_to_webhooks() {
    let s = TestServer::start();
    let hooks = start_hooks(&s);
    // a closed port: bind one and let it go
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let unreachable = format!(
        "    url: https://127.0.0.1:{closed}/x\n    caBundle: {}\n",
        hooks.ca_bundle
    );
    let slow = "  timeoutSeconds: 1\n";
    apply(
        &s,
        &configuration(
            "ValidatingWebhookConfiguration",
            "policies",
            &[
                (
                    "slow-fail.kaze.test",
                    url_client(&hooks, "slow"),
                    &format!("{}{slow}", rules("[CREATE]", "[\"\"]", "[configmaps]")),
                ),
                (
                    "slow-ignore.kaze.test",
                    url_client(&hooks, "slow"),
                    &format!(
                        "{}{slow}  failurePolicy: Ignore\n",
                        rules("[CREATE]", "[\"\"]", "[secrets]")
                    ),
                ),
                (
                    "gone-ignore.kaze.test",
                    unreachable.clone(),
                    &format!(
                        "{}  failurePolicy: Ignore\n",
                        rules("[CREATE]", "[\"\"]", "[serviceaccounts]")
                    ),
                ),
            ],
        ),
    );
    eventually("the slow webhook", || {
        !s.kubectl_result(&["create", "configmap", "probe"], None).0
    });
    let start = Instant::now();
    let err = s.kubectl_fails(&["create", "configmap", "slow"], None);
    let took = start.elapsed();
    assert!(
        err.contains(&format!(
            "Internal error occurred: failed calling webhook \"slow-fail.kaze.test\": failed to call webhook: Post \"{}?timeout=1s\": context deadline exceeded",
            hooks.url("slow")
        )),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(4),
        "timeoutSeconds 1 took {took:?}"
    );
    assert!(
        !s.kubectl_result(&["get", "cm", "slow"], None).0,
        "nothing stored"
    );

    // failurePolicy Ignore: the request goes on without the webhook
    s.kubectl(&["create", "secret", "generic", "ignored"]);
    s.kubectl(&["create", "serviceaccount", "ignored"]);
    assert_eq!(hooks.requests("slow", "ignored").len(), 1);
    let metrics = s.kubectl(&["get", "--raw", "/metrics"]);
    for line in [
        "apiserver_admission_webhook_fail_open_count{name=\"slow-ignore.kaze.test\",type=\"validating\"} 1",
        "apiserver_admission_webhook_fail_open_count{name=\"gone-ignore.kaze.test\",type=\"validating\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }

    // an unreachable webhook that fails closed for every resource...
    apply(
        &s,
        &configuration(
            "ValidatingWebhookConfiguration",
            "broken",
            &[(
                "gone-fail.kaze.test",
                unreachable,
                &rules("[\"*\"]", "[\"*\"]", "[\"*/*\"]"),
            )],
        ),
    );
    eventually("the broken webhook", || {
        let (ok, _, err) = s.kubectl_result(&["create", "namespace", "probe"], None);
        !ok && err.contains("failed calling webhook \"gone-fail.kaze.test\"")
    });
    // ...does not stand in the way of webhook configurations (never sent to webhooks),
    let recorder = configuration(
        "MutatingWebhookConfiguration",
        "recorder",
        &[(
            "record.kaze.test",
            url_client(&hooks, "record"),
            &rules("[\"*\"]", "[\"*\"]", "[\"*/*\"]"),
        )],
    );
    apply(&s, &recorder);
    s.kubectl(&["label", "mutatingwebhookconfiguration", "recorder", "x=y"]);
    // so it can be deleted, and everything works again
    s.kubectl(&["delete", "validatingwebhookconfiguration", "broken"]);
    eventually("the broken webhook to go", || {
        s.kubectl_result(&["create", "namespace", "after"], None).0
    });
    s.kubectl(&["delete", "mutatingwebhookconfiguration", "recorder"]);
    let seen = hooks.seen.lock().expect("lock");
    assert!(
        seen.iter().any(|(p, _)| p == "record"),
        "the recorder saw requests"
    );
    let about_configs: Vec<&Value> = seen
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r["resource"]["group"] == "admissionregistration.k8s.io")
        .collect();
    assert!(about_configs.is_empty(), "{about_configs:?}");
}

#[test]
fn dry_runs_bad_patches_and_invalid_configurations() {
    let s = TestServer::start();
    let hooks = start_hooks(&s);
    apply(
        &s,
        &configuration(
            "MutatingWebhookConfiguration",
            "mutators",
            &[
                (
                    "label.kaze.test",
                    url_client(&hooks, "label"),
                    &rules("[CREATE]", "[\"\"]", "[configmaps]"),
                ),
                (
                    "bad-patch.kaze.test",
                    url_client(&hooks, "bad-patch"),
                    &rules("[CREATE]", "[\"\"]", "[secrets]"),
                ),
            ],
        ),
    );
    eventually("the mutating webhook", || {
        let (_, out, _) = s.kubectl_result(
            &[
                "create",
                "configmap",
                "probe",
                "--dry-run=server",
                "-o",
                "json",
            ],
            None,
        );
        serde_json::from_str::<Value>(&out).is_ok_and(|cm| cm["metadata"]["labels"][LABEL] == "yes")
    });
    // dry run: webhooks without side effects are called with dryRun true; nothing is stored
    let out = s.kubectl(&[
        "create",
        "configmap",
        "dry",
        "--dry-run=server",
        "-o",
        "json",
    ]);
    let cm: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(cm["metadata"]["labels"][LABEL], "yes");
    let review = &hooks.requests("label", "dry")[0];
    assert_eq!(review["dryRun"], true);
    assert_eq!(review["options"]["dryRun"], json!(["All"]));
    assert!(
        !s.kubectl_result(&["get", "cm", "dry"], None).0,
        "a dry run stores nothing"
    );

    // a patch that does not apply is an error, and nothing is stored
    let err = s.kubectl_fails(&["create", "secret", "generic", "patched"], None);
    assert!(
        err.contains("applying the patch of admission webhook \"bad-patch.kaze.test\""),
        "{err}"
    );
    assert!(!s.kubectl_result(&["get", "secret", "patched"], None).0);

    // defaults
    let m = json(&s, &["get", "mutatingwebhookconfiguration", "mutators"]);
    let h = &m["webhooks"][0];
    assert_eq!(
        (
            &h["failurePolicy"],
            &h["matchPolicy"],
            &h["timeoutSeconds"],
            &h["reinvocationPolicy"]
        ),
        (
            &json!("Fail"),
            &json!("Equivalent"),
            &json!(10),
            &json!("Never")
        )
    );
    assert_eq!(
        (&h["namespaceSelector"], &h["objectSelector"]),
        (&json!({}), &json!({}))
    );
    assert_eq!(h["rules"][0]["scope"], "*");

    // discovery and OpenAPI
    let resources = s.kubectl(&["api-resources", "--api-group=admissionregistration.k8s.io"]);
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        assert!(resources.contains(kind), "{resources}");
    }
    let explained = s.kubectl(&[
        "explain",
        "validatingwebhookconfiguration.webhooks.sideEffects",
    ]);
    assert!(explained.contains("NoneOnDryRun"), "{explained}");

    // validation: 422s naming the fields
    let bad = configuration(
        "ValidatingWebhookConfiguration",
        "invalid",
        &[
            (
                "notqualified",
                url_client(&hooks, "x"),
                &format!(
                    "{}  timeoutSeconds: 31\n",
                    rules("[CREATE]", "[\"\"]", "[pods]")
                ),
            ),
            (
                "c.kaze.test",
                "    url: http://127.0.0.1/x\n".to_string(),
                &rules("[CREATE]", "[\"\"]", "[pods]"),
            ),
        ],
    );
    let err = s.kubectl_fails(&["apply", "-f", "-"], Some(&bad));
    for want in [
        "The ValidatingWebhookConfiguration \"invalid\" is invalid",
        "webhooks[0].name: Invalid value: \"notqualified\": should be a domain with at least three segments separated by dots",
        "webhooks[0].timeoutSeconds: Invalid value: 31: the timeout value must be between 1 and 30 seconds",
        "webhooks[1].clientConfig.url: Invalid value: \"http\": 'https' is the only allowed URL scheme",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
    let side_effects = configuration(
        "ValidatingWebhookConfiguration",
        "side-effects",
        &[(
            "a.kaze.test",
            url_client(&hooks, "x"),
            "  matchConditions:\n  - name: x\n    expression: \"object.x ==\"\n",
        )],
    )
    .replace("sideEffects: None", "sideEffects: Some");
    let err = s.kubectl_fails(&["apply", "-f", "-"], Some(&side_effects));
    assert!(
        err.contains("webhooks[0].sideEffects: Unsupported value: \"Some\": supported values: \"None\", \"NoneOnDryRun\""),
        "{err}"
    );
    assert!(
        err.contains(
            "webhooks[0].matchConditions[0].expression: Invalid value: \"object.x ==\": compilation failed: ERROR: <input>:1:12: Syntax error"
        ),
        "{err}"
    );
    assert!(
        !s.kubectl_result(&["get", "validatingwebhookconfiguration", "invalid"], None)
            .0
    );
}

#[test]
fn match_conditions_decide_which_requests_reach_a_webhook() {
    let s = TestServer::start();
    let hooks = start_hooks(&s);
    let conditions = "  matchConditions:\n  - name: named-match\n    expression: \"object.metadata.name.startsWith('match-')\"\n  - name: by-admin\n    expression: \"request.userInfo.username == 'kaze-admin' && oldObject == null\"\n";
    let broken =
        "  matchConditions:\n  - name: broken\n    expression: \"object.data.missing == 'x'\"\n";
    apply(
        &s,
        &configuration(
            "ValidatingWebhookConfiguration",
            "conditions",
            &[
                (
                    "record.kaze.test",
                    url_client(&hooks, "record"),
                    &format!(
                        "{}{conditions}",
                        rules("[CREATE, UPDATE]", "[\"\"]", "[configmaps]")
                    ),
                ),
                (
                    "broken-fail.kaze.test",
                    url_client(&hooks, "record-broken"),
                    &format!(
                        "{}{broken}",
                        rules("[CREATE]", "[\"\"]", "[serviceaccounts]")
                    ),
                ),
                (
                    "broken-ignore.kaze.test",
                    url_client(&hooks, "record-broken"),
                    &format!(
                        "{}{broken}  failurePolicy: Ignore\n",
                        rules("[CREATE]", "[\"\"]", "[secrets]")
                    ),
                ),
            ],
        ),
    );
    // the configuration is followed from the watch cache: wait until it selects requests
    eventually("the webhook to be called", || {
        let name = format!(
            "match-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("time")
                .as_nanos()
        );
        s.kubectl(&["create", "configmap", &name]);
        !hooks.requests("record", &name).is_empty()
    });
    s.kubectl(&["create", "configmap", "match-one"]);
    s.kubectl(&["create", "configmap", "other-one"]);
    assert_eq!(hooks.requests("record", "match-one").len(), 1);
    assert!(
        hooks.requests("record", "other-one").is_empty(),
        "a false condition skips the webhook"
    );
    // an update has an oldObject: the second condition is false
    s.kubectl(&["label", "configmap", "match-one", "x=y"]);
    assert_eq!(hooks.requests("record", "match-one").len(), 1);
    // a condition that fails to evaluate: failurePolicy Fail refuses, Ignore skips the webhook
    let err = s.kubectl_fails(&["create", "serviceaccount", "sa-one"], None);
    assert!(
        err.contains("failed calling webhook \"broken-fail.kaze.test\": failed evaluating match condition \"broken\""),
        "{err}"
    );
    assert!(err.contains("no such key: data"), "{err}");
    s.kubectl(&["create", "secret", "generic", "secret-one"]);
    assert!(s.kubectl_result(&["get", "secret", "secret-one"], None).0);
    assert!(hooks.requests("record-broken", "sa-one").is_empty());
    assert!(hooks.requests("record-broken", "secret-one").is_empty());
    s.kubectl(&["delete", "validatingwebhookconfiguration", "conditions"]);
}

#[test]
fn custom_resources_and_reinvocation() {
    let s = TestServer::start();
    let hooks = start_hooks(&s);
    apply(
        &s,
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: gadgets.hooks.kaze.test\nspec:\n  group: hooks.kaze.test\n  scope: Namespaced\n  names:\n    plural: gadgets\n    singular: gadget\n    kind: Gadget\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}\n",
    );
    s.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd/gadgets.hooks.kaze.test",
    ]);
    // "a-first" records and asks to be called again if a later webhook changes the object;
    // "b-label" (a later configuration by name) adds the label
    let gadgets = rules("[CREATE]", "[hooks.kaze.test]", "[gadgets]");
    apply(
        &s,
        &configuration(
            "MutatingWebhookConfiguration",
            "b-label",
            &[("label.kaze.test", url_client(&hooks, "label"), &gadgets)],
        ),
    );
    apply(
        &s,
        &configuration(
            "MutatingWebhookConfiguration",
            "a-first",
            &[(
                "first.kaze.test",
                url_client(&hooks, "first"),
                &format!("{gadgets}  reinvocationPolicy: IfNeeded\n"),
            )],
        ),
    );
    // a Service with an EndpointSlice and no Endpoints, in front of a validating webhook
    apply(&s, &format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: webhook-system\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: sliced\n  namespace: webhook-system\nspec:\n  ports:\n  - name: https\n    port: 8443\n    targetPort: {p}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: sliced-1\n  namespace: webhook-system\n  labels:\n    kubernetes.io/service-name: sliced\naddressType: IPv4\nendpoints:\n- addresses: [127.0.0.1]\n  conditions:\n    ready: true\nports:\n- name: https\n  port: {p}\n",
        p = hooks.port
    ));
    apply(
        &s,
        &configuration(
            "ValidatingWebhookConfiguration",
            "sliced",
            &[(
                "sliced.kaze.test",
                format!(
                    "    service:\n      namespace: webhook-system\n      name: sliced\n      port: 8443\n      path: /sliced\n    caBundle: {}\n",
                    hooks.ca_bundle
                ),
                &gadgets,
            )],
        ),
    );
    let gadget = |name: &str| {
        format!("apiVersion: hooks.kaze.test/v1\nkind: Gadget\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  size: 3\n")
    };
    eventually("both webhooks", || {
        s.kubectl_result(&["create", "-f", "-"], Some(&gadget("probe")));
        s.kubectl_result(&["delete", "gadget", "probe"], None);
        !hooks.requests("first", "probe").is_empty()
            && !hooks.requests("label", "probe").is_empty()
            && !hooks.requests("sliced", "probe").is_empty()
    });
    s.kubectl_stdin(&["create", "-f", "-"], Some(&gadget("g1")));
    let g = json(&s, &["get", "gadget", "g1"]);
    assert_eq!(g["metadata"]["labels"][LABEL], "yes", "{g}");
    assert_eq!(g["spec"]["size"], 3);
    let label = hooks.requests("label", "g1");
    assert_eq!(label.len(), 1, "{label:?}");
    assert_eq!(
        label[0]["kind"],
        json!({"group": "hooks.kaze.test", "version": "v1", "kind": "Gadget"})
    );
    assert_eq!(label[0]["resource"]["resource"], "gadgets");
    // called first, then once more because "b-label" changed the object after it
    let first = hooks.requests("first", "g1");
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first[0]["object"]["metadata"]["labels"]
        .get(LABEL)
        .is_none());
    assert_eq!(first[1]["object"]["metadata"]["labels"][LABEL], "yes");
    equivalent_versions(&s, &hooks);

    // the validating webhook behind the EndpointSlice saw the mutated object
    let sliced = hooks.requests("sliced", "g1");
    assert_eq!(sliced.len(), 1, "{sliced:?}");
    assert_eq!(sliced[0]["object"]["metadata"]["labels"][LABEL], "yes");
}

#[test]
fn exec_and_port_forward_are_connect_requests() {
    let s = TestServer::start();
    let hooks = start_hooks(&s);
    apply(
        &s,
        &configuration(
            "ValidatingWebhookConfiguration",
            "connect",
            &[(
                "deny.kaze.test",
                url_client(&hooks, "deny"),
                &rules("[CONNECT]", "[\"\"]", "[pods/exec, pods/portforward]"),
            )],
        ),
    );
    let pod = |name: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  containers:\n  - name: c\n    image: kaze/busybox:1\n")
    };
    apply(&s, &pod("bad-pod"));
    apply(&s, &pod("good-pod"));

    // a mutating webhook injecting a container: it is defaulted as a client's would be
    apply(
        &s,
        &configuration(
            "MutatingWebhookConfiguration",
            "sidecar",
            &[(
                "sidecar.kaze.test",
                url_client(&hooks, "sidecar"),
                &format!(
                    "{}  objectSelector:\n    matchLabels:\n      sidecar: \"yes\"\n",
                    rules("[CREATE]", "[\"\"]", "[pods]")
                ),
            )],
        ),
    );
    let injected = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: injected\n  namespace: default\n  labels:\n    sidecar: \"yes\"\nspec:\n  containers:\n  - name: c\n    image: kaze/busybox:1\n";
    eventually("the sidecar webhook", || {
        s.kubectl_stdin(&["apply", "-f", "-"], Some(injected));
        let p = json(&s, &["get", "pod", "injected"]);
        let injected = p["spec"]["containers"]
            .as_array()
            .is_some_and(|c| c.len() == 2);
        s.kubectl(&["delete", "pod", "injected"]);
        injected
    });
    s.kubectl_stdin(&["apply", "-f", "-"], Some(injected));
    let p = json(&s, &["get", "pod", "injected"]);
    let sidecar = &p["spec"]["containers"][1];
    assert_eq!(sidecar["name"], "sidecar", "{p}");
    assert_eq!(sidecar["imagePullPolicy"], "IfNotPresent");
    assert_eq!(sidecar["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(sidecar["terminationMessagePolicy"], "File");
    // creates are not CONNECT
    assert!(hooks.requests("deny", "bad-pod").is_empty());
    eventually("the CONNECT webhook", || {
        s.kubectl_result(&["exec", "bad-pod", "--", "true"], None);
        !hooks.requests("deny", "bad-pod").is_empty()
    });
    let (ok, _, err) = s.kubectl_result(&["exec", "bad-pod", "-c", "c", "--", "ls", "-l"], None);
    assert!(!ok);
    assert!(
        err.contains("admission webhook \"deny.kaze.test\" denied the request: names starting with bad- are not allowed"),
        "{err}"
    );
    let r = hooks.requests("deny", "bad-pod").pop().expect("a request");
    assert_eq!(r["operation"], "CONNECT");
    assert_eq!(r["subResource"], "exec");
    assert_eq!(
        r["kind"],
        json!({"group": "", "version": "v1", "kind": "PodExecOptions"})
    );
    assert_eq!(r["resource"]["resource"], "pods");
    assert_eq!(r["object"]["command"], json!(["ls", "-l"]));
    assert_eq!(r["object"]["container"], "c");
    assert!(r["options"].is_null() && r["oldObject"].is_null());

    // allowed: the request goes on to the pod's node (there is none here: a different error)
    let (ok, _, err) = s.kubectl_result(&["exec", "good-pod", "--", "true"], None);
    assert!(!ok);
    assert!(!err.contains("denied the request"), "{err}");
    assert_eq!(
        hooks.requests("deny", "good-pod")[0]["operation"],
        "CONNECT"
    );
    // port-forward (kubectl wants the pod running)
    s.kubectl(&[
        "patch",
        "pod",
        "bad-pod",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ]);
    let (ok, _, err) = s.kubectl_result(&["port-forward", "pod/bad-pod", "18080:8080"], None);
    assert!(!ok);
    assert!(err.contains("denied the request"), "{err}");
    let r = hooks.requests("deny", "bad-pod").pop().expect("a request");
    assert_eq!(r["subResource"], "portforward");
    assert_eq!(r["object"]["kind"], "PodPortForwardOptions");
}

/// `matchPolicy`: a rule for `v1` selects a `v1beta1` request under `Equivalent` (the object
/// is sent, and patched, as `v1`), not under `Exact`.
fn equivalent_versions(s: &TestServer, hooks: &Hooks) {
    apply(
        s,
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: dials.hooks.kaze.test\nspec:\n  group: hooks.kaze.test\n  scope: Namespaced\n  names:\n    plural: dials\n    singular: dial\n    kind: Dial\n  versions:\n  - name: v1beta1\n    served: true\n    storage: false\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}\n",
    );
    s.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd/dials.hooks.kaze.test",
    ]);
    let v1_dials = "  rules:\n  - operations: [CREATE]\n    apiGroups: [hooks.kaze.test]\n    apiVersions: [v1]\n    resources: [dials]\n";
    apply(
        s,
        &configuration(
            "MutatingWebhookConfiguration",
            "dials",
            &[
                ("label.kaze.test", url_client(hooks, "label"), v1_dials),
                (
                    "exact.kaze.test",
                    url_client(hooks, "exact"),
                    &format!("{v1_dials}  matchPolicy: Exact\n"),
                ),
            ],
        ),
    );
    let dial = |version: &str, name: &str| {
        format!("apiVersion: hooks.kaze.test/{version}\nkind: Dial\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  knob: 7\n")
    };
    eventually("the dials webhooks", || {
        s.kubectl_result(&["create", "-f", "-"], Some(&dial("v1", "probe-dial")));
        s.kubectl_result(&["delete", "dials.hooks.kaze.test", "probe-dial"], None);
        !hooks.requests("exact", "probe-dial").is_empty()
    });
    s.kubectl_stdin(&["create", "-f", "-"], Some(&dial("v1beta1", "old-dial")));
    let d = json(s, &["get", "dials.v1beta1.hooks.kaze.test", "old-dial"]);
    assert_eq!(d["apiVersion"], "hooks.kaze.test/v1beta1");
    assert_eq!(d["metadata"]["labels"][LABEL], "yes", "{d}");
    assert_eq!(d["spec"]["knob"], 7);
    let sent = &hooks.requests("label", "old-dial")[0];
    assert_eq!(
        sent["kind"],
        json!({"group": "hooks.kaze.test", "version": "v1", "kind": "Dial"})
    );
    assert_eq!(sent["requestKind"]["version"], "v1beta1");
    assert_eq!(sent["resource"]["version"], "v1");
    assert_eq!(sent["requestResource"]["version"], "v1beta1");
    assert_eq!(sent["object"]["apiVersion"], "hooks.kaze.test/v1");
    assert!(
        hooks.requests("exact", "old-dial").is_empty(),
        "Exact does not match v1beta1"
    );
}
