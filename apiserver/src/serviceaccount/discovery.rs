//! Service account issuer discovery, as upstream serves it: an OpenID Connect discovery
//! document at `/.well-known/openid-configuration` and the token verification keys at
//! `/openid/v1/jwks`, so relying parties outside the cluster can verify tokens. Readable by
//! `system:serviceaccounts` (upstream's `system:service-account-issuer-discovery` role) and
//! whoever RBAC lets `get` the URLs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use super::ServiceAccounts;
use crate::state::AppState;

pub const CONFIG_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/openid/v1/jwks";

impl ServiceAccounts {
    /// The discovery document: the issuer and where its keys are.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}{JWKS_PATH}", self.issuer.trim_end_matches('/')),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// Every key tokens are accepted with: ours, `--service-account-key-file`'s, and those the
    /// other apiservers on the store published (read again at most once per
    /// `refresh::INTERVAL`, as for unknown key ids: every ServiceAccount may read this).
    pub async fn jwks(&self, state: &AppState) -> Value {
        self.key_refresh
            .ensure(
                std::time::Instant::now,
                super::refresh::INTERVAL,
                || false,
                || self.load_published(state),
            )
            .await;
        let map = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<Value> = map.iter().map(|(kid, point)| jwk(kid, point)).collect();
        keys.sort_by(|a, b| a["kid"].as_str().cmp(&b["kid"].as_str()));
        json!({ "keys": keys })
    }
}

/// A P-256 public key as a JWK (RFC 7518 §6.2: `x` and `y`, 32 bytes each).
fn jwk(kid: &str, point: &[u8]) -> Value {
    let (x, y) = point
        .get(1..)
        .unwrap_or_default()
        .split_at(point.len().saturating_sub(1) / 2);
    json!({
        "use": "sig",
        "kty": "EC",
        "kid": kid,
        "crv": "P-256",
        "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(x),
        "y": URL_SAFE_NO_PAD.encode(y),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwk_splits_the_point() {
        let mut point = vec![4u8];
        point.extend([1u8; 32]);
        point.extend([2u8; 32]);
        let k = jwk("id", &point);
        assert_eq!(k["x"], URL_SAFE_NO_PAD.encode([1u8; 32]));
        assert_eq!(k["y"], URL_SAFE_NO_PAD.encode([2u8; 32]));
        assert_eq!(k["kty"], "EC");
    }
}
