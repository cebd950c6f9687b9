//! Programming-latency bench of the proxy's two dataplanes (root). Writes
//! `target/bench/dataplane.json`; `--smoke` for a quick pass, `--services N`, `--changes N`,
//! `--with-nft` to time the nf_tables iptables backend too, `--out PATH`.

use std::path::PathBuf;

use proxy::bench::{programming_latency, write_json, BenchOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut opts = BenchOptions::full();
    // the workspace's target dir: this crate sits one level below the workspace root
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = manifest
        .parent()
        .unwrap_or(manifest)
        .join("target/bench/dataplane.json");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--smoke" => {
                opts = BenchOptions {
                    with_nft: opts.with_nft,
                    ..BenchOptions::smoke()
                }
            }
            "--services" => opts.services = value("--services")?.parse()?,
            "--changes" => opts.changes = value("--changes")?.parse()?,
            "--with-nft" => opts.with_nft = true,
            "--out" => out = PathBuf::from(value("--out")?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    eprintln!("bench dataplane: {opts:?}");
    let metrics = programming_latency(&opts)?;
    for m in &metrics {
        println!(
            "{:<70} {:>12.3} {:<3} (reference {} {}; ratio {:.4})",
            m.metric, m.value, m.unit, m.reference_value, m.unit, m.ratio
        );
    }
    write_json(&out, &metrics)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
