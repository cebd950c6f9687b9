//! The dataplane bench of the proxy's two modes (root): programming latency and new-flow
//! rate. Writes `target/bench/dataplane.json`; `--smoke` for a quick pass, `--services N`,
//! `--changes N`, `--with-nft` to time the nf_tables iptables backend too, `--rounds N`,
//! `--udp-window-ms MS`, `--tcp-window-ms MS` and `--tcp-clients N` for the new-flow runs,
//! `--no-latency` / `--no-flows` to skip a part, `--out PATH`.

use std::{path::PathBuf, time::Duration};

use proxy::bench::{new_flow_rate, programming_latency, write_json, BenchOptions};

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
            // first, so the flags after it override its counts
            "--smoke" => {
                opts = BenchOptions {
                    with_nft: opts.with_nft,
                    latency: opts.latency,
                    flows: opts.flows,
                    ..BenchOptions::smoke()
                }
            }
            "--services" => opts.services = value("--services")?.parse()?,
            "--changes" => opts.changes = value("--changes")?.parse()?,
            "--with-nft" => opts.with_nft = true,
            "--rounds" => opts.flow_rounds = value("--rounds")?.parse()?,
            "--udp-window-ms" => {
                opts.udp_window = Duration::from_millis(value("--udp-window-ms")?.parse()?)
            }
            "--tcp-window-ms" => {
                opts.tcp_window = Duration::from_millis(value("--tcp-window-ms")?.parse()?)
            }
            "--tcp-clients" => opts.tcp_clients = value("--tcp-clients")?.parse()?,
            "--no-latency" => opts.latency = false,
            "--no-flows" => opts.flows = false,
            "--out" => out = PathBuf::from(value("--out")?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    // the proxy's own logs (e.g. why eBPF mode could not start), when asked for
    if std::env::var_os("RUST_LOG").is_some() {
        component::init_tracing();
    }
    eprintln!("bench dataplane: {opts:?}");
    let mut metrics = Vec::new();
    if opts.latency {
        metrics.extend(programming_latency(&opts)?);
    }
    if opts.flows {
        metrics.extend(new_flow_rate(&opts)?);
    }
    for m in &metrics {
        println!(
            "{:<60} {:>12.3} {:<13} (reference {:.3}; ratio {:.3}: {})",
            m.metric, m.value, m.unit, m.reference_value, m.ratio, m.reference
        );
    }
    write_json(&out, &metrics)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
