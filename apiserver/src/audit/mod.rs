//! The audit log, as upstream's (`k8s.io/apiserver/pkg/audit`, log and webhook backends):
//! every request gets an audit ID (the `Audit-ID` response header, with or without a
//! policy); with `--audit-policy-file` and `--audit-log-path` or
//! `--audit-webhook-config-file`, the policy's first matching rule picks each request's
//! level, and `audit.k8s.io/v1` Events go to the backends per stage (`RequestReceived`,
//! `ResponseStarted` for long-running requests, `ResponseComplete`).
//!
//! Two layers: [`id`] outermost (the header), [`record`] right after authentication (it
//! needs the user), added only when a policy is loaded, so without one a request costs a
//! UUID and a header. Below it, the authorizer ([`authorized`]) and admission plugins
//! ([`annotate`]) add annotations to the request's event through a task-local, as
//! upstream's audit context.

pub mod event;
pub mod log;
pub mod policy;
mod request;
pub mod webhook;

pub use request::{record, refused, unauthenticated};

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use self::event::Event;
use self::policy::Policy;

/// kube-apiserver's audit flags (the log and webhook backends).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Options {
    /// The audit Policy (`audit.k8s.io/v1`, YAML or JSON). Without it nothing is audited.
    #[arg(long = "audit-policy-file")]
    pub audit_policy_file: Option<PathBuf>,

    /// Where audit events are written, one JSON object per line (`-`: stdout). Without it
    /// the log backend is off.
    #[arg(long = "audit-log-path")]
    pub audit_log_path: Option<PathBuf>,

    /// Days to keep rotated audit log files (0: no limit).
    #[arg(long = "audit-log-maxage", default_value_t = 0)]
    pub audit_log_maxage: u64,

    /// How many rotated audit log files to keep (0: all).
    #[arg(long = "audit-log-maxbackup", default_value_t = 0)]
    pub audit_log_maxbackup: usize,

    /// Megabytes an audit log file grows to before it is rotated (0: never).
    #[arg(long = "audit-log-maxsize", default_value_t = 0)]
    pub audit_log_maxsize: u64,

    /// `json` (an Event per line) or `legacy` (upstream's one-line text).
    #[arg(long = "audit-log-format", value_enum, default_value_t = Format::Json)]
    pub audit_log_format: Format,

    /// `blocking` (written in the request; a failed write is logged), `blocking-strict`
    /// (as blocking, but a failed RequestReceived write fails the request) or `batch`
    /// (queued and written, serialized included, by a background thread).
    #[arg(long = "audit-log-mode", value_enum, default_value_t = Mode::Blocking)]
    pub audit_log_mode: Mode,

    /// The webhook backend (`--audit-webhook-*`).
    #[command(flatten)]
    pub webhook: webhook::WebhookOptions,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Json,
    Legacy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    #[default]
    Blocking,
    BlockingStrict,
    Batch,
}

/// The loaded policy and where its events go: the log backend, the webhook backend, or
/// both (as upstream's union backend).
#[derive(Debug)]
pub struct Auditor {
    pub policy: Policy,
    log: Option<log::LogBackend>,
    log_strict: bool,
    webhook: Option<webhook::WebhookBackend>,
    metrics: Arc<Metrics>,
}

impl Auditor {
    /// The auditor `options` ask for; None when they turn auditing off (no policy, or no
    /// backend: upstream audits nothing without one).
    pub fn from_options(options: &Options) -> Result<Option<Auditor>, String> {
        options.webhook.validate()?;
        let Some(file) = &options.audit_policy_file else {
            return Ok(None);
        };
        let policy = Policy::load(file).map_err(|e| format!("--audit-policy-file: {e}"))?;
        if options.audit_log_path.is_none() && options.webhook.audit_webhook_config_file.is_none() {
            return Ok(None);
        }
        let log = match &options.audit_log_path {
            Some(path) => Some(
                log::LogBackend::open(
                    path,
                    log::Rotation {
                        max_size_mb: options.audit_log_maxsize,
                        max_backups: options.audit_log_maxbackup,
                        max_age_days: options.audit_log_maxage,
                    },
                    options.audit_log_format,
                    options.audit_log_mode,
                )
                .map_err(|e| format!("--audit-log-path: {e}"))?,
            ),
            None => None,
        };
        let metrics = Arc::new(Metrics::default());
        let webhook = webhook::WebhookBackend::start(&options.webhook, metrics.clone())?;
        Ok(Some(Auditor {
            policy,
            log,
            log_strict: options.audit_log_mode == Mode::BlockingStrict,
            webhook,
            metrics,
        }))
    }

    /// Hand `event` to every backend. False when a `blocking-strict` backend lost it (the
    /// others' failures are logged and counted, as upstream's `ignoreErrorsBackend`).
    fn process(&self, event: Event) -> bool {
        self.metrics.events.fetch_add(1, Ordering::Relaxed);
        let event = Arc::new(event);
        let mut ok = true;
        if let Some(log) = &self.log {
            if !log.process(event.clone()) {
                self.metrics.error("log", 1);
                ok &= !self.log_strict;
            }
        }
        if let Some(w) = &self.webhook {
            ok &= w.process(event) || !w.strict();
        }
        ok
    }

    /// Flush the backends: the webhook's queued batches are sent (and retried) before this
    /// returns.
    pub async fn shutdown(&self) {
        if let Some(w) = &self.webhook {
            w.shutdown().await;
        }
    }
}

/// Upstream's audit metrics (`k8s.io/apiserver/pkg/audit/metrics.go`).
#[derive(Debug, Default)]
pub struct Metrics {
    events: AtomicU64,
    rejected: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    levels: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    fn error(&self, plugin: &'static str, n: u64) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(plugin)
            .or_default() += n;
    }

    fn level(&self, level: policy::Level) {
        *self
            .levels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(level.as_str())
            .or_default() += 1;
    }
}

/// The audit metrics, for `/metrics` (zeros without an auditor, as upstream registers them
/// regardless).
pub fn render_metrics(auditor: Option<&Auditor>) -> String {
    let none = Metrics::default();
    let m = auditor.map(|a| &*a.metrics).unwrap_or(&none);
    let mut out = String::new();
    out.push_str("# HELP apiserver_audit_event_total [ALPHA] Counter of audit events generated and sent to the audit backend.\n# TYPE apiserver_audit_event_total counter\n");
    let _ = writeln!(
        out,
        "apiserver_audit_event_total {}",
        m.events.load(Ordering::Relaxed)
    );
    out.push_str("# HELP apiserver_audit_error_total [ALPHA] Counter of audit events that failed to be audited properly. Plugin identifies the plugin affected by the error.\n# TYPE apiserver_audit_error_total counter\n");
    for (plugin, n) in m.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(
            out,
            "apiserver_audit_error_total{{plugin=\"{plugin}\"}} {n}"
        );
    }
    out.push_str("# HELP apiserver_audit_level_total [ALPHA] Counter of policy levels for audit events (1 per request).\n# TYPE apiserver_audit_level_total counter\n");
    for (level, n) in m.levels.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(out, "apiserver_audit_level_total{{level=\"{level}\"}} {n}");
    }
    out.push_str("# HELP apiserver_audit_requests_rejected_total [ALPHA] Counter of apiserver requests rejected due to an error in audit logging backend.\n# TYPE apiserver_audit_requests_rejected_total counter\n");
    let _ = writeln!(
        out,
        "apiserver_audit_requests_rejected_total {}",
        m.rejected.load(Ordering::Relaxed)
    );
    out
}

/// The request's audit ID, for the layers below [`id`].
#[derive(Debug, Clone)]
pub struct AuditId(pub HeaderValue);

pub const HEADER: &str = "audit-id";

/// The outermost layer: the request's audit ID (the client's `Audit-ID` header if it sent
/// one, as upstream, else a new UUID), on the response as `Audit-ID`.
pub async fn id(mut req: Request, next: Next) -> Response {
    let id = match req.headers().get(HEADER) {
        Some(v) if !v.is_empty() && v.len() <= 128 => v.clone(),
        _ => {
            let mut buf = uuid::Uuid::encode_buffer();
            let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
            HeaderValue::from_str(s).expect("a UUID is a header value")
        }
    };
    req.extensions_mut().insert(AuditId(id.clone()));
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(HEADER, id);
    resp
}

/// The user who authenticated when the request impersonates someone (the auth layer puts
/// it on the request): events name both, the policy matches the authenticated one.
#[derive(Debug, Clone)]
pub struct Impersonator(pub crate::auth::UserInfo);

#[derive(Debug, Default)]
struct Notes {
    annotations: Vec<(String, String)>,
    hold: Option<std::sync::Arc<Hold>>,
}

/// Held by a task that carries a request's stream on after its handler returned (an
/// upgraded exec/attach/port-forward connection): the request's `ResponseComplete` is
/// written when the last holder lets go.
#[derive(Debug, Default)]
pub struct Hold {
    complete: std::sync::Mutex<Option<request::CompleteOnDrop>>,
}

/// A [`Hold`] on the audited request being handled (None when it is not audited).
pub fn hold() -> Option<std::sync::Arc<Hold>> {
    NOTES
        .try_with(|n| {
            n.borrow_mut()
                .hold
                .get_or_insert_with(Default::default)
                .clone()
        })
        .ok()
}

tokio::task_local! {
    static NOTES: RefCell<Notes>;
}

async fn collect<F: Future<Output = Response>>(f: F) -> (Response, Notes) {
    NOTES
        .scope(RefCell::new(Notes::default()), async {
            let r = f.await;
            (r, NOTES.with(|n| n.take()))
        })
        .await
}

/// Annotate the event of the request being handled (nothing when it is not audited).
pub fn annotate(key: &str, value: impl Into<String>) {
    let _ = NOTES.try_with(|n| {
        let mut n = n.borrow_mut();
        let value = value.into();
        match n.annotations.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => n.annotations.push((key.to_string(), value)),
        }
    });
}

/// Whether the request being audited is audited at all (callers skip building values).
pub fn active() -> bool {
    NOTES.try_with(|_| ()).is_ok()
}

/// The authorizer's decision, as upstream's `authorization.k8s.io/{decision,reason}`.
pub fn authorized(allowed: bool, reason: &str) {
    if !active() {
        return;
    }
    annotate(
        "authorization.k8s.io/decision",
        if allowed { "allow" } else { "forbid" },
    );
    annotate("authorization.k8s.io/reason", reason);
}
