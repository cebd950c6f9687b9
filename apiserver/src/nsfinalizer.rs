//! The namespace finalizer: empties namespaces that are being deleted, then removes them.
//! Upstream runs this in the controller-manager; kaze keeps it next to the store so
//! `kubectl delete namespace` finishes on an apiserver-only cluster too.

use std::sync::Arc;
use std::time::Duration;

use crate::meta;
use crate::objects::{self, DeleteOpts, ListOpts};
use crate::state::AppState;
use crate::status::ApiError;

const INTERVAL: Duration = Duration::from_millis(500);

pub async fn run(state: Arc<AppState>) {
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
        if let Err(e) = sweep(&state).await {
            tracing::warn!(error = %e.message, "finalizing deleted namespaces");
        }
    }
}

async fn sweep(state: &AppState) -> Result<(), ApiError> {
    let ns_def = state
        .registry
        .get("", "v1", "namespaces")
        .expect("namespaces are built in")
        .clone();
    let namespaces = objects::list(state, &ns_def, None, &ListOpts::default()).await?;
    for ns in namespaces.items.iter().filter(|n| meta::is_deleting(n)) {
        let name = meta::meta_str(ns, "name").unwrap_or("").to_string();
        if empty_namespace(state, &name).await? && meta::finalizers(ns).is_empty() {
            objects::remove(state, &ns_def, None, &name).await?;
            tracing::info!(namespace = %name, "namespace deleted");
        }
    }
    Ok(())
}

/// Delete everything in `ns`; true once nothing is left.
async fn empty_namespace(state: &AppState, ns: &str) -> Result<bool, ApiError> {
    let mut empty = true;
    for def in state.registry.all().iter().filter(|d| d.namespaced) {
        let page = objects::list(state, def, Some(ns), &ListOpts::default()).await?;
        for obj in &page.items {
            empty = false;
            if meta::is_deleting(obj) {
                continue;
            }
            let name = meta::meta_str(obj, "name").unwrap_or("");
            match objects::delete(state, def, Some(ns), name, &DeleteOpts::default()).await {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(empty)
}
