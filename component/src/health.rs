//! Upstream's health endpoints (`k8s.io/apiserver/pkg/server/healthz`), for every kaze
//! server that has them (the apiserver; the scheduler's and controller-manager's secure
//! ports): named checks, each also at its own path (`/readyz/etcd`), `?verbose` listing them,
//! `?exclude=NAME` skipping one, and on failure HTTP 500 with every check listed (the reasons
//! withheld, since the endpoints are public) and `<endpoint> check failed`.

use std::future::Future;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// A plain-text answer as upstream's health handlers write it.
pub fn text(status: StatusCode, body: String) -> Response {
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
pub fn query_values(query: &str, key: &str) -> (bool, Vec<String>) {
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

/// Split a request path into the endpoint (`healthz`, `livez`, `readyz`) and the check
/// named after it (`/readyz/etcd` → `readyz`, `Some("etcd")`).
pub fn split_path(path: &str) -> (&str, Option<&str>) {
    match path.trim_start_matches('/').split_once('/') {
        Some((e, rest)) => (e, Some(rest)),
        None => (path.trim_start_matches('/'), None),
    }
}

/// Answer GET on endpoint `name` (`healthz`, ...) whose checks are `checks` (in order), or
/// on one check's path under it (`rest`), running `check` for each name.
pub async fn respond<F, Fut>(
    name: &str,
    checks: &[&'static str],
    rest: Option<&str>,
    query: &str,
    check: F,
) -> Response
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    match rest {
        None | Some("") => root(name, checks, query, check).await,
        Some(one) => match checks.iter().find(|c| **c == one) {
            Some(&c) => match check(c).await {
                Ok(()) => text(StatusCode::OK, "ok".into()),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal server error: {e}\n"),
                ),
            },
            None => text(StatusCode::NOT_FOUND, "404 page not found\n".into()),
        },
    }
}

/// The endpoint itself: every check, formatted as upstream's `handleRootHealth`.
async fn root<F, Fut>(name: &str, checks: &[&'static str], query: &str, check: F) -> Response
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let (verbose, _) = query_values(query, "verbose");
    let (_, mut excluded) = query_values(query, "exclude");
    let mut out = String::new();
    let mut failed = Vec::new();
    for &c in checks {
        if excluded.iter().any(|e| e == c) {
            excluded.retain(|e| e != c);
            out.push_str(&format!("[+]{c} excluded: ok\n"));
            continue;
        }
        match check(c).await {
            Ok(()) => out.push_str(&format!("[+]{c} ok\n")),
            Err(e) => {
                tracing::info!(check = c, endpoint = name, error = %e, "health check failed");
                out.push_str(&format!("[-]{c} failed: reason withheld\n"));
                failed.push(c);
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

    async fn body(r: Response) -> (u16, String) {
        let status = r.status().as_u16();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn answers_as_upstream() {
        let check = |c: &'static str| async move {
            match c {
                "bad" => Err("broken".to_string()),
                _ => Ok(()),
            }
        };
        let good = &["ping", "leaderElection"];
        assert_eq!(
            body(respond("healthz", good, None, "", check).await).await,
            (200, "ok".into())
        );
        assert_eq!(
            body(respond("readyz", good, None, "verbose", check).await).await,
            (
                200,
                "[+]ping ok\n[+]leaderElection ok\nreadyz check passed\n".into()
            )
        );
        let bad = &["ping", "bad"];
        assert_eq!(
            body(respond("livez", bad, None, "", check).await).await,
            (
                500,
                "[+]ping ok\n[-]bad failed: reason withheld\nlivez check failed\n".into()
            )
        );
        assert_eq!(
            body(respond("livez", bad, None, "exclude=bad", check).await)
                .await
                .0,
            200
        );
        assert_eq!(
            body(respond("livez", bad, Some("bad"), "", check).await).await,
            (500, "internal server error: broken\n".into())
        );
        assert_eq!(
            body(respond("livez", bad, Some("nope"), "", check).await)
                .await
                .0,
            404
        );
        assert_eq!(split_path("/readyz/etcd"), ("readyz", Some("etcd")));
        assert_eq!(split_path("/healthz"), ("healthz", None));
    }
}
