//! The webhook backend, as upstream's (`plugin/pkg/audit/webhook` behind `buffered` and
//! `truncate`): events POSTed as an `audit.k8s.io/v1` `EventList` to the server of
//! `--audit-webhook-config-file` (a kubeconfig). `batch` queues them (a full queue drops
//! them: counted, logged, never blocking a request) for a task that sends a batch when it
//! has `batch-max-size` events or `batch-max-wait` passed, throttled, each batch sent
//! concurrently with the others; `blocking`/`blocking-strict` send each event in the
//! request. Every send is retried on a transient failure with upstream's backoff (from
//! `--audit-webhook-initial-backoff`, ×1.5, 20% jitter, 5 tries).
//!
//! The sends run on a runtime of their own thread: a blocking send waits for it from the
//! request (in `block_in_place`), and the batches go on whatever the serving runtime does.

mod batch;
mod config;
mod truncate;

use batch::{Batches, Throttle};
use truncate::{encode, Truncate};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::event::Event;
use super::{Metrics, Mode};
use crate::backend::{self, Pool};

/// The only `--audit-webhook-version` (upstream 1.37 serves no other audit version).
pub const VERSION: &str = "audit.k8s.io/v1";

/// kube-apiserver's `--audit-webhook-*` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookOptions {
    /// A kubeconfig naming the webhook: its current context's cluster (`server`, CA or
    /// `insecure-skip-tls-verify`) and user (client certificate/key, token). Needs
    /// `--audit-policy-file`.
    #[arg(long = "audit-webhook-config-file")]
    pub audit_webhook_config_file: Option<PathBuf>,

    /// `batch` (buffered, sent in the background), `blocking` (each event sent in the
    /// request; a failure is logged) or `blocking-strict` (a failed RequestReceived send
    /// fails the request).
    #[arg(long = "audit-webhook-mode", value_enum, default_value_t = Mode::Batch)]
    pub audit_webhook_mode: Mode,

    /// How long to wait before retrying the first failed send.
    #[arg(long = "audit-webhook-initial-backoff", default_value = "10s", value_parser = component::leader::parse_duration)]
    pub audit_webhook_initial_backoff: Duration,

    /// Events buffered before they are dropped (batch mode).
    #[arg(long = "audit-webhook-batch-buffer-size", default_value_t = 10_000)]
    pub audit_webhook_batch_buffer_size: usize,

    /// The most events in one batch (batch mode).
    #[arg(long = "audit-webhook-batch-max-size", default_value_t = 400)]
    pub audit_webhook_batch_max_size: usize,

    /// How long a batch that did not reach the max size waits before it is sent.
    #[arg(long = "audit-webhook-batch-max-wait", default_value = "30s", value_parser = component::leader::parse_duration)]
    pub audit_webhook_batch_max_wait: Duration,

    /// Whether batches are throttled (batch mode).
    #[arg(long = "audit-webhook-batch-throttle-enable", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub audit_webhook_batch_throttle_enable: bool,

    /// The most batches per second on average, throttled.
    #[arg(long = "audit-webhook-batch-throttle-qps", default_value_t = 10.0)]
    pub audit_webhook_batch_throttle_qps: f32,

    /// The most batches sent at once after a quiet spell, throttled.
    #[arg(long = "audit-webhook-batch-throttle-burst", default_value_t = 15)]
    pub audit_webhook_batch_throttle_burst: u32,

    /// Whether events and batches are truncated to the sizes below.
    #[arg(long = "audit-webhook-truncate-enabled", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub audit_webhook_truncate_enabled: bool,

    /// The largest request body (bytes of events) sent; larger batches are split.
    #[arg(
        long = "audit-webhook-truncate-max-batch-size",
        default_value_t = 10_485_760
    )]
    pub audit_webhook_truncate_max_batch_size: usize,

    /// The largest event sent: a larger one loses its request and response objects, and
    /// is dropped if still too large.
    #[arg(
        long = "audit-webhook-truncate-max-event-size",
        default_value_t = 102_400
    )]
    pub audit_webhook_truncate_max_event_size: usize,

    /// The API version events are sent as (only `audit.k8s.io/v1`).
    #[arg(long = "audit-webhook-version", default_value = VERSION)]
    pub audit_webhook_version: String,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            audit_webhook_config_file: None,
            audit_webhook_mode: Mode::Batch,
            audit_webhook_initial_backoff: Duration::from_secs(10),
            audit_webhook_batch_buffer_size: 10_000,
            audit_webhook_batch_max_size: 400,
            audit_webhook_batch_max_wait: Duration::from_secs(30),
            audit_webhook_batch_throttle_enable: true,
            audit_webhook_batch_throttle_qps: 10.0,
            audit_webhook_batch_throttle_burst: 15,
            audit_webhook_truncate_enabled: false,
            audit_webhook_truncate_max_batch_size: 10_485_760,
            audit_webhook_truncate_max_event_size: 102_400,
            audit_webhook_version: VERSION.into(),
        }
    }
}

impl WebhookOptions {
    /// Upstream's `Validate` of the webhook options (checked with or without a policy).
    pub fn validate(&self) -> Result<(), String> {
        if self.audit_webhook_version != VERSION {
            return Err(format!(
                "--audit-webhook-version: {:?} is not supported: the only audit version is {VERSION}",
                self.audit_webhook_version
            ));
        }
        if self.audit_webhook_mode == Mode::Batch {
            if self.audit_webhook_batch_buffer_size == 0 {
                return Err("--audit-webhook-batch-buffer-size: must be a positive number".into());
            }
            if self.audit_webhook_batch_max_size == 0 {
                return Err("--audit-webhook-batch-max-size: must be a positive number".into());
            }
            if self.audit_webhook_batch_throttle_enable
                && (self.audit_webhook_batch_throttle_qps <= 0.0
                    || self.audit_webhook_batch_throttle_burst == 0)
            {
                return Err("--audit-webhook-batch-throttle-qps and --audit-webhook-batch-throttle-burst: must be positive when throttling is enabled".into());
            }
        }
        if self.audit_webhook_truncate_enabled
            && (self.audit_webhook_truncate_max_event_size == 0
                || self.audit_webhook_truncate_max_batch_size
                    < self.audit_webhook_truncate_max_event_size)
        {
            return Err("--audit-webhook-truncate-max-event-size must be positive and at most --audit-webhook-truncate-max-batch-size".into());
        }
        Ok(())
    }
}

/// Upstream's generic webhook request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Upstream's retry backoff: `wait.Backoff{Factor: 1.5, Jitter: 0.2, Steps: 5}`.
const TRIES: usize = 5;

#[derive(Debug)]
pub(super) struct Sender {
    target: config::Target,
    pool: Pool,
    initial_backoff: Duration,
    truncate: Option<Truncate>,
    metrics: Arc<Metrics>,
}

/// A failed POST and whether upstream's `DefaultShouldRetry` would try again (connection
/// reset, 500, 504, 429, or a `Retry-After`).
struct Failure {
    message: String,
    retry: bool,
}

impl Sender {
    async fn post(&self, body: Bytes) -> Result<(), Failure> {
        let t = &self.target;
        let request = || {
            let mut r = Request::post(t.path_and_query.as_str())
                .header(header::HOST, t.authority.as_str())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json, */*")
                .header(header::USER_AGENT, "kube-apiserver (kaze)");
            if let Some(a) = &t.authorization {
                r = r.header(header::AUTHORIZATION, a.clone());
            }
            r.body(Body::from(body.clone())).ok()
        };
        let key = (
            t.host.clone(),
            t.port,
            t.server_name.clone(),
            "audit-webhook".to_string(),
        );
        let dial = async {
            match &t.tls {
                Some(tls) => backend::dial(tls.clone(), &t.host, t.port, &t.server_name).await,
                None => {
                    let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
                        .await
                        .map_err(|e| {
                            format!(
                                "dial tcp {}:{}: {}",
                                t.host,
                                t.port,
                                backend::go_io_error(&e)
                            )
                        })?;
                    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                        .await
                        .map_err(|e| e.to_string())?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Ok(sender)
                }
            }
        };
        let fail = |message: String, retry: bool| Failure {
            message: format!("Post \"{}\": {message}", t.url),
            retry,
        };
        let sent = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let resp = self
                .pool
                .send(key, request, dial)
                .await
                .map_err(|e| fail(e.message, e.connection_lost))?;
            let status = resp.status();
            let retry_after = resp.headers().contains_key(header::RETRY_AFTER);
            // read to the end: the connection goes back to the pool
            let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 1024 * 1024)
                .await
                .unwrap_or_default();
            if status.is_success() {
                return Ok(());
            }
            let retry = retry_after
                || matches!(
                    status,
                    StatusCode::INTERNAL_SERVER_ERROR
                        | StatusCode::GATEWAY_TIMEOUT
                        | StatusCode::TOO_MANY_REQUESTS
                );
            Err(fail(
                format!(
                    "the server responded {}: {}",
                    status.as_u16(),
                    String::from_utf8_lossy(&bytes).trim()
                ),
                retry,
            ))
        })
        .await;
        sent.unwrap_or_else(|_| Err(fail("context deadline exceeded".into(), false)))
    }

    /// POST `body`, retrying transient failures with upstream's exponential backoff.
    async fn post_with_backoff(&self, body: Bytes) -> Result<(), String> {
        let mut delay = self.initial_backoff;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.post(body.clone()).await {
                Ok(()) => return Ok(()),
                Err(f) if f.retry && tries < TRIES => {
                    tracing::debug!(error = %f.message, ?delay, "audit webhook failed; retrying");
                    tokio::time::sleep(jitter(delay)).await;
                    delay = delay.mul_f64(1.5);
                }
                Err(f) => return Err(f.message),
            }
        }
    }

    /// Send `events` (one EventList per `max_batch` bytes when truncating); false when any
    /// was lost (logged and counted).
    pub(super) async fn deliver(&self, events: &[Arc<Event>]) -> bool {
        let (bodies, mut ok) = encode(events, self.truncate, &self.metrics);
        for (body, batch) in bodies {
            if let Err(e) = self.post_with_backoff(body).await {
                plugin_error(&self.metrics, "webhook", &e, &batch);
                ok = false;
            }
        }
        ok
    }
}

/// `d` plus up to 20% (upstream's jitter); the randomness need not be good.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(1.0 + 0.2 * (nanos % 1000) as f64 / 1000.0)
}

/// Upstream's `HandlePluginError`: counted per event, logged with the events' IDs.
pub(super) fn plugin_error(metrics: &Metrics, plugin: &'static str, error: &str, ids: &[String]) {
    metrics.error(plugin, ids.len() as u64);
    tracing::error!(
        plugin,
        events = ids.len(),
        audit_ids = ?ids,
        error,
        "error in audit plugin '{plugin}' affecting {} audit events",
        ids.len()
    );
}

/// The webhook backend of an [`super::Auditor`].
pub struct WebhookBackend {
    mode: Mode,
    sender: Arc<Sender>,
    /// The sending runtime (its thread runs until the backend is shut down or dropped).
    runtime: tokio::runtime::Handle,
    queue: Option<mpsc::Sender<Arc<Event>>>,
    stop: CancellationToken,
    /// Cancelled when the batches are all sent (or failed) after `stop`.
    done: CancellationToken,
}

impl std::fmt::Debug for WebhookBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookBackend")
            .field("mode", &self.mode)
            .field("target", &self.sender.target)
            .finish_non_exhaustive()
    }
}

impl Drop for WebhookBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl WebhookBackend {
    /// Read the kubeconfig and start the sending thread.
    pub fn start(
        options: &WebhookOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Option<WebhookBackend>, String> {
        let Some(file) = &options.audit_webhook_config_file else {
            return Ok(None);
        };
        let target = config::load(file)
            .map_err(|e| format!("--audit-webhook-config-file {}: {e}", file.display()))?;
        let sender = Arc::new(Sender {
            target,
            pool: Pool::default(),
            initial_backoff: options.audit_webhook_initial_backoff,
            truncate: options.audit_webhook_truncate_enabled.then_some(Truncate {
                max_event: options.audit_webhook_truncate_max_event_size,
                max_batch: options.audit_webhook_truncate_max_batch_size,
            }),
            metrics,
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the audit webhook runtime: {e}"))?;
        let runtime = rt.handle().clone();
        let stop = CancellationToken::new();
        let done = CancellationToken::new();
        let mode = options.audit_webhook_mode;
        let (queue, main) = if mode == Mode::Batch {
            let (tx, rx) = mpsc::channel(options.audit_webhook_batch_buffer_size);
            let batches = Batches {
                sender: sender.clone(),
                max_size: options.audit_webhook_batch_max_size,
                max_wait: options.audit_webhook_batch_max_wait,
                throttle: options
                    .audit_webhook_batch_throttle_enable
                    .then(|| Throttle {
                        qps: options.audit_webhook_batch_throttle_qps as f64,
                        burst: options.audit_webhook_batch_throttle_burst as f64,
                        tokens: options.audit_webhook_batch_throttle_burst as f64,
                        last: tokio::time::Instant::now(),
                    }),
            };
            let (stop, done) = (stop.clone(), done.clone());
            let main: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
                Box::pin(async move {
                    batches.run(rx, stop).await;
                    done.cancel();
                });
            (Some(tx), main)
        } else {
            let (stop, done) = (stop.clone(), done.clone());
            let main: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
                Box::pin(async move {
                    stop.cancelled().await;
                    done.cancel();
                });
            (None, main)
        };
        std::thread::Builder::new()
            .name("audit-webhook".into())
            .spawn(move || rt.block_on(main))
            .map_err(|e| format!("starting the audit webhook thread: {e}"))?;
        Ok(Some(WebhookBackend {
            mode,
            sender,
            runtime,
            queue,
            stop,
            done,
        }))
    }

    pub fn strict(&self) -> bool {
        self.mode == Mode::BlockingStrict
    }

    /// Queue `event` (batch) or send it now (blocking modes); false when it was lost.
    pub fn process(&self, event: Arc<Event>) -> bool {
        if let Some(queue) = &self.queue {
            return match queue.try_send(event) {
                Ok(()) => true,
                Err(e) => {
                    let why = match &e {
                        mpsc::error::TrySendError::Full(_) => "audit buffer queue blocked",
                        mpsc::error::TrySendError::Closed(_) => "audit backend shut down",
                    };
                    let ev = e.into_inner();
                    plugin_error(
                        &self.sender.metrics,
                        "buffered",
                        why,
                        std::slice::from_ref(&ev.audit_id),
                    );
                    false
                }
            };
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let sender = self.sender.clone();
        self.runtime.spawn(async move {
            let _ = tx.send(sender.deliver(std::slice::from_ref(&event)).await);
        });
        // the request waits for the send (upstream's blocking mode), letting the serving
        // runtime move its other tasks off this thread
        let wait = || rx.recv().unwrap_or(false);
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
    }

    /// Send what is queued, wait for the sends in flight, and stop.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.done.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_upstreams_and_bad_versions_are_refused() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            w: WebhookOptions,
        }
        // the flags sit among all of the apiserver's without a clash
        #[derive(clap::Parser)]
        struct Server {
            #[command(flatten)]
            c: crate::Config,
        }
        <Server as clap::CommandFactory>::command().debug_assert();
        let parsed = Cli::parse_from(["x"]).w;
        let d = WebhookOptions::default();
        assert_eq!(format!("{parsed:?}"), format!("{d:?}"));
        assert_eq!(d.audit_webhook_mode, Mode::Batch);
        assert!(d.validate().is_ok());
        let parsed = Cli::parse_from([
            "x",
            "--audit-webhook-truncate-enabled",
            "--audit-webhook-batch-throttle-enable=false",
            "--audit-webhook-mode=blocking-strict",
            "--audit-webhook-initial-backoff=250ms",
        ])
        .w;
        assert!(parsed.audit_webhook_truncate_enabled);
        assert!(!parsed.audit_webhook_batch_throttle_enable);
        assert_eq!(parsed.audit_webhook_mode, Mode::BlockingStrict);
        assert_eq!(
            parsed.audit_webhook_initial_backoff,
            Duration::from_millis(250)
        );
        let bad = WebhookOptions {
            audit_webhook_version: "audit.k8s.io/v1beta1".into(),
            ..Default::default()
        };
        let err = bad.validate().unwrap_err();
        assert!(
            err.contains("--audit-webhook-version") && err.contains("v1beta1"),
            "{err}"
        );
    }
}
