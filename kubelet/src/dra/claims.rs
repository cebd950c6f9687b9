//! What a pod's claims are and whether a ResourceClaim may serve it (upstream's
//! `k8s.io/dynamic-resource-allocation/resourceclaim` helpers).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, PodResourceClaim};
use k8s_openapi::api::resource::v1::ResourceClaim;

use super::{claim_err, DraError, PreparedDevice};

/// `pod.spec.resourceClaims`.
pub(super) fn pod_claims(pod: &Pod) -> &[PodResourceClaim] {
    pod.spec
        .as_ref()
        .and_then(|s| s.resource_claims.as_deref())
        .unwrap_or_default()
}

/// The ResourceClaim a pod claim stands for (upstream's `resourceclaim.Name`): its
/// `resourceClaimName`, or for a template the name in `status.resourceClaimStatuses`
/// (None there: no claim was needed).
pub fn claim_name(pod: &Pod, pc: &PodResourceClaim) -> Result<Option<String>, DraError> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    if let Some(name) = &pc.resource_claim_name {
        return Ok(Some(name.clone()));
    }
    if pc.resource_claim_template_name.is_none() {
        return Err(claim_err(format!(
            "pod \"{pod_name}\", spec.resourceClaim {:?}: API unsupported",
            pc.name
        )));
    }
    pod.status
        .as_ref()
        .and_then(|s| s.resource_claim_statuses.as_ref())
        .into_iter()
        .flatten()
        .find(|s| s.name == pc.name)
        .map(|s| s.resource_claim_name.clone())
        .ok_or_else(|| claim_err(format!("pod \"{pod_name}\": ResourceClaim not created yet")))
}

/// Whether the claim's controller is the pod (a claim made from the pod's template).
pub(super) fn owned_by(claim: &ResourceClaim, pod_uid: &str) -> bool {
    claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == pod_uid && o.kind == "Pod")
}

/// Whether `status.reservedFor` holds the pod.
pub(super) fn reserved_for(claim: &ResourceClaim, pod_uid: &str) -> bool {
    claim
        .status
        .as_ref()
        .and_then(|s| s.reserved_for.as_ref())
        .into_iter()
        .flatten()
        .any(|r| {
            r.resource == "pods"
                && r.api_group.as_deref().unwrap_or("").is_empty()
                && r.uid == pod_uid
        })
}

/// The drivers of the claim's allocated devices, None when it is not allocated.
pub(super) fn allocated_drivers(claim: &ResourceClaim) -> Option<BTreeSet<String>> {
    let results = claim
        .status
        .as_ref()?
        .allocation
        .as_ref()?
        .devices
        .as_ref()
        .and_then(|d| d.results.as_ref());
    Some(
        results
            .into_iter()
            .flatten()
            .map(|r| r.driver.clone())
            .collect(),
    )
}

/// Whether a prepared device serves the container's `request` (all requests when it names
/// none; a device for no request in particular serves every one; `req` takes its
/// subrequests' `req/sub` devices).
pub(super) fn serves(d: &PreparedDevice, request: Option<&str>) -> bool {
    let Some(request) = request else {
        return true;
    };
    d.request_names.is_empty()
        || d.request_names.iter().any(|r| {
            r == request
                || r.split_once('/')
                    .is_some_and(|(parent, _)| parent == request)
        })
}
