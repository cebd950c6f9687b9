//! Upstream's `buffered` plugin in front of the webhook: batches by size or time, a token
//! bucket between them, each batch sent on its own task, the queue drained at shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::super::event::Event;
use super::Sender;

/// Upstream's token bucket (`flowcontrol.NewTokenBucketRateLimiter(qps, burst)`).
pub(super) struct Throttle {
    pub qps: f64,
    pub burst: f64,
    pub tokens: f64,
    pub last: tokio::time::Instant,
}

impl Throttle {
    async fn wait(&mut self) {
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.qps).min(self.burst);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.qps);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.last = tokio::time::Instant::now();
        }
        self.tokens -= 1.0;
    }
}

pub(super) struct Batches {
    pub sender: Arc<Sender>,
    pub max_size: usize,
    pub max_wait: Duration,
    pub throttle: Option<Throttle>,
}

impl Batches {
    /// Upstream's buffered backend: collect up to `max_size` events or for `max_wait`,
    /// throttle, send each batch on its own task; after `stop`, the queue's rest likewise,
    /// then wait for every send.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Arc<Event>>, stop: CancellationToken) {
        let mut sends = tokio::task::JoinSet::new();
        let mut closed = false;
        let mut stopping = false;
        while !closed {
            let deadline = tokio::time::Instant::now() + self.max_wait;
            let mut batch = Vec::new();
            while batch.len() < self.max_size {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(e) => batch.push(e),
                        None => { closed = true; break }
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = stop.cancelled(), if !stopping => {
                        // take no more; what is queued still goes out
                        stopping = true;
                        rx.close();
                    }
                }
            }
            if !batch.is_empty() {
                if let Some(t) = &mut self.throttle {
                    t.wait().await;
                }
                let sender = self.sender.clone();
                sends.spawn(async move {
                    sender.deliver(&batch).await;
                });
            }
            while sends.try_join_next().is_some() {}
        }
        while sends.join_next().await.is_some() {}
    }
}
