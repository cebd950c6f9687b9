//! Compaction of the store's history, as kube-apiserver does it: every
//! `--etcd-compaction-interval`, compact each store to the revision it had at the previous
//! tick, so every watcher gets one full interval to catch up before its resume version
//! turns into 410 Gone. Without this the embedded store's log grows forever.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::state::AppState;

/// Parse `300s`, `5m`, `1h`, or a bare number of seconds; `0` disables compaction.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 300s, 5m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

pub async fn run(state: Arc<AppState>, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    // One entry per distinct store (overrides can put resources in other etcd clusters).
    let mut stores: Vec<Arc<dyn store::Store>> = Vec::new();
    for def in state.registry.all() {
        let s = state.store(def).clone();
        if !stores.iter().any(|x| Arc::ptr_eq(x, &s)) {
            stores.push(s);
        }
    }
    let mut seen: HashMap<usize, i64> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (i, s) in stores.iter().enumerate() {
            if let Some(prev) = seen.get(&i) {
                match s.compact(*prev).await {
                    Ok(()) => tracing::debug!(revision = prev, "compacted store history"),
                    // Another apiserver compacted further already, or the store is away.
                    Err(e) => {
                        tracing::debug!(revision = prev, error = %e, "compacting store history")
                    }
                }
            }
            match s.current_revision().await {
                Ok(r) => {
                    seen.insert(i, r);
                }
                Err(e) => tracing::warn!(error = %e, "reading the store revision for compaction"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_intervals() {
        assert_eq!(parse_interval("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_interval("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("0"), Ok(Duration::ZERO));
        assert!(parse_interval("5d").is_err());
        assert!(parse_interval("m").is_err());
    }
}
