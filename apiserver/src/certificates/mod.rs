//! The CertificateSigningRequest API (`certificates.k8s.io/v1`), as upstream's registry
//! strategy, validation and admission plugins shape it:
//!
//! - create: `spec.username/uid/groups/extra` are the requester's (whatever the body says)
//!   and the status starts empty (no pre-approved requests); the request must be a PEM
//!   `CERTIFICATE REQUEST` whose signature verifies, `signerName` a `<domain>/<path>` name
//!   (not `kubernetes.io/legacy-unknown`), `usages` known and unique, `expirationSeconds`
//!   at least 600;
//! - the spec never changes after create (updates keep the stored one, as upstream's
//!   `PrepareForUpdate`); the main resource does not change the status either;
//! - `/approval` changes only `status.conditions`: Approved and Denied are exclusive, are
//!   `True`, and once there stay; the requester needs `approve` on `signers` (group
//!   `certificates.k8s.io`, resourceName the signerName or `<domain>/*`; upstream's
//!   CertificateApproval admission plugin);
//! - `/status` changes the certificate and other conditions but not approval; a certificate
//!   is only set on an approved request, once, and must be PEM `CERTIFICATE` blocks.
//!
//! Signing and auto-approval of node client certificates are [`signer`].

use serde_json::{json, Value};

use crate::kinds::Cause;
use crate::objects::Part;
use crate::serviceaccount::keys::pem_blocks;
use crate::status::ApiError;

pub mod signer;

pub const GROUP: &str = "certificates.k8s.io";
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBE_APISERVER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
const LEGACY_UNKNOWN: &str = "kubernetes.io/legacy-unknown";

/// Every usage upstream knows, in its order.
pub const USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// The shortest certificate one may ask for (upstream: 10 minutes).
const MIN_EXPIRATION_SECONDS: i64 = 600;

/// Whether a request's conditions include `ty` (any status).
fn has_condition(obj: &Value, ty: &str) -> bool {
    conditions(obj)
        .iter()
        .any(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

fn conditions(obj: &Value) -> Vec<Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

pub fn is_approved(obj: &Value) -> bool {
    has_condition(obj, "Approved") && !has_condition(obj, "Denied")
}

/// The CONDITION column of `kubectl get csr` (upstream's `extractCSRStatus`).
pub fn condition_summary(obj: &Value) -> String {
    let mut out = if has_condition(obj, "Denied") {
        "Denied"
    } else if has_condition(obj, "Approved") {
        "Approved"
    } else {
        "Pending"
    }
    .to_string();
    if has_condition(obj, "Failed") {
        out.push_str(",Failed");
    }
    if obj
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
    {
        out.push_str(",Issued");
    }
    out
}

/// Upstream's `PrepareForCreate`: the requester's identity, an empty status.
pub fn prepare_create(obj: &mut Value, user: Option<&crate::auth::UserInfo>) {
    let spec = &mut obj["spec"];
    if let Some(m) = spec.as_object_mut() {
        for f in ["username", "uid", "groups", "extra"] {
            m.remove(f);
        }
        if let Some(u) = user {
            m.insert("username".into(), json!(u.name));
            if !u.uid.is_empty() {
                m.insert("uid".into(), json!(u.uid));
            }
            if !u.groups.is_empty() {
                m.insert("groups".into(), json!(u.groups));
            }
            if !u.extra.is_empty() {
                m.insert("extra".into(), json!(u.extra));
            }
        }
    }
    obj["status"] = json!({});
}

/// Upstream's update strategies of the main resource, `/status` and `/approval`: what of
/// `new` (the current object with the client's part already put in) is kept.
pub fn prepare_update(cur: &Value, new: &mut Value, part: Part) {
    new["spec"] = cur.get("spec").cloned().unwrap_or(json!({}));
    let approval = |c: &Value| {
        matches!(
            c.get("type").and_then(Value::as_str),
            Some("Approved" | "Denied")
        )
    };
    let mut conds = conditions(new);
    match part {
        Part::Status => {
            // approval is only changed through /approval
            conds.retain(|c| !approval(c));
            conds.extend(conditions(cur).into_iter().filter(approval));
        }
        Part::Approval => {
            // the certificate is only changed through /status
            match cur.pointer("/status/certificate") {
                Some(c) => new["status"]["certificate"] = c.clone(),
                None => {
                    if let Some(s) = new.get_mut("status").and_then(Value::as_object_mut) {
                        s.remove("certificate");
                    }
                }
            }
        }
        _ => return,
    }
    let now = crate::meta::now();
    let old = conditions(cur);
    for c in &mut conds {
        if c.get("lastUpdateTime").is_none_or(Value::is_null) {
            c["lastUpdateTime"] = json!(now);
        }
        if c.get("lastTransitionTime").is_none_or(Value::is_null) {
            let same = old.iter().find(|o| o.get("type") == c.get("type"));
            c["lastTransitionTime"] = match same {
                Some(o) if o.get("status") == c.get("status") => {
                    o.get("lastTransitionTime").cloned().unwrap_or(json!(now))
                }
                _ => json!(now),
            };
        }
    }
    if !new.get("status").is_some_and(Value::is_object) {
        new["status"] = json!({});
    }
    if conds.is_empty() {
        if let Some(s) = new["status"].as_object_mut() {
            s.remove("conditions");
        }
    } else {
        new["status"]["conditions"] = json!(conds);
    }
}

/// Field problems of a CertificateSigningRequest (`old`: the stored one on update).
pub fn validate(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let invalid = |f: &str, m: String| (f.to_string(), "FieldValueInvalid", m);
    if old.is_none() {
        validate_spec(obj, &mut causes);
    }
    let conds = conditions(obj);
    let mut seen: Vec<&str> = Vec::new();
    for (i, c) in conds.iter().enumerate() {
        let ty = c.get("type").and_then(Value::as_str).unwrap_or("");
        let path = format!("status.conditions[{i}]");
        if ty.is_empty() {
            causes.push((
                format!("{path}.type"),
                "FieldValueRequired",
                "Required value".into(),
            ));
        }
        if seen.contains(&ty) {
            causes.push((
                format!("{path}.type"),
                "FieldValueDuplicate",
                format!("Duplicate value: {:?}", ty),
            ));
        }
        seen.push(ty);
        let status = c.get("status").and_then(Value::as_str).unwrap_or("");
        match ty {
            "Approved" | "Denied" if status != "True" => causes.push((
                format!("{path}.status"),
                "FieldValueNotSupported",
                format!("Unsupported value: {status:?}: supported values: \"True\""),
            )),
            _ if !matches!(status, "True" | "False" | "Unknown") => causes.push((
                format!("{path}.status"),
                "FieldValueNotSupported",
                format!(
                    "Unsupported value: {status:?}: supported values: \"False\", \"True\", \"Unknown\""
                ),
            )),
            _ => {}
        }
    }
    if seen.contains(&"Approved") && seen.contains(&"Denied") {
        causes.push((
            "status.conditions".into(),
            "FieldValueInvalid",
            "Invalid value: \"Approved\": Approved and Denied conditions are mutually exclusive"
                .into(),
        ));
    }
    if let Some(old) = old {
        for ty in ["Approved", "Denied"] {
            if has_condition(old, ty) && !has_condition(obj, ty) {
                causes.push((
                    "status.conditions".into(),
                    "FieldValueForbidden",
                    format!("Forbidden: updates may not remove a condition of type {ty:?}"),
                ));
            }
        }
    }
    let cert = obj
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .unwrap_or("");
    let old_cert = old
        .and_then(|o| o.pointer("/status/certificate"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if !cert.is_empty() {
        if !is_approved(obj) || has_condition(obj, "Failed") {
            causes.push((
                "status.certificate".into(),
                "FieldValueForbidden",
                "Forbidden: certificate can only be set if an Approved condition is present and Denied and Failed conditions are not".into(),
            ));
        }
        if let Err(e) = decode_request(cert).and_then(|pem| certificate_pem(&pem)) {
            causes.push(invalid(
                "status.certificate",
                format!("Invalid value: \"<certificate data>\": {e}"),
            ));
        }
    }
    if !old_cert.is_empty() && old_cert != cert {
        causes.push((
            "status.certificate".into(),
            "FieldValueForbidden",
            "Forbidden: updates may not modify existing certificate content".into(),
        ));
    }
    causes
}

/// Upstream's check of `status.certificate`: one or more PEM `CERTIFICATE` blocks that
/// parse, nothing else.
fn certificate_pem(text: &str) -> Result<(), String> {
    let blocks = pem_blocks(text);
    if blocks.is_empty() {
        return Err("must contain at least one CERTIFICATE PEM block".into());
    }
    for (label, der) in blocks {
        if label != "CERTIFICATE" {
            return Err(format!(
                "only CERTIFICATE PEM blocks are allowed, found {label:?}"
            ));
        }
        x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn validate_spec(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    match spec.get("request").and_then(Value::as_str) {
        None | Some("") => causes.push((
            "spec.request".into(),
            "FieldValueRequired",
            "Required value".into(),
        )),
        Some(b64) => {
            if let Err(e) = decode_request(b64).and_then(|pem| Request::parse(&pem)) {
                causes.push((
                    "spec.request".into(),
                    "FieldValueInvalid",
                    format!("Invalid value: []byte{{...}}: {e}"),
                ));
            }
        }
    }
    let signer = spec.get("signerName").and_then(Value::as_str).unwrap_or("");
    if signer.is_empty() {
        causes.push((
            "spec.signerName".into(),
            "FieldValueRequired",
            "Required value".into(),
        ));
    } else if signer == LEGACY_UNKNOWN {
        causes.push((
            "spec.signerName".into(),
            "FieldValueInvalid",
            format!("Invalid value: {signer:?}: the legacy signerName is not allowed via this API version"),
        ));
    } else if let Err(e) = check_signer_name(signer) {
        causes.push((
            "spec.signerName".into(),
            "FieldValueInvalid",
            format!("Invalid value: {signer:?}: {e}"),
        ));
    }
    let usages = crate::rbac::strings(spec.get("usages"));
    if usages.is_empty() {
        causes.push((
            "spec.usages".into(),
            "FieldValueRequired",
            "Required value: usages must be provided".into(),
        ));
    }
    for (i, u) in usages.iter().enumerate() {
        if !USAGES.contains(&u.as_str()) {
            let supported: Vec<String> = USAGES.iter().map(|u| format!("{u:?}")).collect();
            causes.push((
                format!("spec.usages[{i}]"),
                "FieldValueNotSupported",
                format!(
                    "Unsupported value: {u:?}: supported values: {}",
                    supported.join(", ")
                ),
            ));
        } else if usages[..i].contains(u) {
            causes.push((
                format!("spec.usages[{i}]"),
                "FieldValueDuplicate",
                format!("Duplicate value: {u:?}"),
            ));
        }
    }
    if let Some(secs) = spec.get("expirationSeconds").and_then(Value::as_i64) {
        if secs < MIN_EXPIRATION_SECONDS {
            causes.push((
                "spec.expirationSeconds".into(),
                "FieldValueInvalid",
                format!("Invalid value: {secs}: may not specify a duration less than 600 seconds (10 minutes)"),
            ));
        }
    }
}

/// Upstream's `ValidateSignerName`: `<domain>/<path>`, the domain a DNS subdomain with at
/// least one dot, the path non-empty.
fn check_signer_name(name: &str) -> Result<(), String> {
    let Some((domain, path)) = name.split_once('/') else {
        return Err(
            "must be a fully qualified domain and path of the form 'example.com/signer-name'"
                .into(),
        );
    };
    if path.is_empty() {
        return Err("validating path: must not be empty".into());
    }
    if !domain.contains('.') {
        return Err("should be a domain with at least two segments separated by dots".into());
    }
    crate::meta::check_subdomain(domain).map_err(|e| format!("validating domain: {e}"))?;
    if name.len() > 571 {
        return Err("must be no more than 571 characters".into());
    }
    Ok(())
}

/// `spec.request` (and `status.certificate`) are base64 in JSON (a `[]byte`): the PEM text.
pub fn decode_request(b64: &str) -> Result<String, String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("decoding the request: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "PEM block type must be CERTIFICATE REQUEST".into())
}

/// What the signers and the approver read from a request (upstream's `x509.CertificateRequest`).
#[derive(Debug, Clone)]
pub struct Request {
    pub pem: String,
    /// The subject's DER `Name`, as sent.
    pub subject: Vec<u8>,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: usize,
    pub ip_addresses: usize,
    pub emails: usize,
    pub uris: usize,
}

impl Request {
    /// Parse a PEM `CERTIFICATE REQUEST` and check its signature (upstream's `ParseCSR`).
    pub fn parse(pem: &str) -> Result<Request, String> {
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        use x509_parser::prelude::FromDer;
        let blocks = pem_blocks(pem);
        let Some((label, der)) = blocks.first() else {
            return Err("PEM block type must be CERTIFICATE REQUEST".into());
        };
        if label != "CERTIFICATE REQUEST" {
            return Err("PEM block type must be CERTIFICATE REQUEST".into());
        }
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
            .map_err(|e| format!("x509: malformed certificate request: {e}"))?;
        csr.verify_signature()
            .map_err(|_| "x509: ECDSA verification failure".to_string())?;
        let info = &csr.certification_request_info;
        let text = |a: &x509_parser::x509::AttributeTypeAndValue| {
            a.as_str().map(String::from).unwrap_or_default()
        };
        let mut req = Request {
            pem: pem.to_string(),
            subject: info.subject.as_raw().to_vec(),
            common_name: info
                .subject
                .iter_common_name()
                .last()
                .map(text)
                .unwrap_or_default(),
            organizations: info.subject.iter_organization().map(text).collect(),
            dns_names: 0,
            ip_addresses: 0,
            emails: 0,
            uris: 0,
        };
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(_) => req.dns_names += 1,
                        GeneralName::IPAddress(_) => req.ip_addresses += 1,
                        GeneralName::RFC822Name(_) => req.emails += 1,
                        GeneralName::URI(_) => req.uris += 1,
                        _ => {}
                    }
                }
            }
        }
        Ok(req)
    }
}

/// Upstream's CertificateSubjectRestriction admission: a request for the
/// `kubernetes.io/kube-apiserver-client` signer may not ask for the `system:masters` group
/// (whoever approved it would mint a cluster admin).
pub fn admit_create(obj: &Value) -> Result<(), ApiError> {
    const SIGNER: &str = "kubernetes.io/kube-apiserver-client";
    if obj.pointer("/spec/signerName").and_then(Value::as_str) != Some(SIGNER) {
        return Ok(());
    }
    let name = crate::meta::meta_str(obj, "name").unwrap_or("");
    let forbidden = |why: String| {
        Err(ApiError::forbidden(
            "certificatesigningrequests",
            GROUP,
            name,
            &why,
        ))
    };
    let request = obj
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .ok_or_else(|| "no request".to_string())
        .and_then(decode_request)
        .and_then(|pem| Request::parse(&pem));
    match request {
        // validation refuses it with its own message (upstream validates before this plugin)
        Err(_) => Ok(()),
        Ok(r) if r.organizations.iter().any(|o| o == "system:masters") => forbidden(format!(
            "use of {SIGNER} signer with system:masters group is not allowed"
        )),
        Ok(_) => Ok(()),
    }
}

/// Whether `user` may do `verb` on the `signers` resource for `signer` (named `signer` or
/// `<domain of signer>/*`), as upstream's certificate admission plugins ask.
fn on_signer(
    state: &crate::state::AppState,
    user: &crate::auth::UserInfo,
    verb: &str,
    signer: &str,
) -> bool {
    let wildcard = signer
        .split_once('/')
        .map(|(d, _)| format!("{d}/*"))
        .unwrap_or_default();
    [signer.to_string(), wildcard].into_iter().any(|n| {
        let attrs = crate::rbac::Attributes::Resource {
            verb: verb.into(),
            group: GROUP.into(),
            resource: "signers".into(),
            namespace: None,
            name: Some(n),
            field_selector: None,
        };
        crate::nodeauth::authorize(state, user, &attrs).0
    })
}

/// Upstream's CertificateSigning admission: setting or changing `status.certificate` of a
/// request for signer `s` needs `sign` on `signers` named `s` or `<domain of s>/*` (kaze's
/// own signer, inside the apiserver, is not a request).
pub fn admit_signing(
    state: &crate::state::AppState,
    cur: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let certificate = |o: &Value| o.pointer("/status/certificate").cloned();
    if certificate(cur) == certificate(new) {
        return Ok(());
    }
    let Some(user) = crate::requester::current() else {
        return Ok(());
    };
    let signer = cur
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if on_signer(state, &user, "sign", signer) {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "certificatesigningrequests",
        GROUP,
        crate::meta::meta_str(cur, "name").unwrap_or(""),
        &format!("user not permitted to sign requests with signerName {signer:?}"),
    ))
}

/// Upstream's CertificateApproval admission: approving or denying a request for signer `s`
/// needs `approve` on `signers` named `s` or `<domain of s>/*`.
pub fn admit_approval(
    state: &crate::state::AppState,
    cur: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let approval = |o: &Value| (has_condition(o, "Approved"), has_condition(o, "Denied"));
    if approval(cur) == approval(new) {
        return Ok(());
    }
    let Some(user) = crate::requester::current() else {
        return Ok(());
    };
    let signer = cur
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = crate::meta::meta_str(cur, "name").unwrap_or("");
    if on_signer(state, &user, "approve", signer) {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "certificatesigningrequests",
        GROUP,
        name,
        &format!("user not permitted to approve requests with signerName {signer:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_summarise_as_kubectl_prints_them() {
        let csr = |conds: Value, cert: &str| json!({"status": {"conditions": conds, "certificate": cert}});
        assert_eq!(condition_summary(&json!({})), "Pending");
        assert_eq!(
            condition_summary(&csr(json!([{"type": "Approved"}]), "x")),
            "Approved,Issued"
        );
        assert_eq!(
            condition_summary(&csr(json!([{"type": "Approved"}, {"type": "Failed"}]), "")),
            "Approved,Failed"
        );
        assert_eq!(
            condition_summary(&csr(json!([{"type": "Denied"}]), "")),
            "Denied"
        );
    }

    #[test]
    fn signer_names_need_a_domain_and_a_path() {
        assert!(check_signer_name("kubernetes.io/kube-apiserver-client").is_ok());
        assert!(check_signer_name("example.com/a/b").is_ok());
        assert!(check_signer_name("kubernetes.io").is_err());
        assert!(check_signer_name("kubernetes.io/").is_err());
        assert!(check_signer_name("localhost/x").is_err());
        assert!(check_signer_name("Bad_Domain.io/x").is_err());
    }

    #[test]
    fn approval_keeps_the_certificate_and_status_keeps_the_approval() {
        let cur = json!({"spec": {"signerName": "a.io/b"}, "status": {
            "conditions": [{"type": "Approved", "status": "True", "lastTransitionTime": "t0", "lastUpdateTime": "t0"}],
            "certificate": "CERT"}});
        let mut new = json!({"spec": {"signerName": "x.io/y"}, "status": {"conditions": [], "certificate": "OTHER"}});
        prepare_update(&cur, &mut new, Part::Status);
        assert_eq!(new["spec"]["signerName"], "a.io/b");
        assert_eq!(new["status"]["conditions"][0]["type"], "Approved");
        assert_eq!(new["status"]["certificate"], "OTHER");
        let mut new = json!({"status": {"conditions": [{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}], "certificate": "OTHER"}});
        prepare_update(&cur, &mut new, Part::Approval);
        assert_eq!(new["status"]["certificate"], "CERT");
        assert_eq!(new["status"]["conditions"][0]["lastTransitionTime"], "t0");
        assert!(new["status"]["conditions"][1]["lastTransitionTime"].is_string());
        let causes = validate(&new, Some(&cur));
        assert!(
            causes.iter().any(|c| c.2.contains("mutually exclusive")),
            "{causes:?}"
        );
        let removed = validate(&json!({"status": {}}), Some(&cur));
        assert!(
            removed.iter().any(|c| c.2.contains("may not remove")),
            "{removed:?}"
        );
    }
}
