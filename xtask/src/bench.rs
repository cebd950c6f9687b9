//! `cargo xtask bench <name> [--smoke]`: run one benchmark; each writes
//! target/bench/<name>.json (a list of {metric, value, unit, reference, reference_value,
//! ratio}) and prints it. `--smoke` is the short mode CI runs: it proves the benchmark works,
//! its figures mean little.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, run_cmd, step};

/// Every benchmark `ci` runs in smoke mode.
pub const NAMES: &[&str] = &[
    "store",
    "apiserver",
    "dns",
    "scheduler",
    "kubelet",
    "dataplane",
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which benchmark: store, apiserver, dns, scheduler, kubelet, dataplane.
    pub name: String,
    /// Short run for CI: small counts, debug build.
    #[arg(long)]
    pub smoke: bool,
}

/// What a benchmark runs: an example or a binary of its package.
enum Target {
    Example(&'static str),
    Bin(&'static str),
}

/// The command that runs a benchmark's program, its own arguments to follow. A full run is
/// `cargo run --release -p <package>`. A smoke run uses the debug build of the whole
/// workspace (`cargo build --workspace --examples --bins`, a no-op after `ci`'s build) and
/// runs the program directly: `cargo run -p <package>` would resolve features for that
/// package alone and recompile half the workspace (minutes per benchmark in CI).
fn program(root: &Path, package: &str, target: Target, smoke: bool) -> Result<Command> {
    let (flag, name) = match target {
        Target::Example(name) => ("--example", name),
        Target::Bin(name) => ("--bin", name),
    };
    if !smoke {
        let mut cmd = cargo(root);
        cmd.args(["run", "-q", "--release", "-p", package, flag, name, "--"]);
        return Ok(cmd);
    }
    run_cmd(cargo(root).args(["build", "-q", "--workspace", "--examples", "--bins"]))
        .context("building the benchmarks (debug)")?;
    let debug = root.join("target").join("debug");
    let exe = match target {
        Target::Example(name) => debug.join("examples").join(name),
        Target::Bin(name) => debug.join(name),
    };
    let mut cmd = Command::new(&exe);
    let base = cargo(root);
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.current_dir(root);
    Ok(cmd)
}

pub fn run(root: &Path, args: Args) -> Result<()> {
    step(&format!(
        "bench {}{}",
        args.name,
        if args.smoke { " (smoke)" } else { "" }
    ));
    let out = root
        .join("target/bench")
        .join(format!("{}.json", args.name));
    std::fs::create_dir_all(root.join("target/bench"))?;
    match args.name.as_str() {
        "store" => {
            let count = if args.smoke { "300" } else { "10000" };
            let mut cmd = program(root, "store", Target::Example("bench_store"), args.smoke)?;
            cmd.args(["--count", count, "--out"]).arg(&out);
            run_cmd(&mut cmd).context("running the store benchmark")?;
        }
        "apiserver" => {
            let mut cmd = program(
                root,
                "apiserver",
                Target::Example("bench_apiserver"),
                args.smoke,
            )?;
            if args.smoke {
                cmd.args([
                    "--pods",
                    "300",
                    "--lists",
                    "5",
                    "--watchers",
                    "10",
                    "--events",
                    "10",
                ]);
            }
            cmd.arg("--out").arg(&out);
            run_cmd(&mut cmd).context("running the apiserver benchmark")?;
        }
        "kubelet" => {
            let mut cmd = program(
                root,
                "kubelet",
                Target::Example("bench_kubelet"),
                args.smoke,
            )?;
            if args.smoke {
                cmd.args(["--pods", "5"]);
            }
            cmd.arg("--out").arg(&out);
            run_cmd(&mut cmd).context("running the kubelet benchmark")?;
        }
        "dataplane" => {
            // The proxy embeds the eBPF object: make sure it is built.
            crate::ebpf::build_ebpf(root).context("building the eBPF programs")?;
            let mut cmd = program(
                root,
                "proxy",
                Target::Example("bench_dataplane"),
                args.smoke,
            )?;
            if args.smoke {
                cmd.arg("--smoke");
            }
            cmd.arg("--out").arg(&out);
            run_cmd(&mut cmd).context("running the dataplane benchmark")?;
        }
        "scheduler" => {
            let mut cmd = program(
                root,
                "scheduler",
                Target::Example("bench_scheduler"),
                args.smoke,
            )?;
            if args.smoke {
                cmd.args(["--nodes", "20", "--pods", "200", "--probes", "20"]);
            }
            cmd.arg("--out").arg(&out);
            run_cmd(&mut cmd).context("running the scheduler benchmark")?;
        }
        "dns" => {
            // Smoke: a small zone and a short run, in the debug build.
            let mut cmd = program(root, "dns", Target::Bin("dns-bench"), args.smoke)?;
            if args.smoke {
                cmd.args([
                    "--services",
                    "200",
                    "--seconds",
                    "1",
                    "--latency-qps",
                    "2000",
                    "--creations",
                    "50",
                    "--rounds",
                    "1",
                ]);
            }
            cmd.arg("--out").arg(&out);
            run_cmd(&mut cmd).context("running the dns benchmark")?;
        }
        other => bail!("unknown benchmark {other:?}; known: {}", NAMES.join(", ")),
    }
    let json =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    println!("{}: {json}", out.display());
    Ok(())
}
