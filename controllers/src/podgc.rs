//! PodGC: force-delete pods bound to nodes that no longer exist, terminating pods that were
//! never scheduled (no kubelet will ever finish them), and the oldest finished pods beyond
//! `--terminated-pod-gc-threshold`. Runs every 20 s, from the shared pod and node caches;
//! a node missing from the cache is confirmed gone with a live read before its pods go (a
//! node the cache has not seen yet must not cost its pods).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams};
use kube::{Client, ResourceExt};

use crate::informers::wait_synced;
use crate::Ctx;

const PERIOD: Duration = Duration::from_secs(20);

fn force() -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    }
}

async fn delete(client: &Client, p: &Pod, why: &str) {
    let ns = p.namespace().unwrap_or_default();
    match Api::<Pod>::namespaced(client.clone(), &ns)
        .delete(&p.name_any(), &force())
        .await
    {
        Ok(_) => {
            tracing::info!(pod = %format!("{ns}/{}", p.name_any()), why, "garbage-collected pod")
        }
        Err(e) => tracing::debug!(error = %e, "garbage-collecting a pod"),
    }
}

/// One pass.
pub async fn collect(ctx: &Ctx, threshold: usize) -> Result<(), kube::Error> {
    let client = &ctx.client;
    let nodes = ctx.informers.get::<Node>();
    let pods = ctx.pods().all();
    let mut gone: HashMap<String, bool> = HashMap::new();
    let mut finished = Vec::new();
    for p in &pods {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        match &node {
            Some(n) if nodes.get(None, n).is_none() => {
                let confirmed = match gone.get(n) {
                    Some(g) => *g,
                    None => {
                        let g = Api::<Node>::all(client.clone()).get_opt(n).await?.is_none();
                        gone.insert(n.clone(), g);
                        g
                    }
                };
                if confirmed {
                    delete(client, p, "its node no longer exists").await;
                    continue;
                }
            }
            None if p.metadata.deletion_timestamp.is_some() => {
                delete(client, p, "terminating and never scheduled").await;
                continue;
            }
            _ => {}
        }
        if matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        ) {
            finished.push(p.as_ref());
        }
    }
    if finished.len() > threshold {
        finished.sort_by_key(|p| {
            p.metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second())
        });
        let excess = finished.len() - threshold;
        for p in finished.into_iter().take(excess) {
            delete(client, p, "over the terminated-pod threshold").await;
        }
    }
    Ok(())
}

pub async fn run(ctx: Arc<Ctx>, threshold: usize, shutdown: component::CancellationToken) {
    let (nodes, pods) = (ctx.informers.get::<Node>(), ctx.pods());
    if !wait_synced(&shutdown, async {
        nodes.synced().await;
        pods.synced().await;
    })
    .await
    {
        return;
    }
    loop {
        if let Err(e) = collect(&ctx, threshold).await {
            tracing::warn!(error = %e, "pod garbage collection pass failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}
