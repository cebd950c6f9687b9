//! URL routing: the fixed endpoints, then everything under `/api` and `/apis` parsed into a
//! resource request for the generic handlers.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::AppState;
use crate::status::ApiError;

pub fn build(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/healthz", get(ok))
        .route("/livez", get(ok))
        .route("/readyz", get(ok))
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate,
        ))
        .with_state(state)
}

async fn ok() -> &'static str {
    "ok"
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({
        "major": "1",
        "minor": "37",
        "gitVersion": "v1.37.0-kaze",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    }))
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

async fn fallback(uri: axum::http::Uri) -> Response {
    ApiError::no_route(uri.path()).into_response()
}
