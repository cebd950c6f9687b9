//! Upstream's value transformers (`k8s.io/apiserver/pkg/storage/value`), byte for byte, so
//! an etcd written by upstream with the same keys reads here and the other way round:
//!
//! - `aescbc`: `k8s:enc:aescbc:v1:<key>:` + IV (16 random bytes) + AES-CBC of the value with
//!   PKCS#7 padding; no authenticated data.
//! - `aesgcm`: `k8s:enc:aesgcm:v1:<key>:` + nonce (12 random bytes) + AES-GCM ciphertext and
//!   tag, with the etcd key as additional authenticated data (a value copied to another key
//!   does not decrypt).
//! - `secretbox`: `k8s:enc:secretbox:v1:<key>:` + nonce (24 random bytes) + NaCl secretbox
//!   (XSalsa20-Poly1305, tag first); no authenticated data.
//! - `identity`: the value as is. Reading, it refuses data that starts with `k8s:enc:`
//!   (upstream's encrypt-check identity), so the next provider in the list gets it.
//!
//! A resource's providers are tried in order on reads, by prefix; the first one writes.

use std::borrow::Cow;

use aes::{Aes128, Aes192, Aes256};
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockCipher, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use ring::rand::{SecureRandom, SystemRandom};

/// What every encrypted value starts with.
pub const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";

const AES_BLOCK: usize = 16;
const GCM_NONCE: usize = 12;
const SECRETBOX_NONCE: usize = 24;
const SECRETBOX_TAG: usize = 16;

/// Which cipher a provider uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    AesCbc,
    AesGcm,
    Secretbox,
}

impl Cipher {
    /// The provider's name in the config file and in the stored prefix.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::AesCbc => "aescbc",
            Cipher::AesGcm => "aesgcm",
            Cipher::Secretbox => "secretbox",
        }
    }

    /// Key lengths upstream accepts (AES-128/192/256; secretbox 32).
    pub fn key_sizes(self) -> &'static [usize] {
        match self {
            Cipher::AesCbc | Cipher::AesGcm => &[16, 24, 32],
            Cipher::Secretbox => &[32],
        }
    }

    /// Upstream's error when the provider's prefix matched but none of its key names did.
    fn no_key_error(self) -> &'static str {
        match self {
            Cipher::AesCbc | Cipher::AesGcm => {
                "no matching key was found for the provided AES transformer"
            }
            Cipher::Secretbox => "no matching key was found for the provided Secretbox transformer",
        }
    }

    /// Encrypt `data` with `key` (of one of [`Cipher::key_sizes`]); `aad` is the etcd key.
    pub fn seal(self, key: &[u8], data: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        let rng = SystemRandom::new();
        let random = |n: usize| -> Result<Vec<u8>, String> {
            let mut b = vec![0u8; n];
            rng.fill(&mut b)
                .map_err(|_| "unable to read sufficient random bytes".to_string())?;
            Ok(b)
        };
        match self {
            Cipher::AesCbc => Ok(cbc_seal(key, &random(AES_BLOCK)?, data)),
            Cipher::AesGcm => gcm_seal(key, &random(GCM_NONCE)?, data, aad),
            Cipher::Secretbox => secretbox_seal(key, &random(SECRETBOX_NONCE)?, data),
        }
    }

    /// Decrypt what [`Cipher::seal`] (or upstream) wrote, after the prefix and key name.
    pub fn open(self, key: &[u8], data: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Cipher::AesCbc => cbc_open(key, data),
            Cipher::AesGcm => gcm_open(key, data, aad),
            Cipher::Secretbox => secretbox_open(key, data),
        }
    }
}

/// One named key of a provider.
#[derive(Clone)]
pub struct Key {
    pub name: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One entry of a resource's `providers` list.
#[derive(Debug, Clone)]
pub enum Provider {
    Identity,
    Keyed { cipher: Cipher, keys: Vec<Key> },
}

impl Provider {
    fn prefix(cipher: Cipher) -> String {
        format!("k8s:enc:{}:v1:", cipher.name())
    }
}

/// The providers of one resource, in the config's order.
#[derive(Debug, Clone, Default)]
pub struct Transformer {
    pub providers: Vec<Provider>,
}

impl Transformer {
    /// What is stored for `data` at etcd key `aad`: the first provider's output.
    pub fn to_storage(&self, data: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        match self.providers.first() {
            None | Some(Provider::Identity) => Ok(data.to_vec()),
            Some(Provider::Keyed { cipher, keys }) => {
                let key = keys.first().ok_or("a provider without keys")?;
                let sealed = cipher.seal(&key.secret, data, aad)?;
                let prefix = Provider::prefix(*cipher);
                let mut out = Vec::with_capacity(prefix.len() + key.name.len() + 1 + sealed.len());
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(key.name.as_bytes());
                out.push(b':');
                out.extend_from_slice(&sealed);
                Ok(out)
            }
        }
    }

    /// Whether `data` is what [`Transformer::to_storage`] writes now (first provider, first
    /// key); else a no-op update must rewrite it (upstream's "stale").
    pub fn writes_like(&self, data: &[u8]) -> bool {
        match self.providers.first() {
            None | Some(Provider::Identity) => !data.starts_with(ENCRYPTED_PREFIX),
            Some(Provider::Keyed { cipher, keys }) => keys.first().is_some_and(|k| {
                data.strip_prefix(Provider::prefix(*cipher).as_bytes())
                    .and_then(|r| r.strip_prefix(k.name.as_bytes()))
                    .is_some_and(|r| r.starts_with(b":"))
            }),
        }
    }

    /// The plain value of `data` stored at etcd key `aad`, trying every provider whose
    /// prefix `data` has, in order (upstream's `prefixTransformers`).
    pub fn read_stored<'a>(&self, data: &'a [u8], aad: &[u8]) -> Result<Cow<'a, [u8]>, String> {
        let mut errs = Vec::new();
        for p in &self.providers {
            match p {
                Provider::Identity => match identity(data) {
                    Ok(v) => return Ok(v),
                    // the empty prefix matches everything: on to the next provider
                    Err(e) => errs.push(e),
                },
                Provider::Keyed { cipher, keys } => {
                    let Some(rest) = data.strip_prefix(Provider::prefix(*cipher).as_bytes()) else {
                        continue;
                    };
                    for key in keys {
                        let Some(sealed) = rest
                            .strip_prefix(key.name.as_bytes())
                            .and_then(|r| r.strip_prefix(b":"))
                        else {
                            continue;
                        };
                        return cipher.open(&key.secret, sealed, aad).map(Cow::Owned);
                    }
                    return Err(cipher.no_key_error().to_string());
                }
            }
        }
        match errs.len() {
            0 => Err("no matching prefix found".to_string()),
            1 => Err(errs.remove(0)),
            _ => Err(format!("[{}]", errs.join(", "))),
        }
    }
}

/// How a resource without providers is read: upstream's default, the encrypt-check
/// identity.
pub fn identity(data: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    if data.starts_with(ENCRYPTED_PREFIX) {
        Err("identity transformer tried to read encrypted data".to_string())
    } else {
        Ok(Cow::Borrowed(data))
    }
}

// === AES-CBC ===

/// IV + CBC(data + PKCS#7), as upstream's `cbc.TransformToStorage`.
fn cbc_seal(key: &[u8], iv: &[u8], data: &[u8]) -> Vec<u8> {
    fn enc<C: BlockEncryptMut + BlockCipher + KeyInit>(key: &[u8], iv: &[u8], buf: &mut [u8]) {
        let len = buf.len();
        cbc::Encryptor::<C>::new_from_slices(key, iv)
            .expect("key and IV lengths are checked")
            .encrypt_padded_mut::<NoPadding>(buf, len)
            .expect("the buffer is whole blocks");
    }
    let pad = AES_BLOCK - data.len() % AES_BLOCK;
    let mut out = Vec::with_capacity(AES_BLOCK + data.len() + pad);
    out.extend_from_slice(iv);
    out.extend_from_slice(data);
    out.resize(out.len() + pad, pad as u8);
    let body = &mut out[AES_BLOCK..];
    match key.len() {
        16 => enc::<Aes128>(key, iv, body),
        24 => enc::<Aes192>(key, iv, body),
        _ => enc::<Aes256>(key, iv, body),
    }
    out
}

fn cbc_open(key: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    fn dec<C: BlockDecryptMut + BlockCipher + KeyInit>(key: &[u8], iv: &[u8], buf: &mut [u8]) {
        cbc::Decryptor::<C>::new_from_slices(key, iv)
            .expect("key and IV lengths are checked")
            .decrypt_padded_mut::<NoPadding>(buf)
            .expect("the buffer is whole blocks");
    }
    if data.len() < AES_BLOCK {
        return Err("the stored data was shorter than the required size".into());
    }
    let (iv, body) = data.split_at(AES_BLOCK);
    if body.len() % AES_BLOCK != 0 {
        return Err("the stored data is not a multiple of the block size".into());
    }
    if body.is_empty() {
        return Err("invalid PKCS7 data (empty or not padded)".into());
    }
    let mut out = body.to_vec();
    match key.len() {
        16 => dec::<Aes128>(key, iv, &mut out),
        24 => dec::<Aes192>(key, iv, &mut out),
        _ => dec::<Aes256>(key, iv, &mut out),
    }
    // upstream's check: the last byte says how many bytes of padding, all of that value
    let pad = out[out.len() - 1] as usize;
    if pad == 0 || pad > out.len() {
        return Err("invalid PKCS7 data (empty or not padded)".into());
    }
    let size = out.len() - pad;
    if out[size..].iter().any(|b| *b as usize != pad) {
        return Err("invalid padding on input".into());
    }
    out.truncate(size);
    Ok(out)
}

// === AES-GCM ===

type Aes192Gcm = aes_gcm::AesGcm<Aes192, U12>;

/// nonce + GCM(data) + tag, the etcd key as additional data.
fn gcm_seal(key: &[u8], nonce: &[u8], data: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
    let n = aes_gcm::Nonce::from_slice(nonce);
    let msg = Payload { msg: data, aad };
    let sealed = match key.len() {
        16 => aes_gcm::Aes128Gcm::new_from_slice(key).map(|c| c.encrypt(n, msg)),
        24 => Aes192Gcm::new_from_slice(key).map(|c| c.encrypt(n, msg)),
        _ => aes_gcm::Aes256Gcm::new_from_slice(key).map(|c| c.encrypt(n, msg)),
    }
    .map_err(|_| "invalid AES key size".to_string())?
    .map_err(|_| "AES-GCM encryption failed".to_string())?;
    let mut out = Vec::with_capacity(nonce.len() + sealed.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn gcm_open(key: &[u8], data: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
    if data.len() < GCM_NONCE {
        return Err("the stored data was shorter than the required size".into());
    }
    let (nonce, sealed) = data.split_at(GCM_NONCE);
    let n = aes_gcm::Nonce::from_slice(nonce);
    let msg = Payload { msg: sealed, aad };
    match key.len() {
        16 => aes_gcm::Aes128Gcm::new_from_slice(key).map(|c| c.decrypt(n, msg)),
        24 => Aes192Gcm::new_from_slice(key).map(|c| c.decrypt(n, msg)),
        _ => aes_gcm::Aes256Gcm::new_from_slice(key).map(|c| c.decrypt(n, msg)),
    }
    .map_err(|_| "invalid AES key size".to_string())?
    // Go's crypto/cipher wording
    .map_err(|_| "cipher: message authentication failed".to_string())
}

// === secretbox ===

/// nonce + secretbox(data) (tag first, as NaCl and Go's `secretbox.Seal`).
fn secretbox_seal(key: &[u8], nonce: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    let c = crypto_secretbox::XSalsa20Poly1305::new_from_slice(key)
        .map_err(|_| "invalid secretbox key size".to_string())?;
    let sealed = c
        .encrypt(crypto_secretbox::Nonce::from_slice(nonce), data)
        .map_err(|_| "secretbox encryption failed".to_string())?;
    let mut out = Vec::with_capacity(nonce.len() + sealed.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn secretbox_open(key: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    if data.len() < SECRETBOX_NONCE + SECRETBOX_TAG {
        return Err("the stored data was shorter than the required size".into());
    }
    let (nonce, sealed) = data.split_at(SECRETBOX_NONCE);
    let c = crypto_secretbox::XSalsa20Poly1305::new_from_slice(key)
        .map_err(|_| "invalid secretbox key size".to_string())?;
    c.decrypt(crypto_secretbox::Nonce::from_slice(nonce), sealed)
        .map_err(|_| "secretbox: message authentication failed".to_string())
}

#[cfg(test)]
mod tests;
