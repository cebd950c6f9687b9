//! x509 client certificate authentication (upstream's `--client-ca-file`), driven by the
//! real kubectl 1.37 with kubeconfigs holding client certificates: one the cluster CA signed
//! is its CN in its O groups (whoami, RBAC, impersonation as for any user); one another CA
//! signed is a 401.

mod common;

use common::{eventually, TestServer};

/// A kubeconfig for `user` in `groups` with a certificate from the server's cluster CA
/// (what `kaze kubeconfig --user` writes), in the test's directory.
fn user_kubeconfig(s: &TestServer, user: &str, groups: &[&str]) -> String {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    let text = apiserver::user_kubeconfig(s.server().data_dir(), user, &groups, 1, None)
        .expect("issuing a user kubeconfig");
    common::write(s, &format!("{user}.kubeconfig"), &text)
}

/// kubectl with another kubeconfig (the later `--kubeconfig` wins over the admin's).
fn kubectl_as(s: &TestServer, kubeconfig: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--kubeconfig", kubeconfig];
    all.extend(args);
    s.kubectl_result(&all, None)
}

const WHOAMI: &[&str] = &[
    "auth",
    "whoami",
    "-o",
    "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
];

#[test]
fn a_cluster_ca_certificate_is_its_common_name_in_its_organizations() {
    let s = TestServer::start();
    s.kubectl(&["create", "namespace", "team"]);
    let jane = user_kubeconfig(&s, "jane", &["devs"]);

    let (ok, out, err) = kubectl_as(&s, &jane, WHOAMI);
    assert!(ok, "{err}");
    assert_eq!(out, r#"jane ["devs","system:authenticated"]"#);

    // RBAC applies to her as to any user: nothing bound yet
    let (ok, _, err) = kubectl_as(&s, &jane, &["get", "pods", "-n", "team"]);
    assert!(!ok, "jane has no binding yet");
    assert!(
        err.contains(
            r#"pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the namespace "team""#
        ),
        "{err}"
    );
    // a binding to her certificate's group lets her in
    s.kubectl(&[
        "create",
        "rolebinding",
        "devs-view",
        "-n",
        "team",
        "--clusterrole=view",
        "--group=devs",
    ]);
    eventually("jane (group devs) can list pods in team", || {
        kubectl_as(&s, &jane, &["get", "pods", "-n", "team"]).0
    });
    let (ok, _, err) = kubectl_as(&s, &jane, &["get", "pods", "-n", "default"]);
    assert!(!ok, "only in team: {err}");
    let (ok, _, err) = kubectl_as(&s, &jane, &["create", "configmap", "c", "-n", "team"]);
    assert!(!ok, "view does not create: {err}");
    assert!(
        err.contains(r#"User "jane" cannot create resource "configmaps""#),
        "{err}"
    );

    // impersonation: jane may not, until RBAC says so
    let (ok, _, err) = kubectl_as(&s, &jane, &["get", "pods", "-n", "team", "--as=bob"]);
    assert!(!ok);
    assert!(
        err.contains(
            r#"users "bob" is forbidden: User "jane" cannot impersonate resource "users""#
        ),
        "{err}"
    );
    s.kubectl(&[
        "create",
        "clusterrole",
        "impersonate-bob",
        "--verb=impersonate",
        "--resource=users",
        "--resource-name=bob",
    ]);
    s.kubectl(&[
        "create",
        "clusterrolebinding",
        "jane-impersonates-bob",
        "--clusterrole=impersonate-bob",
        "--user=jane",
    ]);
    eventually("jane may impersonate bob", || {
        let (ok, out, _) = kubectl_as(
            &s,
            &jane,
            &[
                "auth",
                "whoami",
                "--as=bob",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
        );
        ok && out == "bob"
    });
}

#[test]
fn system_masters_certificates_are_admins() {
    let s = TestServer::start();
    let root = user_kubeconfig(&s, "kubernetes-admin", &["system:masters"]);
    let (ok, out, err) = kubectl_as(&s, &root, WHOAMI);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        r#"kubernetes-admin ["system:masters","system:authenticated"]"#
    );
    let (ok, _, err) = kubectl_as(&s, &root, &["create", "namespace", "ops"]);
    assert!(ok, "{err}");
    let (ok, out, err) = kubectl_as(&s, &root, &["auth", "can-i", "*", "*"]);
    assert!(ok, "{err}");
    assert_eq!(out, "yes");
    // and they impersonate anyone
    let (ok, out, err) = kubectl_as(
        &s,
        &root,
        &[
            "auth",
            "whoami",
            "--as=jane",
            "--as-group=devs",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, r#"jane ["devs","system:authenticated"]"#);
}

/// A CA of our own (same name as the cluster's, another key) and a kubeconfig whose client
/// certificate it signed; with `token`, the kubeconfig carries that bearer token too.
fn foreign_kubeconfig(s: &TestServer, user: &str, groups: &[&str], token: Option<&str>) -> String {
    foreign_kubeconfig_and_ca(s, user, groups, token).0
}

/// [`foreign_kubeconfig`] and the PEM of the CA that signed its certificate.
fn foreign_kubeconfig_and_ca(
    s: &TestServer,
    user: &str,
    groups: &[&str],
    token: Option<&str>,
) -> (String, String) {
    use base64::Engine;
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "kaze-ca");
    let ca_pem = ca.self_signed(&ca_key).expect("ca").pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, user);
    if let Some(g) = groups.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, *g);
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let token = token
        .map(|t| format!("    token: {t}\n"))
        .unwrap_or_default();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n{token}contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
        s.server().url(),
        b64(s.server().ca_pem()),
        b64(&cert.pem()),
        b64(&key.serialize_pem()),
    );
    (
        common::write(s, &format!("foreign-{user}.kubeconfig"), &text),
        ca_pem,
    )
}

#[test]
fn a_certificate_from_another_ca_is_unauthorized() {
    let s = TestServer::start();
    let forged = foreign_kubeconfig(&s, "kubernetes-admin", &["system:masters"], None);
    // kubectl 1.37 words a 401 in discovery "the server has asked for the client to provide
    // credentials", in a plain request "Unauthorized"; a bad certificate reads as a bad token
    let last_line = |err: &str| err.trim().lines().last().unwrap_or_default().to_string();
    for args in [&["get", "pods"][..], WHOAMI] {
        let (ok, out, err) = kubectl_as(&s, &forged, args);
        assert!(!ok, "{args:?}: {out}");
        assert!(
            err.contains("error: You must be logged in to the server"),
            "{args:?}: {err}"
        );
        let mut bad_token = vec!["--token=wrong"];
        bad_token.extend(args);
        let (ok, _, token_err) = s.kubectl_result(&bad_token, None);
        assert!(!ok);
        assert_eq!(last_line(&err), last_line(&token_err), "{args:?}");
    }
    // not even the paths open to anonymous callers: a bad certificate is an error
    let (ok, out, err) = kubectl_as(&s, &forged, &["get", "--raw", "/healthz"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("error: You must be logged in to the server (Unauthorized)"),
        "{err}"
    );
    // without a certificate those paths stay open
    let (ok, _, err) = s.kubectl_result(&["get", "--raw", "/healthz"], None);
    assert!(ok, "{err}");
}

#[test]
fn certificates_come_before_tokens() {
    let s = TestServer::start();
    let token = s.server().token().to_string();
    // a good certificate and the admin token: the certificate's user (x509 is tried first)
    let jane = user_kubeconfig(&s, "jane", &["devs"]);
    let flag = format!("--token={token}");
    let mut args = vec![flag.as_str()];
    args.extend(WHOAMI);
    let (ok, out, err) = kubectl_as(&s, &jane, &args);
    assert!(ok, "{err}");
    assert_eq!(out, r#"jane ["devs","system:authenticated"]"#);
    // a bad certificate and a good token: the token's user (upstream's union goes on)
    let forged = foreign_kubeconfig(&s, "mallory", &[], Some(&token));
    let (ok, out, err) = kubectl_as(&s, &forged, WHOAMI);
    assert!(ok, "{err}");
    assert!(out.starts_with("kaze-admin "), "{out}");
}

#[test]
fn a_changed_client_ca_file_is_followed_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("client-ca.crt");
    // the file must hold a CA before the server starts: a placeholder one, replaced below
    let placeholder = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|mut p| {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.self_signed(&rcgen::KeyPair::generate()?)
        })
        .expect("placeholder CA")
        .pem();
    std::fs::write(&ca_file, &placeholder).expect("write");
    let file = ca_file.clone();
    let s = TestServer::start_with(move |c| c.client_ca_file = Some(file));
    let (alice, alice_ca) = foreign_kubeconfig_and_ca(&s, "alice", &["team-a"], None);
    let (bob, bob_ca) = foreign_kubeconfig_and_ca(&s, "bob", &["team-b"], None);
    let whoami = |kubeconfig: &str| kubectl_as(&s, kubeconfig, WHOAMI);
    assert!(!whoami(&alice).0, "alice's CA is not in the file yet");

    // alice's CA added: her certificate authenticates, without a restart
    std::fs::write(&ca_file, format!("{placeholder}{alice_ca}")).expect("write");
    eventually("alice authenticated after her CA was added", || {
        whoami(&alice).1 == r#"alice ["team-a","system:authenticated"]"#
    });
    assert!(!whoami(&bob).0);
    // the file now names bob's CA only: alice's certificate stops, bob's works
    std::fs::write(&ca_file, &bob_ca).expect("write");
    eventually("bob in and alice out after the CA changed", || {
        whoami(&bob).0 && !whoami(&alice).0
    });
    // a broken file keeps the last good CA
    std::fs::write(&ca_file, "not a certificate").expect("write");
    std::thread::sleep(component::https::CLIENT_CA_RELOAD_INTERVAL * 3);
    let (ok, out, err) = whoami(&bob);
    assert!(ok, "{err}");
    assert_eq!(out, r#"bob ["team-b","system:authenticated"]"#);
}
