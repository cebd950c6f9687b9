//! `cargo xtask images`: the node's test images, built locally because no registry is
//! reachable. Each image is an OCI image-layout tarball in `target/images/<name>.tar`:
//! `oci-layout`, `index.json` and `blobs/sha256/<hex>` holding one uncompressed layer tar (the
//! rootfs), the image config JSON and the manifest, all content-addressed by sha256.
//!
//! | tarball | image name | rootfs |
//! |---|---|---|
//! | `pause.tar` | `docker.io/kaze/pause:1` | `/pause` (crate `images/pause`) |
//! | `busybox.tar` | `docker.io/kaze/busybox:1` | Debian's static `/bin/busybox` + applet symlinks |
//! | `echo.tar` | `docker.io/kaze/echo:1` | `/echo` (crate `images/echo`) |
//!
//! The index entry carries both `io.containerd.image.name` (the full name, which containerd
//! and `ctr images import` use) and `org.opencontainers.image.ref.name` (the tag, as the OCI
//! layout spec and buildkit do), so pod specs can say `kaze/busybox:1`.
//!
//! Every byte is deterministic (mtime 0, uid/gid 0, sorted entries), so unchanged inputs give
//! identical tarballs and the file is left untouched. This file is std + anyhow only: the
//! kubelet's tests include it with `#[path]` to build missing images with the same code.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The version tag of every kaze test image.
pub const TAG: &str = "1";
/// Where busybox-static puts its binary on Debian.
pub const BUSYBOX: &str = "/bin/busybox";

/// One image this command builds: its tarball name and full reference.
pub struct ImageInfo {
    pub file: &'static str,
    pub reference: &'static str,
}

pub const IMAGES: [ImageInfo; 3] = [
    ImageInfo {
        file: "pause.tar",
        reference: "docker.io/kaze/pause:1",
    },
    ImageInfo {
        file: "busybox.tar",
        reference: "docker.io/kaze/busybox:1",
    },
    ImageInfo {
        file: "echo.tar",
        reference: "docker.io/kaze/echo:1",
    },
];

/// Where the tarballs go.
pub fn images_dir(root: &Path) -> PathBuf {
    root.join("target").join("images")
}

/// Build every image tarball; returns their paths. Idempotent.
pub fn build_images(root: &Path) -> Result<Vec<PathBuf>> {
    let out = images_dir(root);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bins = build_static_binaries(root)?;

    let mut written = Vec::new();
    let pause =
        std::fs::read(&bins[0]).with_context(|| format!("reading {}", bins[0].display()))?;
    let mut rootfs = Rootfs::base();
    rootfs.file("pause", 0o755, pause);
    written.push(write_image(
        &out,
        &IMAGES[0],
        &rootfs,
        &image_config(&["/pause"], &[]),
    )?);

    let busybox = std::fs::read(BUSYBOX).with_context(|| {
        format!("reading {BUSYBOX} (install busybox-static: `cargo xtask setup`)")
    })?;
    ensure_static(BUSYBOX, &busybox)?;
    let mut rootfs = Rootfs::base();
    rootfs.file("bin/busybox", 0o755, busybox);
    for applet in busybox_applets()? {
        if applet != "bin/busybox" {
            rootfs.symlink(&applet, "/bin/busybox");
        }
    }
    written.push(write_image(
        &out,
        &IMAGES[1],
        &rootfs,
        &image_config(&[], &["sh"]),
    )?);

    let echo = std::fs::read(&bins[1]).with_context(|| format!("reading {}", bins[1].display()))?;
    let mut rootfs = Rootfs::base();
    rootfs.file("echo", 0o755, echo);
    written.push(write_image(
        &out,
        &IMAGES[2],
        &rootfs,
        &image_config(&["/echo"], &[]),
    )?);
    Ok(written)
}

const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Where [`build_images`] leaves the static `pause` or `echo` executable (tests run the echo
/// client outside a container, e.g. in a node's network namespace).
pub fn static_binary(root: &Path, name: &str) -> PathBuf {
    images_dir(root)
        .join("build")
        .join(STATIC_TARGET)
        .join("release")
        .join(name)
}

/// Build `pause` and `echo` as static executables. A target dir of their own keeps the
/// `crt-static` flags from invalidating the shared target dir, and lets a test (already
/// inside `cargo test`) run this without waiting on the workspace build lock.
fn build_static_binaries(root: &Path) -> Result<Vec<PathBuf>> {
    let target = STATIC_TARGET;
    let target_dir = images_dir(root).join("build");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "pause",
            "-p",
            "echo",
            "--target",
            target,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // With --target, RUSTFLAGS reach only the target crates, not build scripts.
        // Stripped: the release profile keeps debuginfo, which would triple the images.
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {cargo} build for the pause and echo images"))?;
    if !status.success() {
        bail!("building the pause and echo binaries failed with {status}");
    }
    let bins = vec![static_binary(root, "pause"), static_binary(root, "echo")];
    for bin in &bins {
        let bytes = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
        ensure_static(&bin.display().to_string(), &bytes)?;
    }
    Ok(bins)
}

/// A container image has no dynamic loader: refuse ELF files with a PT_INTERP header.
fn ensure_static(name: &str, elf: &[u8]) -> Result<()> {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        bail!("{name} is not a 64-bit ELF executable");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{name}: truncated ELF header");
    };
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let Some(p_type) = elf.get(off..off + 4) else {
            bail!("{name}: truncated program headers")
        };
        if u32::from_le_bytes([p_type[0], p_type[1], p_type[2], p_type[3]]) == 3 {
            bail!("{name} is dynamically linked (has an ELF interpreter); it cannot run in a scratch image");
        }
    }
    Ok(())
}

fn busybox_applets() -> Result<Vec<String>> {
    let out = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .with_context(|| format!("running {BUSYBOX} --list-full"))?;
    if !out.status.success() {
        bail!("{BUSYBOX} --list-full failed with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

// === impl Rootfs ===

enum Entry {
    Dir(u32),
    File(u32, Vec<u8>),
    Symlink(String),
}

/// A rootfs as a sorted map of relative paths, rendered as a deterministic tar.
struct Rootfs(BTreeMap<String, Entry>);

impl Rootfs {
    /// The directories and files every image gets: mount points the runtime expects, a
    /// world-writable /tmp, and passwd/group so `id` and `whoami` work.
    fn base() -> Rootfs {
        let mut fs = Rootfs(BTreeMap::new());
        for dir in ["dev", "etc", "proc", "root", "sys", "var", "var/run"] {
            fs.dir(dir, 0o755);
        }
        fs.dir("tmp", 0o1777);
        fs.file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec(),
        );
        fs.file(
            "etc/group",
            0o644,
            b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
        );
        fs
    }

    fn parents(&mut self, path: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            self.0.entry(acc.clone()).or_insert(Entry::Dir(0o755));
        }
    }

    fn dir(&mut self, path: &str, mode: u32) {
        self.parents(path);
        self.0.insert(path.to_string(), Entry::Dir(mode));
    }

    fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.parents(path);
        self.0.insert(path.to_string(), Entry::File(mode, data));
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.0
            .insert(path.to_string(), Entry::Symlink(target.to_string()));
    }

    fn to_tar(&self) -> Result<Vec<u8>> {
        let mut tar = Tar::default();
        for (path, entry) in &self.0 {
            match entry {
                Entry::Dir(mode) => tar.dir(&format!("{path}/"), *mode)?,
                Entry::File(mode, data) => tar.file(path, *mode, data)?,
                Entry::Symlink(target) => tar.symlink(path, target)?,
            }
        }
        Ok(tar.finish())
    }
}

// === impl Tar ===

/// A minimal ustar writer: owner root, mtime 0, so equal inputs give equal bytes.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn header(&mut self, name: &str, mode: u32, size: usize, kind: u8, link: &str) -> Result<()> {
        if name.len() > 100 || link.len() > 100 {
            bail!("tar: path {name:?} or link {link:?} is longer than 100 bytes");
        }
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
            let s = format!("{v:0width$o}", width = len - 1);
            h[at..at + len - 1].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, u64::from(mode));
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, size as u64);
        octal(&mut h, 136, 12, 0);
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        // The checksum is computed with its own field as spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.0.extend_from_slice(&h);
        Ok(())
    }

    fn dir(&mut self, name: &str, mode: u32) -> Result<()> {
        self.header(name, mode, 0, b'5', "")
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.header(name, mode, data.len(), b'0', "")?;
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        Ok(())
    }

    fn symlink(&mut self, name: &str, target: &str) -> Result<()> {
        self.header(name, 0o777, 0, b'2', target)
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

// === OCI layout ===

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn json_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(","))
}

/// The image config's `config` object (entrypoint, cmd, env); `rootfs` is added later.
fn image_config(entrypoint: &[&str], cmd: &[&str]) -> String {
    let mut fields = vec![format!("\"Env\":{}", json_list(&[PATH_ENV]))];
    if !entrypoint.is_empty() {
        fields.push(format!("\"Entrypoint\":{}", json_list(entrypoint)));
    }
    if !cmd.is_empty() {
        fields.push(format!("\"Cmd\":{}", json_list(cmd)));
    }
    fields.push("\"WorkingDir\":\"/\"".into());
    format!("{{{}}}", fields.join(","))
}

/// sha256 of `data` as lowercase hex, through coreutils' sha256sum (keeps xtask std-only).
pub fn sha256_hex(data: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running sha256sum")?;
    let mut stdin = child.stdin.take().context("sha256sum stdin")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().context("waiting for sha256sum")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("sha256sum writer panicked"))?
        .context("writing to sha256sum")?;
    let hex = String::from_utf8_lossy(&out.stdout);
    let hex = hex.split_whitespace().next().unwrap_or_default();
    if hex.len() != 64 {
        bail!("sha256sum printed {hex:?}");
    }
    Ok(hex.to_string())
}

fn write_image(out: &Path, info: &ImageInfo, rootfs: &Rootfs, config: &str) -> Result<PathBuf> {
    let layer = rootfs.to_tar()?;
    let layer_hex = sha256_hex(&layer)?;
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{config},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"sha256:{layer_hex}\"]}}}}"
    );
    let config_hex = sha256_hex(config.as_bytes())?;
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
\"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:{config_hex}\",\"size\":{}}},\
\"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:{layer_hex}\",\"size\":{}}}]}}",
        config.len(),
        layer.len()
    );
    let manifest_hex = sha256_hex(manifest.as_bytes())?;
    let tag = info.reference.rsplit(':').next().unwrap_or(TAG);
    let index = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\
\"manifests\":[{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:{manifest_hex}\",\"size\":{},\
\"annotations\":{{\"io.containerd.image.name\":\"{}\",\"org.opencontainers.image.ref.name\":\"{tag}\"}},\
\"platform\":{{\"architecture\":\"amd64\",\"os\":\"linux\"}}}}]}}",
        manifest.len(),
        info.reference
    );

    let mut tar = Tar::default();
    tar.dir("blobs/", 0o755)?;
    tar.dir("blobs/sha256/", 0o755)?;
    let mut blobs = [
        (layer_hex, layer.as_slice()),
        (config_hex, config.as_bytes()),
        (manifest_hex, manifest.as_bytes()),
    ];
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    for (hex, data) in blobs {
        tar.file(&format!("blobs/sha256/{hex}"), 0o644, data)?;
    }
    tar.file("index.json", 0o644, index.as_bytes())?;
    tar.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let bytes = tar.finish();

    let path = out.join(info.file);
    if std::fs::read(&path).is_ok_and(|old| old == bytes) {
        println!("image {} unchanged: {}", info.reference, path.display());
        return Ok(path);
    }
    // Write then rename so a reader never sees half a tarball.
    let tmp = out.join(format!(".{}.tmp", info.file));
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    println!("image {} written: {}", info.reference, path.display());
    Ok(path)
}
