//! Images without a registry: import OCI image-layout tarballs into containerd's content
//! store and image service, unpack them into overlayfs snapshots, and resolve a pod's image
//! reference to what a container needs (the unpacked snapshot and the image config).
//!
//! This is what `ctr images import` does, over the containerd API: blobs are written with
//! the garbage-collection labels that link manifest -> config/layers -> snapshot, inside a
//! lease so nothing is collected half-way.

pub mod gc;
mod import;

use std::collections::HashMap;

use containerd_client::services::v1::{GetImageRequest, ReadContentRequest};
use containerd_client::tonic::Code;
use serde::Deserialize;

pub use import::{import_dir, import_tarball, read_tar};

/// containerd's label for images CRI reports as pinned (never garbage collected).
pub const PINNED_LABEL: &str = "io.cri-containerd.pinned";

/// `kaze images import FILE`: import one tarball into the node's containerd namespace
/// without starting a runtime (no CNI, no pod dirs).
pub async fn import_file(
    socket: &std::path::Path,
    namespace: &str,
    file: &std::path::Path,
) -> Result<Vec<String>> {
    let cd = Containerd::connect(socket, namespace).await?;
    import_tarball(&cd, file).await
}

use crate::containerd::Containerd;
use crate::error::{Context, Error, Result};

const MANIFEST_OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const MANIFEST_DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";
const INDEX_OCI: &str = "application/vnd.oci.image.index.v1+json";

/// What a container needs from its image.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    pub name: String,
    /// The manifest digest (the image ID a pod status reports).
    pub digest: String,
    /// The committed snapshot holding the unpacked rootfs.
    pub chain_id: String,
    pub config: ImageConfig,
}

/// The `config` object of an OCI image config.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Deserialize)]
struct OciDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<OciDescriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: OciDescriptor,
    layers: Vec<OciDescriptor>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ImageConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// Docker-style normalisation: `busybox` -> `docker.io/library/busybox:latest`,
/// `kaze/busybox:1` -> `docker.io/kaze/busybox:1`. Digests (`@sha256:...`) are kept.
pub fn normalize_reference(image: &str) -> Result<String> {
    let bad = |reason: &str| Error::invalid(format!("parsing image reference {image:?}"), reason);
    if image.is_empty()
        || image
            .chars()
            .any(|c| c.is_whitespace() || c.is_ascii_uppercase())
    {
        return Err(bad("must be non-empty, lowercase and without spaces"));
    }
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let (domain, rest) = match name.split_once('/') {
        Some((d, r)) if d.contains('.') || d.contains(':') || d == "localhost" => {
            (d, r.to_string())
        }
        Some(_) => ("docker.io", name.to_string()),
        None => ("docker.io", format!("library/{name}")),
    };
    let last = rest.rsplit('/').next().unwrap_or_default();
    let tagged = last.contains(':');
    if rest.split('/').any(str::is_empty) {
        return Err(bad("has an empty path component"));
    }
    if let Some((n, t)) = last.split_once(':') {
        if n.is_empty() || t.is_empty() {
            return Err(bad("has an empty name or tag"));
        }
    }
    let mut out = format!("{domain}/{rest}");
    if !tagged && digest.is_none() {
        out.push_str(":latest");
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    Ok(out)
}

pub fn sha256_digest(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The snapshot names of a layer stack (OCI image spec "ChainID").
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

async fn read_blob(
    cd: &Containerd,
    digest: &str,
) -> std::result::Result<Vec<u8>, containerd_client::tonic::Status> {
    let mut stream = cd
        .content()
        .read(cd.req(
            ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            },
            None,
        ))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

/// Look an image up by reference. Never pulls: a missing image is [`Error::ImageNotPresent`].
pub async fn resolve(cd: &Containerd, image: &str) -> Result<ResolvedImage> {
    let name = normalize_reference(image)?;
    let what = || format!("resolving image {name}");
    let got = cd
        .images()
        .get(cd.req(GetImageRequest { name: name.clone() }, None))
        .await;
    let img = match got {
        Ok(r) => r.into_inner().image.unwrap_or_default(),
        Err(s) if s.code() == Code::NotFound => {
            return Err(Error::ImageNotPresent {
                image: name,
                namespace: cd.namespace().to_string(),
            })
        }
        Err(s) => {
            return Err(Error::Containerd {
                what: what(),
                source: Box::new(s),
            })
        }
    };
    let target = img
        .target
        .ok_or_else(|| Error::invalid(what(), "image has no target"))?;
    if target.media_type != MANIFEST_OCI && target.media_type != MANIFEST_DOCKER {
        return Err(Error::invalid(
            what(),
            format!("unsupported image target type {}", target.media_type),
        ));
    }
    let manifest_bytes = read_blob(cd, &target.digest).await.context(what)?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| Error::invalid(what(), format!("parsing the manifest: {e}")))?;
    let config_bytes = read_blob(cd, &manifest.config.digest).await.context(what)?;
    let config: ConfigFile = serde_json::from_slice(&config_bytes)
        .map_err(|e| Error::invalid(what(), format!("parsing the image config: {e}")))?;
    let chain_id = chain_ids(&config.rootfs.diff_ids)
        .pop()
        .ok_or_else(|| Error::invalid(what(), "image has no layers"))?;
    Ok(ResolvedImage {
        name,
        digest: target.digest,
        chain_id,
        config: config.config.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_docker() {
        assert_eq!(
            normalize_reference("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_reference("kaze/busybox:1").unwrap(),
            "docker.io/kaze/busybox:1"
        );
        assert_eq!(
            normalize_reference("docker.io/kaze/pause:1").unwrap(),
            "docker.io/kaze/pause:1"
        );
        assert_eq!(
            normalize_reference("localhost:5000/x/y").unwrap(),
            "localhost:5000/x/y:latest"
        );
        assert!(normalize_reference("Bad/Name").is_err());
        assert!(normalize_reference("a//b").is_err());
        assert!(normalize_reference("").is_err());
    }

    #[test]
    fn chain_ids_follow_the_oci_spec() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        assert_eq!(chains[1], sha256_digest(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        assert_eq!(
            sha256_digest(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
