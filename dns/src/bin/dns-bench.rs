//! `cargo run --release -p dns --bin dns-bench -- [--services N] [--seconds S] [--rounds R] [--out PATH]`
//! The driver `cargo xtask bench dns` calls: kaze dns vs knotd under dnsperf, JSON out.

use std::path::PathBuf;

use clap::Parser;
use dns::bench::{run, BenchConfig};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 20_000)]
    latency_qps: u64,
    #[arg(long, default_value_t = 1_000)]
    creations: usize,
    /// Alternating rounds of knotd and kaze measurements.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value = "target/bench/dns.json")]
    out: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let config = BenchConfig {
        services: a.services,
        seconds: a.seconds,
        clients: a.clients,
        latency_qps: a.latency_qps,
        latency_seconds: 3,
        creations: a.creations,
        rounds: a.rounds,
        out: a.out,
    };
    let results = run(&config).await?;
    println!("{}", serde_json::to_string_pretty(&results)?);
    eprintln!("wrote {}", config.out.display());
    Ok(())
}
