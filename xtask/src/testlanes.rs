//! `cargo xtask ci`'s test step: `cargo test` in two lanes at once. The workspace's tests
//! spend most of their time waiting on real processes (etcd, containerd, runc, kubectl, the
//! cluster's own components), not on the CPU, so two test binaries at a time halve the
//! step's ~15 minutes without starving each other. The lanes split by package: the node-side
//! end-to-end suites (`kaze`, `kubelet`) in one, everything else in the other, which are
//! about equally long. Every line a lane prints carries its name, so interleaved output
//! still says whose it is. `KAZE_TEST_LANES=1` runs the one serial `cargo test` instead.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};

use crate::{cargo, run_cmd};

/// The packages of the first lane; the second runs the rest of the workspace.
const NODE_PACKAGES: &[&str] = &["kaze", "kubelet"];

pub fn run(root: &Path) -> Result<()> {
    let serial = std::env::var("KAZE_TEST_LANES").is_ok_and(|v| v.trim() == "1");
    if serial {
        return run_cmd(cargo(root).args(["test", "--workspace", "--no-fail-fast"]));
    }
    // Build every test binary first, so the lanes only run tests (two cargo processes
    // building at once would wait on each other's build lock anyway).
    run_cmd(cargo(root).args(["test", "--workspace", "--no-run"]))?;
    let mut node = vec!["test", "--no-fail-fast"];
    let mut rest = vec!["test", "--no-fail-fast", "--workspace"];
    for p in NODE_PACKAGES {
        node.extend(["-p", p]);
        rest.extend(["--exclude", p]);
    }
    let lanes = [("nodes", node), ("rest", rest)];
    let mut running = Vec::new();
    for (name, args) in &lanes {
        let mut cmd = cargo(root);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let line = format!("{cmd:?}");
        println!("[{name}] {line}");
        let mut child = cmd.spawn().with_context(|| format!("starting {line}"))?;
        let printers = prefix_output(name, &mut child);
        running.push((*name, line, child, printers));
    }
    let mut failed = Vec::new();
    for (name, line, mut child, printers) in running {
        let status = child
            .wait()
            .with_context(|| format!("waiting for {line}"))?;
        for p in printers {
            let _ = p.join();
        }
        if !status.success() {
            failed.push(format!("lane {name} ({line}) failed with {status}"));
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} (search the output above for `[lane] test result: FAILED` and `panicked`)",
            failed.join("; ")
        );
    }
    Ok(())
}

/// Print each line `child` writes, prefixed with `[name] `, from one thread per stream.
/// Lines are read as bytes (a test may print invalid UTF-8) until the stream ends, so the
/// child never blocks on a full pipe.
fn prefix_output(name: &str, child: &mut Child) -> Vec<JoinHandle<()>> {
    let mut threads = Vec::new();
    if let Some(out) = child.stdout.take() {
        let name = name.to_string();
        threads.push(std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                println!("[{name}] {}", String::from_utf8_lossy(&line));
            }
        }));
    }
    if let Some(err) = child.stderr.take() {
        let name = name.to_string();
        threads.push(std::thread::spawn(move || {
            for line in BufReader::new(err).split(b'\n').map_while(Result::ok) {
                eprintln!("[{name}] {}", String::from_utf8_lossy(&line));
            }
        }));
    }
    threads
}
