//! ServiceAccount tokens, as upstream's apiserver issues and checks them: the signing key
//! (`keys`), TokenRequest (`serviceaccounts/<name>/token`), the authenticator for those
//! tokens, TokenReview, the ServiceAccount admission plugin for pods (`admission`), and
//! issuer discovery (`discovery`: OpenID configuration and JWKS).
//!
//! Legacy tokens (`legacy`), which the controller-manager puts in
//! `kubernetes.io/service-account-token` Secrets, authenticate while their Secret and
//! ServiceAccount exist.
//!
//! Tokens are ES256 JWTs (`jwt`). Every apiserver publishes its public key in the store
//! (`<prefix>/kaze/serviceaccount-keys/<kid>`), so apiservers with separate data dirs on one
//! etcd accept each other's tokens; a token with an unknown key id makes an apiserver read
//! them again, at most once per `refresh::INTERVAL`.

pub mod admission;
pub mod discovery;
pub use component::jwt;
pub(crate) mod keys;
mod legacy;
mod refresh;
mod token;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

pub use token::{authenticate, token_request, token_review, user_json};

use crate::Error;

/// Upstream's default `--service-account-issuer` for kubeadm-style clusters.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// How many verified tokens are remembered (their signature is not checked again).
const VERIFIED_CACHE: usize = 4096;

/// Issuing and checking service-account tokens.
#[derive(Debug)]
pub struct ServiceAccounts {
    issuer: String,
    /// What tokens must be meant for to authenticate here (`--api-audiences`).
    audiences: Vec<String>,
    signing: jwt::SigningKey,
    /// Public keys by key id: ours, `--service-account-key-file`, other apiservers'.
    keys: RwLock<HashMap<String, Vec<u8>>>,
    /// Bounds how often an unknown key id makes us read the other apiservers' keys.
    key_refresh: refresh::KeyRefresh,
    /// Tokens whose signature checked out, with their claims.
    verified: Mutex<HashMap<String, Verified>>,
    /// Whether the `ServiceAccount` admission plugin runs on pod creates.
    admit_pods: bool,
    /// `--service-account-extend-token-expiration`.
    extend_expiration: bool,
    /// Legacy token Secrets (by uid) this apiserver labelled as used, and the day, so
    /// concurrent requests write the label once ([`legacy`]).
    legacy_used: Mutex<HashMap<String, String>>,
}

/// The claims of a token whose signature checked out.
#[derive(Debug, Clone)]
enum Verified {
    /// TokenRequest's, bound to the ServiceAccount (and a pod, secret or node).
    Bound(Box<jwt::Claims>),
    /// A legacy token, as a `kubernetes.io/service-account-token` Secret holds it.
    Legacy(jwt::LegacyClaims),
}

/// What [`ServiceAccounts::load`] needs from the flags.
#[derive(Debug, Clone)]
pub struct Options {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// `None`: `<server-dir>/tls/service-account.key`, created on first start.
    pub signing_key_file: Option<PathBuf>,
    pub key_files: Vec<PathBuf>,
    /// Run the `ServiceAccount` admission plugin.
    pub admission: bool,
    /// Issue pod-bound tokens asked for 3607 s for a year (with `warnafter`).
    pub extend_expiration: bool,
}

impl ServiceAccounts {
    pub fn load(opts: &Options, tls_dir: &Path) -> Result<ServiceAccounts, Error> {
        let signing = keys::signing_key(opts.signing_key_file.as_deref(), tls_dir)?;
        let mut map = HashMap::from([(signing.kid().to_string(), signing.public_point().to_vec())]);
        for file in &opts.key_files {
            for point in keys::public_keys(file)? {
                map.insert(jwt::key_id(&point), point);
            }
        }
        let audiences = if opts.audiences.is_empty() {
            vec![opts.issuer.clone()]
        } else {
            opts.audiences.clone()
        };
        Ok(ServiceAccounts {
            issuer: opts.issuer.clone(),
            audiences,
            signing,
            keys: RwLock::new(map),
            key_refresh: Default::default(),
            verified: Mutex::default(),
            admit_pods: opts.admission,
            extend_expiration: opts.extend_expiration,
            legacy_used: Mutex::default(),
        })
    }
}
