//! `cargo xtask build-ebpf`: builds `dataplane-ebpf/` for `bpfel-unknown-none` with nightly,
//! following docs/TOOLCHAIN.md (build-std=core, bpf-linker, BTF).

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

/// Where the built object lands, relative to the repository root. `proxy` embeds it from
/// here with `include_bytes_aligned!`, so `build-ebpf` must run before the workspace builds.
pub const OBJECT: &str = "dataplane-ebpf/target/bpfel-unknown-none/release/dataplane-ebpf";

/// Builds the kernel crate and returns the path of the object file.
pub fn build_ebpf(root: &Path) -> anyhow::Result<PathBuf> {
    let crate_dir = root.join("dataplane-ebpf");
    let cargo_bin = home_cargo_bin();
    let linker = find_bpf_linker(cargo_bin.as_deref())
        .context("finding bpf-linker (run `cargo xtask setup`; it builds bpf-linker 0.13)")?;

    // bpf-linker must be on PATH for rustc to find it; prepend its directory.
    let mut path = OsString::new();
    if let Some(dir) = linker.parent() {
        path.push(dir);
        path.push(":");
    }
    path.push(env::var_os("PATH").unwrap_or_default());

    // The rustup proxy understands `+nightly`; prefer ~/.cargo/bin/cargo, which is the proxy,
    // over whatever `cargo` the outer toolchain put first on PATH.
    let cargo = cargo_bin
        .as_ref()
        .map(|d| d.join("cargo"))
        .filter(|c| c.exists())
        .unwrap_or_else(|| PathBuf::from("cargo"));

    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&crate_dir)
        .args([
            "+nightly",
            "build",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
            "--release",
        ])
        // BTF so bpftool prints map structs and aya can load BTF-defined maps. target-cpu=v3
        // (kernel >= 5.12) because the round-robin cursor needs an atomic fetch-add, which
        // the default "generic" (v1) BPF CPU cannot express.
        .env(
            "RUSTFLAGS",
            "-C debuginfo=2 -C link-arg=--btf -C target-cpu=v3",
        )
        .env("PATH", path);
    // Settings of the outer (stable) cargo invocation must not leak into the nightly build:
    // it has its own toolchain, target dir and flags.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "CARGO",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }

    let status = cmd.status().with_context(|| {
        format!(
            "running {} +nightly build in {}",
            cargo.display(),
            crate_dir.display()
        )
    })?;
    if !status.success() {
        bail!("building dataplane-ebpf failed: {status}");
    }
    let object = root.join(OBJECT);
    if !object.is_file() {
        bail!(
            "building dataplane-ebpf: {} was not produced",
            object.display()
        );
    }
    Ok(object)
}

fn home_cargo_bin() -> Option<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Some(PathBuf::from(home).join("bin"));
    }
    env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").join("bin"))
}

fn find_bpf_linker(cargo_bin: Option<&Path>) -> anyhow::Result<PathBuf> {
    let on_path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .iter()
        .map(PathBuf::as_path)
        .chain(cargo_bin)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
        .context("bpf-linker is neither on PATH nor in ~/.cargo/bin")
}
