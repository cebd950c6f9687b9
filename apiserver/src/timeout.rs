//! Request deadlines, as upstream's `WithRequestDeadline` and
//! `WithTimeoutForNonLongRunningRequests` filters set them: every request but the
//! long-running ones (watches, logs, exec, attach, port-forward, proxy) must be answered
//! within `--request-timeout` (default 1m), or sooner when its `timeout` query parameter
//! (a Go duration, what `kubectl --request-timeout` sends) asks for less. Past the deadline
//! the handler is stopped (a body still arriving, a queue wait, a slow store call) and the
//! client gets upstream's 504: `Timeout: request did not complete within the allotted
//! timeout`. A `timeout` that is not a duration is a 400.
//!
//! Watches without `timeoutSeconds` end after a random time between
//! `--min-request-timeout` and twice that (default 1800 s), as upstream's do, so clients
//! relist and spread over apiservers.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;
use crate::status::ApiError;

/// The deadlines the flags set.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `--request-timeout`: the longest any non-long-running request may take.
    pub request: Duration,
    /// `--min-request-timeout`: watches without `timeoutSeconds` last between this and twice
    /// this.
    pub min_request: Duration,
}

impl Timeouts {
    /// How long a watch that did not ask runs: uniformly in `[min, 2 min)`, as upstream.
    pub fn watch(&self) -> Duration {
        let mut b = [0u8; 8];
        let r = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .map(|_| u64::from_le_bytes(b))
            .unwrap_or(0);
        let min = self.min_request.as_secs_f64();
        Duration::from_secs_f64(min + min * (r as f64 / (u64::MAX as f64 + 1.0)))
    }

    /// The deadline for a request with query `query`: the flag's, or the `timeout`
    /// parameter when it is positive and shorter. A `timeout` that is not a Go duration is
    /// upstream's 400.
    pub fn for_query(&self, query: Option<&str>) -> Result<Duration, ApiError> {
        let asked = query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "timeout")
                .map(|(_, v)| v.into_owned())
        });
        let Some(asked) = asked.filter(|v| !v.is_empty()) else {
            return Ok(self.request);
        };
        let nanos = component::cron::go_duration(&asked).map_err(|e| {
            ApiError::bad_request(format!(
                "invalid timeout specified in the request URL - {e}"
            ))
        })?;
        let asked = Duration::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX));
        // zero or negative: no deadline of the client's own; longer: capped
        Ok(if !asked.is_zero() && asked < self.request {
            asked
        } else {
            self.request
        })
    }
}

/// When a request's deadline passes (upstream's deadline in the request's context).
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub std::time::Instant);

/// The filter, outside authentication (upstream's place: the deadline covers everything
/// a request waits for, APF's queues included).
pub async fn filter(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let info = crate::apf::RequestInfo::parse(req.method(), req.uri().path(), req.uri().query());
    let long_running = info.long_running();
    // parsed once: the APF filter further in reads it (upstream's RequestInfo in the context)
    req.extensions_mut().insert(info);
    if long_running {
        return next.run(req).await;
    }
    let deadline = match state.timeouts.for_query(req.uri().query()) {
        Ok(d) => d,
        Err(e) => {
            crate::router::discard_body(req.into_body()).await;
            return e.into_response();
        }
    };
    // APF, further in, lets the request wait a quarter of it in a queue
    req.extensions_mut()
        .insert(Deadline(std::time::Instant::now() + deadline));
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::debug!(?deadline, "request timed out");
            let mut err =
                ApiError::timeout("Timeout: request did not complete within the allotted timeout");
            err.details = Some(serde_json::json!({}));
            let mut resp = err.into_response();
            resp.extensions_mut().insert(crate::metrics::Terminated);
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timeouts {
        Timeouts {
            request: Duration::from_secs(60),
            min_request: Duration::from_secs(1800),
        }
    }

    #[test]
    fn the_timeout_parameter_shortens_the_deadline_only() {
        assert_eq!(t().for_query(None).unwrap(), Duration::from_secs(60));
        assert_eq!(
            t().for_query(Some("timeout=5s")).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(
            t().for_query(Some("limit=1&timeout=1m30s")).unwrap(),
            Duration::from_secs(60),
            "capped at --request-timeout"
        );
        assert_eq!(
            t().for_query(Some("timeout=0")).unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            t().for_query(Some("timeout=-3s")).unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            t().for_query(Some("timeout=250ms")).unwrap(),
            Duration::from_millis(250)
        );
        for (bad, why) in [
            ("abc", r#"time: invalid duration "abc""#),
            ("5", r#"time: missing unit in duration "5""#),
            ("5x", r#"time: unknown unit "x" in duration "5x""#),
        ] {
            let e = t().for_query(Some(&format!("timeout={bad}"))).unwrap_err();
            assert_eq!(e.code, 400);
            assert_eq!(
                e.message,
                format!("invalid timeout specified in the request URL - {why}")
            );
        }
    }

    #[test]
    fn watches_last_between_the_minimum_and_twice_it() {
        for _ in 0..100 {
            let d = t().watch();
            assert!(
                d >= Duration::from_secs(1800) && d < Duration::from_secs(3600),
                "{d:?}"
            );
        }
    }
}
