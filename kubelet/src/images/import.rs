//! Importing OCI image-layout tarballs: read the archive, write blobs with their GC labels
//! inside a lease, unpack layers into committed snapshots, then create the image record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, CreateRequest as CreateLeaseRequest,
    DeleteRequest as DeleteLeaseRequest, Image, InfoRequest, UpdateImageRequest,
    UpdateRequest as UpdateContentRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::Descriptor;
use serde::Deserialize;

use super::{
    chain_ids, normalize_reference, sha256_digest, ConfigFile, Index, Manifest, OciDescriptor,
    INDEX_OCI, MANIFEST_DOCKER, MANIFEST_OCI,
};
use crate::containerd::{Containerd, SNAPSHOTTER};
use crate::error::{Context, Error, Result};
use crate::sys;

/// Read the regular files of a tar archive into memory (image tarballs are small).
pub fn read_tar(path: &Path, data: &[u8]) -> Result<HashMap<String, Vec<u8>>> {
    let bad = |reason: String| Error::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let mut files = HashMap::new();
    let mut off = 0;
    let mut long_name: Option<String> = None;
    while off + 512 <= data.len() {
        let h = &data[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let field = |a: usize, b: usize| {
            let raw = &h[a..b];
            let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).trim().to_string()
        };
        let size_str = field(124, 136);
        let size = usize::from_str_radix(&size_str, 8)
            .map_err(|_| bad(format!("bad tar size field {size_str:?} at offset {off}")))?;
        let mut name = field(0, 100);
        let prefix = field(345, 500);
        if &h[257..262] == b"ustar" && !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
        if let Some(n) = long_name.take() {
            name = n;
        }
        let body_start = off + 512;
        let body_end = body_start + size;
        if body_end > data.len() {
            return Err(bad(format!("truncated tar entry {name:?}")));
        }
        let body = &data[body_start..body_end];
        match h[156] {
            b'0' | 0 => {
                let name = name.trim_start_matches("./").to_string();
                files.insert(name, body.to_vec());
            }
            // GNU long name: the next header's name is in this body.
            b'L' => {
                long_name = Some(
                    String::from_utf8_lossy(body)
                        .trim_end_matches('\0')
                        .to_string(),
                )
            }
            _ => {}
        }
        off = body_start + size.div_ceil(512) * 512;
    }
    Ok(files)
}

fn blob<'a>(path: &Path, files: &'a HashMap<String, Vec<u8>>, digest: &str) -> Result<&'a [u8]> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| Error::BadImage {
            path: path.to_path_buf(),
            reason: format!("unsupported digest {digest}"),
        })?;
    let data = files
        .get(&format!("blobs/sha256/{hex}"))
        .ok_or_else(|| Error::BadImage {
            path: path.to_path_buf(),
            reason: format!("blob {digest} is missing from the archive"),
        })?;
    if sha256_digest(data) != digest {
        return Err(Error::BadImage {
            path: path.to_path_buf(),
            reason: format!("blob {digest} does not match its digest"),
        });
    }
    Ok(data)
}

fn parse<'a, T: Deserialize<'a>>(path: &Path, what: &str, data: &'a [u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| Error::BadImage {
        path: path.to_path_buf(),
        reason: format!("parsing {what}: {e}"),
    })
}

/// Import every `*.tar` in `dir` (the k3s air-gap convention `<root-dir>/agent/images/`).
/// A missing directory imports nothing; one bad tarball fails with its path. The images are
/// pinned (`io.cri-containerd.pinned=pinned`, as k3s pins its air-gap images), so image
/// garbage collection keeps them: without a registry nothing could bring them back before
/// the next start.
pub async fn import_dir(cd: &Containerd, dir: &Path) -> Result<Vec<String>> {
    let mut tars: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(d) => d
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "tar"))
            .collect(),
        Err(_) => return Ok(Vec::new()),
    };
    tars.sort();
    let mut names = Vec::new();
    for tar in tars {
        names.extend(import(cd, &tar, true).await?);
    }
    Ok(names)
}

/// Import one OCI image-layout tarball (`kaze images import FILE`); returns the image names.
/// Not pinned: image garbage collection may delete it once unused.
pub async fn import_tarball(cd: &Containerd, path: &Path) -> Result<Vec<String>> {
    import(cd, path, false).await
}

async fn import(cd: &Containerd, path: &Path, pinned: bool) -> Result<Vec<String>> {
    let data =
        sys::read_file(path).context(|| format!("importing image tarball {}", path.display()))?;
    let files = read_tar(path, &data)?;
    let index_bytes = files.get("index.json").ok_or_else(|| Error::BadImage {
        path: path.to_path_buf(),
        reason: "no index.json: not an OCI image layout".into(),
    })?;
    let index: Index = parse(path, "index.json", index_bytes)?;

    let lease = format!("kaze-import-{}", &sha256_digest(&data)[7..23]);
    let expire = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
    let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire.to_string())]);
    let created = cd
        .leases()
        .create(cd.req(
            CreateLeaseRequest {
                id: lease.clone(),
                labels,
            },
            None,
        ))
        .await;
    match created {
        Err(s) if s.code() != Code::AlreadyExists => {
            return Err(Error::Containerd {
                what: format!("importing {}: creating a lease", path.display()),
                source: Box::new(s),
            })
        }
        _ => {}
    }
    let result = import_index(cd, path, &files, &index, &lease, pinned).await;
    let _ = cd
        .leases()
        .delete(cd.req(
            DeleteLeaseRequest {
                id: lease,
                sync: false,
            },
            None,
        ))
        .await;
    result
}

async fn import_index(
    cd: &Containerd,
    path: &Path,
    files: &HashMap<String, Vec<u8>>,
    index: &Index,
    lease: &str,
    pinned: bool,
) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in &index.manifests {
        let name = entry
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| {
                entry
                    .annotations
                    .get("org.opencontainers.image.ref.name")
                    .filter(|n| n.contains('/'))
            })
            .ok_or_else(|| Error::BadImage {
                path: path.to_path_buf(),
                reason: format!("manifest {} has no image name annotation", entry.digest),
            })?;
        let name = normalize_reference(name)?;
        if entry.media_type == INDEX_OCI {
            return Err(Error::BadImage {
                path: path.to_path_buf(),
                reason: "nested image indexes are not supported".into(),
            });
        }
        if entry.media_type != MANIFEST_OCI && entry.media_type != MANIFEST_DOCKER {
            return Err(Error::BadImage {
                path: path.to_path_buf(),
                reason: format!("unsupported manifest type {}", entry.media_type),
            });
        }
        let manifest_bytes = blob(path, files, &entry.digest)?;
        let manifest: Manifest = parse(path, "the manifest", manifest_bytes)?;
        let config_bytes = blob(path, files, &manifest.config.digest)?;
        let config: ConfigFile = parse(path, "the image config", config_bytes)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::BadImage {
                path: path.to_path_buf(),
                reason: "layer count differs from diff_ids".into(),
            });
        }
        let chains = chain_ids(&config.rootfs.diff_ids);
        let top = chains.last().cloned().unwrap_or_default();

        // Children first, so a collected parent never points at nothing.
        for layer in &manifest.layers {
            write_blob(
                cd,
                lease,
                &layer.digest,
                blob(path, files, &layer.digest)?,
                HashMap::new(),
            )
            .await?;
        }
        let config_labels = HashMap::from([(
            format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
            top.clone(),
        )]);
        write_blob(
            cd,
            lease,
            &manifest.config.digest,
            config_bytes,
            config_labels,
        )
        .await?;
        let mut manifest_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            manifest.config.digest.clone(),
        )]);
        for (i, l) in manifest.layers.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        write_blob(cd, lease, &entry.digest, manifest_bytes, manifest_labels).await?;

        for (i, layer) in manifest.layers.iter().enumerate() {
            let parent = if i == 0 {
                String::new()
            } else {
                chains[i - 1].clone()
            };
            unpack_layer(cd, lease, layer, &parent, &chains[i]).await?;
        }

        let target = Descriptor {
            media_type: entry.media_type.clone(),
            digest: entry.digest.clone(),
            size: entry.size,
            annotations: HashMap::new(),
        };
        let mut labels = HashMap::new();
        if pinned {
            labels.insert(super::PINNED_LABEL.to_string(), "pinned".to_string());
        }
        let image = Image {
            name: name.clone(),
            labels,
            target: Some(target),
            ..Default::default()
        };
        let what = || format!("importing {}: creating image {name}", path.display());
        match cd
            .images()
            .create(cd.req(
                CreateImageRequest {
                    image: Some(image.clone()),
                    ..Default::default()
                },
                Some(lease),
            ))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {
                cd.images()
                    .update(cd.req(
                        UpdateImageRequest {
                            image: Some(image),
                            ..Default::default()
                        },
                        Some(lease),
                    ))
                    .await
                    .context(what)?;
            }
            Err(s) => {
                return Err(Error::Containerd {
                    what: what(),
                    source: Box::new(s),
                })
            }
        }
        tracing::info!(image = %name, digest = %entry.digest, "imported image");
        names.push(name);
    }
    Ok(names)
}

async fn write_blob(
    cd: &Containerd,
    lease: &str,
    digest: &str,
    data: &[u8],
    labels: HashMap<String, String>,
) -> Result<()> {
    let what = || format!("writing blob {digest} to the content store");
    let exists = cd
        .content()
        .info(cd.req(
            InfoRequest {
                digest: digest.to_string(),
            },
            Some(lease),
        ))
        .await;
    match exists {
        Ok(info) => {
            // Already there (an earlier import): make sure it carries our GC links.
            let mut info = info.into_inner().info.unwrap_or_default();
            if labels.iter().all(|(k, v)| info.labels.get(k) == Some(v)) {
                return Ok(());
            }
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            info.labels.extend(labels);
            let mask = prost_types::FieldMask { paths };
            cd.content()
                .update(cd.req(
                    UpdateContentRequest {
                        info: Some(info),
                        update_mask: Some(mask),
                    },
                    Some(lease),
                ))
                .await
                .context(what)?;
            return Ok(());
        }
        Err(s) if s.code() == Code::NotFound => {}
        Err(s) => {
            return Err(Error::Containerd {
                what: what(),
                source: Box::new(s),
            })
        }
    }
    let req = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: format!("kaze-import-{digest}"),
        total: data.len() as i64,
        expected: digest.to_string(),
        offset: 0,
        data: data.to_vec(),
        labels,
    };
    let stream = tokio_stream::iter(vec![req]);
    let mut responses = match cd.content().write(cd.req(stream, Some(lease))).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
        Err(s) => {
            return Err(Error::Containerd {
                what: what(),
                source: Box::new(s),
            })
        }
    };
    loop {
        match responses.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
            Err(s) => {
                return Err(Error::Containerd {
                    what: what(),
                    source: Box::new(s),
                })
            }
        }
    }
}

async fn unpack_layer(
    cd: &Containerd,
    lease: &str,
    layer: &OciDescriptor,
    parent: &str,
    chain_id: &str,
) -> Result<()> {
    let what = || format!("unpacking layer {} into snapshot {chain_id}", layer.digest);
    let stat = cd
        .snapshots()
        .stat(cd.req(
            StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: chain_id.into(),
            },
            Some(lease),
        ))
        .await;
    match stat {
        Ok(_) => return Ok(()),
        Err(s) if s.code() == Code::NotFound => {}
        Err(s) => {
            return Err(Error::Containerd {
                what: what(),
                source: Box::new(s),
            })
        }
    }
    let key = format!("extract-{}-{chain_id}", std::process::id());
    let mounts = cd
        .snapshots()
        .prepare(cd.req(
            PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent: parent.into(),
                labels: HashMap::new(),
            },
            Some(lease),
        ))
        .await
        .context(what)?
        .into_inner()
        .mounts;
    let desc = Descriptor {
        media_type: layer.media_type.clone(),
        digest: layer.digest.clone(),
        size: layer.size,
        annotations: HashMap::new(),
    };
    let applied = cd
        .diff()
        .apply(cd.req(
            ApplyRequest {
                diff: Some(desc),
                mounts,
                ..Default::default()
            },
            Some(lease),
        ))
        .await;
    let committed = match applied {
        Ok(_) => cd
            .snapshots()
            .commit(cd.req(
                CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: chain_id.into(),
                    key: key.clone(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await
            .map(|_| ()),
        Err(s) => Err(s),
    };
    if let Err(s) = committed {
        let _ = cd
            .snapshots()
            .remove(cd.req(
                RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key,
                },
                Some(lease),
            ))
            .await;
        if s.code() == Code::AlreadyExists {
            return Ok(());
        }
        return Err(Error::Containerd {
            what: what(),
            source: Box::new(s),
        });
    }
    Ok(())
}
