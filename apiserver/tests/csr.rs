//! The CertificateSigningRequest API with the real kubectl 1.37: create (the requester is
//! recorded, whatever the body says), upstream's validation, `kubectl get csr` columns,
//! `kubectl certificate approve|deny`, the `approve` permission on `signers`, the signer's
//! checks and certificates (verified against the cluster CA and used to log in), and the
//! auto-approval of kubelet client certificates for bootstrap tokens and renewing nodes.

mod common;

use common::{eventually, TestServer};
use serde_json::Value;

/// A PEM CSR for `cn` in `orgs` (and DNS names `dns`) with a new P-256 key; and the key.
fn csr_pem(cn: &str, orgs: &[&str], dns: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    for (i, o) in orgs.iter().enumerate() {
        let ty = match i {
            0 => rcgen::DnType::OrganizationName,
            _ => rcgen::DnType::CustomDnType(vec![2, 5, 4, 10]),
        };
        params.distinguished_name.push(ty, *o);
    }
    let csr = params.serialize_request(&key).expect("csr");
    (csr.pem().expect("pem"), key.serialize_pem())
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A CSR manifest; `extra` goes under `spec` (YAML lines, indented 2).
fn manifest(name: &str, pem: &str, signer: &str, usages: &[&str], extra: &str) -> String {
    let usages: Vec<String> = usages.iter().map(|u| format!("  - {u}")).collect();
    format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {name}\nspec:\n  request: {}\n  signerName: {signer}\n  usages:\n{}\n{extra}",
        b64(pem),
        usages.join("\n")
    )
}

fn csr(s: &TestServer, name: &str) -> Value {
    common::json(s, &["get", "csr", name])
}

/// Wait for the signer to issue `name`'s certificate; the PEM.
fn issued(s: &TestServer, name: &str) -> String {
    let mut cert = String::new();
    eventually(&format!("{name} issued"), || {
        let c = csr(s, name);
        match c.pointer("/status/certificate").and_then(Value::as_str) {
            Some(b) if !b.is_empty() => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .expect("base64 certificate");
                cert = String::from_utf8(bytes).expect("PEM");
                true
            }
            _ => false,
        }
    });
    cert
}

fn der(pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a CERTIFICATE block")
        .to_vec()
}

fn ca(s: &TestServer) -> component::https::ClientCa {
    component::https::ClientCa::from_file(&s.server().ca_file()).expect("cluster CA")
}

/// A kubeconfig logging in with `cert_pem` + `key_pem`.
fn cert_kubeconfig(
    s: &TestServer,
    file: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    let ca_pem = std::fs::read_to_string(s.server().ca_file()).expect("CA");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kaze\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: c\n  context:\n    cluster: kaze\n    user: u\ncurrent-context: c\n",
        s.server().url(),
        b64(&ca_pem),
        b64(cert_pem),
        b64(key_pem)
    );
    let _ = user;
    common::write(s, file, &text)
}

/// A user with a client certificate of the cluster CA and a ClusterRole `role` bound to
/// them: `verbs` on requests and their `subresources`, and `signer.0` on the signers named
/// `signer.1`; returns the user's kubeconfig.
fn signer_user(
    s: &TestServer,
    user: &str,
    role: &str,
    subresources: &[&str],
    verbs: &[&str],
    signer: (&str, &str),
) -> String {
    let text =
        apiserver::user_kubeconfig(s.server().data_dir(), user, &[], 1, None).expect("kubeconfig");
    let kubeconfig = common::write(s, &format!("{user}.kubeconfig"), &text);
    let resources: Vec<String> = std::iter::once("certificatesigningrequests".to_string())
        .chain(
            subresources
                .iter()
                .map(|r| format!("certificatesigningrequests/{r}")),
        )
        .collect();
    let rbac = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {role}
rules:
- apiGroups: [certificates.k8s.io]
  resources: [{}]
  verbs: [{}]
- apiGroups: [certificates.k8s.io]
  resources: [signers]
  verbs: [{}]
  resourceNames: [{}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {role}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}
subjects:
- {{kind: User, name: {user}}}
"#,
        resources.join(", "),
        verbs.join(", "),
        signer.0,
        signer.1
    );
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&rbac));
    kubeconfig
}

#[test]
fn requests_record_the_requester_and_are_validated_as_upstream() {
    let s = TestServer::start();
    let (pem, _) = csr_pem("jane", &["devs"], &[]);
    // the body's username and groups are replaced by who asked
    let m = manifest(
        "req-jane",
        &pem,
        "kubernetes.io/kube-apiserver-client",
        &["client auth", "digital signature"],
        "  username: system:admin\n  groups: [system:masters]\n",
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&m));
    let c = csr(&s, "req-jane");
    assert_eq!(c["spec"]["username"], "kaze-admin");
    assert_eq!(
        c["spec"]["groups"],
        serde_json::json!(["system:masters", "system:authenticated"])
    );
    assert!(c["status"].get("conditions").is_none(), "{c}");

    // kubectl get csr: upstream's columns
    let table = s.kubectl(&["get", "csr", "req-jane"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "AGE",
            "SIGNERNAME",
            "REQUESTOR",
            "REQUESTEDDURATION",
            "CONDITION"
        ]
    );
    let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
    assert_eq!(row[0], "req-jane");
    assert_eq!(
        row[2..],
        [
            "kubernetes.io/kube-apiserver-client",
            "kaze-admin",
            "<none>",
            "Pending"
        ]
    );

    // the spec never changes after create
    s.kubectl(&[
        "patch",
        "csr",
        "req-jane",
        "--type=merge",
        "-p",
        r#"{"spec":{"signerName":"example.com/other","usages":["server auth"]}}"#,
    ]);
    let c = csr(&s, "req-jane");
    assert_eq!(
        c["spec"]["signerName"],
        "kubernetes.io/kube-apiserver-client"
    );
    assert_eq!(c["spec"]["usages"][0], "client auth");
    // neither does the approval through the main resource
    s.kubectl(&[
        "patch",
        "csr",
        "req-jane",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Approved","status":"True"}]}}"#,
    ]);
    assert!(csr(&s, "req-jane")["status"].get("conditions").is_none());

    // validation
    let bad = [
        (
            manifest("bad-pem", "not a pem", "kubernetes.io/kube-apiserver-client", &["client auth"], ""),
            "spec.request: Invalid value: []byte{...}: PEM block type must be CERTIFICATE REQUEST",
        ),
        (
            manifest("bad-signer", &pem, "kubernetes.io", &["client auth"], ""),
            "spec.signerName: Invalid value: \"kubernetes.io\"",
        ),
        (
            manifest("legacy", &pem, "kubernetes.io/legacy-unknown", &["client auth"], ""),
            "the legacy signerName is not allowed via this API version",
        ),
        (
            manifest("short", &pem, "kubernetes.io/kube-apiserver-client", &["client auth"], "  expirationSeconds: 300\n"),
            "spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 600 seconds (10 minutes)",
        ),
        (
            manifest("usage", &pem, "kubernetes.io/kube-apiserver-client", &["client auth", "flying"], ""),
            "spec.usages[1]: Unsupported value: \"flying\"",
        ),
        (
            manifest("dup", &pem, "kubernetes.io/kube-apiserver-client", &["client auth", "client auth"], ""),
            "spec.usages[1]: Duplicate value: \"client auth\"",
        ),
    ];
    for (m, want) in bad {
        let err = s.kubectl_fails(&["create", "-f", "-"], Some(&m));
        assert!(err.contains("is invalid"), "{err}");
        assert!(err.contains(want), "want {want:?} in {err}");
    }
    let no_signer = format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: nosigner\nspec:\n  request: {}\n  usages: [client auth]\n",
        b64(&pem)
    );
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(&no_signer));
    assert!(err.contains("spec.signerName: Required value"), "{err}");
    s.kubectl(&["delete", "csr", "req-jane"]);
}

#[test]
fn approved_requests_are_signed_by_the_cluster_ca_and_log_in() {
    let s = TestServer::start();
    let (pem, key) = csr_pem("jane", &["devs", "ops"], &[]);
    let m = manifest(
        "jane-client",
        &pem,
        "kubernetes.io/kube-apiserver-client",
        &["digital signature", "client auth"],
        "  expirationSeconds: 3600\n",
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&m));
    let out = s.kubectl(&["certificate", "approve", "jane-client"]);
    assert!(out.contains("approved"), "{out}");
    let cert = issued(&s, "jane-client");
    let c = csr(&s, "jane-client");
    let cond = &c["status"]["conditions"][0];
    assert_eq!(cond["type"], "Approved");
    assert_eq!(cond["reason"], "KubectlApprove");
    assert!(cond["lastTransitionTime"].is_string(), "{cond}");
    let row = s.kubectl(&["get", "csr", "jane-client", "--no-headers"]);
    assert!(
        row.contains("60m") && row.contains("Approved,Issued"),
        "{row}"
    );

    // signed by the cluster CA, for client auth, the request's subject
    let user = ca(&s)
        .verify(&[der(&cert).into()])
        .expect("the cluster CA signed it, for client authentication");
    assert_eq!(user.name, "jane");
    assert_eq!(user.groups, ["devs", "ops"]);
    let bytes = der(&cert);
    let (_, x) = x509_parser::parse_x509_certificate(&bytes).expect("certificate");
    let lifetime = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
    // an hour asked for, backdated five minutes
    assert!((3600..=3600 + 301).contains(&lifetime), "{lifetime}");
    let eku = x.extended_key_usage().expect("eku").expect("present").value;
    assert!(eku.client_auth && !eku.server_auth);
    let ku = x.key_usage().expect("ku").expect("present").value;
    assert!(ku.digital_signature() && !ku.key_encipherment());
    assert!(!x.is_ca());

    // and it logs in as jane in her groups
    let kc = cert_kubeconfig(&s, "jane.kubeconfig", "jane", &cert, &key);
    let who = s.kubectl(&[
        "--kubeconfig",
        &kc,
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
    ]);
    assert_eq!(who.trim(), r#"jane ["devs","ops","system:authenticated"]"#);

    // denied requests are never signed; approval and denial are exclusive and stay
    let (pem2, _) = csr_pem("bob", &[], &[]);
    let m = manifest(
        "bob-client",
        &pem2,
        "kubernetes.io/kube-apiserver-client",
        &["client auth"],
        "",
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&m));
    s.kubectl(&["certificate", "deny", "bob-client"]);
    let c = csr(&s, "bob-client");
    assert_eq!(c["status"]["conditions"][0]["type"], "Denied");
    assert_eq!(c["status"]["conditions"][0]["reason"], "KubectlDeny");
    let both = serde_json::json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "bob-client"}, "spec": c["spec"],
        "status": {"conditions": [c["status"]["conditions"][0], {"type": "Approved", "status": "True"}]}});
    let err = s.kubectl_fails(
        &[
            "replace",
            "--raw",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/bob-client/approval",
            "-f",
            "-",
        ],
        Some(&both.to_string()),
    );
    assert!(
        err.contains("Approved and Denied conditions are mutually exclusive"),
        "{err}"
    );
    let none = serde_json::json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "bob-client"}, "spec": c["spec"], "status": {}});
    let err = s.kubectl_fails(
        &[
            "replace",
            "--raw",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/bob-client/approval",
            "-f",
            "-",
        ],
        Some(&none.to_string()),
    );
    assert!(err.contains("may not remove"), "{err}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let c = csr(&s, "bob-client");
    assert!(c["status"].get("certificate").is_none(), "{c}");
    assert!(s
        .kubectl(&["get", "csr", "bob-client", "--no-headers"])
        .contains("Denied"));
    s.kubectl(&["delete", "csr", "jane-client", "bob-client"]);
}

#[test]
fn approving_needs_approve_on_the_signer_and_signers_check_their_requests() {
    let s = TestServer::start();
    // carol may update approvals, but approve only for example.com signers
    let carol = signer_user(
        &s,
        "carol",
        "csr-approver-test",
        &["approval"],
        &["get", "list", "update"],
        ("approve", "example.com/*"),
    );
    let (pem, _) = csr_pem("x", &[], &[]);
    for (name, signer) in [
        ("to-kube", "kubernetes.io/kube-apiserver-client"),
        ("to-example", "example.com/mine"),
    ] {
        let m = manifest(name, &pem, signer, &["client auth"], "");
        s.kubectl_stdin(&["create", "-f", "-"], Some(&m));
    }
    eventually("carol's binding", || {
        s.kubectl_result(&["--kubeconfig", &carol, "get", "csr", "to-kube"], None)
            .0
    });
    let err = s.kubectl_fails(
        &["--kubeconfig", &carol, "certificate", "approve", "to-kube"],
        None,
    );
    assert!(
        err.contains(r#"certificatesigningrequests.certificates.k8s.io "to-kube" is forbidden: user not permitted to approve requests with signerName "kubernetes.io/kube-apiserver-client""#),
        "{err}"
    );
    s.kubectl(&[
        "--kubeconfig",
        &carol,
        "certificate",
        "approve",
        "to-example",
    ]);
    // example.com's signer is not kaze's: approved, never signed by it
    std::thread::sleep(std::time::Duration::from_millis(500));
    let c = csr(&s, "to-example");
    assert_eq!(c["status"]["conditions"][0]["type"], "Approved");
    assert!(c["status"].get("certificate").is_none());

    // a kubelet client request the admin approves but that breaks the signer's rules fails
    let (bad, _) = csr_pem("system:node:n1", &["devs"], &[]);
    let m = manifest(
        "bad-kubelet",
        &bad,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
        "",
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&m));
    s.kubectl(&["certificate", "approve", "bad-kubelet"]);
    eventually("bad-kubelet failed", || {
        let c = csr(&s, "bad-kubelet");
        let conds = c["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conds.iter().any(|x| {
            x["type"] == "Failed"
                && x["reason"] == "SignerValidationFailure"
                && x["message"] == "subject organization is not system:nodes"
        })
    });
    assert!(csr(&s, "bad-kubelet")["status"]
        .get("certificate")
        .is_none());
    let row = s.kubectl(&["get", "csr", "bad-kubelet", "--no-headers"]);
    assert!(row.contains("Approved,Failed"), "{row}");
    // kubelet serving: server auth for the node's names
    let (serving, _) = csr_pem("system:node:n1", &["system:nodes"], &["n1.example"]);
    let m = manifest(
        "serving",
        &serving,
        "kubernetes.io/kubelet-serving",
        &["digital signature", "key encipherment", "server auth"],
        "",
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&m));
    s.kubectl(&["certificate", "approve", "serving"]);
    let cert = issued(&s, "serving");
    let bytes = der(&cert);
    let (_, x) = x509_parser::parse_x509_certificate(&bytes).expect("certificate");
    let eku = x.extended_key_usage().expect("eku").expect("present").value;
    assert!(eku.server_auth && !eku.client_auth);
    let san = x
        .subject_alternative_name()
        .expect("san")
        .expect("present")
        .value;
    assert_eq!(
        format!("{:?}", san.general_names),
        r#"[DNSName("n1.example")]"#
    );
    s.kubectl(&[
        "delete",
        "clusterrolebinding,clusterrole",
        "csr-approver-test",
    ]);
    s.kubectl(&[
        "delete",
        "csr",
        "to-kube",
        "to-example",
        "bad-kubelet",
        "serving",
    ]);
}

#[test]
fn kubelet_client_requests_are_auto_approved_for_bootstrappers_and_renewing_nodes() {
    let s = TestServer::start_with_tokens(
        "boot-secret-123,system:bootstrap:abc123,boot,\"system:bootstrappers\"\nnobody-secret,nobody,nobody\n",
        |_| {},
    );
    let as_token = |token: &str, args: &[&str], stdin: Option<&str>| {
        let mut all = vec!["--token", token];
        all.extend(args);
        s.kubectl_result(&all, stdin)
    };
    // a bootstrap token asks for node n1's client certificate: approved and issued
    let (pem, key) = csr_pem("system:node:n1", &["system:nodes"], &[]);
    let m = manifest(
        "node-n1-boot",
        &pem,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
        "",
    );
    let (ok, _, err) = as_token("boot-secret-123", &["create", "-f", "-"], Some(&m));
    assert!(ok, "{err}");
    let cert = issued(&s, "node-n1-boot");
    let c = csr(&s, "node-n1-boot");
    assert_eq!(c["spec"]["username"], "system:bootstrap:abc123");
    assert_eq!(c["status"]["conditions"][0]["reason"], "AutoApproved");
    assert_eq!(
        c["status"]["conditions"][0]["message"],
        "Auto approving kubelet client certificate after SubjectAccessReview."
    );
    // the bootstrap token reads its requests, and nothing else
    let (ok, _, _) = as_token("boot-secret-123", &["get", "csr", "node-n1-boot"], None);
    assert!(ok);
    let (ok, _, err) = as_token(
        "boot-secret-123",
        &["get", "secrets", "-n", "kube-system"],
        None,
    );
    assert!(!ok && err.contains("forbidden"), "{err}");

    // the node renews with its new certificate: its own name, approved as selfnodeclient
    let kc = cert_kubeconfig(&s, "n1.kubeconfig", "system:node:n1", &cert, &key);
    let (pem2, _) = csr_pem("system:node:n1", &["system:nodes"], &[]);
    let m = manifest(
        "node-n1-renew",
        &pem2,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "key encipherment", "client auth"],
        "",
    );
    s.kubectl_stdin(&["--kubeconfig", &kc, "create", "-f", "-"], Some(&m));
    issued(&s, "node-n1-renew");
    assert_eq!(
        csr(&s, "node-n1-renew")["status"]["conditions"][0]["message"],
        "Auto approving self kubelet client certificate after SubjectAccessReview."
    );
    // node n1 asking for node n2's certificate is not its own: no selfnodeclient, and
    // nodes have no nodeclient: it stays pending
    let (pem3, _) = csr_pem("system:node:n2", &["system:nodes"], &[]);
    let m = manifest(
        "node-n2-by-n1",
        &pem3,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
        "",
    );
    s.kubectl_stdin(&["--kubeconfig", &kc, "create", "-f", "-"], Some(&m));
    // and a user without either permission gets no approval either
    let (pem4, _) = csr_pem("system:node:n3", &["system:nodes"], &[]);
    let m = manifest(
        "node-n3-by-admin",
        &pem4,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
        "",
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&m));
    std::thread::sleep(std::time::Duration::from_secs(1));
    let c = csr(&s, "node-n2-by-n1");
    assert!(c["status"].get("conditions").is_none(), "{c}");
    // (the admin is in system:masters: it may do everything, nodeclient included)
    issued(&s, "node-n3-by-admin");
    let (ok, _, err) = as_token(
        "nobody-secret",
        &["create", "-f", "-"],
        Some(&m.replace("node-n3-by-admin", "by-nobody")),
    );
    assert!(!ok && err.contains("forbidden"), "{err}");
    s.kubectl(&["delete", "csr", "--all"]);
}

/// kaze's agents get a `system:kube-proxy` client certificate for their Service proxy and
/// pod routes with the join token: a `kube-apiserver-client` request for exactly that
/// subject made with a bootstrap token is approved and issued; the same request from
/// anyone else, or any other subject from the token, waits for an approver.
#[test]
fn the_bootstrap_tokens_kube_proxy_request_is_auto_approved_and_nothing_else() {
    let s = TestServer::start_with_tokens(
        "boot-secret-123,system:bootstrap:abc123,boot,\"system:bootstrappers\"\nnode-secret,system:node:n1,n1,\"system:nodes\"\n",
        |_| {},
    );
    let create = |token: &str, name: &str, cn: &str, orgs: &[&str], usages: &[&str]| {
        let (pem, key) = csr_pem(cn, orgs, &[]);
        let m = manifest(
            name,
            &pem,
            "kubernetes.io/kube-apiserver-client",
            usages,
            "",
        );
        let (ok, _, err) = s.kubectl_result(&["--token", token, "create", "-f", "-"], Some(&m));
        assert!(ok, "{name}: {err}");
        key
    };
    let client = ["digital signature", "client auth"];
    let key = create(
        "boot-secret-123",
        "kube-proxy-boot",
        "system:kube-proxy",
        &[],
        &client,
    );
    let cert = issued(&s, "kube-proxy-boot");
    let c = csr(&s, "kube-proxy-boot");
    assert_eq!(c["status"]["conditions"][0]["reason"], "AutoApproved");
    assert_eq!(
        c["status"]["conditions"][0]["message"],
        "Auto approving kube-proxy client certificate for a bootstrap token."
    );
    // the certificate logs in as system:kube-proxy, which may list every Node
    let kc = cert_kubeconfig(
        &s,
        "kube-proxy.kubeconfig",
        "system:kube-proxy",
        &cert,
        &key,
    );
    let who = s.kubectl(&[
        "--kubeconfig",
        &kc,
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
    ]);
    assert_eq!(who, r#"system:kube-proxy ["system:authenticated"]"#);
    s.kubectl(&["--kubeconfig", &kc, "get", "nodes"]);

    // not approved: another subject or an organization from the token, the same subject
    // from a node
    create("boot-secret-123", "admin-by-boot", "admin", &[], &client);
    // (system:masters cannot even be asked for: CertificateSubjectRestriction, below)
    create(
        "boot-secret-123",
        "kube-proxy-org-by-boot",
        "system:kube-proxy",
        &["system:nodes"],
        &client,
    );
    create(
        "boot-secret-123",
        "kube-proxy-server-auth-by-boot",
        "system:kube-proxy",
        &[],
        &["digital signature", "client auth", "server auth"],
    );
    create(
        "node-secret",
        "kube-proxy-by-node",
        "system:kube-proxy",
        &[],
        &client,
    );
    // (a later request is approved after these were looked at: the approver takes them in
    // order)
    create(
        "boot-secret-123",
        "kube-proxy-boot-2",
        "system:kube-proxy",
        &[],
        &client,
    );
    issued(&s, "kube-proxy-boot-2");
    std::thread::sleep(std::time::Duration::from_secs(1));
    for name in [
        "admin-by-boot",
        "kube-proxy-org-by-boot",
        "kube-proxy-server-auth-by-boot",
        "kube-proxy-by-node",
    ] {
        let c = csr(&s, name);
        assert!(c["status"].get("conditions").is_none(), "{name}: {c}");
    }
    s.kubectl(&["delete", "csr", "--all"]);
}

#[test]
fn masters_requests_and_signing_without_sign_permission_are_refused() {
    let s = TestServer::start();
    // CertificateSubjectRestriction: nobody may even ask the client signer for system:masters
    let (masters, _) = csr_pem("mallory", &["system:masters"], &[]);
    let m = manifest(
        "masters",
        &masters,
        "kubernetes.io/kube-apiserver-client",
        &["client auth"],
        "",
    );
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(&m));
    assert!(
        err.contains(r#"certificatesigningrequests.certificates.k8s.io "masters" is forbidden: use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"#),
        "{err}"
    );
    // other groups, and system:masters for another signer, are fine
    let (devs, _) = csr_pem("mallory", &["devs"], &[]);
    let m = manifest(
        "devs",
        &devs,
        "kubernetes.io/kube-apiserver-client",
        &["client auth"],
        "",
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&m));
    let m = manifest(
        "other-signer",
        &masters,
        "example.com/mine",
        &["client auth"],
        "",
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&m));
    s.kubectl(&["certificate", "approve", "other-signer"]);

    // CertificateSigning: dave may write the status, but sign only for example.org
    let dave = signer_user(
        &s,
        "dave",
        "csr-signer-test",
        &["status"],
        &["get", "list", "update", "patch"],
        ("sign", "example.org/*"),
    );
    let patch = format!(
        r#"{{"status":{{"certificate":"{}"}}}}"#,
        b64(s.server().ca_pem())
    );
    let sign = |kubeconfig: &str| {
        s.kubectl_result(
            &[
                "--kubeconfig",
                kubeconfig,
                "patch",
                "csr",
                "other-signer",
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch,
            ],
            None,
        )
    };
    eventually("dave's binding", || {
        s.kubectl_result(&["--kubeconfig", &dave, "get", "csr", "other-signer"], None)
            .0
    });
    let (ok, _, err) = sign(&dave);
    assert!(!ok);
    assert!(
        err.contains(r#"certificatesigningrequests.certificates.k8s.io "other-signer" is forbidden: user not permitted to sign requests with signerName "example.com/mine""#),
        "{err}"
    );
    assert!(csr(&s, "other-signer")["status"]
        .get("certificate")
        .is_none());
    // sign on example.com/* lets him
    s.kubectl(&[
        "patch",
        "clusterrole",
        "csr-signer-test",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/rules/1/resourceNames/-","value":"example.com/*"}]"#,
    ]);
    eventually("dave signs example.com requests", || sign(&dave).0);
    assert_eq!(
        csr(&s, "other-signer")["status"]["certificate"],
        b64(s.server().ca_pem())
    );
}
