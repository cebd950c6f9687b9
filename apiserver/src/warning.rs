//! Warnings for the client, as upstream's `Warning` response headers
//! (`299 - "<text>"`, RFC 7234; kubectl prints each as `Warning: <text>`).
//!
//! Whatever handles a request may call [`add`] from anywhere below [`collect`] (admission
//! plugins deep in the create path need no extra parameter to carry them); [`collect`]
//! runs the handler and puts the warnings on its response, an error response included, as
//! upstream does. Identical warnings are sent once, as upstream's recorder dedups them
//! (an update retried on a conflict runs admission again).

use std::cell::RefCell;
use std::future::Future;

use axum::http::HeaderValue;
use axum::response::Response;

tokio::task_local! {
    static WARNINGS: RefCell<Vec<String>>;
    /// `fieldValidation=Warn` (upstream's default): unknown fields are named in warnings.
    static WARN_UNKNOWN_FIELDS: bool;
}

/// Run a request's handler with `fieldValidation` set to `Warn` (`warn`) or not.
pub async fn field_validation<F: Future>(warn: bool, handler: F) -> F::Output {
    WARN_UNKNOWN_FIELDS.scope(warn, handler).await
}

/// Whether the request being handled wants a warning per unknown field it sent.
pub fn warn_unknown_fields() -> bool {
    WARN_UNKNOWN_FIELDS.try_with(|w| *w).unwrap_or(false)
}

/// Warn the client of the request being handled; outside [`collect`], nothing happens.
pub fn add(text: impl Into<String>) {
    let text = text.into();
    let _ = WARNINGS.try_with(|w| {
        let mut w = w.borrow_mut();
        if !w.contains(&text) {
            w.push(text);
        }
    });
}

/// Run a request's handler and add the warnings it gave to its response.
pub async fn collect<F: Future<Output = Response>>(handler: F) -> Response {
    let (mut response, warnings) = WARNINGS
        .scope(RefCell::new(Vec::new()), async {
            let r = handler.await;
            (r, WARNINGS.with(|w| w.take()))
        })
        .await;
    for w in warnings {
        if let Ok(v) = HeaderValue::from_bytes(header_value(&w).as_bytes()) {
            response.headers_mut().append("warning", v);
        }
    }
    response
}

/// `299 - "text"`: code 299 (miscellaneous persistent warning), no agent, the text quoted
/// with `"` and `\` escaped, as upstream's `NewWarningHeader`. Control characters, which a
/// header cannot carry, become spaces.
fn header_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str("299 - \"");
    for ch in text.chars() {
        match ch {
            '"' | '\\' => {
                out.push('\\');
                out.push(ch);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    #[tokio::test]
    async fn warnings_added_while_handling_become_headers_once_each() {
        let r = collect(async {
            add("would violate \"x\"");
            add("second");
            add("would violate \"x\"");
            "ok".into_response()
        })
        .await;
        let got: Vec<&str> = r
            .headers()
            .get_all("warning")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(got, [r#"299 - "would violate \"x\"""#, r#"299 - "second""#]);
    }

    #[tokio::test]
    async fn add_outside_a_request_does_nothing() {
        add("nobody listens");
        let r = collect(async { "ok".into_response() }).await;
        assert!(r.headers().get("warning").is_none());
    }
}
