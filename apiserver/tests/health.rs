//! `/healthz`, `/livez` and `/readyz` as upstream serves them, through the real kubectl 1.37
//! against a real etcd: named checks listed by `?verbose`, `?exclude=`, each check at its own
//! path, open to anonymous callers, and a stopped etcd failing readyz (HTTP 500, reasons
//! withheld) while `/livez/ping` stays healthy.

mod common;

use common::TestServer;

const READYZ_VERBOSE: &str = "\
[+]ping ok
[+]log ok
[+]etcd ok
[+]etcd-readiness ok
[+]informer-sync ok
[+]poststarthook/rbac/bootstrap-roles ok
[+]poststarthook/scheduling/bootstrap-system-priority-classes ok
[+]poststarthook/priority-and-fairness-config-producer ok
[+]poststarthook/crd-informer-synced ok
[+]poststarthook/start-kube-aggregator-informers ok
[+]shutdown ok
readyz check passed
";

/// GET `path` without credentials (kube-rs: kubectl prompts for a password instead):
/// the body, or the error.
fn anonymous(s: &TestServer, path: &str) -> Result<String, kube::Error> {
    s.rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(s.kubeconfig()).expect("kubeconfig");
        let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        cfg.auth_info = Default::default();
        let anon = kube::Client::try_from(cfg).expect("anonymous client");
        let req = axum::http::Request::get(path)
            .body(vec![])
            .expect("request");
        anon.request_text(req).await
    })
}

#[test]
fn named_checks_verbose_exclude_per_check_paths_and_a_stopped_etcd() {
    let mut etcd = testkit::Etcd::start();
    let s = TestServer::start_with(|c| c.storage.etcd_servers = vec![etcd.url()]);

    // informer-sync waits for the watch cache's first list
    common::eventually("readyz passes", || {
        s.kubectl_result(&["get", "--raw", "/readyz"], None).0
    });
    assert_eq!(
        s.kubectl(&["get", "--raw", "/readyz?verbose"]),
        READYZ_VERBOSE
    );
    let livez = s.kubectl(&["get", "--raw", "/livez?verbose"]);
    assert!(
        livez.starts_with("[+]ping ok\n[+]log ok\n[+]etcd ok\n"),
        "{livez}"
    );
    assert!(livez.ends_with("\nlivez check passed\n"), "{livez}");
    assert!(
        !livez.contains("[+]shutdown") && !livez.contains("[+]informer-sync"),
        "{livez}"
    );
    let healthz = s.kubectl(&["get", "--raw", "/healthz?verbose"]);
    assert!(healthz.ends_with("\nhealthz check passed\n"), "{healthz}");
    assert_eq!(s.kubectl(&["get", "--raw", "/healthz"]), "ok");
    assert_eq!(s.kubectl(&["get", "--raw", "/livez"]), "ok");

    // every check at its own path; unknown ones are 404
    for path in [
        "/livez/etcd",
        "/livez/ping",
        "/readyz/etcd",
        "/readyz/informer-sync",
    ] {
        assert_eq!(s.kubectl(&["get", "--raw", path]), "ok", "{path}");
    }
    let missing = s.kubectl_fails(&["get", "--raw", "/livez/shutdown"], None);
    assert!(missing.contains("NotFound"), "{missing}");

    // exclusion, and a name that matches nothing
    let excluded = s.kubectl(&["get", "--raw", "/readyz?verbose&exclude=etcd&exclude=nope"]);
    assert!(excluded.contains("[+]etcd excluded: ok\n"), "{excluded}");
    assert!(excluded.contains("[+]etcd-readiness ok\n"), "{excluded}");
    assert!(
        excluded.contains("warn: some health checks cannot be excluded: no matches for \"nope\"\n"),
        "{excluded}"
    );

    // open to anonymous callers, as upstream's system:public-info-viewer
    assert_eq!(
        anonymous(&s, "/readyz?verbose").expect("anonymous readyz"),
        READYZ_VERBOSE
    );
    assert_eq!(
        anonymous(&s, "/livez/etcd").expect("anonymous livez/etcd"),
        "ok"
    );
    match anonymous(&s, "/api/v1/namespaces") {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 401),
        other => panic!("anonymous list should be 401: {other:?}"),
    }

    // etcd gone: readyz and livez fail with the reason withheld, a single check tells it
    etcd.stop();
    let err = s.kubectl_fails(&["get", "--raw", "/readyz"], None);
    assert!(err.contains("InternalError"), "{err}");
    assert!(err.contains(r"[-]etcd failed: reason withheld\n"), "{err}");
    assert!(
        err.contains(r"[-]etcd-readiness failed: reason withheld\n"),
        "{err}"
    );
    assert!(err.contains(r"[+]ping ok\n"), "{err}");
    assert!(err.contains("readyz check failed"), "{err}");
    let err = s.kubectl_fails(&["get", "--raw", "/livez?verbose"], None);
    assert!(err.contains("livez check failed"), "{err}");
    let err = s.kubectl_fails(&["get", "--raw", "/readyz/etcd"], None);
    assert!(err.contains("internal server error"), "{err}");
    assert_eq!(s.kubectl(&["get", "--raw", "/livez/ping"]), "ok");
    // excluding what needs the store passes again
    let passed = s.kubectl(&[
        "get",
        "--raw",
        "/readyz?exclude=etcd&exclude=etcd-readiness&exclude=informer-sync",
    ]);
    assert_eq!(passed, "ok");
}
