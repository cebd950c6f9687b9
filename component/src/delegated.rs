//! Authentication and authorization delegated to the apiserver, as upstream's components do
//! it (`k8s.io/apiserver` delegating authenticator/authorizer; the kubelet's
//! `--authentication-token-webhook` and `--authorization-mode=Webhook`): a bearer token is a
//! TokenReview, a request a SubjectAccessReview, and both answers are cached for a while so
//! that a scraper does not cost the apiserver two reviews per scrape.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::header;

/// An authenticated caller: a verified client certificate's subject, or a bearer token's
/// user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub uid: Option<String>,
}

impl User {
    /// Upstream's anonymous user (`system:anonymous` in `system:unauthenticated`).
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            uid: None,
        }
    }
}

/// What a SubjectAccessReview asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    /// `resourceAttributes` (`version` v1, core group).
    Resource {
        verb: String,
        resource: String,
        subresource: String,
        name: String,
    },
    /// `nonResourceAttributes`: a URL path such as `/metrics`.
    NonResource { verb: String, path: String },
}

impl Attributes {
    fn to_json(&self) -> (&'static str, serde_json::Value) {
        match self {
            Attributes::Resource {
                verb,
                resource,
                subresource,
                name,
            } => (
                "resourceAttributes",
                serde_json::json!({"verb": verb, "resource": resource, "subresource": subresource,
                                   "name": name, "version": "v1"}),
            ),
            Attributes::NonResource { verb, path } => (
                "nonResourceAttributes",
                serde_json::json!({"verb": verb, "path": path}),
            ),
        }
    }
}

/// Why the apiserver could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("asking the apiserver ({path}): {message}")]
pub struct WebhookError {
    pub path: &'static str,
    pub message: String,
}

/// How long answers are kept.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    pub token: Duration,
    pub allowed: Duration,
    pub denied: Duration,
}

/// TokenReviews and SubjectAccessReviews through `client`, cached for [`Ttls`].
pub struct Webhook {
    client: kube::Client,
    ttls: Ttls,
    /// SHA-256 of a token → when it was reviewed and who it is.
    tokens: Mutex<TtlCache<Vec<u8>, Option<User>>>,
    /// User, groups, attributes → when and whether allowed.
    decisions: Mutex<TtlCache<String, bool>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("ttls", &self.ttls)
            .finish_non_exhaustive()
    }
}

type TtlCache<K, V> = HashMap<K, (Instant, V)>;

/// Past this many entries, a cache forgets: callers sending made-up tokens must not grow it
/// without bound.
const MAX_CACHED: usize = 4096;

impl Webhook {
    pub fn new(client: kube::Client, ttls: Ttls) -> Webhook {
        Webhook {
            client,
            ttls,
            tokens: Default::default(),
            decisions: Default::default(),
        }
    }

    /// Who `token` is, per the apiserver (None: not a valid token).
    pub async fn authenticate(&self, token: &str) -> Result<Option<User>, WebhookError> {
        let key = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .to_vec();
        let now = Instant::now();
        if let Some((at, user)) = lock(&self.tokens).get(&key) {
            if now.duration_since(*at) < self.ttls.token {
                return Ok(user.clone());
            }
        }
        let review = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token},
        });
        let answer = self
            .post("/apis/authentication.k8s.io/v1/tokenreviews", &review)
            .await?;
        let status = &answer["status"];
        let user = (status["authenticated"] == true).then(|| User {
            name: status["user"]["username"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            groups: status["user"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().map(String::from))
                .collect(),
            uid: status["user"]["uid"].as_str().map(String::from),
        });
        let mut tokens = lock(&self.tokens);
        prune(&mut tokens, self.ttls.token, now);
        tokens.insert(key, (now, user.clone()));
        Ok(user)
    }

    /// Whether `user` may do what `attributes` say, per the apiserver.
    pub async fn authorize(
        &self,
        user: &User,
        attributes: &Attributes,
    ) -> Result<bool, WebhookError> {
        let key = format!("{}\0{:?}\0{attributes:?}", user.name, user.groups);
        let now = Instant::now();
        let cached = lock(&self.decisions).get(&key).copied();
        if let Some((at, allowed)) = cached {
            let ttl = if allowed {
                self.ttls.allowed
            } else {
                self.ttls.denied
            };
            if now.duration_since(at) < ttl {
                return Ok(allowed);
            }
        }
        let (field, attrs) = attributes.to_json();
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user.name, "groups": user.groups, "uid": user.uid, field: attrs},
        });
        let answer = self
            .post(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                &review,
            )
            .await?;
        let allowed = answer["status"]["allowed"] == true;
        let mut decisions = lock(&self.decisions);
        prune(&mut decisions, self.ttls.allowed.max(self.ttls.denied), now);
        decisions.insert(key, (now, allowed));
        Ok(allowed)
    }

    async fn post(
        &self,
        path: &'static str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, WebhookError> {
        let err = |message: String| WebhookError { path, message };
        let req = axum::http::Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).unwrap_or_default())
            .map_err(|e| err(e.to_string()))?;
        self.client
            .request::<serde_json::Value>(req)
            .await
            .map_err(|e| err(e.to_string()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Past [`MAX_CACHED`] entries, forget those older than `ttl` (and, if that is not enough,
/// all).
fn prune<K, V>(cache: &mut TtlCache<K, V>, ttl: Duration, now: Instant) {
    if cache.len() < MAX_CACHED {
        return;
    }
    cache.retain(|_, (at, _)| now.duration_since(*at) < ttl);
    if cache.len() >= MAX_CACHED {
        cache.clear();
    }
}
