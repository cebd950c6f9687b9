//! The `resourceclaim` controller with the real apiserver (no scheduler, no kubelet): a pod
//! naming a ResourceClaimTemplate gets a ResourceClaim made from it (`<pod>-<claim>-xxxxx`,
//! controlled by the pod, annotated with the pod's claim name) and recorded in the pod's
//! `status.resourceClaimStatuses`; a pod whose template does not exist yet gets its claim
//! when the template appears; a deleted claim is made again; the claims of a finished pod are
//! deleted; the garbage collector deletes a deleted pod's claims.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceClaimTemplate};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use testkit::wait_for;

use common::{control_plane, create};

fn pod(name: &str, template: &str) -> serde_json::Value {
    json!({"metadata": {"name": name},
        "spec": {"resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": template}],
                 "containers": [{"name": "c", "image": "kaze/busybox:1",
                                 "resources": {"claims": [{"name": "gpu"}]}}]}})
}

fn template(name: &str) -> serde_json::Value {
    json!({"metadata": {"name": name},
        "spec": {"metadata": {"labels": {"team": "ml"}},
                 "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.example.com"}}]}}}})
}

/// The claim pod `pod` records for its claim `gpu`, once it does.
async fn recorded(pods: &Api<Pod>, pod: &str) -> String {
    let pods = pods.clone();
    wait_for(
        &format!("{pod}'s claim recorded"),
        Duration::from_secs(20),
        || {
            let pods = pods.clone();
            async move {
                let status = pods.get(pod).await.ok()?.status?;
                let s = status
                    .resource_claim_statuses?
                    .into_iter()
                    .find(|s| s.name == "gpu")?;
                s.resource_claim_name
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_claims_from_their_templates_for_as_long_as_they_need_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = control_plane(dir.path(), &["resourceclaim", "garbagecollector"]).await;
    let client = cp.client.clone();
    let templates: Api<ResourceClaimTemplate> = Api::namespaced(client.clone(), "default");
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    create(&templates, template("one-gpu")).await;
    let trainer = create(&pods, pod("trainer", "one-gpu")).await;
    let name = recorded(&pods, "trainer").await;
    assert!(
        name.starts_with("trainer-gpu-") && name.len() == "trainer-gpu-".len() + 5,
        "{name}"
    );
    let claim = claims.get(&name).await.expect("the claim");
    let owner = &claim.owner_references()[0];
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.name.as_str(),
            Some(&owner.uid),
            owner.controller
        ),
        ("Pod", "trainer", trainer.metadata.uid.as_ref(), Some(true))
    );
    assert_eq!(
        claim
            .annotations()
            .get("resource.kubernetes.io/pod-claim-name")
            .map(String::as_str),
        Some("gpu")
    );
    assert_eq!(claim.labels().get("team").map(String::as_str), Some("ml"));
    let spec = serde_json::to_value(&claim.spec).expect("spec");
    assert_eq!(
        spec["devices"]["requests"][0]["exactly"]["deviceClassName"],
        "gpu.example.com"
    );
    // one claim, however often the pod is looked at
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = claims.list(&Default::default()).await.expect("list").items;
    assert_eq!(all.len(), 1, "{all:?}");

    // deleted by someone: made again, and recorded
    claims
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
    let again = wait_for("a new claim recorded", Duration::from_secs(20), || {
        let (pods, name) = (pods.clone(), name.clone());
        async move {
            let status = pods.get("trainer").await.ok()?.status?;
            let now = status
                .resource_claim_statuses?
                .into_iter()
                .next()?
                .resource_claim_name?;
            (now != name).then_some(now)
        }
    })
    .await;
    claims.get(&again).await.expect("the new claim");

    // a template that appears later
    create(&pods, pod("late", "later-gpu")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pods
        .get("late")
        .await
        .expect("late")
        .status
        .and_then(|s| s.resource_claim_statuses)
        .is_none());
    create(&templates, template("later-gpu")).await;
    let late = recorded(&pods, "late").await;
    assert!(late.starts_with("late-gpu-"), "{late}");

    // a finished pod's claims go
    pods.patch_status(
        "late",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .expect("finish");
    wait_for(
        "the finished pod's claim deleted",
        Duration::from_secs(20),
        || {
            let (claims, late) = (claims.clone(), late.clone());
            async move { claims.get_opt(&late).await.ok()?.is_none().then_some(()) }
        },
    )
    .await;

    // a deleted pod's claims go with it (the garbage collector follows the owner)
    pods.delete("trainer", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    wait_for(
        "the deleted pod's claim collected",
        Duration::from_secs(30),
        || {
            let (claims, again) = (claims.clone(), again.clone());
            async move { claims.get_opt(&again).await.ok()?.is_none().then_some(()) }
        },
    )
    .await;
    cp.stop().await;
}
