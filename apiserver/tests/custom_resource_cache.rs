//! The watch cache for custom resources, against a real apiserver on a real etcd with
//! kube-rs and kubectl 1.37: a served CRD's resources are listed and watched from a cache
//! that joins the running feeder (proved by the cache's metrics per resource), in every
//! served version; a watch from a version taken before the cache existed sees every event
//! in order; deleting the CRD drops the cache and ends its watches, and a CRD re-created
//! with the same name gets a fresh one.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::TestServer;
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, WatchEvent, WatchParams};
use serde_json::Value;

const GROUP: &str = "cached.example.com";
/// The cache's name in the metrics: the storage name.
const RESOURCE: &str = "cached.example.com/gadgets";

/// A cluster-scoped `Gadget` served as v1beta1 and v1 (stored as v1), with a default.
fn crd() -> String {
    format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.{GROUP}
spec:
  group: {GROUP}
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
          spec:
            type: object
            properties:
              size: {{type: integer}}
              shape: {{type: string, default: round}}
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {{type: integer}}
              shape: {{type: string, default: round}}
"#
    )
}

fn gadget(version: &str, name: &str, size: i64) -> String {
    format!("apiVersion: {GROUP}/{version}\nkind: Gadget\nmetadata:\n  name: {name}\nspec:\n  size: {size}\n")
}

fn api(client: kube::Client, version: &str) -> Api<DynamicObject> {
    Api::all_with(
        client,
        &ApiResource {
            group: GROUP.into(),
            version: version.into(),
            api_version: format!("{GROUP}/{version}"),
            kind: "Gadget".into(),
            plural: "gadgets".into(),
        },
    )
}

fn metrics(s: &TestServer) -> String {
    s.kubectl(&["get", "--raw", "/metrics"])
}

/// The sample of `name` for the custom resource, with the `extra` label (`source="cache"`)
/// if any, if the cache exists. Labels as upstream's: `group` and the plural `resource`,
/// sorted by name.
fn sample(text: &str, name: &str, extra: &str) -> Option<u64> {
    let (group, plural) = RESOURCE.split_once('/').expect("group/plural");
    let mut labels = vec![
        format!("group=\"{group}\""),
        format!("resource=\"{plural}\""),
    ];
    if name == "apiserver_cache_list_total" {
        labels.push("index=\"\"".into());
    }
    if !extra.is_empty() {
        labels.push(extra.to_string());
    }
    labels.sort();
    let prefix = format!("{name}{{{}}} ", labels.join(","));
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().expect("numeric sample"))
}

fn rv(o: &DynamicObject) -> i64 {
    o.metadata
        .resource_version
        .as_deref()
        .expect("resourceVersion")
        .parse()
        .expect("numeric")
}

/// Wait until the cache serves LISTs (it joined and loaded its first list).
fn cache_serves_lists(s: &TestServer) {
    common::eventually("the custom resource's cache serves a LIST", || {
        let before = sample(&metrics(s), "apiserver_cache_list_total", "").unwrap_or(0);
        s.kubectl(&["get", "--raw", &format!("/apis/{GROUP}/v1/gadgets")]);
        sample(&metrics(s), "apiserver_cache_list_total", "").unwrap_or(0) > before
    });
}

/// Apply the gadgets CRD and wait until it is Established.
fn apply_crd(s: &TestServer) {
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&crd()));
    s.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        &format!("crd/gadgets.{GROUP}"),
    ]);
}

#[test]
fn custom_resources_are_listed_and_watched_from_a_cache_that_joins_and_leaves_with_the_crd() {
    let etcd = testkit::Etcd::start();
    let url = etcd.url();
    let s = TestServer::start_with(|c| c.storage.etcd_servers = vec![url.clone()]);
    let client = s.rt.block_on(common::kubers::client(s.server()));
    // A version from before the CRD (and so its cache) existed.
    let before: Value =
        serde_json::from_str(&s.kubectl(&["get", "--raw", "/api/v1/namespaces"])).expect("json");
    let rv0 = before["metadata"]["resourceVersion"]
        .as_str()
        .expect("list rv")
        .to_string();
    assert!(
        sample(&metrics(&s), "apiserver_watch_cache_objects", "").is_none(),
        "no cache before the CRD"
    );

    apply_crd(&s);
    cache_serves_lists(&s);
    let m = metrics(&s);
    assert_eq!(
        sample(&m, "apiserver_watch_cache_initializations_total", ""),
        Some(1),
        "loaded once, by its own list: {m}"
    );

    // Writes in both versions, an update and a delete.
    s.kubectl_stdin(&["create", "-f", "-"], Some(&gadget("v1beta1", "g1", 1)));
    s.kubectl_stdin(&["create", "-f", "-"], Some(&gadget("v1", "g2", 2)));
    s.kubectl(&[
        "patch",
        "gadget",
        "g1",
        "--type=merge",
        "-p",
        r#"{"spec":{"size":10}}"#,
    ]);
    s.kubectl(&["delete", "gadget", "g2"]);

    s.rt.block_on(async {
        // LISTs from the cache, in either version: apiVersion as asked, defaults applied.
        let m = metrics(&s);
        let lists = sample(&m, "apiserver_cache_list_total", "").expect("cache");
        let consistent = sample(
            &m,
            "apiserver_watch_cache_consistent_read_total",
            "fallback=\"false\"",
        )
        .expect("cache");
        for version in ["v1", "v1beta1"] {
            let list = api(client.clone(), version)
                .list(&ListParams::default())
                .await
                .expect("list");
            assert_eq!(list.items.len(), 1, "{version}: {:?}", list.items);
            let g1 = &list.items[0];
            assert_eq!(g1.metadata.name.as_deref(), Some("g1"));
            assert_eq!(
                g1.types.as_ref().map(|t| t.api_version.as_str()),
                Some(format!("{GROUP}/{version}").as_str())
            );
            assert_eq!(g1.data["spec"]["size"], 10);
            assert_eq!(g1.data["spec"]["shape"], "round", "defaulted on read");
        }
        let m = metrics(&s);
        assert_eq!(
            sample(&m, "apiserver_cache_list_total", ""),
            Some(lists + 2),
            "both LISTs served from the cache"
        );
        assert_eq!(
            sample(
                &m,
                "apiserver_watch_cache_consistent_read_total",
                "fallback=\"false\""
            ),
            Some(consistent + 2),
            "both consistent, neither fell back to the store"
        );

        // A watch from before the cache existed: every event, in order, in the version
        // asked for. It starts on the store's watch and moves onto the cache's ring.
        let m = metrics(&s);
        let ring_before =
            sample(&m, "kaze_watch_cache_watches_total", "source=\"cache\"").expect("cache");
        let store_before =
            sample(&m, "kaze_watch_cache_watches_total", "source=\"store\"").expect("cache");
        let old = api(client.clone(), "v1beta1");
        let stream = old
            .watch(&WatchParams::default().timeout(30), &rv0)
            .await
            .expect("watch from before the cache");
        let mut stream = stream.boxed();
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .unwrap_or_else(|_| panic!("only saw {seen:?}"))
                .expect("stream open")
                .expect("event");
            let (ty, o) = match ev {
                WatchEvent::Added(o) => ("ADDED", o),
                WatchEvent::Modified(o) => ("MODIFIED", o),
                WatchEvent::Deleted(o) => ("DELETED", o),
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => panic!("watch error {e:?}"),
            };
            assert_eq!(
                o.types.as_ref().map(|t| t.api_version.clone()),
                Some(format!("{GROUP}/v1beta1"))
            );
            seen.push((ty, o.metadata.name.clone().unwrap_or_default(), rv(&o)));
        }
        let kinds: Vec<(&str, &str)> = seen.iter().map(|(t, n, _)| (*t, n.as_str())).collect();
        assert_eq!(
            kinds,
            [
                ("ADDED", "g1"),
                ("ADDED", "g2"),
                ("MODIFIED", "g1"),
                ("DELETED", "g2")
            ]
        );
        assert!(
            seen.windows(2).all(|w| w[0].2 < w[1].2),
            "in revision order: {seen:?}"
        );
        // One more change reaches the watcher, now from the ring.
        s.kubectl_stdin(&["create", "-f", "-"], Some(&gadget("v1", "g3", 3)));
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .expect("g3's event")
                .expect("stream open")
                .expect("event");
            match ev {
                WatchEvent::Added(o) => {
                    assert_eq!(o.metadata.name.as_deref(), Some("g3"));
                    assert!(rv(&o) > seen[3].2);
                    break;
                }
                WatchEvent::Bookmark(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        let m = metrics(&s);
        assert!(
            sample(&m, "kaze_watch_cache_watches_total", "source=\"store\"").expect("cache")
                > store_before,
            "the old version was not in the ring: the store's watch served it first"
        );
        assert!(
            sample(&m, "kaze_watch_cache_watches_total", "source=\"cache\"").expect("cache")
                > ring_before,
            "then the ring: {m}"
        );

        // kubectl get --watch of the custom resource.
        drop(stream);
        let ring = sample(
            &metrics(&s),
            "kaze_watch_cache_watches_total",
            "source=\"cache\"",
        )
        .expect("cache");
        let mut child = Command::new(common::kubectl_path())
            .arg("--kubeconfig")
            .arg(s.kubeconfig())
            .args(["get", "gadgets", "--watch", "-o", "name"])
            .env("HOME", s.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning kubectl get --watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let wait_line = |want: &str| {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(l) if l.trim() == want => return,
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
            panic!("kubectl get --watch never printed {want}");
        };
        wait_line(&format!("gadget.{GROUP}/g1"));
        s.kubectl_stdin(&["create", "-f", "-"], Some(&gadget("v1", "g4", 4)));
        wait_line(&format!("gadget.{GROUP}/g4"));
        assert!(
            sample(
                &metrics(&s),
                "kaze_watch_cache_watches_total",
                "source=\"cache\""
            )
            .expect("cache")
                > ring,
            "kubectl's watch followed the ring"
        );
        child.kill().expect("stopping kubectl");
        let _ = child.wait();

        // Deleting the CRD drops the cache and ends its watchers.
        let watching = api(client.clone(), "v1")
            .watch(&WatchParams::default().timeout(120), "0")
            .await
            .expect("watch");
        let mut watching = watching.boxed();
        s.kubectl(&[
            "delete",
            "crd",
            &format!("gadgets.{GROUP}"),
            "--timeout=60s",
        ]);
        common::eventually("the cache is dropped with its CRD", || {
            sample(&metrics(&s), "apiserver_watch_cache_objects", "").is_none()
        });
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(ev) = watching.next().await {
                if let Ok(WatchEvent::Error(e)) = ev {
                    panic!("watch error {e:?}");
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the watch ended with the cache");
    });

    // Re-created with the same name: a fresh cache, empty, serving lists again.
    apply_crd(&s);
    cache_serves_lists(&s);
    let m = metrics(&s);
    assert_eq!(
        sample(&m, "apiserver_watch_cache_initializations_total", ""),
        Some(1),
        "a new cache: {m}"
    );
    let list: Value =
        serde_json::from_str(&s.kubectl(&["get", "--raw", &format!("/apis/{GROUP}/v1/gadgets")]))
            .expect("json");
    assert_eq!(list["items"], serde_json::json!([]));
    s.kubectl_stdin(&["create", "-f", "-"], Some(&gadget("v1", "again", 1)));
    let out = s.kubectl(&["get", "gadgets", "-o", "name"]);
    assert_eq!(out.trim(), format!("gadget.{GROUP}/again"));
    assert_eq!(
        sample(&metrics(&s), "apiserver_watch_cache_objects", ""),
        Some(1)
    );
}

#[test]
fn apiservers_on_one_etcd_and_a_restart_serve_custom_resources_from_their_caches() {
    let etcd = testkit::Etcd::start();
    let url = etcd.url();
    let a = TestServer::start_with(|c| c.storage.etcd_servers = vec![url.clone()]);
    apply_crd(&a);
    a.kubectl_stdin(&["create", "-f", "-"], Some(&gadget("v1", "before", 1)));
    // b starts after the CRD: its cache joins at start and loads what a wrote.
    let b = TestServer::start_with(|c| c.storage.etcd_servers = vec![url.clone()]);
    cache_serves_lists(&b);
    // Written on one, listed consistently from the other's cache.
    for i in 0..10 {
        let name = format!("g{i}");
        let (writer, reader) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        writer.kubectl_stdin(&["create", "-f", "-"], Some(&gadget("v1beta1", &name, i)));
        let lists = sample(&metrics(reader), "apiserver_cache_list_total", "").expect("cache");
        let out = reader.kubectl(&["get", "gadgets", "-o", "name"]);
        assert!(
            out.lines().any(|l| l == format!("gadget.{GROUP}/{name}")),
            "{name} missing from the other apiserver's list: {out}"
        );
        assert!(
            sample(&metrics(reader), "apiserver_cache_list_total", "").expect("cache") > lists,
            "listed from the cache"
        );
    }
    // b restarts: the cache comes back with every object.
    drop(b);
    let b = TestServer::start_with(|c| c.storage.etcd_servers = vec![url.clone()]);
    cache_serves_lists(&b);
    assert_eq!(
        sample(&metrics(&b), "apiserver_watch_cache_objects", ""),
        Some(11)
    );
    let out = b.kubectl(&["get", "gadgets", "-o", "name"]);
    assert_eq!(out.lines().count(), 11, "{out}");
}
