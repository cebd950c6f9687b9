//! Key files: the signing key (PKCS#8 PEM, generated on first start next to the CA, as
//! kubeadm's `sa.key`/`sa.pub`), extra verification keys (`--service-account-key-file`),
//! and the copies of public keys apiservers share through the store.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::jwt::{self, SigningKey};
use crate::Error;

pub const SIGNING_KEY: &str = "service-account.key";
pub const PUBLIC_KEY: &str = "service-account.pub";

fn config_err(file: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Config {
        reason: format!("{}: {reason}", file.display()),
    }
}

/// The signing key: `file` if given (it must exist), else `<tls_dir>/service-account.key`,
/// created when missing.
pub fn signing_key(file: Option<&Path>, tls_dir: &Path) -> Result<SigningKey, Error> {
    let default = tls_dir.join(SIGNING_KEY);
    let path = file.unwrap_or(&default);
    let der = match std::fs::read_to_string(path) {
        Ok(text) => pem_blocks(&text)
            .into_iter()
            .find(|(label, _)| label == "PRIVATE KEY")
            .map(|(_, der)| der)
            .ok_or_else(|| config_err(path, "no PKCS#8 \"PRIVATE KEY\" block"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.is_none() => {
            std::fs::create_dir_all(tls_dir).map_err(Error::io("creating", tls_dir))?;
            let der = SigningKey::generate_pkcs8().map_err(|r| config_err(path, r))?;
            crate::tls::write_private(tls_dir, SIGNING_KEY, &pem("PRIVATE KEY", &der))?;
            der
        }
        Err(e) => {
            return Err(Error::io("reading the service account signing key", path)(
                e,
            ))
        }
    };
    let key = SigningKey::from_pkcs8(&der).map_err(|r| config_err(path, r))?;
    if file.is_none() {
        // kubeadm keeps `sa.pub` beside `sa.key` for whoever verifies tokens elsewhere.
        crate::tls::write_private(tls_dir, PUBLIC_KEY, &public_pem(key.public_point()))?;
    }
    Ok(key)
}

/// Every P-256 public key in a PEM file: `PUBLIC KEY` blocks and the public halves of
/// `PRIVATE KEY` blocks (upstream accepts both in `--service-account-key-file`).
pub fn public_keys(file: &Path) -> Result<Vec<Vec<u8>>, Error> {
    let text = std::fs::read_to_string(file)
        .map_err(Error::io("reading --service-account-key-file", file))?;
    let mut out = Vec::new();
    for (label, der) in pem_blocks(&text) {
        match label.as_str() {
            "PUBLIC KEY" => out.push(
                jwt::point_from_spki(&der)
                    .ok_or_else(|| config_err(file, "only ECDSA P-256 public keys are supported"))?
                    .to_vec(),
            ),
            "PRIVATE KEY" => out.push(
                SigningKey::from_pkcs8(&der)
                    .map_err(|r| config_err(file, r))?
                    .public_point()
                    .to_vec(),
            ),
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(config_err(file, "no P-256 PUBLIC KEY or PRIVATE KEY block"));
    }
    Ok(out)
}

pub fn public_pem(point: &[u8]) -> String {
    pem("PUBLIC KEY", &jwt::spki_der(point))
}

/// The point of the first `PUBLIC KEY` block of `text`.
pub fn point_from_pem(text: &str) -> Option<Vec<u8>> {
    pem_blocks(text)
        .into_iter()
        .find(|(l, _)| l == "PUBLIC KEY")
        .and_then(|(_, der)| jwt::point_from_spki(&der).map(<[u8]>::to_vec))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

pub(crate) use component::jwt::pem_blocks;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_kept_and_reloaded() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = signing_key(None, dir.path()).expect("generate");
        let b = signing_key(None, dir.path()).expect("reload");
        assert_eq!(a.kid(), b.kid());
        let pubs = public_keys(&dir.path().join(PUBLIC_KEY)).expect("public");
        assert_eq!(pubs, vec![a.public_point().to_vec()]);
        // the private key file also serves as a verification key file
        let privs = public_keys(&dir.path().join(SIGNING_KEY)).expect("private");
        assert_eq!(privs, pubs);
        assert!(signing_key(Some(&dir.path().join("missing")), dir.path()).is_err());
    }
}
