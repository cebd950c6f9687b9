//! ServiceAccount tokens end to end with the real kubectl 1.37: TokenRequest (`kubectl
//! create token`), the tokens authenticating as their ServiceAccount under RBAC, refusal of
//! expired, foreign-signed, tampered and unbound tokens, and TokenReview.

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{write, TestServer};
use serde_json::{json, Value};

/// kubectl as the holder of `token`: (success, stdout, stderr).
fn as_token(s: &TestServer, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--token", token];
    all.extend_from_slice(args);
    let out = s.kubectl_output(&all, None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn whoami(s: &TestServer, token: &str) -> Result<Value, String> {
    match as_token(s, token, &["auth", "whoami", "-o", "json"]) {
        (true, out, _) => Ok(serde_json::from_str(&out).expect("whoami JSON")),
        (false, _, err) => Err(err),
    }
}

fn assert_unauthorized(s: &TestServer, token: &str, what: &str) {
    let err = whoami(s, token).expect_err(what);
    assert!(err.contains("Unauthorized"), "{what}: {err}");
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn part(token: &str, i: usize) -> Value {
    let p = token.split('.').nth(i).expect("JWT part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("base64url")).expect("JSON")
}

/// Sign `header.claims` with the PKCS#8 PEM key in `key_file` (ES256, r||s).
fn sign(key_pem: &str, header: &Value, claims: &Value) -> String {
    let b64: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("PEM");
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &der,
        &rng,
    )
    .expect("P-256 key");
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(&rng, input.as_bytes()).expect("signing");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// A fresh P-256 key no apiserver knows, PKCS#8 PEM.
fn foreign_key() -> String {
    let rng = ring::rand::SystemRandom::new();
    let der = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .expect("key");
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der.as_ref())
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[test]
fn create_token_authenticates_as_the_service_account_under_rbac() {
    let s = TestServer::start();
    s.kubectl(&["create", "namespace", "dev"]);
    s.kubectl(&["create", "serviceaccount", "bot", "-n", "dev"]);
    let sa_uid = s.kubectl(&[
        "get",
        "sa",
        "bot",
        "-n",
        "dev",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let token = s.kubectl(&["create", "token", "bot", "-n", "dev"]);
    let token = token.trim();

    // upstream's claims
    let header = part(token, 0);
    assert_eq!(header["alg"], "ES256");
    let claims = part(token, 1);
    assert_eq!(
        claims["iss"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(claims["sub"], "system:serviceaccount:dev:bot");
    assert_eq!(
        claims["aud"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        3600
    );
    assert_eq!(claims["nbf"], claims["iat"]);
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert_eq!(
        claims["kubernetes.io"],
        json!({"namespace": "dev", "serviceaccount": {"name": "bot", "uid": sa_uid}})
    );

    // it authenticates as the ServiceAccount
    let who = whoami(&s, token).expect("whoami with the token");
    let user = &who["status"]["userInfo"];
    assert_eq!(user["username"], "system:serviceaccount:dev:bot");
    assert_eq!(user["uid"], sa_uid.as_str());
    assert_eq!(
        user["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:dev",
            "system:authenticated"
        ])
    );

    // RBAC applies to it: forbidden, then allowed once bound, as upstream words it
    let (ok, _, err) = as_token(&s, token, &["get", "pods", "-n", "dev"]);
    assert!(!ok);
    assert!(
        err.contains(r#"User "system:serviceaccount:dev:bot" cannot list resource "pods""#),
        "{err}"
    );
    s.kubectl(&[
        "create",
        "rolebinding",
        "bot-view",
        "-n",
        "dev",
        "--clusterrole=view",
        "--serviceaccount=dev:bot",
    ]);
    eventually("the binding to allow the service account", || {
        as_token(&s, token, &["get", "pods", "-n", "dev"]).0
    });

    // a token for another audience is not for the apiserver
    let vault = s.kubectl(&["create", "token", "bot", "-n", "dev", "--audience=vault"]);
    assert_eq!(part(vault.trim(), 1)["aud"], json!(["vault"]));
    assert_unauthorized(&s, vault.trim(), "a token for another audience");

    // --duration becomes expirationSeconds; under 10 minutes is upstream's 422
    let long = s.kubectl(&["create", "token", "bot", "-n", "dev", "--duration=2h"]);
    let c = part(long.trim(), 1);
    assert_eq!(
        c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat"),
        7200
    );
    let err = s.kubectl_fails(
        &["create", "token", "bot", "-n", "dev", "--duration=5m"],
        None,
    );
    assert!(
        err.contains("spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes"),
        "{err}"
    );
    let err = s.kubectl_fails(&["create", "token", "nobody", "-n", "dev"], None);
    assert!(
        err.contains(r#"serviceaccounts "nobody" not found"#),
        "{err}"
    );

    // TokenRequest needs `create` on serviceaccounts/token: the bot (view) may not
    let (ok, _, err) = as_token(&s, token, &["create", "token", "bot", "-n", "dev"]);
    assert!(!ok);
    assert!(
        err.contains(r#"cannot create resource "serviceaccounts/token""#),
        "{err}"
    );

    // deleting the ServiceAccount revokes its tokens, recreating it does not restore them
    s.kubectl(&["delete", "serviceaccount", "bot", "-n", "dev"]);
    s.kubectl(&["create", "serviceaccount", "bot", "-n", "dev"]);
    assert_unauthorized(&s, token, "a token of a deleted ServiceAccount");
}

#[test]
fn expired_foreign_and_tampered_tokens_are_refused() {
    let s = TestServer::start();
    s.kubectl(&["create", "serviceaccount", "bot"]);
    let token = s.kubectl(&["create", "token", "bot"]).trim().to_string();
    let header = part(&token, 0);
    let claims = part(&token, 1);
    let key = std::fs::read_to_string(s.server().data_dir().join("server/tls/service-account.key"))
        .expect("the signing key next to the CA");

    // Re-signing the same claims with the server's key works: the forgeries below fail
    // for the one thing they change.
    let resigned = sign(&key, &header, &claims);
    assert_eq!(
        whoami(&s, &resigned).expect("re-signed token")["status"]["userInfo"]["username"],
        "system:serviceaccount:default:bot"
    );

    let mut expired = claims.clone();
    expired["iat"] = json!(now() - 4000);
    expired["nbf"] = json!(now() - 4000);
    expired["exp"] = json!(now() - 120);
    assert_unauthorized(&s, &sign(&key, &header, &expired), "an expired token");

    let mut future = claims.clone();
    future["nbf"] = json!(now() + 600);
    assert_unauthorized(&s, &sign(&key, &header, &future), "a not-yet-valid token");

    let mut issuer = claims.clone();
    issuer["iss"] = json!("https://elsewhere");
    assert_unauthorized(&s, &sign(&key, &header, &issuer), "another issuer");

    assert_unauthorized(
        &s,
        &sign(&foreign_key(), &header, &claims),
        "a foreign-signed token",
    );

    // tampered: another subject under the original signature
    let mut admin = claims.clone();
    admin["sub"] = json!("system:serviceaccount:kube-system:admin");
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(admin.to_string()),
        parts[2]
    );
    assert_unauthorized(&s, &tampered, "a tampered token");
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("sig");
    sig[10] ^= 1;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
    assert_unauthorized(&s, &flipped, "a token with a flipped signature bit");

    // the genuine token still works after all that
    assert!(whoami(&s, &token).is_ok());
}

#[test]
fn a_token_bound_to_a_pod_ends_with_the_pod() {
    let s = TestServer::start();
    s.kubectl(&["create", "serviceaccount", "bot"]);
    let pod = write(
        &s,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  serviceAccountName: bot\n  containers:\n  - name: c\n    image: busybox\n",
    );
    s.kubectl(&["create", "-f", &pod]);
    let pod_uid = s.kubectl(&["get", "pod", "p", "-o", "jsonpath={.metadata.uid}"]);
    let token = s
        .kubectl(&[
            "create",
            "token",
            "bot",
            "--bound-object-kind=Pod",
            "--bound-object-name=p",
        ])
        .trim()
        .to_string();
    assert_eq!(
        part(&token, 1)["kubernetes.io"]["pod"],
        json!({"name": "p", "uid": pod_uid})
    );
    let who = whoami(&s, &token).expect("the pod exists: the token works");
    // upstream's extra: the bound pod and the token's id
    let jti = part(&token, 1)["jti"].as_str().expect("jti").to_string();
    assert_eq!(
        who["status"]["userInfo"]["extra"],
        json!({
            "authentication.kubernetes.io/credential-id": [format!("JTI={jti}")],
            "authentication.kubernetes.io/pod-name": ["p"],
            "authentication.kubernetes.io/pod-uid": [pod_uid],
        })
    );

    // upstream's extension: what the admission plugin's volume asks for (3607 s, bound to a
    // pod, for the apiserver) is issued for a year with `warnafter`; the status keeps 3607 s
    let extended: Value = serde_json::from_str(&s.kubectl(&[
        "create",
        "token",
        "bot",
        "--bound-object-kind=Pod",
        "--bound-object-name=p",
        "--duration=3607s",
        "-o",
        "json",
    ]))
    .expect("TokenRequest JSON");
    let c = part(extended["status"]["token"].as_str().expect("token"), 1);
    let iat = c["iat"].as_i64().expect("iat");
    assert_eq!(c["exp"].as_i64().expect("exp") - iat, 365 * 24 * 3600);
    assert_eq!(c["kubernetes.io"]["warnafter"], json!(iat + 3607));
    let status_exp: jiff::Timestamp = extended["status"]["expirationTimestamp"]
        .as_str()
        .expect("expirationTimestamp")
        .parse()
        .expect("RFC 3339");
    assert_eq!(status_exp.as_second(), iat + 3607);
    for other in [
        vec!["create", "token", "bot", "--duration=3607s"],
        vec![
            "create",
            "token",
            "bot",
            "--bound-object-kind=Pod",
            "--bound-object-name=p",
            "--duration=3607s",
            "--audience=vault",
        ],
    ] {
        let c = part(s.kubectl(&other).trim(), 1);
        assert_eq!(
            c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat"),
            3607,
            "not extended: {other:?}"
        );
        assert_eq!(c["kubernetes.io"].get("warnafter"), None);
    }

    // bound to a pod of another ServiceAccount, or to a uid that is not the pod's: refused
    s.kubectl(&["create", "serviceaccount", "other"]);
    let err = s.kubectl_fails(
        &[
            "create",
            "token",
            "other",
            "--bound-object-kind=Pod",
            "--bound-object-name=p",
        ],
        None,
    );
    assert!(err.contains("different serviceaccount name"), "{err}");
    let err = s.kubectl_fails(
        &[
            "create",
            "token",
            "bot",
            "--bound-object-kind=Pod",
            "--bound-object-name=p",
            "--bound-object-uid=00000000-0000-0000-0000-000000000000",
        ],
        None,
    );
    assert!(err.contains("does not match the UID in record"), "{err}");
    let err = s.kubectl_fails(
        &[
            "create",
            "token",
            "bot",
            "--bound-object-kind=Pod",
            "--bound-object-name=gone",
        ],
        None,
    );
    assert!(err.contains(r#"pods "gone" not found"#), "{err}");

    s.kubectl(&["delete", "pod", "p", "--grace-period=0", "--force"]);
    assert_unauthorized(&s, &token, "a token bound to a deleted pod");
    // a new pod of the same name is another pod
    s.kubectl(&["create", "-f", &pod]);
    assert_unauthorized(&s, &token, "a token bound to a pod that was replaced");

    // a Secret binding works the same way
    s.kubectl(&["create", "secret", "generic", "sec", "--from-literal=a=b"]);
    let token = s
        .kubectl(&[
            "create",
            "token",
            "bot",
            "--bound-object-kind=Secret",
            "--bound-object-name=sec",
        ])
        .trim()
        .to_string();
    assert!(whoami(&s, &token).is_ok());
    s.kubectl(&["delete", "secret", "sec"]);
    assert_unauthorized(&s, &token, "a token bound to a deleted secret");
}

#[test]
fn token_review_answers_with_the_same_authenticator() {
    let s = TestServer::start();
    s.kubectl(&["create", "serviceaccount", "bot"]);
    let token = s.kubectl(&["create", "token", "bot"]).trim().to_string();
    let review = |token: &str, audiences: Value| -> Value {
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        });
        let f = write(&s, "review.json", &body.to_string());
        let out = s.kubectl(&[
            "create",
            "--raw",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            "-f",
            &f,
        ]);
        serde_json::from_str(&out).expect("TokenReview JSON")
    };
    let r = review(&token, json!([]));
    assert_eq!(r["kind"], "TokenReview");
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(
        r["status"]["user"]["username"],
        "system:serviceaccount:default:bot"
    );
    assert_eq!(
        r["status"]["user"]["groups"][1],
        "system:serviceaccounts:default"
    );

    let r = review("not-a-token", json!([]));
    assert_eq!(r["status"]["authenticated"], false, "{r}");

    let vault = s
        .kubectl(&["create", "token", "bot", "--audience=vault"])
        .trim()
        .to_string();
    assert_eq!(review(&vault, json!([]))["status"]["authenticated"], false);
    let r = review(&vault, json!(["vault"]));
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(r["status"]["audiences"], json!(["vault"]));
    // the answer names the asked audiences the token is meant for
    let r = review(&vault, json!(["other", "vault"]));
    assert_eq!(r["status"]["audiences"], json!(["vault"]), "{r}");

    // TokenReview is for the system: a ServiceAccount without a binding may not create one
    let (ok, _, err) = as_token(
        &s,
        &token,
        &[
            "create",
            "--raw",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            "-f",
            s.dir.path().join("review.json").to_str().expect("path"),
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );
}

fn pod_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{extra_spec}  initContainers:\n  - name: init\n    image: busybox\n  containers:\n  - name: a\n    image: busybox\n  - name: b\n    image: busybox\n    volumeMounts:\n    - name: own\n      mountPath: /var/run/secrets/kubernetes.io/serviceaccount\n  volumes:\n  - name: own\n    emptyDir: {{}}\n"
    )
}

#[test]
fn service_account_admission_defaults_the_account_and_mounts_the_token_volume() {
    // the plugin is on as in `kaze server` (Config::for_tests turns it off)
    let s = TestServer::start_with(|c| c.disable_admission_plugins.clear());
    s.kubectl(&["create", "namespace", "dev"]);
    let create = |name: &str, extra: &str| -> (bool, String) {
        let f = write(&s, &format!("{name}.yaml"), &pod_yaml(name, extra));
        let out = s.kubectl_output(&["create", "-n", "dev", "-f", &f], None);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // no `default` ServiceAccount yet (no controller-manager here): upstream's 403
    let (ok, err) = create("early", "");
    assert!(!ok);
    assert!(
        err.contains(r#"pods "early" is forbidden: error looking up service account dev/default: serviceaccount "default" not found"#),
        "{err}"
    );
    let (ok, err) = create("named", "  serviceAccountName: bot\n");
    assert!(!ok);
    assert!(
        err.contains("error looking up service account dev/bot"),
        "{err}"
    );

    s.kubectl(&["create", "serviceaccount", "default", "-n", "dev"]);
    let (ok, err) = create("web", "");
    assert!(ok, "{err}");
    let pod = common::json(&s, &["get", "pod", "web", "-n", "dev"]);
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], "default");
    assert_eq!(spec["serviceAccount"], "default");
    let vols = spec["volumes"].as_array().expect("volumes");
    assert_eq!(vols.len(), 2, "{vols:?}");
    let name = vols[1]["name"].as_str().expect("volume name");
    let suffix = name
        .strip_prefix("kube-api-access-")
        .expect("upstream's name");
    assert!(
        suffix.len() == 5
            && suffix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "{name}"
    );
    assert_eq!(
        vols[1]["projected"],
        json!({
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        })
    );
    let mount = json!([{"name": name, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]);
    assert_eq!(spec["initContainers"][0]["volumeMounts"], mount);
    assert_eq!(spec["containers"][0]["volumeMounts"], mount);
    // b already mounts something at the path: left as it was
    assert_eq!(
        spec["containers"][1]["volumeMounts"],
        json!([{"name": "own", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}])
    );

    // automountServiceAccountToken: false on the pod, or on its ServiceAccount, opts out;
    // the pod's true overrides the ServiceAccount's false
    let volumes = |pod: &str| -> usize {
        common::json(&s, &["get", "pod", pod, "-n", "dev"])["spec"]["volumes"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let (ok, err) = create("no-mount", "  automountServiceAccountToken: false\n");
    assert!(ok, "{err}");
    assert_eq!(volumes("no-mount"), 1);
    let off = common::json(&s, &["get", "pod", "no-mount", "-n", "dev"]);
    assert_eq!(off["spec"]["containers"][0].get("volumeMounts"), None);
    s.kubectl_stdin(
        &["apply", "-n", "dev", "-f", "-"],
        Some("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: quiet\nautomountServiceAccountToken: false\n"),
    );
    let (ok, err) = create("quiet", "  serviceAccountName: quiet\n");
    assert!(ok, "{err}");
    assert_eq!(volumes("quiet"), 1);
    let (ok, err) = create(
        "loud",
        "  serviceAccountName: quiet\n  automountServiceAccountToken: true\n",
    );
    assert!(ok, "{err}");
    assert_eq!(volumes("loud"), 2);
    // the deprecated field names the account when the new one is empty
    s.kubectl(&["create", "serviceaccount", "legacy", "-n", "dev"]);
    let (ok, err) = create("old", "  serviceAccount: legacy\n");
    assert!(ok, "{err}");
    assert_eq!(
        common::json(&s, &["get", "pod", "old", "-n", "dev"])["spec"]["serviceAccountName"],
        "legacy"
    );

    // mirror pods are the kubelet's: left alone, even with no ServiceAccount to find
    s.kubectl(&["create", "namespace", "static"]);
    let mirror = write(
        &s,
        "mirror.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: m\n  namespace: static\n  annotations:\n    kubernetes.io/config.mirror: abc\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: busybox\n",
    );
    s.kubectl(&["create", "-f", &mirror]);
    let m = common::json(&s, &["get", "pod", "m", "-n", "static"]);
    assert_eq!(m["spec"].get("volumes"), None);
    assert_eq!(m["spec"].get("serviceAccountName"), None);
}

/// Two apiservers on one etcd, each with its own data dir (so its own signing key): each
/// accepts the other's tokens through the public keys they publish in the store.
#[test]
fn apiservers_on_one_etcd_accept_each_others_tokens() {
    let etcd = testkit::Etcd::start();
    let a = TestServer::start_with(|c| c.storage.etcd_servers = vec![etcd.url()]);
    let b = TestServer::start_with(|c| c.storage.etcd_servers = vec![etcd.url()]);
    a.kubectl(&["create", "serviceaccount", "bot"]);
    let from_a = a.kubectl(&["create", "token", "bot"]).trim().to_string();
    let from_b = b.kubectl(&["create", "token", "bot"]).trim().to_string();
    assert_ne!(part(&from_a, 0)["kid"], part(&from_b, 0)["kid"], "two keys");
    for (server, token) in [(&b, &from_a), (&a, &from_b), (&a, &from_a)] {
        let who = whoami(server, token).expect("a token of either apiserver");
        assert_eq!(
            who["status"]["userInfo"]["username"],
            "system:serviceaccount:default:bot"
        );
    }

    // issuer discovery, readable by service accounts: either apiserver's JWKS verifies
    // either's tokens
    let (ok, config, err) = as_token(
        &a,
        &from_a,
        &["get", "--raw", "/.well-known/openid-configuration"],
    );
    assert!(ok, "{err}");
    let config: Value = serde_json::from_str(&config).expect("JSON");
    assert_eq!(
        config["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(
        config["jwks_uri"],
        "https://kubernetes.default.svc.cluster.local/openid/v1/jwks"
    );
    assert_eq!(
        config["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    let (ok, jwks, err) = as_token(&b, &from_b, &["get", "--raw", "/openid/v1/jwks"]);
    assert!(ok, "{err}");
    let jwks: Value = serde_json::from_str(&jwks).expect("JSON");
    for token in [&from_a, &from_b] {
        let kid = part(token, 0)["kid"].clone();
        let key = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap_or_else(|| panic!("{kid} in {jwks}"));
        assert_eq!(
            (&key["kty"], &key["crv"], &key["alg"]),
            (&json!("EC"), &json!("P-256"), &json!("ES256"))
        );
        let mut point = vec![4u8];
        for c in ["x", "y"] {
            point.extend(
                URL_SAFE_NO_PAD
                    .decode(key[c].as_str().expect(c))
                    .expect("base64url"),
            );
        }
        let (signed, sig) = token.rsplit_once('.').expect("JWS");
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
            .verify(
                signed.as_bytes(),
                &URL_SAFE_NO_PAD.decode(sig).expect("sig"),
            )
            .expect("the JWKS key verifies the token");
    }
}

/// A token naming a key nobody published (no credentials needed to send one) makes the
/// apiserver read the published keys at most once per interval (2 s), however many requests
/// carry such tokens; a key another apiserver publishes meanwhile is still accepted once the
/// interval is over.
#[test]
fn unknown_key_ids_cost_at_most_one_store_read_per_interval() {
    let etcd = testkit::Etcd::start();
    let a = TestServer::start_with(|c| c.storage.etcd_servers = vec![etcd.url()]);
    a.kubectl(&["create", "serviceaccount", "bot"]);
    let token = a.kubectl(&["create", "token", "bot"]).trim().to_string();
    let claims = part(&token, 1);
    let key = foreign_key();
    // Range RPCs etcd answered: every get and list of the store.
    let reads = || {
        common::etcd_metric(
            &etcd.url(),
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\"",
        )
    };
    let before = reads();
    let start = Instant::now();
    let requests = 20;
    for i in 0..requests {
        let header = json!({"alg": "ES256", "kid": format!("made-up-{i}")});
        assert_unauthorized(&a, &sign(&key, &header, &claims), "an unknown key id");
    }
    let read = reads() - before;
    // one read at the first request, then one per started interval at most
    let allowed = 1.0 + (start.elapsed().as_secs_f64() / 2.0).floor();
    assert!(
        read <= allowed,
        "{read} store reads for {requests} tokens with unknown key ids in {:?} (at most {allowed})",
        start.elapsed()
    );

    // A second apiserver starts (publishing its key) right after `a` read the keys: its
    // tokens authenticate on `a` once the interval is over.
    let header = json!({"alg": "ES256", "kid": "made-up-again"});
    let forged = sign(&key, &header, &claims);
    std::thread::sleep(Duration::from_millis(2100));
    assert_unauthorized(&a, &forged, "an unknown key id");
    let read_at = Instant::now();
    let b = TestServer::start_with(|c| c.storage.etcd_servers = vec![etcd.url()]);
    let from_b = b.kubectl(&["create", "token", "bot"]).trim().to_string();
    eventually("a's accepting b's freshly published key", || {
        whoami(&a, &from_b).is_ok()
    });
    assert!(
        read_at.elapsed() < Duration::from_secs(8),
        "accepted {:?} after the last read",
        read_at.elapsed()
    );
}

#[test]
fn issuer_discovery_needs_a_binding_for_other_users() {
    let tokens = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(tokens.path(), "alice-token-0123456789,alice,1001\n").expect("write");
    let path = tokens.path().to_path_buf();
    let s = TestServer::start_with(|c| c.token_auth_file = Some(path));
    let (ok, _, err) = as_token(
        &s,
        "alice-token-0123456789",
        &["get", "--raw", "/openid/v1/jwks"],
    );
    assert!(!ok);
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );
    // the admin may
    let jwks: Value =
        serde_json::from_str(&s.kubectl(&["get", "--raw", "/openid/v1/jwks"])).expect("JSON");
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1));
}
