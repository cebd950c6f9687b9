//! The `service-cidr` controller against the real kaze apiserver (embedded store, in-process)
//! and the real kubectl 1.37: ServiceCIDRs get upstream's finalizer and Ready condition; one
//! being deleted stays, `Ready=False` `Terminating`, while a Service's address is in it (and
//! gives no new addresses), and goes once that Service is gone.

mod common;

use std::time::Duration;

use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, DeleteParams};
use testkit::wait_for;

fn ready(sc: &ServiceCIDR) -> Option<(String, String, String)> {
    let c = sc
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_cidr_in_use_stays_terminating_until_its_addresses_go() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = common::control_plane(dir.path(), &["service-cidr"]).await;
    let (kc, client) = (cp.kubeconfig.clone(), cp.client.clone());
    let cidrs: Api<ServiceCIDR> = Api::all(client.clone());
    let kubectl = |args: &[&str], stdin: Option<&str>| testkit::kubectl_ok(&kc, args, stdin);

    // the default one and a new one: finalizer and Ready
    kubectl(
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: extra}\nspec:\n  cidrs: [10.97.0.0/28]\n"),
    );
    for name in ["kubernetes", "extra"] {
        let sc = wait_for(&format!("{name} ready"), Duration::from_secs(20), || {
            let cidrs = cidrs.clone();
            async move {
                let sc = cidrs.get(name).await.ok()?;
                let r = ready(&sc)?;
                (r.0 == "True").then_some(sc)
            }
        })
        .await;
        assert_eq!(
            ready(&sc).map(|r| r.2),
            Some(controllers::servicecidr::READY_MESSAGE.to_string())
        );
        assert!(
            sc.metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == controllers::servicecidr::FINALIZER),
            "{sc:?}"
        );
    }

    // a service takes an address of `extra`; deleting `extra` leaves it Terminating
    kubectl(
        &[
            "create",
            "service",
            "clusterip",
            "web",
            "--tcp=80",
            "--clusterip=10.97.0.5",
        ],
        None,
    );
    cidrs
        .delete("extra", &DeleteParams::default())
        .await
        .expect("delete");
    let sc = wait_for("extra terminating", Duration::from_secs(20), || {
        let cidrs = cidrs.clone();
        async move {
            let sc = cidrs.get("extra").await.ok()?;
            (ready(&sc)?.0 == "False").then_some(sc)
        }
    })
    .await;
    assert_eq!(
        ready(&sc),
        Some((
            "False".into(),
            "Terminating".into(),
            controllers::servicecidr::TERMINATING_MESSAGE.into()
        ))
    );
    // no new addresses from a range on its way out
    let refused = testkit::kubectl_with(
        &kc,
        &[
            "create",
            "service",
            "clusterip",
            "late",
            "--tcp=80",
            "--clusterip=10.97.0.6",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("provided IP is not in the valid range"),
        "{err}"
    );
    // still there well past the grace period while the address is in use
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(cidrs.get("extra").await.is_ok(), "deleted while in use");

    // the service goes: so does the range, once its grace period is over
    kubectl(&["delete", "service", "web"], None);
    wait_for("extra deleted", Duration::from_secs(30), || {
        let cidrs = cidrs.clone();
        async move { cidrs.get_opt("extra").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let table = kubectl(&["get", "servicecidrs", "-o", "name"], None);
    assert_eq!(table.trim(), "servicecidr.networking.k8s.io/kubernetes");

    cp.stop().await;
}
