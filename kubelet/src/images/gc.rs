//! Image garbage collection, as upstream's image manager (`realImageGCManager`): when the
//! image filesystem (the one holding containerd's overlayfs snapshots, asked of containerd)
//! is used at `--image-gc-high-threshold` percent or more, images are deleted least recently
//! used first until its use would be at `--image-gc-low-threshold`. Checked every 5 minutes
//! (upstream's period) and by the eviction path under disk pressure.
//!
//! An image is never deleted while a container of this node's containerd namespace uses it
//! (running or not), nor the pod infra (pause) image, which upstream pins, nor an image
//! labelled `io.cri-containerd.pinned=pinned` (what CRI reports as pinned) — which the air-gap
//! images the kubelet imports at start are, as k3s pins them: with no registry a collected
//! air-gap image could not come back before the next start —, nor before it has
//! been known for `--minimum-image-ttl-duration` (upstream's `imageMinimumGCAge`): like
//! upstream, the kubelet tracks when it first saw each image and when a container last used
//! it, in memory, so after a restart every image is young again. `--image-gc-high-threshold=100`
//! disables it. When it cannot free enough, a `FreeDiskSpaceFailed` Warning event goes to the
//! Node (and `ImageGCFailed` when it fails again on the next period, as upstream).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use containerd_client::services::v1::{
    DeleteImageRequest, ListContainersRequest, ListImagesRequest, PluginsRequest,
};

use super::{normalize_reference, read_blob, Manifest};
use crate::containerd::{Containerd, SNAPSHOTTER};
use crate::error::{Context, Error, Result};

/// Upstream kubelet's image GC flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "image-gc")]
pub struct GcConfig {
    /// Percent of the image filesystem's size at which image garbage collection starts
    /// (100 disables it).
    #[arg(id = "image_gc_high_threshold", long = "image-gc-high-threshold", default_value_t = 85,
          value_parser = clap::value_parser!(i32).range(0..=100))]
    pub high_threshold: i32,
    /// Percent of the image filesystem's size image garbage collection frees down to.
    #[arg(id = "image_gc_low_threshold", long = "image-gc-low-threshold", default_value_t = 80,
          value_parser = clap::value_parser!(i32).range(0..=100))]
    pub low_threshold: i32,
    /// How long an image must have been unused (and known) before it may be collected
    /// (upstream's `imageMinimumGCAge`; a Go duration).
    #[arg(id = "minimum_image_ttl_duration", long = "minimum-image-ttl-duration", default_value = "2m",
          value_parser = crate::node::config_file::parse_go_duration)]
    pub minimum_age: Duration,
    /// How often the image filesystem is checked (upstream: 5m; a test knob).
    #[arg(id = "image_gc_period", long = "image-gc-period", default_value = "5m", hide = true,
          value_parser = crate::node::config_file::parse_go_duration)]
    pub period: Duration,
}

impl Default for GcConfig {
    /// Upstream's defaults.
    fn default() -> Self {
        GcConfig {
            high_threshold: 85,
            low_threshold: 80,
            minimum_age: Duration::from_secs(120),
            period: Duration::from_secs(300),
        }
    }
}

impl GcConfig {
    /// Upstream's validation of the thresholds.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let pct = 0..=100;
        if !pct.contains(&self.high_threshold) || !pct.contains(&self.low_threshold) {
            return Err("image GC thresholds must be percentages between 0 and 100".into());
        }
        if self.low_threshold > self.high_threshold {
            return Err(format!(
                "--image-gc-low-threshold ({}) must not be above --image-gc-high-threshold ({})",
                self.low_threshold, self.high_threshold
            ));
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.high_threshold < 100
    }
}

/// What the manager remembers of one image.
#[derive(Clone, Copy, Debug)]
struct Record {
    first_detected: Instant,
    last_used: Instant,
}

/// One image as the collector weighs it.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    pub name: String,
    pub digest: String,
    /// Bytes of its content (manifest, config and layers), as CRI reports an image's size.
    pub size: u64,
    /// Labelled `io.cri-containerd.pinned=pinned`: never collected.
    pub pinned: bool,
}

/// What a collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub deleted: Vec<String>,
    pub freed: u64,
}

/// The image manager of one node (one containerd namespace).
#[derive(Debug)]
pub struct ImageGc {
    cd: Containerd,
    config: GcConfig,
    /// Never collected: the pod infra image.
    pinned: HashSet<String>,
    /// The image filesystem (containerd's snapshotter root; the kubelet's root dir when
    /// containerd does not say).
    image_fs: PathBuf,
    records: Mutex<HashMap<String, Record>>,
}

/// containerd's overlayfs snapshotter root (its plugin exports `root`).
pub async fn snapshotter_root(cd: &Containerd) -> Result<Option<PathBuf>> {
    let plugins = cd
        .introspection()
        .plugins(PluginsRequest {
            filters: vec![format!(
                "type==io.containerd.snapshotter.v1,id=={SNAPSHOTTER}"
            )],
        })
        .await
        .context(|| "asking containerd for its snapshotter's root".into())?
        .into_inner()
        .plugins;
    Ok(plugins
        .into_iter()
        .find_map(|p| p.exports.get("root").map(PathBuf::from)))
}

impl ImageGc {
    /// `fallback_fs` is used as the image filesystem when containerd does not name its
    /// snapshotter root.
    pub async fn new(
        cd: Containerd,
        config: GcConfig,
        pause_image: &str,
        fallback_fs: PathBuf,
    ) -> Result<ImageGc> {
        let image_fs = match snapshotter_root(&cd).await {
            Ok(Some(root)) => root,
            Ok(None) => fallback_fs,
            Err(e) => {
                tracing::warn!(error = %e, "finding the image filesystem; using the kubelet's root dir");
                fallback_fs
            }
        };
        let pinned = normalize_reference(pause_image)
            .into_iter()
            .collect::<HashSet<_>>();
        Ok(ImageGc {
            cd,
            config,
            pinned,
            image_fs,
            records: Mutex::default(),
        })
    }

    pub fn config(&self) -> &GcConfig {
        &self.config
    }

    /// The filesystem images are measured on.
    pub fn image_fs(&self) -> &std::path::Path {
        &self.image_fs
    }

    /// List the images, note new ones and those in use now; returns every image and the
    /// names and digests in use.
    async fn detect(&self, now: Instant) -> Result<(Vec<ImageInfo>, HashSet<String>)> {
        let images = self
            .cd
            .images()
            .list(self.cd.req(ListImagesRequest { filters: vec![] }, None))
            .await
            .context(|| "listing images".into())?
            .into_inner()
            .images;
        let containers = self
            .cd
            .containers()
            .list(self.cd.req(ListContainersRequest { filters: vec![] }, None))
            .await
            .context(|| "listing containers".into())?
            .into_inner()
            .containers;
        let mut in_use: HashSet<String> = containers.into_iter().map(|c| c.image).collect();
        let mut out = Vec::new();
        for img in images {
            let digest = img
                .target
                .as_ref()
                .map(|t| t.digest.clone())
                .unwrap_or_default();
            // An image is in use under any of its names.
            if in_use.contains(&img.name) {
                in_use.insert(digest.clone());
            }
            let mut size = img.target.as_ref().map_or(0, |t| t.size.max(0) as u64);
            if let Ok(bytes) = read_blob(&self.cd, &digest).await {
                if let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) {
                    size += m.config.size.max(0) as u64;
                    size += m.layers.iter().map(|l| l.size.max(0) as u64).sum::<u64>();
                }
            }
            let pinned = img.labels.get(super::PINNED_LABEL).map(String::as_str) == Some("pinned");
            out.push(ImageInfo {
                name: img.name,
                digest,
                size,
                pinned,
            });
        }
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.retain(|name, _| out.iter().any(|i| &i.name == name));
        for i in &out {
            let r = records.entry(i.name.clone()).or_insert(Record {
                first_detected: now,
                last_used: now,
            });
            if in_use.contains(&i.name) || in_use.contains(&i.digest) {
                r.last_used = now;
            }
        }
        Ok((out, in_use))
    }

    /// Delete unused images, least recently used first, until `bytes` are freed (upstream's
    /// `freeSpace`); returns what was deleted. Images in use, pinned, used at `now` or known
    /// for less than the minimum age are skipped.
    pub async fn free_space(&self, bytes: u64) -> Result<Collected> {
        let now = Instant::now();
        let (images, in_use) = self.detect(now).await?;
        let records = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut candidates: Vec<(Record, &ImageInfo)> = images
            .iter()
            .filter(|i| !in_use.contains(&i.name) && !in_use.contains(&i.digest))
            .filter(|i| !i.pinned && !self.pinned.contains(&i.name))
            .filter_map(|i| Some((*records.get(&i.name)?, i)))
            .filter(|(r, _)| r.last_used != now)
            .filter(|(r, _)| now.duration_since(r.first_detected) >= self.config.minimum_age)
            .filter(|(r, _)| now.duration_since(r.last_used) >= self.config.minimum_age)
            .collect();
        candidates.sort_by_key(|(r, _)| (r.last_used, r.first_detected));
        let mut done = Collected::default();
        for (_, image) in candidates {
            if done.freed >= bytes {
                break;
            }
            tracing::info!(image = %image.name, size = image.size, "image GC: deleting an unused image");
            self.cd
                .images()
                .delete(self.cd.req(
                    DeleteImageRequest {
                        name: image.name.clone(),
                        // containerd collects the content and snapshots before answering
                        sync: true,
                        target: None,
                    },
                    None,
                ))
                .await
                .context(|| format!("deleting image {}", image.name))?;
            self.records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&image.name);
            done.freed += image.size;
            done.deleted.push(image.name.clone());
        }
        Ok(done)
    }

    /// Every unused image old enough (the eviction manager's node-level reclaim).
    pub async fn delete_unused(&self) -> Result<Collected> {
        self.free_space(u64::MAX).await
    }

    /// One periodic check: collect if the image filesystem is at the high threshold (upstream's
    /// `GarbageCollect`). Err when it could not free enough, with upstream's message.
    pub async fn garbage_collect(&self) -> Result<Collected> {
        // Note new images and uses even when nothing is to be freed: the ages count from here.
        let now = Instant::now();
        self.detect(now).await?;
        if !self.config.enabled() {
            return Ok(Collected::default());
        }
        let Some(fs) = crate::sys::statvfs(&self.image_fs) else {
            return Err(Error::invalid(
                "image GC",
                format!(
                    "cannot read the image filesystem at {}",
                    self.image_fs.display()
                ),
            ));
        };
        let Some(to_free) = amount_to_free(
            fs.capacity,
            fs.available,
            self.config.high_threshold,
            self.config.low_threshold,
        ) else {
            return Ok(Collected::default());
        };
        tracing::info!(
            fs = %self.image_fs.display(),
            capacity = fs.capacity,
            available = fs.available,
            to_free,
            "image GC: the image filesystem is over the high threshold"
        );
        let done = self.free_space(to_free).await?;
        if done.freed < to_free {
            return Err(Error::invalid(
                "image GC",
                format!(
                    "Failed to garbage collect required amount of images. Attempted to free {to_free} bytes, but only found {} bytes eligible to free.",
                    done.freed
                ),
            ));
        }
        Ok(done)
    }

    /// Run [`ImageGc::garbage_collect`] every period until `shutdown`; failures become events
    /// on the Node (`recorder`).
    pub(crate) async fn run(
        self: std::sync::Arc<Self>,
        mut recorder: crate::pod::events::Recorder,
        shutdown: component::CancellationToken,
    ) {
        let mut failed_before = false;
        // the images' ages count from the kubelet's start
        if let Err(e) = self.detect(Instant::now()).await {
            tracing::warn!(error = %e, "image GC: listing images");
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.period) => {}
            }
            match self.garbage_collect().await {
                Ok(_) => failed_before = false,
                Err(e) => {
                    let message = match &e {
                        Error::Invalid { reason, .. } => reason.clone(),
                        other => other.to_string(),
                    };
                    tracing::warn!(error = %e, "image garbage collection failed");
                    recorder.warn("FreeDiskSpaceFailed", &message);
                    if failed_before {
                        recorder.warn("ImageGCFailed", &message);
                    }
                    failed_before = true;
                }
            }
        }
    }
}

/// Bytes to free so that use falls to `low` percent, when use is at `high` percent or more
/// (upstream's arithmetic); None below the high threshold or when disabled (100).
pub fn amount_to_free(capacity: u64, available: u64, high: i32, low: i32) -> Option<u64> {
    if high >= 100 || capacity == 0 {
        return None;
    }
    let usage_percent = 100 - (available as u128 * 100 / capacity as u128) as i64;
    if usage_percent < i64::from(high) {
        return None;
    }
    let target_available = capacity as u128 * (100 - low.clamp(0, 100) as u128) / 100;
    Some((target_available.saturating_sub(available as u128)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_decide_how_much_to_free() {
        // 90% used: free down to 80%
        assert_eq!(amount_to_free(1000, 100, 85, 80), Some(100));
        // exactly at the threshold counts
        assert_eq!(amount_to_free(1000, 150, 85, 80), Some(50));
        // below it (upstream's integer percentages): nothing
        assert_eq!(amount_to_free(1000, 160, 85, 80), None);
        // 100 disables
        assert_eq!(amount_to_free(1000, 0, 100, 80), None);
        assert_eq!(amount_to_free(0, 0, 85, 80), None);
    }

    #[test]
    fn low_above_high_is_refused() {
        let c = GcConfig {
            low_threshold: 90,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("must not be above"));
        assert!(GcConfig::default().validate().is_ok());
        assert!(GcConfig::default().enabled());
        assert!(!GcConfig {
            high_threshold: 100,
            ..Default::default()
        }
        .enabled());
    }
}
