//! CustomResourceDefinitions against a real apiserver, driven by the real kubectl 1.37 and
//! kube-rs `DynamicObject`s: establishing, discovery, every verb, schema validation,
//! pruning, defaulting, status and scale subresources, printer columns, `kubectl explain`,
//! deletion of a CRD with its resources, and a second apiserver on one etcd.

mod common;

use std::time::Duration;

use common::TestServer;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use serde_json::{json, Value};

/// A namespaced `Widget` with a schema, defaults, status + scale and printer columns.
fn widget_crd(group: &str) -> String {
    format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames: [wd]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    selectableFields:
    - jsonPath: .spec.color
    subresources:
      status: {{}}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
        labelSelectorPath: .status.selector
    additionalPrinterColumns:
    - name: Replicas
      type: integer
      jsonPath: .spec.replicas
    - name: Image
      type: string
      jsonPath: .spec.image
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
    schema:
      openAPIV3Schema:
        type: object
        description: A Widget is a test kind.
        properties:
          spec:
            type: object
            description: What the widget should be.
            required: [image]
            properties:
              image:
                type: string
                description: The image the widget runs.
                pattern: '^[a-z0-9:./-]+$'
              replicas:
                type: integer
                minimum: 0
                default: 1
              color:
                type: string
                enum: [red, blue]
              free:
                type: object
                x-kubernetes-preserve-unknown-fields: true
          status:
            type: object
            properties:
              replicas:
                type: integer
              selector:
                type: string
"#
    )
}

/// A cluster-scoped `Gadget` without subresources or columns.
fn gadget_crd(group: &str) -> String {
    format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.{group}
spec:
  group: {group}
  scope: Cluster
  names:
    plural: gadgets
    kind: Gadget
  versions:
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
"#
    )
}

fn established(s: &TestServer, crd: &str) {
    s.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        &format!("crd/{crd}"),
    ]);
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn dynamic(v: Value) -> DynamicObject {
    serde_json::from_value(v).expect("dynamic object")
}

fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason, s.message),
        other => panic!("not an API error: {other}"),
    }
}

#[test]
fn kubectl_applies_a_crd_and_its_resources_with_columns_scale_and_explain() {
    let s = TestServer::start();
    let group = "kubectl.example.com";
    // prime kubectl's discovery cache before the CRD exists: it must refetch
    s.kubectl(&["get", "pods"]);
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&widget_crd(group)));
    established(&s, &format!("widgets.{group}"));
    let crds = s.kubectl(&["get", "crd"]);
    assert!(crds.starts_with("NAME"), "{crds}");
    assert!(crds.contains("CREATED AT"), "{crds}");
    assert!(crds.contains(&format!("widgets.{group}")), "{crds}");
    let crd: Value = serde_json::from_str(&s.kubectl(&[
        "get",
        "crd",
        &format!("widgets.{group}"),
        "-o",
        "json",
    ]))
    .expect("json");
    assert_eq!(crd["status"]["acceptedNames"]["kind"], "Widget");
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
    let names_accepted = crd["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "NamesAccepted")
        .expect("NamesAccepted")
        .clone();
    assert_eq!(names_accepted["status"], "True");
    assert_eq!(names_accepted["reason"], "NoConflicts");

    let cr = format!(
        "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w1\n  labels: {{app: demo}}\nspec:\n  image: nginx:1.27\n"
    );
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&cr));
    assert!(
        out.contains("widget.kubectl.example.com/w1 created"),
        "{out}"
    );
    // defaulted replicas, printed by the CRD's columns; the short name and category work
    let table = s.kubectl(&["get", "widgets"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "REPLICAS", "IMAGE", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..3], ["w1", "1", "nginx:1.27"], "{table}");
    // the date column is an age ("3s"), as upstream's server renders it
    let age = row[3];
    assert!(
        age.ends_with('s') && age[..age.len() - 1].parse::<u32>().is_ok(),
        "{table}"
    );
    assert!(s.kubectl(&["get", "wd"]).contains("w1"));
    assert!(s
        .kubectl(&["get", "all"])
        .contains(&format!("widget.{group}/w1")));
    let yaml = s.kubectl(&["get", "widget", "w1", "-o", "yaml"]);
    assert!(yaml.contains("replicas: 1"), "{yaml}");
    assert!(yaml.contains(&format!("apiVersion: {group}/v1")), "{yaml}");
    assert!(yaml.contains("generation: 1"), "{yaml}");

    // re-applying a change is a merge patch (CRs have no strategic merge patch)
    let changed = cr.replace("nginx:1.27", "nginx:1.28");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&changed));
    assert!(out.contains("configured"), "{out}");
    let w: Value =
        serde_json::from_str(&s.kubectl(&["get", "widget", "w1", "-o", "json"])).expect("json");
    assert_eq!(w["spec"]["image"], "nginx:1.28");
    assert_eq!(w["metadata"]["generation"], 2);

    // scale subresource
    let out = s.kubectl(&["scale", "widget", "w1", "--replicas=3"]);
    assert!(out.contains("scaled"), "{out}");
    let w: Value =
        serde_json::from_str(&s.kubectl(&["get", "widget", "w1", "-o", "json"])).expect("json");
    assert_eq!(w["spec"]["replicas"], 3);
    let scale: Value = serde_json::from_str(&s.kubectl(&[
        "get",
        "--raw",
        &format!("/apis/{group}/v1/namespaces/default/widgets/w1/scale"),
    ]))
    .expect("scale");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);

    // explain from the published OpenAPI
    let explain = s.kubectl(&["explain", "widgets.spec"]);
    assert!(explain.contains("What the widget should be."), "{explain}");
    assert!(explain.contains("The image the widget runs."), "{explain}");

    // validation error through kubectl, as upstream words it
    let bad = cr.replace("nginx:1.27", "nginx:1.27\n  replicas: many");
    let err = s.kubectl_fails(&["apply", "-f", "-"], Some(&bad));
    assert!(
        err.contains(r#"spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string""#),
        "{err}"
    );
    // metadata is checked as for built-in kinds (upstream's ValidateObjectMeta)
    let bad_label = cr.replace("{app: demo}", "{app: \"two words\"}");
    let err = s.kubectl_fails(&["apply", "-f", "-"], Some(&bad_label));
    assert!(
        err.contains(r#"metadata.labels: Invalid value: "two words": a valid label"#),
        "{err}"
    );
    // kubectl asks for strict field validation: an unknown field is refused
    let unknown = cr.replace("nginx:1.27", "nginx:1.27\n  foo: bar");
    let err = s.kubectl_fails(&["apply", "-f", "-"], Some(&unknown));
    assert!(
        err.contains(r#"strict decoding error: unknown field "spec.foo""#),
        "{err}"
    );
    // --validate=warn: stored without the field, with a warning
    let out = s.kubectl_output(&["apply", "--validate=warn", "-f", "-"], Some(&unknown));
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(r#"unknown field "spec.foo""#), "{stderr}");
    let w: Value =
        serde_json::from_str(&s.kubectl(&["get", "widget", "w1", "-o", "json"])).expect("json");
    assert!(w["spec"].get("foo").is_none(), "{w}");

    let out = s.kubectl(&["delete", "widget", "w1"]);
    assert!(out.contains("deleted"), "{out}");
    assert!(s
        .kubectl_fails(&["get", "widget", "w1"], None)
        .contains("not found"));
}

#[test]
fn crd_validation_gives_upstreams_field_errors() {
    let s = TestServer::start();
    let good = widget_crd("bad.example.com");
    let err = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some(&good.replace(
            "name: widgets.bad.example.com",
            "name: things.bad.example.com",
        )),
    );
    assert!(
        err.contains(r#"metadata.name: Invalid value: "things.bad.example.com": must be spec.names.plural+"."+spec.group"#),
        "{err}"
    );
    let err = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some(&good.replace("storage: true", "storage: false")),
    );
    assert!(
        err.contains("must have exactly one version marked as storage version"),
        "{err}"
    );
    let err = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some(&good.replace("scope: Namespaced", "scope: Global")),
    );
    assert!(
        err.contains(
            r#"spec.scope: Unsupported value: "Global": supported values: "Cluster", "Namespaced""#
        ),
        "{err}"
    );
    let err = s.kubectl_fails(&["apply", "-f", "-"], Some(&gadget_crd("example")));
    assert!(
        err.contains(
            r#"spec.group: Invalid value: "example": should be a domain with at least one dot"#
        ),
        "{err}"
    );
    let crds = s.kubectl(&["get", "crd"]);
    assert!(!crds.contains("widgets"), "{crds}");
}

#[test]
fn dynamic_objects_get_every_verb_status_and_schema_handling() {
    let s = TestServer::start();
    let group = "dyn.example.com";
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&widget_crd(group)));
    established(&s, &format!("widgets.{group}"));
    s.rt.block_on(async {
        let client = common::kubers::client(s.server()).await;
        // kube-rs's discovery (what the namespace and quota controllers use) finds the kind
        let discovery = kube::discovery::Discovery::new(client.clone())
            .filter(&[group])
            .run()
            .await
            .expect("discovery");
        let (found, caps) = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .find(|(r, _)| r.kind == "Widget")
            .expect("Widget discovered");
        assert_eq!(found.plural, "widgets");
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
        let subs: Vec<String> = caps.subresources.iter().map(|(r, _)| r.plural.clone()).collect();
        assert!(subs.iter().any(|p| p.ends_with("scale")), "{subs:?}");
        let ar = resource(group, "v1", "Widget", "widgets");
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
        // watch from now on
        let list = api.list(&ListParams::default()).await.expect("list");
        let rv = list.metadata.resource_version.clone().expect("rv");
        use futures::StreamExt;
        let mut watch = Box::pin(
            api.watch(&WatchParams::default().timeout(20), &rv)
                .await
                .expect("watch"),
        );

        // create: generateName, uid, timestamps, generation, defaults, pruning (no Strict)
        let created = api
            .create(
                &PostParams::default(),
                &dynamic(json!({
                    "apiVersion": format!("{group}/v1"), "kind": "Widget",
                    "metadata": {"generateName": "w-", "labels": {"tier": "a"}},
                    "spec": {"image": "busybox", "unknown": 1, "free": {"any": {"thing": true}}},
                    "status": {"replicas": 9},
                })),
            )
            .await
            .expect("create");
        let name = created.metadata.name.clone().expect("name");
        assert!(name.starts_with("w-"), "{name}");
        assert!(created.metadata.uid.is_some());
        assert!(created.metadata.creation_timestamp.is_some());
        assert_eq!(created.metadata.generation, Some(1));
        assert_eq!(created.data["spec"]["replicas"], 1, "defaulted");
        assert!(created.data["spec"].get("unknown").is_none(), "pruned");
        assert_eq!(created.data["spec"]["free"]["any"]["thing"], true, "preserved");
        assert!(created.data.get("status").is_none(), "status is not set by a create");

        match watch.next().await.expect("event").expect("ok") {
            WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some(name.as_str())),
            other => panic!("{other:?}"),
        }

        // schema errors are 422s with upstream's causes
        let e = api
            .create(
                &PostParams::default(),
                &dynamic(json!({
                    "apiVersion": format!("{group}/v1"), "kind": "Widget",
                    "metadata": {"name": "bad"},
                    "spec": {"image": "Not Valid", "replicas": -1, "color": "pink"},
                })),
            )
            .await
            .expect_err("invalid");
        let (code, reason, msg) = api_error(e);
        assert_eq!((code, reason.as_str()), (422, "Invalid"), "{msg}");
        assert!(msg.starts_with(&format!("Widget.{group} \"bad\" is invalid: [")), "{msg}");
        assert!(msg.contains("spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0"), "{msg}");
        assert!(msg.contains(r#"spec.color: Unsupported value: "pink": supported values: "red", "blue""#), "{msg}");
        assert!(msg.contains(r#"spec.image: Invalid value: "Not Valid": spec.image in body should match '^[a-z0-9:./-]+$'"#), "{msg}");
        let e = api
            .create(
                &PostParams::default(),
                &dynamic(json!({"apiVersion": format!("{group}/v1"), "kind": "Widget", "metadata": {"name": "noimage"}, "spec": {}})),
            )
            .await
            .expect_err("required");
        assert!(api_error(e).2.contains("spec.image: Required value"));

        // status subresource: spec changes there are ignored, status changes on the main
        // resource are ignored, generation moves only with the spec
        let st = api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"image": "ignored"}, "status": {"replicas": 2, "selector": "tier=a"}})),
            )
            .await
            .expect("status");
        assert_eq!(st.data["status"]["replicas"], 2);
        assert_eq!(st.data["spec"]["image"], "busybox");
        assert_eq!(st.metadata.generation, Some(1));
        let main = api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 4}, "status": {"replicas": 7}})),
            )
            .await
            .expect("merge patch");
        assert_eq!(main.data["spec"]["replicas"], 4);
        assert_eq!(main.data["status"]["replicas"], 2);
        assert_eq!(main.metadata.generation, Some(2));
        match watch.next().await.expect("event").expect("ok") {
            WatchEvent::Modified(o) => assert_eq!(o.data["status"]["replicas"], 2),
            other => panic!("{other:?}"),
        }

        // their scale is the built-in Scale: strategic merge patch works there
        let scaled = api
            .patch_scale(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"replicas": 5}})),
            )
            .await
            .expect("scale");
        assert_eq!(scaled.spec.and_then(|s| s.replicas), Some(5));
        assert_eq!(scaled.status.map(|s| s.selector), Some(Some("tier=a".to_string())));
        assert_eq!(api.get(&name).await.expect("get").data["spec"]["replicas"], 5);
        // strategic merge patch is a 415 for custom resources (JSON patch: below, kubectl)
        let e = api
            .patch(&name, &PatchParams::default(), &Patch::Strategic(json!({"spec": {"color": "blue"}})))
            .await
            .expect_err("smp");
        let (code, reason, msg) = api_error(e);
        assert_eq!((code, reason.as_str()), (415, "UnsupportedMediaType"), "{msg}");

        // update with a stale resourceVersion: 409
        let mut stale = created.clone();
        stale.data["spec"]["image"] = json!("other");
        let e = api
            .replace(&name, &PostParams::default(), &stale)
            .await
            .expect_err("stale");
        assert_eq!(api_error(e).0, 409);
        // custom resources allow no unconditional update
        let mut unconditional = api.get(&name).await.expect("get");
        unconditional.metadata.resource_version = None;
        let (code, _, msg) = api_error(
            api.replace(&name, &PostParams::default(), &unconditional)
                .await
                .expect_err("no resourceVersion"),
        );
        assert_eq!(code, 422);
        assert!(
            msg.ends_with("metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"),
            "{msg}"
        );
        let mut cur = api.get(&name).await.expect("get");
        cur.data["spec"]["image"] = json!("alpine");
        let replaced = api
            .replace(&name, &PostParams::default(), &cur)
            .await
            .expect("replace");
        assert_eq!(replaced.data["spec"]["image"], "alpine");

        // server-side apply creates and updates
        let applied = api
            .patch(
                "applied",
                &PatchParams::apply("test").force(),
                &Patch::Apply(json!({"apiVersion": format!("{group}/v1"), "kind": "Widget", "metadata": {"name": "applied", "labels": {"tier": "b"}}, "spec": {"image": "redis"}})),
            )
            .await
            .expect("apply");
        assert_eq!(applied.data["spec"]["replicas"], 1);
        assert!(applied.metadata.managed_fields.is_some());

        // dry run stores nothing
        api.create(
            &PostParams { dry_run: true, ..Default::default() },
            &dynamic(json!({"apiVersion": format!("{group}/v1"), "kind": "Widget", "metadata": {"name": "dry"}, "spec": {"image": "x"}})),
        )
        .await
        .expect("dry run");
        assert!(api.get_opt("dry").await.expect("get").is_none());

        // selectors
        let a = api.list(&ListParams::default().labels("tier=a")).await.expect("list");
        assert_eq!(a.items.len(), 1);
        let byname = api
            .list(&ListParams::default().fields("metadata.name=applied"))
            .await
            .expect("list");
        assert_eq!(byname.items.len(), 1);
        let page = api.list(&ListParams::default().limit(1)).await.expect("page");
        assert_eq!(page.items.len(), 1);
        assert!(page.metadata.continue_.is_some());

        // finalizers hold a delete; removing the last one lets the object go
        api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})))
            .await
            .expect("finalizer");
        api.delete(&name, &DeleteParams::default()).await.expect("delete");
        let held = api.get(&name).await.expect("still there");
        assert!(held.metadata.deletion_timestamp.is_some());
        api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
            .await
            .expect("drop finalizer");
        assert!(api.get_opt(&name).await.expect("get").is_none());

        // deletecollection
        api.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .expect("deletecollection");
        assert!(api.list(&ListParams::default()).await.expect("list").items.is_empty());
    });

    // JSON patch through kubectl; a protobuf body is a 415 for custom resources
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: jp\nspec:\n  image: x\n"
        )),
    );
    let out = s.kubectl(&[
        "patch",
        "widget",
        "jp",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/color","value":"blue"}]"#,
    ]);
    assert!(out.contains("patched"), "{out}");
    let w: Value =
        serde_json::from_str(&s.kubectl(&["get", "widget", "jp", "-o", "json"])).expect("json");
    assert_eq!(w["spec"]["color"], "blue");
    s.rt.block_on(async {
        let client = common::kubers::client(s.server()).await;
        let req = hyper::Request::post(format!("/apis/{group}/v1/namespaces/default/widgets"))
            .header("content-type", "application/vnd.kubernetes.protobuf")
            .body(b"k8s\x00".to_vec())
            .expect("request");
        let e = client.request_text(req).await.expect_err("protobuf");
        let (code, reason, _) = api_error(e);
        assert_eq!((code, reason.as_str()), (415, "UnsupportedMediaType"));
    });
}

#[test]
fn deleting_a_crd_deletes_its_resources_and_stops_serving_them() {
    let s = TestServer::start();
    let group = "gone.example.com";
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&gadget_crd(group)));
    established(&s, &format!("gadgets.{group}"));
    // two versions share storage; apiVersion follows the version asked for
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: {group}/v1beta1\nkind: Gadget\nmetadata:\n  name: g1\nspec:\n  size: 3\n---\napiVersion: {group}/v1\nkind: Gadget\nmetadata:\n  name: g2\nspec: {{}}\n"
        )),
    );
    let g1: Value = serde_json::from_str(&s.kubectl(&[
        "get",
        "--raw",
        &format!("/apis/{group}/v1/gadgets/g1"),
    ]))
    .expect("json");
    assert_eq!(g1["apiVersion"], format!("{group}/v1"));
    assert_eq!(g1["spec"]["size"], 3);
    let g2: Value = serde_json::from_str(&s.kubectl(&[
        "get",
        "--raw",
        &format!("/apis/{group}/v1beta1/gadgets/g2"),
    ]))
    .expect("json");
    assert_eq!(g2["apiVersion"], format!("{group}/v1beta1"));
    // the table of a CRD without columns: NAME, AGE
    let table = s.kubectl(&["get", "gadgets"]);
    assert_eq!(
        table
            .lines()
            .next()
            .expect("header")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAME", "AGE"],
        "{table}"
    );
    // discovery lists the group with v1 preferred
    let group_doc: Value =
        serde_json::from_str(&s.kubectl(&["get", "--raw", &format!("/apis/{group}")]))
            .expect("json");
    assert_eq!(group_doc["preferredVersion"]["version"], "v1");
    let resources = s.kubectl(&["api-resources", "--api-group", group]);
    assert!(resources.contains("gadgets"), "{resources}");
    assert!(resources.contains("false"), "cluster-scoped: {resources}");
    // the storage version stops being served: its objects are still cleaned up below
    s.kubectl(&[
        "patch",
        "crd",
        &format!("gadgets.{group}"),
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/versions/1/served","value":false}]"#,
    ]);
    common::eventually("v1 no longer served", || {
        !s.kubectl_result(
            &["get", "--raw", &format!("/apis/{group}/v1/gadgets")],
            None,
        )
        .0
    });

    s.kubectl(&[
        "delete",
        "crd",
        &format!("gadgets.{group}"),
        "--timeout=60s",
    ]);
    assert!(s
        .kubectl_fails(&["get", "crd", &format!("gadgets.{group}")], None)
        .contains("not found"));
    // the resources went with it, and the endpoints are gone
    let out = s.kubectl_output(
        &["get", "--raw", &format!("/apis/{group}/v1/gadgets")],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound")
            || String::from_utf8_lossy(&out.stderr).contains("not found")
    );
    let groups = s.kubectl(&["get", "--raw", "/apis"]);
    assert!(!groups.contains(group), "{groups}");
    // a new CRD of the same name starts empty
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&gadget_crd(group)));
    established(&s, &format!("gadgets.{group}"));
    let list: Value =
        serde_json::from_str(&s.kubectl(&["get", "--raw", &format!("/apis/{group}/v1/gadgets")]))
            .expect("json");
    assert_eq!(list["items"], json!([]));
}

#[test]
fn names_held_by_another_crd_are_not_accepted() {
    let s = TestServer::start();
    let group = "clash.example.com";
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&widget_crd(group)));
    established(&s, &format!("widgets.{group}"));
    // another plural, the same kind and short name
    let other = widget_crd(group)
        .replace("widgets.", "doodads.")
        .replace("plural: widgets", "plural: doodads")
        .replace("singular: widget", "singular: doodad");
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&other));
    let crd = format!("doodads.{group}");
    let mut last = Value::Null;
    for _ in 0..50 {
        last = serde_json::from_str(&s.kubectl(&["get", "crd", &crd, "-o", "json"])).expect("json");
        if last["status"]["conditions"].is_array() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cond = |ty: &str| {
        last["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == ty)
            .cloned()
            .expect("condition")
    };
    assert_eq!(cond("NamesAccepted")["status"], "False", "{last}");
    assert_eq!(
        cond("NamesAccepted")["reason"],
        "ShortNamesConflict",
        "{last}"
    );
    assert_eq!(cond("Established")["status"], "False", "{last}");
    assert!(s
        .kubectl_fails(
            &["get", "--raw", &format!("/apis/{group}/v1/doodads")],
            None
        )
        .contains("NotFound"));
}

#[test]
fn a_second_apiserver_on_the_same_etcd_serves_custom_resources() {
    let etcd = testkit::Etcd::start();
    let url = etcd.url();
    let a = TestServer::start_with(|c| c.storage.etcd_servers = vec![url.clone()]);
    let b = TestServer::start_with(|c| c.storage.etcd_servers = vec![url.clone()]);
    let group = "ha.example.com";
    a.kubectl_stdin(&["apply", "-f", "-"], Some(&widget_crd(group)));
    established(&a, &format!("widgets.{group}"));
    a.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: shared\nspec:\n  image: nginx\n"
        )),
    );
    // stored under upstream's key for custom resources, as the storage version
    a.rt.block_on(async {
        use store::Store;
        let etcd = store::etcd::EtcdStore::connect(std::slice::from_ref(&url))
            .await
            .expect("etcd");
        let kv = etcd
            .get(&format!("/registry/{group}/widgets/default/shared"))
            .await
            .expect("get")
            .expect("stored at /registry/<group>/<plural>/<ns>/<name>");
        let stored: Value = serde_json::from_slice(&kv.value).expect("json");
        assert_eq!(stored["apiVersion"], format!("{group}/v1"));
        assert_eq!(stored["spec"]["replicas"], 1);
    });
    // b follows the CRD from etcd and serves the resource a wrote
    let mut got = String::new();
    for _ in 0..100 {
        let (ok, out, _) = b.kubectl_result(&["get", "widget", "shared", "-o", "name"], None);
        if ok {
            got = out;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(got, format!("widget.{group}/shared"));
    b.kubectl(&["delete", "widget", "shared"]);
    assert!(a
        .kubectl_fails(&["get", "widget", "shared"], None)
        .contains("not found"));
}

#[test]
fn schema_defaults_apply_on_read_and_ignore_drops_unknown_fields_silently() {
    let s = TestServer::start();
    let group = "defaults.example.com";
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&widget_crd(group)));
    established(&s, &format!("widgets.{group}"));
    let cr = format!(
        "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w\nspec:\n  image: nginx\n  foo: bar\n"
    );
    // fieldValidation=Ignore: stored without the field, and no warning
    let out = s.kubectl_output(&["apply", "--validate=ignore", "-f", "-"], Some(&cr));
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("unknown field"), "{stderr}");
    let get = |s: &TestServer| -> Value {
        serde_json::from_str(&s.kubectl(&["get", "widget", "w", "-o", "json"])).expect("json")
    };
    let w = get(&s);
    assert!(w["spec"].get("foo").is_none(), "{w}");
    assert!(w["spec"].get("color").is_none(), "{w}");
    // a default added to the schema later shows on objects already stored
    s.kubectl(&[
        "patch",
        "crd",
        &format!("widgets.{group}"),
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/color/default","value":"blue"}]"#,
    ]);
    common::eventually("the new default on read", || {
        get(&s)["spec"]["color"] == "blue"
    });
    // re-applying a changed CRD (what `helm upgrade` does) takes effect: a new column
    let with_color = widget_crd(group).replace(
        "    - name: Age\n",
        "    - name: Color\n      type: string\n      jsonPath: .spec.color\n    - name: Age\n",
    );
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&with_color));
    assert!(out.contains("configured"), "{out}");
    common::eventually("the Color column", || {
        s.kubectl(&["get", "widgets"])
            .lines()
            .next()
            .is_some_and(|h| h.split_whitespace().any(|c| c == "COLOR"))
    });
    // an invalid CRD update is refused and changes nothing
    let err = s.kubectl_fails(
        &[
            "patch",
            "crd",
            &format!("widgets.{group}"),
            "--type=merge",
            "-p",
            r#"{"spec":{"scope":"Cluster"}}"#,
        ],
        None,
    );
    assert!(
        err.contains(r#"spec.scope: Invalid value: "Cluster": field is immutable"#),
        "{err}"
    );
}

#[test]
fn custom_resources_are_authorized_like_any_resource() {
    const ALICE: &str = "alice-token-0123456789";
    const BOB: &str = "bob-token-0123456789";
    let s = TestServer::start_with_tokens(&format!("{ALICE},alice,1001\n{BOB},bob,1002\n"), |_| {});
    let group = "rbac.example.com";
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&widget_crd(group)));
    established(&s, &format!("widgets.{group}"));
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"
apiVersion: {group}/v1
kind: Widget
metadata: {{name: w}}
spec: {{image: nginx}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: widget-reader}}
rules:
- apiGroups: ["{group}"]
  resources: ["widgets"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: alice-reads-widgets}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: widget-reader}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}}
"#
        )),
    );
    let as_user = |token: &str, args: &[&str]| {
        let mut all = vec!["--token", token];
        all.extend_from_slice(args);
        s.kubectl_result(&all, None)
    };
    common::eventually("alice's binding", || {
        as_user(ALICE, &["get", "widgets", "-o", "name"]).1 == format!("widget.{group}/w")
    });
    let (ok, _, err) = as_user(ALICE, &["delete", "widget", "w"]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            r#"widgets.{group} "w" is forbidden: User "alice" cannot delete resource "widgets" in API group "{group}" in the namespace "default""#
        )),
        "{err}"
    );
    let (ok, _, err) = as_user(BOB, &["get", "widgets"]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            r#"widgets.{group} is forbidden: User "bob" cannot list resource "widgets" in API group "{group}" in the namespace "default""#
        )),
        "{err}"
    );
}

#[test]
fn resource_quotas_count_custom_resources() {
    let s = TestServer::start();
    let group = "quota.example.com";
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&widget_crd(group)));
    established(&s, &format!("widgets.{group}"));
    let count = format!("count/widgets.{group}");
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: widgets\nspec:\n  hard:\n    {count}: \"1\"\n"
        )),
    );
    // what the controller-manager's resourcequota controller would write
    s.kubectl(&[
        "patch",
        "resourcequota",
        "widgets",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(r#"{{"status":{{"hard":{{"{count}":"1"}},"used":{{"{count}":"0"}}}}}}"#),
    ]);
    let widget = |name: &str| {
        format!("apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: {name}\nspec:\n  image: nginx\n")
    };
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&widget("one")));
    let err = s.kubectl_fails(&["apply", "-f", "-"], Some(&widget("two")));
    assert!(
        err.contains(&format!(
            "exceeded quota: widgets, requested: {count}=1, used: {count}=1, limited: {count}=1"
        )),
        "{err}"
    );
}

#[test]
fn a_terminating_crd_waits_for_finalized_resources_and_refuses_new_ones() {
    let s = TestServer::start();
    let group = "term.example.com";
    let crd = format!("widgets.{group}");
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&widget_crd(group)));
    established(&s, &crd);
    // server-side apply through kubectl
    let out = s.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(&format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\nspec:\n  image: nginx\n"
        )),
    );
    assert!(out.contains("serverside-applied"), "{out}");
    s.kubectl(&["delete", "crd", &crd, "--wait=false"]);
    let terminating = || -> Value {
        let c: Value =
            serde_json::from_str(&s.kubectl(&["get", "crd", &crd, "-o", "json"])).expect("json");
        c["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Terminating").cloned())
            .unwrap_or(Value::Null)
    };
    common::eventually("the Terminating condition", || {
        terminating()["status"] == "True"
    });
    assert_eq!(terminating()["reason"], "InstanceDeletionInProgress");
    // the held object is marked, new ones are refused
    common::eventually("the custom resource marked for deletion", || {
        let w: Value = serde_json::from_str(&s.kubectl(&["get", "widget", "held", "-o", "json"]))
            .expect("json");
        w["metadata"]["deletionTimestamp"].is_string()
    });
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(&format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: late\nspec:\n  image: nginx\n"
        )),
    );
    assert!(
        err.contains("create not allowed while custom resource definition is terminating"),
        "{err}"
    );
    // releasing the object lets both go
    s.kubectl(&[
        "patch",
        "widget",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    common::eventually("the CRD gone", || {
        !s.kubectl_result(&["get", "crd", &crd], None).0
    });
}

#[test]
fn selectable_fields_filter_lists() {
    let s = TestServer::start();
    let group = "select.example.com";
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&widget_crd(group)));
    established(&s, &format!("widgets.{group}"));
    let widget = |name: &str, color: &str| {
        format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: {name}\nspec:\n  image: nginx\n  color: {color}\n---\n"
        )
    };
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&(widget("r", "red") + &widget("b", "blue"))),
    );
    let red = s.kubectl(&[
        "get",
        "widgets",
        "--field-selector",
        "spec.color=red",
        "-o",
        "name",
    ]);
    assert_eq!(red.trim(), format!("widget.{group}/r"));
    let not_red = s.kubectl(&[
        "get",
        "widgets",
        "--field-selector",
        "spec.color!=red",
        "-o",
        "name",
    ]);
    assert_eq!(not_red.trim(), format!("widget.{group}/b"));
    let err = s.kubectl_fails(
        &["get", "widgets", "--field-selector", "spec.image=nginx"],
        None,
    );
    assert!(
        err.contains("field label not supported: spec.image"),
        "{err}"
    );
}

#[test]
fn a_restarted_apiserver_serves_custom_resources_at_once() {
    let data = tempfile::tempdir().expect("tmp");
    let dir = data.path().to_path_buf();
    let group = "restart.example.com";
    {
        let s = TestServer::start_with(|c| c.data_dir = dir.clone());
        s.kubectl_stdin(&["apply", "-f", "-"], Some(&widget_crd(group)));
        established(&s, &format!("widgets.{group}"));
        s.kubectl_stdin(
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: kept\nspec:\n  image: nginx\n"
            )),
        );
    }
    // no waiting: once start returns, the CRDs are read and their resources served
    let s = TestServer::start_with(|c| c.data_dir = dir.clone());
    let out = s.kubectl(&["get", "widget", "kept", "-o", "name"]);
    assert_eq!(out.trim(), format!("widget.{group}/kept"));
}
