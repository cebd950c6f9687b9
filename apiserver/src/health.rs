//! `/healthz`, `/livez` and `/readyz` as upstream's apiserver serves them: named checks, each
//! also at its own path (`/readyz/etcd`), `?verbose` listing them, `?exclude=NAME` skipping
//! one, and on failure HTTP 500 with every check listed (the reasons withheld, since the
//! endpoints are public) and `<endpoint> check failed`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// How long the `etcd` checks wait for a store round trip (upstream's
/// `--etcd-healthcheck-timeout` and `--etcd-readycheck-timeout` default to 2 s).
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(2);

/// The three endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Healthz,
    Livez,
    Readyz,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Healthz => "healthz",
            Endpoint::Livez => "livez",
            Endpoint::Readyz => "readyz",
        }
    }

    /// The endpoint's checks in upstream's order; only checks kaze really has.
    pub fn checks(self) -> &'static [&'static str] {
        match self {
            Endpoint::Healthz | Endpoint::Livez => &[
                "ping",
                "log",
                "etcd",
                "poststarthook/scheduling/bootstrap-system-priority-classes",
                "poststarthook/crd-informer-synced",
                "poststarthook/start-kube-aggregator-informers",
            ],
            Endpoint::Readyz => &[
                "ping",
                "log",
                "etcd",
                "etcd-readiness",
                "informer-sync",
                "poststarthook/scheduling/bootstrap-system-priority-classes",
                "poststarthook/crd-informer-synced",
                "poststarthook/start-kube-aggregator-informers",
                "shutdown",
            ],
        }
    }
}

/// One check: `Err` says why it failed.
async fn check(state: &AppState, name: &str) -> Result<(), String> {
    match name {
        "ping" | "log" => Ok(()),
        "etcd" | "etcd-readiness" => store_round_trip(state).await,
        "informer-sync" => match state.cache.is_ready() {
            true => Ok(()),
            false => Err("the watch cache has not synced with the store".into()),
        },
        // bootstrap::run creates them before the server listens
        "poststarthook/scheduling/bootstrap-system-priority-classes" => Ok(()),
        "poststarthook/crd-informer-synced" => match state.crds.wait_synced(Duration::ZERO).await {
            true => Ok(()),
            false => Err("CustomResourceDefinitions not read yet".into()),
        },
        "poststarthook/start-kube-aggregator-informers" => {
            match state.aggregator.wait_synced(Duration::ZERO).await {
                true => Ok(()),
                false => Err("APIServices not read yet".into()),
            }
        }
        "shutdown" => match state.shutdown.is_cancelled() {
            true => Err("process is shutting down".into()),
            false => Ok(()),
        },
        other => Err(format!("no check {other}")),
    }
}

/// A read from every store (etcd or the embedded one) within [`ETCD_TIMEOUT`].
async fn store_round_trip(state: &AppState) -> Result<(), String> {
    for store in state.storage.stores() {
        match tokio::time::timeout(ETCD_TIMEOUT, store.get("health")).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("timed out after {ETCD_TIMEOUT:?}")),
        }
    }
    Ok(())
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The values of query parameter `key` (`exclude=a&exclude=b`), and whether it is present.
fn query_values(query: &str, key: &str) -> (bool, Vec<String>) {
    let mut found = false;
    let mut values = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == key {
            found = true;
            if !v.is_empty() {
                values.push(v.into_owned());
            }
        }
    }
    (found, values)
}

/// GET on `/healthz`, `/livez`, `/readyz` or one check's path under them.
pub async fn serve(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let (endpoint, rest) = match path.trim_start_matches('/').split_once('/') {
        Some((e, rest)) => (e.to_string(), Some(rest.to_string())),
        None => (path.trim_start_matches('/').to_string(), None),
    };
    let endpoint = match endpoint.as_str() {
        "healthz" => Endpoint::Healthz,
        "livez" => Endpoint::Livez,
        _ => Endpoint::Readyz,
    };
    match rest.as_deref() {
        None | Some("") => root(&state, endpoint, &query).await,
        Some(name) if endpoint.checks().contains(&name) => match check(&state, name).await {
            Ok(()) => text(StatusCode::OK, "ok".into()),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal server error: {e}\n"),
            ),
        },
        Some(_) => text(StatusCode::NOT_FOUND, "404 page not found\n".into()),
    }
}

/// The endpoint itself: every check, formatted as upstream's `handleRootHealth`.
async fn root(state: &AppState, endpoint: Endpoint, query: &str) -> Response {
    let (verbose, _) = query_values(query, "verbose");
    let (_, mut excluded) = query_values(query, "exclude");
    let mut out = String::new();
    let mut failed = Vec::new();
    for &name in endpoint.checks() {
        if excluded.iter().any(|e| e == name) {
            excluded.retain(|e| e != name);
            out.push_str(&format!("[+]{name} excluded: ok\n"));
            continue;
        }
        match check(state, name).await {
            Ok(()) => out.push_str(&format!("[+]{name} ok\n")),
            Err(e) => {
                tracing::info!(check = name, endpoint = endpoint.name(), error = %e, "health check failed");
                out.push_str(&format!("[-]{name} failed: reason withheld\n"));
                failed.push(name);
            }
        }
    }
    if !excluded.is_empty() {
        excluded.sort();
        excluded.dedup();
        let quoted: Vec<String> = excluded.iter().map(|e| format!("{e:?}")).collect();
        out.push_str(&format!(
            "warn: some health checks cannot be excluded: no matches for {}\n",
            quoted.join(",")
        ));
    }
    let name = endpoint.name();
    if !failed.is_empty() {
        // always verbose on failure (http.Error adds the newline)
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{out}{name} check failed\n"),
        );
    }
    if !verbose {
        return text(StatusCode::OK, "ok".into());
    }
    text(StatusCode::OK, format!("{out}{name} check passed\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_split_repeated_keys() {
        assert_eq!(
            query_values("verbose&exclude=etcd&exclude=poststarthook%2Fx", "exclude"),
            (
                true,
                vec!["etcd".to_string(), "poststarthook/x".to_string()]
            )
        );
        assert_eq!(query_values("verbose", "verbose"), (true, vec![]));
        assert_eq!(query_values("", "verbose"), (false, vec![]));
    }

    #[test]
    fn readyz_has_the_readiness_only_checks() {
        for c in ["etcd-readiness", "informer-sync", "shutdown"] {
            assert!(Endpoint::Readyz.checks().contains(&c));
            assert!(!Endpoint::Livez.checks().contains(&c));
        }
    }
}
