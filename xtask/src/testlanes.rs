//! `cargo xtask ci`'s test step: the workspace's test binaries, two at a time. The tests
//! spend most of their time waiting on real processes (etcd, containerd, runc, kubectl, the
//! cluster's own components), not on the CPU, so two binaries at once roughly halve the
//! step's ~15 minutes (serial) without starving each other.
//!
//! `cargo test --workspace --no-run --message-format=json` builds every test binary once
//! (with the workspace's unified features: a `cargo test -p` of a subset of the packages
//! would resolve features differently and rebuild half the workspace), then each binary runs
//! as `cargo test` runs it: from its package's directory, with cargo's `CARGO_*` variables
//! and xtask's test environment ([`crate::cargo`]). The slowest binaries start first (the
//! estimates in [`ESTIMATES`], measured in a serial run) and a free lane takes the next one.
//! A binary's output is printed whole when it ends, so the log reads like a serial run;
//! doc tests follow (`cargo test --workspace --doc`). `KAZE_TEST_LANES=N` sets the lanes
//! (`1`: the plain serial `cargo test --workspace`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{cargo, run_cmd};

/// Seconds the slowest test binaries took in a serial run (session 9's CI); others count
/// as a few seconds. Only the order they start in depends on these.
const ESTIMATES: &[(&str, u64)] = &[
    ("agent", 133),
    ("cluster", 90),
    ("eviction", 61),
    ("jobs", 60),
    ("volumes", 34),
    ("exec_portforward", 34),
    ("server", 32),
    ("pods", 31),
    ("persistentvolumes", 31),
    ("metrics", 23),
    ("restart", 23),
    ("image_gc", 21),
    ("workloads", 18),
    ("conformance", 18),
    ("disruption", 16),
    ("static_pods", 14),
];

/// One test binary cargo built.
struct TestBinary {
    /// Package and target, e.g. `kaze tests/agent.rs`.
    label: String,
    target: String,
    exe: PathBuf,
    manifest: PathBuf,
    package: String,
    version: String,
}

pub fn run(root: &Path) -> Result<()> {
    let lanes: usize = match std::env::var("KAZE_TEST_LANES") {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("KAZE_TEST_LANES={v:?}: want a positive number"))?,
        Err(_) => 2,
    };
    if lanes == 1 {
        return run_cmd(cargo(root).args(["test", "--workspace", "--no-fail-fast"]));
    }
    let mut binaries = build(root)?;
    binaries.sort_by_key(|b| std::cmp::Reverse(estimate(&b.target)));
    println!(
        "    {} test binaries, {lanes} at a time, slowest first",
        binaries.len()
    );
    let queue = Arc::new(Mutex::new(VecDeque::from(binaries)));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let env: Vec<(std::ffi::OsString, std::ffi::OsString)> = cargo(root)
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_os_string(), v?.to_os_string())))
        .collect();
    let workers: Vec<_> = (0..lanes)
        .map(|_| {
            let (queue, failed, env) = (queue.clone(), failed.clone(), env.clone());
            std::thread::spawn(move || loop {
                let Some(bin) = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop_front()
                else {
                    return;
                };
                if let Err(e) = run_one(&bin, &env) {
                    println!("    FAILED: {}: {e:#}", bin.label);
                    failed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(bin.label.clone());
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let doc = run_cmd(cargo(root).args(["test", "--workspace", "--doc"]));
    let failed = failed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if !failed.is_empty() {
        bail!(
            "{} test binaries failed: {} (their output above ends with `test result: FAILED`)",
            failed.len(),
            failed.join(", ")
        );
    }
    doc.context("doc tests")
}

fn estimate(target: &str) -> u64 {
    ESTIMATES
        .iter()
        .find(|(name, _)| *name == target)
        .map_or(3, |(_, secs)| *secs)
}

/// Build every test binary and list them from cargo's JSON messages.
fn build(root: &Path) -> Result<Vec<TestBinary>> {
    let mut cmd = cargo(root);
    cmd.args([
        "test",
        "--workspace",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let out = cmd.output().context("starting cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --workspace --no-run failed with {}", out.status);
    }
    let mut binaries = Vec::new();
    for line in out.stdout.split(|b| *b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let manifest = PathBuf::from(msg["manifest_path"].as_str().unwrap_or_default());
        let target = msg["target"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // package_id: `path+file:///work/main/kaze#0.1.0`, or `...#name@0.1.0` when the
        // package's name is not its directory's
        let id = msg["package_id"].as_str().unwrap_or_default();
        let (url, spec) = id.rsplit_once('#').unwrap_or((id, ""));
        let (package, version) = match spec.split_once('@') {
            Some((name, version)) => (name.to_string(), version.to_string()),
            None => (
                url.rsplit('/').next().unwrap_or_default().to_string(),
                spec.to_string(),
            ),
        };
        let src = msg["target"]["src_path"].as_str().unwrap_or_default();
        let dir = manifest.parent().unwrap_or(root);
        let src = Path::new(src).strip_prefix(dir).unwrap_or(Path::new(src));
        binaries.push(TestBinary {
            label: format!("{package} {}", src.display()),
            target,
            exe: PathBuf::from(exe),
            manifest,
            package,
            version,
        });
    }
    if binaries.is_empty() {
        bail!("cargo test --no-run listed no test binaries");
    }
    Ok(binaries)
}

/// Run one test binary as `cargo test` would, print its output whole, and fail if it did.
fn run_one(bin: &TestBinary, env: &[(std::ffi::OsString, std::ffi::OsString)]) -> Result<()> {
    let dir = bin.manifest.parent().context("manifest path")?;
    let mut cmd = Command::new(&bin.exe);
    cmd.current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("CARGO_MANIFEST_DIR", dir)
        .env("CARGO_MANIFEST_PATH", &bin.manifest)
        .env("CARGO_PKG_NAME", &bin.package)
        .env("CARGO_PKG_VERSION", &bin.version)
        .env("CARGO_CRATE_NAME", bin.target.replace('-', "_"))
        .stdin(Stdio::null());
    let started = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", bin.exe.display()))?;
    let took = started.elapsed();
    // One print per binary: the lanes' outputs do not interleave.
    let mut text = format!(
        "     Running {} ({}) [{}]\n",
        bin.label,
        bin.exe.display(),
        secs(took)
    );
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    print!("{text}");
    if !out.status.success() {
        bail!("exited with {}", out.status);
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
