//! ES256 JSON Web Tokens as upstream's service-account tokens carry them: a compact JWS
//! (`header.claims.signature`, each base64url without padding) signed with ECDSA P-256 over
//! SHA-256, the signature being `r || s` (64 bytes). Pure logic: no clock, no I/O.
//!
//! Shared by the apiserver (TokenRequest tokens, authentication) and the controller-manager
//! (the legacy tokens its `serviceaccount-token` controller puts in Secrets), as upstream's
//! `pkg/serviceaccount` is.

use std::collections::HashMap;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};

/// DER prefix of a P-256 SubjectPublicKeyInfo; the 65-byte uncompressed point follows it.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A reference to an object a token is bound to (`kubernetes.io.pod`, `.secret`, `.node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

/// The private `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kubernetes {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
    /// When an extended token (see `token_request`) is past the life its client asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnafter: Option<i64>,
}

/// The claims of a bound service-account token, as upstream's `token.Claims` builds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Kubernetes,
}

/// The issuer of legacy (Secret-based) tokens, upstream's `serviceaccount.LegacyIssuer`.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// The claims of a legacy token, the one a `kubernetes.io/service-account-token` Secret holds
/// (upstream's `LegacyClaims`): no audience, no expiry; valid while the Secret (holding this
/// very token) and the ServiceAccount (with this uid) exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyClaims {
    pub iss: String,
    pub sub: String,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace", default)]
    pub namespace: String,
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name", default)]
    pub secret_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name", default)]
    pub service_account_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid", default)]
    pub service_account_uid: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: String,
}

/// Why a token was not accepted (never shown to the client: it gets a plain 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not a JWT")]
    Malformed,
    #[error("unsupported algorithm {0:?}")]
    Algorithm(String),
    #[error("no key with id {0:?}")]
    UnknownKey(String),
    #[error("bad signature")]
    Signature,
    #[error("claims: {0}")]
    Claims(String),
}

/// The private key tokens are signed with and its key id (upstream's: base64url of the
/// SHA-256 of the public key's DER).
#[derive(Debug)]
pub struct SigningKey {
    pair: EcdsaKeyPair,
    kid: String,
}

impl SigningKey {
    /// A new PKCS#8 (DER) P-256 key.
    pub fn generate_pkcs8() -> Result<Vec<u8>, String> {
        let rng = ring::rand::SystemRandom::new();
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| "generating a P-256 key failed".to_string())
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| format!("not a PKCS#8 P-256 private key: {e}"))?;
        let kid = key_id(pair.public_key().as_ref());
        Ok(SigningKey { pair, kid })
    }

    /// The key of a PEM file's PKCS#8 `PRIVATE KEY` block (`--service-account-private-key-file`).
    pub fn from_pem(text: &str) -> Result<SigningKey, String> {
        let der = pem_blocks(text)
            .into_iter()
            .find(|(label, _)| label == "PRIVATE KEY")
            .map(|(_, der)| der)
            .ok_or("no PKCS#8 \"PRIVATE KEY\" block")?;
        SigningKey::from_pkcs8(&der)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The uncompressed public point (65 bytes).
    pub fn public_point(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, String> {
        let header = Header {
            alg: "ES256".into(),
            kid: self.kid.clone(),
        };
        let enc = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let head = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
        let body = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
        let signing_input = format!("{}.{}", enc(&head), enc(&body));
        let rng = ring::rand::SystemRandom::new();
        let sig = self
            .pair
            .sign(&rng, signing_input.as_bytes())
            .map_err(|_| "signing failed".to_string())?;
        Ok(format!("{signing_input}.{}", enc(sig.as_ref())))
    }
}

/// base64url(SHA-256(SubjectPublicKeyInfo DER)) of a P-256 point.
pub fn key_id(point: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, &spki_der(point));
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// The SubjectPublicKeyInfo DER of a P-256 point.
pub fn spki_der(point: &[u8]) -> Vec<u8> {
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(point);
    der
}

/// The point of a P-256 SubjectPublicKeyInfo DER.
pub fn point_from_spki(der: &[u8]) -> Option<&[u8]> {
    der.strip_prefix(&P256_SPKI_PREFIX[..])
        .filter(|p| p.len() == 65 && p[0] == 4)
}

/// Check the signature against the key the token names (by `kid`) and decode the claims.
/// Issuer, times and audiences are the caller's to check.
pub fn verify(token: &str, keys: &HashMap<String, Vec<u8>>) -> Result<Claims, Invalid> {
    verify_as(token, keys)
}

/// [`verify`], decoding the claims as `C` (e.g. [`LegacyClaims`], or a `Value` to look at the
/// issuer first).
pub fn verify_as<C: serde::de::DeserializeOwned>(
    token: &str,
    keys: &HashMap<String, Vec<u8>>,
) -> Result<C, Invalid> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Invalid::Malformed);
    };
    let dec = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| Invalid::Malformed);
    let header: Header = serde_json::from_slice(&dec(h)?).map_err(|_| Invalid::Malformed)?;
    if header.alg != "ES256" {
        return Err(Invalid::Algorithm(header.alg));
    }
    let key = keys
        .get(&header.kid)
        .ok_or_else(|| Invalid::UnknownKey(header.kid.clone()))?;
    let signing_input = &token[..h.len() + 1 + c.len()];
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, key)
        .verify(signing_input.as_bytes(), &dec(s)?)
        .map_err(|_| Invalid::Signature)?;
    serde_json::from_slice(&dec(c)?).map_err(|e| Invalid::Claims(e.to_string()))
}

/// (label, DER) of every PEM block (one that is not base64 is left out).
pub fn pem_blocks(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some((label.to_string(), String::new()));
        } else if line.starts_with("-----END ") {
            if let Some((label, b64)) = current.take() {
                if let Ok(der) = STANDARD.decode(b64) {
                    out.push((label, der));
                }
            }
        } else if let Some((_, b64)) = current.as_mut() {
            b64.push_str(line);
        }
    }
    out
}

/// Whether a bearer token looks like a JWT (three base64url parts), so static tokens skip
/// the JWT path.
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            iss: "https://kubernetes.default.svc.cluster.local".into(),
            sub: "system:serviceaccount:default:bot".into(),
            aud: vec!["https://kubernetes.default.svc.cluster.local".into()],
            exp: 2_000,
            iat: 1_000,
            nbf: 1_000,
            jti: "j".into(),
            kubernetes: Kubernetes {
                namespace: "default".into(),
                serviceaccount: Ref {
                    name: "bot".into(),
                    uid: "u1".into(),
                },
                pod: Some(Ref {
                    name: "p".into(),
                    uid: "u2".into(),
                }),
                secret: None,
                node: None,
                warnafter: None,
            },
        }
    }

    fn key() -> SigningKey {
        SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().expect("key")).expect("parse")
    }

    fn keys_of(k: &SigningKey) -> HashMap<String, Vec<u8>> {
        HashMap::from([(k.kid().to_string(), k.public_point().to_vec())])
    }

    #[test]
    fn signs_and_verifies_es256() {
        let k = key();
        let token = k.sign(&claims()).expect("sign");
        assert!(looks_like_jwt(&token));
        let sig = URL_SAFE_NO_PAD
            .decode(token.rsplit('.').next().expect("sig"))
            .expect("b64");
        assert_eq!(sig.len(), 64, "JWS ES256 is r||s");
        assert_eq!(verify(&token, &keys_of(&k)), Ok(claims()));
        // the claims are upstream's JSON names
        let body = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).expect("claims"))
            .expect("b64");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["kubernetes.io"]["serviceaccount"]["name"], "bot");
        assert_eq!(v["kubernetes.io"]["pod"]["uid"], "u2");
        assert!(v["kubernetes.io"].get("secret").is_none());
    }

    #[test]
    fn rejects_tampered_foreign_and_malformed_tokens() {
        let k = key();
        let token = k.sign(&claims()).expect("sign");
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut c = claims();
        c.sub = "system:serviceaccount:kube-system:admin".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).expect("json"));
        assert_eq!(
            verify(&parts.join("."), &keys_of(&k)),
            Err(Invalid::Signature)
        );

        let other = key();
        let foreign = other.sign(&claims()).expect("sign");
        assert!(matches!(
            verify(&foreign, &keys_of(&k)),
            Err(Invalid::UnknownKey(_))
        ));
        // a foreign key claiming our kid still fails on the signature
        let mut forged: Vec<String> = foreign.split('.').map(String::from).collect();
        forged[0] = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"{}"}}"#, k.kid()));
        assert_eq!(
            verify(&forged.join("."), &keys_of(&k)),
            Err(Invalid::Signature)
        );

        let mut none: Vec<String> = token.split('.').map(String::from).collect();
        none[0] = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        assert!(matches!(
            verify(&none.join("."), &keys_of(&k)),
            Err(Invalid::Algorithm(_))
        ));
        assert_eq!(verify("a.b", &keys_of(&k)), Err(Invalid::Malformed));
        assert!(!looks_like_jwt("0123456789abcdef"));
    }

    #[test]
    fn spki_round_trip() {
        let k = key();
        let der = spki_der(k.public_point());
        assert_eq!(point_from_spki(&der), Some(k.public_point()));
        assert_eq!(point_from_spki(&der[1..]), None);
        assert_eq!(k.kid(), key_id(k.public_point()));
    }
}
