//! `cargo xtask <command>`: everything needed to go from a fresh clone to a running cluster
//! and a green test run. Every command is idempotent: it checks before it installs or builds.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod ebpf;
mod images;
mod protoschema;
mod setup;
mod testlanes;
mod up;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "kaze project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything the project needs (Debian packages, eBPF toolchain, kubectl, bpffs).
    Setup,
    /// Build the eBPF programs (dataplane-ebpf/) for bpfel-unknown-none with BTF.
    BuildEbpf,
    /// Build the OCI image tarballs (pause, busybox, echo) into target/images/.
    Images,
    /// Regenerate apiserver/src/protobuf/schema.json from the k8s-pb and k8s-openapi sources.
    GenProtoSchema,
    /// Set up, build and start a single-node cluster in the foreground.
    Up(up::Args),
    /// The one test command: setup, fmt, clippy, build, every test, benchmarks in smoke mode.
    Ci,
    /// Run a benchmark and write target/bench/<name>.json.
    Bench(bench::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::run(&root()),
        Cmd::BuildEbpf => ebpf::build_ebpf(&root()).map(|obj| {
            println!("eBPF object: {}", obj.display());
        }),
        Cmd::Images => images::build_images(&root()).map(|built| {
            for p in built {
                println!("image: {}", p.display());
            }
        }),
        Cmd::GenProtoSchema => protoschema::run(&root()),
        Cmd::Up(args) => up::run(&root(), args),
        Cmd::Ci => ci(&root()),
        Cmd::Bench(args) => bench::run(&root(), args),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

/// The repository root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where setup puts project-local tools (the kubectl venv).
pub fn tools_dir(root: &Path) -> PathBuf {
    root.join("target").join("tools")
}

pub fn kubectl_path(root: &Path) -> PathBuf {
    tools_dir(root).join("venv").join("bin").join("kubectl")
}

/// Debian trixie's etcd 3.5 binary that `cargo xtask setup` unpacks (see `setup::etcd35`).
pub fn etcd35_path(root: &Path) -> PathBuf {
    tools_dir(root).join("etcd-3.5").join("etcd")
}

/// Steps begun so far, with when each began: `step` prints how long the previous one took
/// and `ci` ends with the whole list, so a slow CI run says where its time went.
static STEPS: std::sync::Mutex<Vec<(String, std::time::Instant)>> =
    std::sync::Mutex::new(Vec::new());

/// Print a step header the way every xtask command does (and the previous step's duration).
pub fn step(name: &str) {
    let now = std::time::Instant::now();
    let mut steps = STEPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((prev, began)) = steps.last() {
        println!(
            "    ({prev}: {:.0} s)",
            now.duration_since(*began).as_secs_f64()
        );
    }
    steps.push((name.to_string(), now));
    println!("==> {name}");
}

/// Every step's duration so far, one line each (the last step runs until now).
fn step_durations() -> Vec<(String, f64)> {
    let now = std::time::Instant::now();
    let steps = STEPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    steps
        .iter()
        .enumerate()
        .map(|(i, (name, began))| {
            let end = steps.get(i + 1).map_or(now, |next| next.1);
            (name.clone(), end.duration_since(*began).as_secs_f64())
        })
        .collect()
}

/// Run a command, failing with the command line when it does not succeed.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {line}"))?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}

/// `cargo` with the environment every workspace command needs: the kubectl venv first on
/// PATH, and KAZE_KUBECTL pointing at it, so tests use the real upstream kubectl;
/// KAZE_ETCD35 pointing at the etcd 3.5 setup unpacks.
pub fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root);
    let venv_bin = tools_dir(root).join("venv").join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![venv_bin];
    paths.extend(std::env::split_paths(&path));
    if let Ok(joined) = std::env::join_paths(paths) {
        cmd.env("PATH", joined);
    }
    cmd.env("KAZE_KUBECTL", kubectl_path(root));
    cmd.env("KAZE_ETCD35", etcd35_path(root));
    cmd
}

/// Free space (GiB) on the file system holding `dir`, from `df` (None when it cannot tell).
fn free_gib(dir: &Path) -> Option<f64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kib: f64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// What a fresh `ci` needs on the target's disk (the debug build of every test binary plus
/// the tools: 13 GB fresh, measured in session 14) and headroom for rebuilds and the tests'
/// files.
const CI_DISK_GIB: f64 = 25.0;

/// Print the free space on the target dir's disk, and say plainly when it is too little:
/// a linker that runs out of disk dies of SIGBUS, which names nothing.
fn report_disk(root: &Path, when: &str) {
    let target = root.join("target");
    let dir = if target.exists() {
        target
    } else {
        root.to_path_buf()
    };
    match free_gib(&dir) {
        Some(free) if free < CI_DISK_GIB => println!(
            "ci: WARNING {when}: only {free:.1} GiB free on {} (a fresh ci needs ~{CI_DISK_GIB:.0} GiB; \
             a full disk shows up as the linker dying of SIGBUS)",
            dir.display()
        ),
        Some(free) => println!("ci: {when}: {free:.1} GiB free on {}", dir.display()),
        None => println!("ci: {when}: could not read the free space of {}", dir.display()),
    }
}

fn ci(root: &Path) -> Result<()> {
    let started = std::time::Instant::now();
    // A CI build is built once: incremental caches would only cost disk (gigabytes here).
    std::env::set_var("CARGO_INCREMENTAL", "0");
    report_disk(root, "at the start");
    setup::run(root).context("ci: setup")?;
    step("build-ebpf");
    ebpf::build_ebpf(root).context("ci: build-ebpf")?;
    step("images");
    images::build_images(root).context("ci: images")?;
    step("cargo fmt --check");
    run_cmd(cargo(root).args(["fmt", "--all", "--check"]))
        .context("ci: formatting (run `cargo fmt --all`)")?;
    step("cargo clippy");
    run_cmd(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("ci: clippy")?;
    step("cargo build");
    let built = run_cmd(cargo(root).args(["build", "--workspace", "--all-targets"]));
    report_disk(root, "after the build");
    built.context("ci: build")?;
    step("cargo test (unit, integration, privileged e2e; two lanes, see testlanes.rs)");
    testlanes::run(root).context("ci: tests")?;
    step("benchmarks (smoke mode)");
    for name in bench::NAMES {
        bench::run(
            root,
            bench::Args {
                name: name.to_string(),
                smoke: true,
            },
        )
        .with_context(|| format!("ci: bench {name} --smoke"))?;
    }
    report_disk(root, "at the end");
    println!("ci: time per step");
    for (name, secs) in step_durations() {
        println!("    {secs:>6.0} s  {name}");
    }
    println!("ci: all green in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
