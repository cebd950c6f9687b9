//! `/openapi/v2` with the real kubectl 1.37: for kinds without a PATCH operation in their v3
//! document (the create-only reviews) kubectl asks v2 whether the server validates fields
//! and, as it does not, validates the object itself against v2's definitions. Without a v2
//! document (or with JSON or a 406 where client-go asks for protobuf) `kubectl create -f` of
//! a review fails unless given `--validate=false`.

mod common;

use axum::http;
use common::TestServer;
use serde_json::Value;

const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// `kubectl create -f -` of `body` with `-v=6`, which logs every request: (success, stdout,
/// stderr).
fn create(s: &TestServer, body: &str, jsonpath: &str) -> (bool, String, String) {
    s.kubectl_result(
        &[
            "create",
            "-f",
            "-",
            "-o",
            &format!("jsonpath={jsonpath}"),
            "-v=6",
        ],
        Some(body),
    )
}

/// kubectl's `-v=6` log has the apiserver answering its GET of `/openapi/v2`.
fn asked_for_v2(log: &str) -> bool {
    log.lines().any(|l| {
        l.contains("\"Response\"")
            && l.contains("/openapi/v2?")
            && (l.contains("status=\"200 OK\"") || l.contains("status=\"304 Not Modified\""))
    })
}

/// The lines of kubectl's output that are not its `-v` log.
fn errors(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.starts_with('I') && !l.starts_with('\t') && !l.starts_with(" >"))
        .collect::<Vec<_>>()
        .join("\n")
}

const SAR: &str = "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: jane\n  groups: [system:authenticated]\n  resourceAttributes: {namespace: default, verb: list, resource: pods}\n";

#[test]
fn kubectl_creates_reviews_validating_them_with_openapi_v2() {
    let s = TestServer::start();

    let (ok, out, err) = create(&s, SAR, "{.status.allowed}");
    assert!(ok, "{}", errors(&err));
    assert_eq!(out, "false");
    assert!(
        asked_for_v2(&err),
        "kubectl did not read /openapi/v2:\n{err}"
    );

    let local = SAR
        .replace(
            "kind: SubjectAccessReview",
            "kind: LocalSubjectAccessReview\nmetadata: {namespace: default}",
        )
        .replace(
            "user: jane\n  groups: [system:authenticated]",
            "groups: [system:masters]",
        );
    let (ok, out, err) = create(&s, &local, "{.status.allowed}");
    assert!(ok, "{}", errors(&err));
    assert_eq!(out, "true");

    let rules = "apiVersion: authorization.k8s.io/v1\nkind: SelfSubjectRulesReview\nspec:\n  namespace: default\n";
    let (ok, out, err) = create(&s, rules, "{.status.resourceRules[0].verbs}");
    assert!(ok, "{}", errors(&err));
    assert_eq!(out, r#"["*"]"#);

    let token = format!(
        "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: {}\n",
        s.server().token()
    );
    let (ok, out, err) = create(&s, &token, "{.status.authenticated} {.status.user.groups}");
    assert!(ok, "{}", errors(&err));
    assert!(out.starts_with("true "), "{out}");
    assert!(out.contains("system:masters"), "{out}");
    assert!(
        asked_for_v2(&err),
        "kubectl did not read /openapi/v2:\n{err}"
    );
}

#[test]
fn kubectl_rejects_a_review_with_an_unknown_or_mistyped_field_before_sending_it() {
    let s = TestServer::start();
    let unknown = SAR.replace("  user: jane\n", "  user: jane\n  bogus: 1\n");
    let (ok, _, err) = create(&s, &unknown, "{.status.allowed}");
    assert!(!ok, "created a review with spec.bogus");
    assert!(
        asked_for_v2(&err),
        "kubectl did not read /openapi/v2:\n{err}"
    );
    let msg = errors(&err);
    // kubectl's own validation against the v2 definitions, not a server error
    assert!(
        msg.contains(r#"ValidationError(SubjectAccessReview.spec): unknown field "bogus" in io.k8s.api.authorization.v1.SubjectAccessReviewSpec"#),
        "{msg}"
    );
    assert!(msg.contains("--validate=false"), "{msg}");
    assert!(
        !err.contains("verb=\"POST\""),
        "kubectl sent the review anyway:\n{err}"
    );

    let mistyped = SAR.replace(
        "groups: [system:authenticated]",
        "groups: system:authenticated",
    );
    let (ok, _, err) = create(&s, &mistyped, "{.status.allowed}");
    assert!(!ok, "created a review with a string for spec.groups");
    let msg = errors(&err);
    assert!(
        msg.contains(r#"ValidationError(SubjectAccessReview.spec.groups): invalid type for io.k8s.api.authorization.v1.SubjectAccessReviewSpec.groups: got "string", expected "array""#),
        "{msg}"
    );

    // a required field: spec
    let no_spec =
        "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nmetadata: {name: x}\n";
    let (ok, _, err) = create(&s, no_spec, "{.status.allowed}");
    assert!(!ok);
    assert!(
        errors(&err).contains(
            r#"missing required field "spec" in io.k8s.api.authorization.v1.SubjectAccessReview"#
        ),
        "{err}"
    );

    // the server itself takes what kubectl refused: the refusal above was kubectl's
    let (ok, out, err) = s.kubectl_result(
        &[
            "create",
            "--validate=false",
            "-f",
            "-",
            "-o",
            "jsonpath={.status.allowed}",
        ],
        Some(&unknown),
    );
    assert!(ok, "{err}");
    assert_eq!(out, "false");
}

/// GET `/openapi/v2` with `headers`: (status, headers, body).
fn get(s: &TestServer, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, Vec<u8>) {
    s.rt.block_on(async {
        let client = common::kubers::client(s.server()).await;
        let mut req = http::Request::get("/openapi/v2");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(kube::client::Body::empty()).expect("request");
        let resp = client.send(req).await.expect("GET /openapi/v2");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect_bytes()
            .await
            .expect("body")
            .to_vec();
        (status, headers, body)
    })
}

#[test]
fn openapi_v2_is_swagger_json_or_gnostic_protobuf_with_an_etag() {
    let s = TestServer::start();

    let (status, headers, body) = get(&s, &[("accept", "application/json")]);
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let doc: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(doc["swagger"], "2.0");
    let pod = &doc["definitions"]["io.k8s.api.core.v1.Pod"];
    assert_eq!(
        pod["x-kubernetes-group-version-kind"],
        serde_json::json!([{"group": "", "version": "v1", "kind": "Pod"}])
    );
    assert_eq!(
        pod["properties"]["spec"]["$ref"],
        "#/definitions/io.k8s.api.core.v1.PodSpec"
    );
    let post = &doc["paths"]["/apis/authorization.k8s.io/v1/subjectaccessreviews"]["post"];
    assert_eq!(post["x-kubernetes-action"], "post");
    assert_eq!(
        post["x-kubernetes-group-version-kind"]["kind"],
        "SubjectAccessReview"
    );
    assert_eq!(post["parameters"][0]["in"], "body");
    let etag = headers["etag"].to_str().expect("etag").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    // revalidation, as kubectl's HTTP cache does it
    let (status, _, body) = get(
        &s,
        &[("accept", "application/json"), ("if-none-match", &etag)],
    );
    assert_eq!((status, body.len()), (304, 0));

    // what client-go asks for: gnostic's Document, whose field 1 is `swagger`
    let (status, headers, body) = get(&s, &[("accept", PROTOBUF)]);
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert!(body.starts_with(b"\x0a\x032.0"), "{:?}", &body[..8]);
    assert_ne!(headers["etag"].to_str().expect("etag"), etag);
    let pb = String::from_utf8_lossy(&body);
    assert!(pb.contains("io.k8s.api.core.v1.Pod"));
    assert!(pb.contains("x-kubernetes-group-version-kind"));

    let (status, _, _) = get(&s, &[("accept", "application/vnd.kubernetes.protobuf")]);
    assert_eq!(status, 406);
}
