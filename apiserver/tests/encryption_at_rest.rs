//! Encryption at rest (`--encryption-provider-config`) on a real etcd, driven by the real
//! kubectl 1.37 (and kube-rs for a watch): what etcd holds is read raw with etcd-client.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, WatchEvent, WatchParams};

const KEY1: &str = "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE="; // 32 bytes of '1'
const KEY2: &str = "MjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjI="; // 32 bytes of '2'
const PLAIN: &str = "hunter2-plaintext";
/// base64 of PLAIN, as a Secret's `data` holds it
const PLAIN_B64: &str = "aHVudGVyMi1wbGFpbnRleHQ=";

fn config(dir: &Path, name: &str, providers: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        ),
    )
    .expect("writing the config");
    path
}

fn aescbc(keys: &[(&str, &str)]) -> String {
    let keys: String = keys
        .iter()
        .map(|(n, s)| format!("      - name: {n}\n        secret: {s}\n"))
        .collect();
    format!("  - aescbc:\n      keys:\n{keys}")
}

const IDENTITY: &str = "  - identity: {}\n";

fn start(etcd: &testkit::Etcd, enc: Option<&Path>) -> TestServer {
    TestServer::start_with(|c| {
        c.storage.etcd_servers = vec![etcd.url()];
        c.encryption.encryption_provider_config = enc.map(Path::to_path_buf);
    })
}

/// The value etcd holds at `key`.
fn raw(etcd: &testkit::Etcd, key: &str) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([etcd.url()], None)
            .await
            .expect("connecting to etcd");
        let resp = c.get(key, None).await.expect("etcd get");
        resp.kvs()
            .first()
            .unwrap_or_else(|| panic!("{key} is in etcd"))
            .value()
            .to_vec()
    })
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn secret_value(s: &TestServer, name: &str) -> String {
    s.kubectl(&["get", "secret", name, "-o", "jsonpath={.data.password}"])
}

#[test]
fn secrets_are_stored_encrypted_and_every_read_path_decrypts() {
    let etcd = testkit::Etcd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let enc = config(
        dir.path(),
        "enc.yaml",
        &(aescbc(&[("key1", KEY1)]) + IDENTITY),
    );
    let s = start(&etcd, Some(&enc));
    let client = s.rt.block_on(common::kubers::client(s.server()));
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    // a watch from now on (served by the watch cache, fed by the store's watch)
    let rv = s.kubectl(&[
        "get",
        "secrets",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    let mut watch =
        s.rt.block_on(secrets.watch(&WatchParams::default(), &rv))
            .expect("watching secrets")
            .boxed();

    s.kubectl(&[
        "create",
        "secret",
        "generic",
        "s1",
        &format!("--from-literal=password={PLAIN}"),
    ]);
    s.kubectl(&[
        "create",
        "configmap",
        "c1",
        "--from-literal=k=visible-value",
    ]);

    let stored = raw(&etcd, "/registry/secrets/default/s1");
    assert!(
        stored.starts_with(b"k8s:enc:aescbc:v1:key1:"),
        "{}",
        String::from_utf8_lossy(&stored)
    );
    for plain in [PLAIN, PLAIN_B64, "password", "\"kind\""] {
        assert!(!contains(&stored, plain), "{plain} is not in etcd in clear");
    }
    // configmaps are not in the config: plain JSON
    let cm = raw(&etcd, "/registry/configmaps/default/c1");
    assert!(cm.starts_with(b"{") && contains(&cm, "visible-value"));

    // GET, LIST (the cache's and the store's), YAML
    assert_eq!(secret_value(&s, "s1"), PLAIN_B64);
    assert!(s
        .kubectl(&["get", "secret", "s1", "-o", "yaml"])
        .contains(&format!("password: {PLAIN_B64}")));
    assert!(s
        .kubectl(&["get", "secrets", "-o", "json"])
        .contains(PLAIN_B64));
    {
        // a second apiserver without a watch cache: LIST and GET straight from etcd
        let uncached = TestServer::start_with(|c| {
            c.storage.etcd_servers = vec![etcd.url()];
            c.encryption.encryption_provider_config = Some(enc.clone());
            c.default_watch_cache_size = 0;
        });
        assert!(uncached
            .kubectl(&["get", "secrets", "-o", "json"])
            .contains(PLAIN_B64));
        assert_eq!(secret_value(&uncached, "s1"), PLAIN_B64);
    }

    // the watch saw the create decrypted
    let added = s.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(ev) = watch.try_next().await.expect("watch event") {
                if let WatchEvent::Added(sec) = ev {
                    return sec;
                }
            }
            panic!("the watch ended")
        })
        .await
        .expect("an ADDED event within 10 s")
    });
    let data = added.data.expect("data");
    assert_eq!(data["password"].0, PLAIN.as_bytes());

    // an update is encrypted again; a delete returns the decrypted object
    s.kubectl(&["label", "secret", "s1", "updated=yes"]);
    assert!(raw(&etcd, "/registry/secrets/default/s1").starts_with(b"k8s:enc:aescbc:v1:key1:"));
    s.kubectl(&["delete", "secret", "s1"]);
    assert!(s
        .kubectl_fails(&["get", "secret", "s1"], None)
        .contains("not found"));
}

#[test]
fn rotation_identity_to_key1_to_key2_and_dropping_key1() {
    let etcd = testkit::Etcd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let create = |s: &TestServer, name: &str, rotate: bool| {
        s.kubectl(&[
            "create",
            "secret",
            "generic",
            name,
            &format!("--from-literal=password={PLAIN}"),
        ]);
        if rotate {
            s.kubectl(&["label", "secret", name, "rotate=yes"]);
        }
    };
    let key = |name: &str| format!("/registry/secrets/default/{name}");

    // 1. no encryption yet: stored in clear
    {
        let s = start(&etcd, None);
        create(&s, "plain", true);
    }
    assert!(raw(&etcd, &key("plain")).starts_with(b"{"));

    // 2. key1 first, identity still listed: old data readable, new data encrypted
    let enc1 = config(
        dir.path(),
        "enc1.yaml",
        &(aescbc(&[("key1", KEY1)]) + IDENTITY),
    );
    {
        let s = start(&etcd, Some(&enc1));
        assert_eq!(secret_value(&s, "plain"), PLAIN_B64);
        create(&s, "under-key1", true);
        create(&s, "left-behind", false);
    }
    assert!(raw(&etcd, &key("under-key1")).starts_with(b"k8s:enc:aescbc:v1:key1:"));

    // 3. key2 first, key1 still there: rewriting moves everything to key2
    let enc2 = config(
        dir.path(),
        "enc2.yaml",
        &(aescbc(&[("key2", KEY2), ("key1", KEY1)]) + IDENTITY),
    );
    {
        let s = start(&etcd, Some(&enc2));
        let all = s.kubectl(&["get", "secrets", "-l", "rotate=yes", "-o", "json"]);
        s.kubectl_stdin(&["replace", "-f", "-"], Some(&all));
        for name in ["plain", "under-key1"] {
            assert_eq!(secret_value(&s, name), PLAIN_B64);
        }
    }
    for name in ["plain", "under-key1"] {
        let v = raw(&etcd, &key(name));
        assert!(
            v.starts_with(b"k8s:enc:aescbc:v1:key2:"),
            "{name} was rewritten under key2: {}",
            String::from_utf8_lossy(&v[..30.min(v.len())])
        );
    }
    assert!(raw(&etcd, &key("left-behind")).starts_with(b"k8s:enc:aescbc:v1:key1:"));

    // 4. key1 dropped: only the secret still under it fails
    let enc3 = config(
        dir.path(),
        "enc3.yaml",
        &(aescbc(&[("key2", KEY2)]) + IDENTITY),
    );
    let s = start(&etcd, Some(&enc3));
    for name in ["plain", "under-key1"] {
        assert_eq!(secret_value(&s, name), PLAIN_B64);
    }
    let err = s.kubectl_fails(&["get", "secret", "left-behind"], None);
    assert!(
        err.contains("(InternalError)")
            && err.contains("no matching key was found for the provided AES transformer"),
        "{err}"
    );
    // a LIST covering it fails as upstream's does, naming the key; others still list
    let err = s.kubectl_fails(&["get", "secrets"], None);
    assert!(
        err.contains("/registry/secrets/default/left-behind"),
        "{err}"
    );
    s.kubectl(&["create", "configmap", "still-fine"]);
    assert!(s
        .kubectl(&["get", "configmaps", "-o", "name"])
        .contains("still-fine"));
}

#[test]
fn aesgcm_and_secretbox_round_trip() {
    let etcd = testkit::Etcd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    for (provider, prefix) in [
        (
            format!("  - aesgcm:\n      keys:\n      - name: g1\n        secret: {KEY1}\n"),
            "k8s:enc:aesgcm:v1:g1:",
        ),
        (
            format!("  - secretbox:\n      keys:\n      - name: b1\n        secret: {KEY2}\n"),
            "k8s:enc:secretbox:v1:b1:",
        ),
    ] {
        let enc = config(dir.path(), "enc.yaml", &provider);
        let s = start(&etcd, Some(&enc));
        let name = format!("s-{}", &prefix[8..14]);
        s.kubectl(&[
            "create",
            "secret",
            "generic",
            &name,
            &format!("--from-literal=password={PLAIN}"),
        ]);
        let stored = raw(&etcd, &format!("/registry/secrets/default/{name}"));
        assert!(stored.starts_with(prefix.as_bytes()), "{prefix}");
        assert!(!contains(&stored, PLAIN_B64));
        assert_eq!(secret_value(&s, &name), PLAIN_B64);
        assert!(s
            .kubectl(&["get", "secrets", "-o", "json"])
            .contains(PLAIN_B64));
        // the next round's provider could not read it
        s.kubectl(&["delete", "secret", &name]);
    }
}

#[test]
fn bad_configs_stop_the_apiserver_with_the_problem_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        (
            aescbc(&[("key1", "c2hvcnQ=")]),
            "resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 5, expected one of [16 24 32]",
        ),
        (
            "  - kms:\n      name: p\n      endpoint: unix:///tmp/kms.sock\n".to_string(),
            "KMS providers are not supported by kaze",
        ),
        (
            "  - unknown: {}\n".to_string(),
            "provider does not contain any of the expected providers",
        ),
    ];
    for (providers, want) in cases {
        let enc = config(dir.path(), "bad.yaml", &providers);
        let data = tempfile::tempdir().expect("data dir");
        let mut c = apiserver::Config::for_tests(data.path());
        c.encryption.encryption_provider_config = Some(enc);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let err = match rt.block_on(apiserver::start(c)) {
            Ok(_) => panic!("the apiserver must refuse {providers}"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("--encryption-provider-config") && err.contains(want),
            "{err}"
        );
    }
}

#[test]
fn automatic_reload_switches_the_write_key_without_a_restart() {
    let etcd = testkit::Etcd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let enc = config(dir.path(), "enc.yaml", &aescbc(&[("key1", KEY1)]));
    let s = TestServer::start_with(|c| {
        c.storage.etcd_servers = vec![etcd.url()];
        c.encryption.encryption_provider_config = Some(enc.clone());
        c.encryption.encryption_provider_config_automatic_reload = true;
    });
    s.kubectl(&[
        "create",
        "secret",
        "generic",
        "before",
        "--from-literal=a=b",
    ]);
    assert!(raw(&etcd, "/registry/secrets/default/before").starts_with(b"k8s:enc:aescbc:v1:key1:"));
    // an invalid change is ignored ...
    std::fs::write(&enc, "kind: EncryptionConfiguration\n").expect("writing");
    std::thread::sleep(Duration::from_secs(6));
    s.kubectl(&[
        "create",
        "secret",
        "generic",
        "during",
        "--from-literal=a=b",
    ]);
    assert!(raw(&etcd, "/registry/secrets/default/during").starts_with(b"k8s:enc:aescbc:v1:key1:"));
    // ... a valid one takes over: key2 writes, key1 still reads
    config(
        dir.path(),
        "enc.yaml",
        &aescbc(&[("key2", KEY2), ("key1", KEY1)]),
    );
    common::eventually("writes use key2", || {
        let name = format!("after-{}", std::process::id());
        let _ = s.kubectl_result(&["delete", "secret", &name, "--ignore-not-found"], None);
        s.kubectl(&["create", "secret", "generic", &name, "--from-literal=a=b"]);
        raw(&etcd, &format!("/registry/secrets/default/{name}"))
            .starts_with(b"k8s:enc:aescbc:v1:key2:")
    });
    assert_eq!(
        s.kubectl(&["get", "secret", "before", "-o", "jsonpath={.data.a}"]),
        "Yg=="
    );
}
