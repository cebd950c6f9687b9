//! The scraper: every `--metric-resolution`, every node's kubelet `/metrics/resource`,
//! concurrently, folded into [`super::Samples`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::samples;
use crate::selector::Filter;
use crate::state::AppState;

/// Scrape until shutdown. Each round's requests time out within the resolution (at least a
/// second), so a dead kubelet never delays the others' next samples.
pub async fn run(state: Arc<AppState>, resolution: Duration) {
    let resolution = resolution.max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(resolution);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let round = scrape_all(&state, resolution.max(Duration::from_secs(1)));
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = round => {}
        }
    }
}

async fn scrape_all(state: &AppState, timeout: Duration) {
    let nodes = match super::core_objects(state, "nodes", None, Filter::default()).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e.message, "metrics scraper: listing nodes");
            return;
        }
    };
    let names: Vec<String> = nodes
        .iter()
        .filter_map(|n| crate::meta::meta_str(n, "name").map(String::from))
        .collect();
    state.resource_metrics.retain(&names);
    let scrapes = nodes.iter().map(|node| async move {
        let name = crate::meta::meta_str(node, "name").unwrap_or_default();
        match tokio::time::timeout(timeout, scrape(state, node)).await {
            Ok(Ok(s)) => state.resource_metrics.store(name, s),
            Ok(Err(e)) => {
                // metrics-server logs a failed scrape as an error, every round
                tracing::warn!(node = name, error = %e, "metrics scraper: failed to scrape node");
                state.resource_metrics.forget(name);
            }
            Err(_) => {
                tracing::warn!(node = name, ?timeout, "metrics scraper: kubelet timed out");
                state.resource_metrics.forget(name);
            }
        }
    });
    futures::future::join_all(scrapes).await;
}

async fn scrape(state: &AppState, node: &Value) -> Result<samples::Scrape, String> {
    let (host, port) = crate::kubelet::kubelet_address(node);
    let resp = state.kubelet.get(&host, port, "/metrics/resource").await?;
    if !resp.status().is_success() {
        return Err(format!("/metrics/resource: {}", resp.status()));
    }
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024)
        .await
        .map_err(|e| format!("reading /metrics/resource: {e}"))?;
    let text = String::from_utf8_lossy(&body);
    Ok(samples::parse(
        &text,
        jiff::Timestamp::now().as_millisecond(),
    ))
}
