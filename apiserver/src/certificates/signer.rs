//! The controller-manager's `csrapproving` and `csrsigning` controllers, run inside the
//! apiserver (kaze's server is one process, as k3s's): they follow the requests through the
//! watch cache and act on them through the object layer.
//!
//! - approving (upstream's `sarapprove`): a pending `kubernetes.io/kube-apiserver-client-kubelet`
//!   request that is a valid kubelet client request is approved (reason `AutoApproved`) when
//!   its requester may `create` `certificatesigningrequests/selfnodeclient` (the request is
//!   for the requester's own name: a node renewing) or `.../nodeclient` (bootstrap), as RBAC
//!   and the Node authorizer answer for the user recorded in the request's spec; as a kaze
//!   extension (k3s hands its agents a kube-proxy certificate the same way), a pending
//!   `kubernetes.io/kube-apiserver-client` request for exactly `system:kube-proxy` (no
//!   organization, no SANs, client usages) made with a bootstrap token
//!   (`system:bootstrap:<id>` in `system:bootstrappers`) is approved too, so a joining
//!   agent's Service proxy and pod routes get their own identity; every other request of
//!   that signer waits for someone to approve it;
//! - signing: an approved request of `kubernetes.io/kube-apiserver-client`,
//!   `kubernetes.io/kube-apiserver-client-kubelet` or `kubernetes.io/kubelet-serving` without a
//!   certificate is checked against its signer's rules (upstream's messages), and either
//!   signed by the cluster signer (`--cluster-signing-cert-file`/`-key-file`, default the
//!   cluster CA) for `spec.expirationSeconds` capped at `--cluster-signing-duration`, or marked
//!   `Failed` (reason `SignerValidationFailure`). Other signers are left to their own
//!   controllers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{
    is_approved, Request, KUBELET_SERVING, KUBE_APISERVER_CLIENT, KUBE_APISERVER_CLIENT_KUBELET,
};
use crate::auth::UserInfo;
use crate::follow::Follower;
use crate::objects::{self, Part};
use crate::rbac::Attributes;
use crate::registry::ResourceDef;
use crate::state::AppState;
use crate::status::ApiError;
use crate::tls::{Issue, Signer};

/// How long a request whose handling failed (a conflict, the store) waits to be tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Approve and sign requests until shutdown. Without a signer (its files could not be
/// read) requests are still approved, not signed.
pub async fn run(state: Arc<AppState>, signer: Option<Arc<Signer>>, max_ttl: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let follow = crate::follow::run(
        state.clone(),
        ("certificates.k8s.io", "v1", "certificatesigningrequests"),
        Queue(tx.clone()),
    );
    let work = async {
        while let Some(name) = rx.recv().await {
            if let Err(e) = handle(&state, signer.as_deref(), max_ttl, &name).await {
                tracing::debug!(csr = %name, error = %e.message, "handling a certificate signing request; retrying");
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RETRY).await;
                    let _ = tx.send(name);
                });
            }
        }
    };
    tokio::select! {
        _ = state.shutdown.cancelled() => {}
        _ = follow => {}
        _ = work => {}
    }
}

/// Every request that is put (or listed) goes on the queue by name.
struct Queue(mpsc::UnboundedSender<String>);

impl Follower for Queue {
    fn reset(&self, items: Vec<(&str, &[u8])>) {
        for (name, _) in items {
            let _ = self.0.send(name.to_string());
        }
    }
    fn apply(&self, key: &str, value: Option<&[u8]>) {
        if value.is_some() {
            let _ = self.0.send(key.to_string());
        }
    }
    fn set_synced(&self, _: bool) {}
}

fn def(state: &AppState) -> &ResourceDef {
    state
        .registry
        .get("certificates.k8s.io", "v1", "certificatesigningrequests")
        .expect("certificatesigningrequests are built in")
}

async fn handle(
    state: &AppState,
    signer: Option<&Signer>,
    max_ttl: Duration,
    name: &str,
) -> Result<(), ApiError> {
    let csr = match objects::get(state, def(state), None, name).await {
        Ok(csr) => csr,
        Err(e) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    let has_cert = csr
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty());
    if has_cert || has_condition(&csr, "Failed") {
        return Ok(());
    }
    let signer_name = str_at(&csr, "/spec/signerName");
    let request =
        super::decode_request(str_at(&csr, "/spec/request")).and_then(|pem| Request::parse(&pem));
    let usages: BTreeSet<String> = crate::rbac::strings(csr.pointer("/spec/usages"))
        .into_iter()
        .collect();
    if !has_condition(&csr, "Approved") && !has_condition(&csr, "Denied") {
        if let Ok(req) = &request {
            approve(state, &csr, req, &usages).await?;
        }
        return Ok(());
    }
    if !is_approved(&csr) {
        return Ok(());
    }
    let Some(signer) = signer else {
        return Ok(());
    };
    let checked = match signer_name {
        KUBE_APISERVER_CLIENT => client_usages(&usages),
        KUBE_APISERVER_CLIENT_KUBELET => request
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|r| kubelet_client(r, &usages)),
        KUBELET_SERVING => request
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|r| kubelet_serving(r, &usages)),
        _ => return Ok(()),
    };
    let request = match (checked, request) {
        (Ok(()), Ok(r)) => r,
        (Err(why), _) | (Ok(()), Err(why)) => return fail(state, name, &why).await,
    };
    let ttl = csr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .map_or(max_ttl, |d| d.min(max_ttl));
    let issue = issue_for(&usages, ttl);
    let cert = signer
        .sign(&request.pem, &request.subject, &issue)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    update(state, name, Part::Status, move |new| {
        new["status"]["certificate"] = json!(base64(&cert));
    })
    .await?;
    tracing::info!(csr = %name, signer = %signer_name, "signed a certificate signing request");
    Ok(())
}

fn str_at<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn has_condition(obj: &Value, ty: &str) -> bool {
    super::has_condition(obj, ty)
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Change request `name` through the object layer as the `part` subresource would (its
/// strategy and validation), `f` editing a copy of the current object.
async fn update(
    state: &AppState,
    name: &str,
    part: Part,
    f: impl Fn(&mut Value),
) -> Result<Value, ApiError> {
    let def = def(state);
    objects::guaranteed_update(state, def, None, name, None, false, |cur| {
        let mut new = cur.clone();
        f(&mut new);
        objects::prepare_update(def, cur, new, part, false)
    })
    .await
}

fn condition(ty: &str, reason: &str, message: &str) -> Value {
    json!({"type": ty, "status": "True", "reason": reason, "message": message,
           "lastUpdateTime": crate::meta::now()})
}

async fn fail(state: &AppState, name: &str, why: &str) -> Result<(), ApiError> {
    let c = condition("Failed", "SignerValidationFailure", why);
    update(state, name, Part::Status, move |new| {
        push_condition(new, c.clone())
    })
    .await?;
    tracing::info!(csr = %name, reason = %why, "certificate signing request failed its signer's checks");
    Ok(())
}

fn push_condition(obj: &mut Value, c: Value) {
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    match obj["status"]["conditions"].as_array_mut() {
        Some(list) => list.push(c),
        None => obj["status"]["conditions"] = json!([c]),
    }
}

/// The user who made the request, as recorded in its spec.
fn requester(csr: &Value) -> UserInfo {
    let spec = &csr["spec"];
    UserInfo {
        name: str_at(spec, "/username").to_string(),
        uid: str_at(spec, "/uid").to_string(),
        groups: crate::rbac::strings(spec.get("groups")),
        extra: spec
            .get("extra")
            .and_then(|e| serde_json::from_value(e.clone()).ok())
            .unwrap_or_default(),
    }
}

/// Whether `csr` is a bootstrap token's request for the `system:kube-proxy` client
/// certificate and nothing more (see the module docs).
pub fn bootstrap_kube_proxy_client(csr: &Value, req: &Request, usages: &BTreeSet<String>) -> bool {
    let requester = requester(csr);
    str_at(csr, "/spec/signerName") == KUBE_APISERVER_CLIENT
        && requester.name.starts_with("system:bootstrap:")
        && requester.groups.iter().any(|g| g == "system:bootstrappers")
        && req.common_name == crate::rbac::KUBE_PROXY_USER
        && req.organizations.is_empty()
        && req.dns_names + req.ip_addresses + req.emails + req.uris == 0
        && client_usages(usages).is_ok()
}

/// Upstream's `sarApprover` for kubelet client requests, and kaze's approval of the
/// bootstrap token's kube-proxy request.
async fn approve(
    state: &AppState,
    csr: &Value,
    req: &Request,
    usages: &BTreeSet<String>,
) -> Result<(), ApiError> {
    if bootstrap_kube_proxy_client(csr, req, usages) {
        let name = crate::meta::meta_str(csr, "name").unwrap_or("");
        let c = condition(
            "Approved",
            "AutoApproved",
            "Auto approving kube-proxy client certificate for a bootstrap token.",
        );
        update(state, name, Part::Approval, move |new| {
            push_condition(new, c.clone())
        })
        .await?;
        tracing::info!(csr = %name, "auto-approved a kube-proxy client certificate");
        return Ok(());
    }
    if str_at(csr, "/spec/signerName") != KUBE_APISERVER_CLIENT_KUBELET
        || kubelet_client(req, usages).is_err()
    {
        return Ok(());
    }
    let requester = requester(csr);
    let recognizers = [
        (
            requester.name == req.common_name,
            "selfnodeclient",
            "Auto approving self kubelet client certificate after SubjectAccessReview.",
        ),
        (
            true,
            "nodeclient",
            "Auto approving kubelet client certificate after SubjectAccessReview.",
        ),
    ];
    for (recognized, sub, message) in recognizers {
        if !recognized {
            continue;
        }
        let attrs = Attributes::Resource {
            verb: "create".into(),
            group: super::GROUP.into(),
            resource: format!("certificatesigningrequests/{sub}"),
            namespace: None,
            name: None,
            field_selector: None,
        };
        if crate::nodeauth::authorize(state, &requester, &attrs).0 {
            let name = crate::meta::meta_str(csr, "name").unwrap_or("");
            let c = condition("Approved", "AutoApproved", message);
            update(state, name, Part::Approval, move |new| {
                push_condition(new, c.clone())
            })
            .await?;
            tracing::info!(csr = %name, user = %requester.name, "auto-approved a kubelet client certificate");
            return Ok(());
        }
    }
    Ok(())
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Upstream's `validAPIServerClientUsages`.
fn client_usages(usages: &BTreeSet<String>) -> Result<(), String> {
    for u in usages {
        if !matches!(
            u.as_str(),
            "digital signature" | "key encipherment" | "client auth"
        ) {
            return Err(format!("invalid usage for client certificate: {u}"));
        }
    }
    if !usages.contains("client auth") {
        return Err("missing required usage for client certificate: client auth".into());
    }
    Ok(())
}

/// Upstream's `ValidateKubeletClientCSR`.
pub fn kubelet_client(req: &Request, usages: &BTreeSet<String>) -> Result<(), String> {
    if req.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if req.dns_names > 0 {
        return Err("DNS subjectAltNames are not allowed".into());
    }
    if req.emails > 0 {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if req.ip_addresses > 0 {
        return Err("IP subjectAltNames are not allowed".into());
    }
    if req.uris > 0 {
        return Err("URI subjectAltNames are not allowed".into());
    }
    if !req
        .common_name
        .starts_with(crate::nodeauth::NODE_USER_PREFIX)
    {
        return Err("subject common name does not begin with system:node:".into());
    }
    let full = set(&["client auth", "digital signature", "key encipherment"]);
    if *usages != full && *usages != set(&["client auth", "digital signature"]) {
        return Err("usages did not match [client auth digital signature key encipherment]".into());
    }
    Ok(())
}

/// Upstream's `ValidateKubeletServingCSR`.
fn kubelet_serving(req: &Request, usages: &BTreeSet<String>) -> Result<(), String> {
    if req.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if req.dns_names == 0 && req.ip_addresses == 0 {
        return Err("DNS or IP subjectAltName is required".into());
    }
    if req.emails > 0 {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if req.uris > 0 {
        return Err("URI subjectAltNames are not allowed".into());
    }
    let full = set(&["digital signature", "key encipherment", "server auth"]);
    if *usages != full && *usages != set(&["digital signature", "server auth"]) {
        return Err("usages did not match [digital signature key encipherment server auth]".into());
    }
    if !req
        .common_name
        .starts_with(crate::nodeauth::NODE_USER_PREFIX)
    {
        return Err("subject common name does not begin with system:node:".into());
    }
    Ok(())
}

/// The key usages and extended key usages of `usages` (upstream's `KeyUsagesFromStrings`).
fn issue_for(usages: &BTreeSet<String>, ttl: Duration) -> Issue {
    let mut key_usages = Vec::new();
    let mut extended_key_usages = Vec::new();
    for u in usages {
        match u.as_str() {
            "signing" | "digital signature" => key_usages.push(Ku::DigitalSignature),
            "content commitment" => key_usages.push(Ku::ContentCommitment),
            "key encipherment" => key_usages.push(Ku::KeyEncipherment),
            "key agreement" => key_usages.push(Ku::KeyAgreement),
            "data encipherment" => key_usages.push(Ku::DataEncipherment),
            "cert sign" => key_usages.push(Ku::KeyCertSign),
            "crl sign" => key_usages.push(Ku::CrlSign),
            "encipher only" => key_usages.push(Ku::EncipherOnly),
            "decipher only" => key_usages.push(Ku::DecipherOnly),
            "any" => extended_key_usages.push(Eku::Any),
            "server auth" => extended_key_usages.push(Eku::ServerAuth),
            "client auth" => extended_key_usages.push(Eku::ClientAuth),
            "code signing" => extended_key_usages.push(Eku::CodeSigning),
            "email protection" | "s/mime" => extended_key_usages.push(Eku::EmailProtection),
            "ipsec end system" => {
                extended_key_usages.push(Eku::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 5]))
            }
            "ipsec tunnel" => extended_key_usages.push(Eku::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 6])),
            "ipsec user" => extended_key_usages.push(Eku::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 7])),
            "timestamping" => extended_key_usages.push(Eku::TimeStamping),
            "ocsp signing" => extended_key_usages.push(Eku::OcspSigning),
            "microsoft sgc" => {
                extended_key_usages.push(Eku::Other(vec![1, 3, 6, 1, 4, 1, 311, 10, 3, 3]))
            }
            "netscape sgc" => {
                extended_key_usages.push(Eku::Other(vec![2, 16, 840, 1, 113730, 4, 1]))
            }
            _ => {}
        }
    }
    key_usages.dedup();
    Issue {
        key_usages,
        extended_key_usages,
        ttl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cn: &str, orgs: &[&str], dns: usize) -> Request {
        Request {
            pem: String::new(),
            subject: Vec::new(),
            common_name: cn.into(),
            organizations: orgs.iter().map(|o| o.to_string()).collect(),
            dns_names: dns,
            ip_addresses: 0,
            emails: 0,
            uris: 0,
        }
    }

    #[test]
    fn kubelet_client_requests_as_upstream_checks_them() {
        let ok = set(&["digital signature", "client auth"]);
        assert_eq!(
            kubelet_client(&request("system:node:a", &["system:nodes"], 0), &ok),
            Ok(())
        );
        let with_ke = set(&["digital signature", "key encipherment", "client auth"]);
        assert_eq!(
            kubelet_client(&request("system:node:a", &["system:nodes"], 0), &with_ke),
            Ok(())
        );
        assert_eq!(
            kubelet_client(&request("bob", &["system:nodes"], 0), &ok).unwrap_err(),
            "subject common name does not begin with system:node:"
        );
        assert_eq!(
            kubelet_client(&request("system:node:a", &["system:nodes", "x"], 0), &ok).unwrap_err(),
            "subject organization is not system:nodes"
        );
        assert_eq!(
            kubelet_client(&request("system:node:a", &["system:nodes"], 1), &ok).unwrap_err(),
            "DNS subjectAltNames are not allowed"
        );
        assert!(kubelet_client(
            &request("system:node:a", &["system:nodes"], 0),
            &set(&["client auth"])
        )
        .is_err());
        assert!(client_usages(&set(&["client auth", "digital signature"])).is_ok());
        assert_eq!(
            client_usages(&set(&["server auth", "client auth"])).unwrap_err(),
            "invalid usage for client certificate: server auth"
        );
        assert!(kubelet_serving(
            &request("system:node:a", &["system:nodes"], 1),
            &set(&["digital signature", "server auth"])
        )
        .is_ok());
    }

    #[test]
    fn only_a_bootstrap_tokens_request_for_exactly_kube_proxy_is_approved() {
        let csr = |signer: &str, user: &str, group: &str| json!({"spec": {"signerName": signer, "username": user, "groups": [group, "system:authenticated"]}});
        let token = csr(
            KUBE_APISERVER_CLIENT,
            "system:bootstrap:abc123",
            "system:bootstrappers",
        );
        let proxy = request("system:kube-proxy", &[], 0);
        let usages = set(&["digital signature", "client auth"]);
        assert!(bootstrap_kube_proxy_client(&token, &proxy, &usages));
        // another subject, an organization, a SAN, other usages
        for (req, usages) in [
            (request("system:kube-proxy-x", &[], 0), usages.clone()),
            (request("admin", &[], 0), usages.clone()),
            (
                request("system:kube-proxy", &["system:masters"], 0),
                usages.clone(),
            ),
            (request("system:kube-proxy", &[], 1), usages.clone()),
            (proxy.clone(), set(&["digital signature", "server auth"])),
        ] {
            assert!(
                !bootstrap_kube_proxy_client(&token, &req, &usages),
                "{}",
                req.common_name
            );
        }
        // another requester or another signer
        for other in [
            csr(KUBE_APISERVER_CLIENT, "system:node:a", "system:nodes"),
            csr(KUBE_APISERVER_CLIENT, "alice", "system:bootstrappers"),
            csr(
                KUBE_APISERVER_CLIENT,
                "system:bootstrap:abc123",
                "system:authenticated",
            ),
            csr(
                KUBE_APISERVER_CLIENT_KUBELET,
                "system:bootstrap:abc123",
                "system:bootstrappers",
            ),
        ] {
            assert!(
                !bootstrap_kube_proxy_client(&other, &proxy, &usages),
                "{other}"
            );
        }
    }
}
