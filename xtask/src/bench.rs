//! `cargo xtask bench <name> [--smoke]`: run one benchmark; each writes
//! target/bench/<name>.json (a list of {metric, value, unit, reference, reference_value,
//! ratio}) and prints it. `--smoke` is the short mode CI runs: it proves the benchmark works,
//! its figures mean little.

use std::path::Path;

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
            let mut cmd = cargo(root);
            cmd.args(["run", "-q", "-p", "store", "--example", "bench_store"]);
            if !args.smoke {
                cmd.arg("--release");
            }
            cmd.args(["--", "--count", count, "--out"]).arg(&out);
            run_cmd(&mut cmd).context("running the store benchmark")?;
        }
        "apiserver" => {
            let mut cmd = cargo(root);
            cmd.args([
                "run",
                "-q",
                "-p",
                "apiserver",
                "--example",
                "bench_apiserver",
            ]);
            if !args.smoke {
                cmd.arg("--release");
            }
            cmd.arg("--");
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
            let mut cmd = cargo(root);
            cmd.args(["run", "-q", "-p", "kubelet", "--example", "bench_kubelet"]);
            if !args.smoke {
                cmd.arg("--release");
            }
            cmd.arg("--");
            if args.smoke {
                cmd.args(["--pods", "5"]);
            }
            cmd.arg("--out").arg(&out);
            run_cmd(&mut cmd).context("running the kubelet benchmark")?;
        }
        "dataplane" => {
            // The proxy embeds the eBPF object: make sure it is built.
            crate::ebpf::build_ebpf(root).context("building the eBPF programs")?;
            let mut cmd = cargo(root);
            cmd.args(["run", "-q", "-p", "proxy", "--example", "bench_dataplane"]);
            if !args.smoke {
                cmd.arg("--release");
            }
            cmd.arg("--");
            if args.smoke {
                cmd.arg("--smoke");
            }
            cmd.arg("--out").arg(&out);
            run_cmd(&mut cmd).context("running the dataplane benchmark")?;
        }
        "scheduler" => {
            let mut cmd = cargo(root);
            cmd.args([
                "run",
                "-q",
                "-p",
                "scheduler",
                "--example",
                "bench_scheduler",
            ]);
            if !args.smoke {
                cmd.arg("--release");
            }
            cmd.arg("--");
            if args.smoke {
                cmd.args(["--nodes", "20", "--pods", "200", "--probes", "20"]);
            }
            cmd.arg("--out").arg(&out);
            run_cmd(&mut cmd).context("running the scheduler benchmark")?;
        }
        "dns" => {
            // Smoke: a small zone and a short run, in the debug build.
            let mut cmd = cargo(root);
            cmd.args(["run", "-q", "-p", "dns", "--bin", "dns-bench"]);
            if !args.smoke {
                cmd.arg("--release");
            }
            cmd.arg("--");
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
