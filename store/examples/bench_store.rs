//! `cargo xtask bench store`: writes of pod-sized JSON values and a list of all of them,
//! through the `Store` trait on each backend and, in the same run, with raw etcd-client puts
//! as the reference. Prints ops/s and ratios and writes them as JSON to `--out`. Every
//! measurement is taken once per round over `--rounds` (default 3) rounds; each figure comes
//! from the round with its median ratio.
//!
//! Each etcd measurement gets a fresh etcd (same binary, same disk) so one run's data does
//! not slow the next. Every etcd measurement is made on two etcds: the system's (Debian 12's
//! 3.4) and Debian trixie's 3.5 (`testkit::etcd35`); each ratio compares figures of one etcd.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{stream, StreamExt};
use store::embedded::EmbeddedStore;
use store::etcd::EtcdStore;
use store::{ListOptions, Store};
use testkit::Etcd;

const CONCURRENCY: usize = 32;

fn pod_json(i: usize) -> Bytes {
    // About 2 KiB, the size of a small real pod object.
    let pad = "x".repeat(1400);
    Bytes::from(format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"bench-{i}","namespace":"default","uid":"00000000-0000-0000-0000-{i:012}","labels":{{"app":"bench","tier":"web"}},"annotations":{{"pad":"{pad}"}}}},"spec":{{"nodeName":"node-{n}","containers":[{{"name":"app","image":"busybox","command":["sh","-c","sleep 3600"],"resources":{{"requests":{{"cpu":"100m","memory":"64Mi"}}}}}}]}},"status":{{"phase":"Running","podIP":"10.42.{n}.{m}"}}}}"#,
        n = i % 250,
        m = i % 250 + 1,
    ))
}

struct Args {
    count: usize,
    rounds: usize,
    out: std::path::PathBuf,
}

fn args() -> Args {
    let mut count = 10_000;
    let mut rounds = 3;
    let mut out = std::path::PathBuf::from("target/bench/store.json");
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--count" => count = it.next().and_then(|v| v.parse().ok()).expect("--count N"),
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--out" => out = it.next().expect("--out FILE").into(),
            other => {
                panic!("unknown argument {other:?} (expected --count N --rounds N --out FILE)")
            }
        }
    }
    Args {
        count,
        rounds: rounds.max(1),
        out,
    }
}

async fn timed<F, Fut>(count: usize, f: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    stream::iter(0..count)
        .map(f)
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    count as f64 / start.elapsed().as_secs_f64()
}

async fn raw_puts(etcd: &Etcd, count: usize) -> f64 {
    let client = etcd_client::Client::connect([etcd.url()], None)
        .await
        .expect("connecting the raw client");
    timed(count, |i| {
        let mut kv = client.kv_client();
        async move {
            kv.put(
                format!("/raw/pods/default/bench-{i}"),
                pod_json(i).to_vec(),
                None,
            )
            .await
            .expect("raw put");
        }
    })
    .await
}

/// The same create-if-absent transaction the etcd backend sends, issued raw: separates
/// etcd's cost of a compare-and-put from the backend's own overhead.
async fn raw_txn_creates(etcd: &Etcd, count: usize) -> f64 {
    let client = etcd_client::Client::connect([etcd.url()], None)
        .await
        .expect("connecting the raw client");
    timed(count, |i| {
        let mut kv = client.kv_client();
        async move {
            let key = format!("/rawtxn/pods/default/bench-{i}");
            let txn = etcd_client::Txn::new()
                .when([etcd_client::Compare::create_revision(
                    key.clone(),
                    etcd_client::CompareOp::Equal,
                    0,
                )])
                .and_then([etcd_client::TxnOp::put(key, pod_json(i).to_vec(), None)]);
            kv.txn(txn).await.expect("raw txn");
        }
    })
    .await
}

/// Group commit as etcd would allow it: `GROUP` create-if-absent puts per txn, with the
/// same number of keys in flight as the other measurements. Not what the backend does: every
/// op of one etcd txn gets the same revision, so objects created together would share a
/// `resourceVersion` and a client resuming a watch between two of their events would miss
/// the second (see `store/src/etcd.rs`). Measured so the cost of that choice stays visible.
async fn raw_grouped_creates(etcd: &Etcd, count: usize) -> f64 {
    const GROUP: usize = 4;
    let client = etcd_client::Client::connect([etcd.url()], None)
        .await
        .expect("connecting the raw client");
    let start = Instant::now();
    stream::iter(0..count.div_ceil(GROUP))
        .map(|g| {
            let mut kv = client.kv_client();
            async move {
                let keys: Vec<(String, usize)> = (g * GROUP..((g + 1) * GROUP).min(count))
                    .map(|i| (format!("/rawgroup/pods/default/bench-{i}"), i))
                    .collect();
                let txn = etcd_client::Txn::new()
                    .when(
                        keys.iter()
                            .map(|(k, _)| {
                                etcd_client::Compare::create_revision(
                                    k.clone(),
                                    etcd_client::CompareOp::Equal,
                                    0,
                                )
                            })
                            .collect::<Vec<_>>(),
                    )
                    .and_then(
                        keys.iter()
                            .map(|(k, i)| {
                                etcd_client::TxnOp::put(k.clone(), pod_json(*i).to_vec(), None)
                            })
                            .collect::<Vec<_>>(),
                    );
                assert!(kv.txn(txn).await.expect("raw grouped txn").succeeded());
            }
        })
        .buffer_unordered(CONCURRENCY / GROUP)
        .collect::<Vec<()>>()
        .await;
    count as f64 / start.elapsed().as_secs_f64()
}

async fn store_creates(store: Arc<dyn Store>, count: usize) -> f64 {
    timed(count, |i| {
        let store = store.clone();
        async move {
            store
                .create(&format!("/registry/pods/default/bench-{i}"), pod_json(i))
                .await
                .expect("store create");
        }
    })
    .await
}

async fn raw_list(etcd: &Etcd, count: usize) -> f64 {
    let client = etcd_client::Client::connect([etcd.url()], None)
        .await
        .expect("connecting the raw client");
    let mut kv = client.kv_client().max_decoding_message_size(512 << 20);
    let start = Instant::now();
    let resp = kv
        .get(
            "/raw/pods/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("raw list");
    assert_eq!(resp.kvs().len(), count);
    count as f64 / start.elapsed().as_secs_f64()
}

async fn store_list(store: &dyn Store, count: usize) -> f64 {
    let start = Instant::now();
    let l = store
        .list("/registry/pods/", ListOptions::default())
        .await
        .expect("store list");
    assert_eq!(l.items.len(), count);
    count as f64 / start.elapsed().as_secs_f64()
}

/// One sample of every measurement on one etcd binary.
struct EtcdRound {
    raw_put: f64,
    raw_get: f64,
    raw_txn: f64,
    raw_group: f64,
    etcd_put: f64,
    etcd_get: f64,
}

/// One sample of every measurement: each etcd in `etcds`' order, then the embedded store.
struct Round {
    etcds: Vec<EtcdRound>,
    emb_put: f64,
    emb_get: f64,
}

async fn start_etcd(bin: &std::path::Path) -> Etcd {
    let bin = bin.to_path_buf();
    tokio::task::spawn_blocking(move || Etcd::start_bin(&bin))
        .await
        .expect("etcd")
}

async fn etcd_round(bin: &std::path::Path, n: usize) -> EtcdRound {
    let etcd_raw = start_etcd(bin).await;
    let raw_put = raw_puts(&etcd_raw, n).await;
    let raw_get = raw_list(&etcd_raw, n).await;
    drop(etcd_raw);

    let etcd_t = start_etcd(bin).await;
    let raw_txn = raw_txn_creates(&etcd_t, n).await;
    drop(etcd_t);

    let etcd_g = start_etcd(bin).await;
    let raw_group = raw_grouped_creates(&etcd_g, n).await;
    drop(etcd_g);

    let etcd_b = start_etcd(bin).await;
    let etcd_store: Arc<dyn Store> = Arc::new(
        EtcdStore::connect(&[etcd_b.url()])
            .await
            .expect("etcd backend"),
    );
    let etcd_put = store_creates(etcd_store.clone(), n).await;
    let etcd_get = store_list(etcd_store.as_ref(), n).await;
    drop(etcd_b);
    EtcdRound {
        raw_put,
        raw_get,
        raw_txn,
        raw_group,
        etcd_put,
        etcd_get,
    }
}

async fn round(etcds: &[(String, std::path::PathBuf)], n: usize) -> Round {
    let mut out = Vec::new();
    for (_, bin) in etcds {
        out.push(etcd_round(bin, n).await);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(dir.path().join("state.db")).expect("embedded"));
    let emb_put = store_creates(embedded.clone(), n).await;
    let emb_get = store_list(embedded.as_ref(), n).await;

    Round {
        etcds: out,
        emb_put,
        emb_get,
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let n = a.count;
    // The system's etcd (Debian 12's 3.4, the one the issue names) and Debian trixie's 3.5
    // that `cargo xtask setup` unpacks: etcd 3.5 no longer copies the backend's uncommitted
    // write buffer for every write transaction, which is what a create-if-absent costs on 3.4.
    let system = testkit::which("etcd").expect("etcd is not installed (run `cargo xtask setup`)");
    let etcds: Vec<(String, std::path::PathBuf)> = [system, testkit::etcd35()]
        .into_iter()
        .map(|bin| (format!("etcd {}", testkit::etcd_version(&bin)), bin))
        .collect();
    println!(
        "store bench: {n} pod-sized values (~2 KiB), {CONCURRENCY} writers in flight, on {}",
        etcds
            .iter()
            .map(|(v, _)| v.as_str())
            .collect::<Vec<_>>()
            .join(" and ")
    );

    // The VM is shared with other work: every measurement is taken once per round, so a
    // burst of outside load spoils one round rather than one whole measurement.
    let mut samples: Vec<Round> = Vec::new();
    for r in 0..a.rounds {
        let s = round(&etcds, n).await;
        for ((v, _), e) in etcds.iter().zip(&s.etcds) {
            println!(
                "round {} ({v}): etcd backend {:.0}/s, raw puts {:.0}/s (ratio {:.3}), raw txns {:.0}/s",
                r + 1,
                e.etcd_put,
                e.raw_put,
                e.etcd_put / e.raw_put,
                e.raw_txn,
            );
        }
        println!("round {}: embedded {:.0}/s", r + 1, s.emb_put);
        samples.push(s);
    }
    // Each figure is the round whose ratio is the median one: value and reference come from
    // the same round, measured back to back.
    let paired = |metric: &str,
                  value: &dyn Fn(&Round) -> f64,
                  unit: &str,
                  reference: &str,
                  refv: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<(f64, f64)> = samples.iter().map(|s| (value(s), refv(s))).collect();
        v.sort_by(|x, y| (x.0 / x.1).total_cmp(&(y.0 / y.1)));
        let (val, r) = v[v.len() / 2];
        testkit::bench::figure(metric, val, unit, reference, r, true)
    };

    let mut figures = Vec::new();
    for (i, (v, _)) in etcds.iter().enumerate() {
        fn at(s: &Round, i: usize) -> &EtcdRound {
            &s.etcds[i]
        }
        figures.extend([
            paired(
                &format!("etcd backend creates ({v})"),
                &|s| at(s, i).etcd_put,
                "ops/s",
                &format!("raw etcd-client puts ({v})"),
                &|s| at(s, i).raw_put,
            ),
            paired(
                &format!("etcd backend creates ({v})"),
                &|s| at(s, i).etcd_put,
                "ops/s",
                &format!("raw etcd-client create txns, same compare ({v})"),
                &|s| at(s, i).raw_txn,
            ),
            paired(
                &format!("raw create txns, 4 keys each, not used ({v})"),
                &|s| at(s, i).raw_group,
                "ops/s",
                &format!("raw etcd-client puts ({v})"),
                &|s| at(s, i).raw_put,
            ),
            paired(
                &format!("etcd backend list ({v})"),
                &|s| at(s, i).etcd_get,
                "items/s",
                &format!("raw etcd-client prefix get ({v})"),
                &|s| at(s, i).raw_get,
            ),
            paired(
                "embedded backend creates",
                &|s| s.emb_put,
                "ops/s",
                &format!("etcd backend creates ({v})"),
                &|s| at(s, i).etcd_put,
            ),
            paired(
                "embedded backend list",
                &|s| s.emb_get,
                "items/s",
                &format!("etcd backend list ({v})"),
                &|s| at(s, i).etcd_get,
            ),
        ]);
    }
    testkit::bench::write(&a.out, &figures);
    for f in &figures {
        println!(
            "{:<44} {:>10} {:<8} vs {:<56} {:>10}  ratio {}",
            f["metric"].as_str().unwrap_or(""),
            f["value"],
            f["unit"].as_str().unwrap_or(""),
            f["reference"].as_str().unwrap_or(""),
            f["reference_value"],
            f["ratio"]
        );
    }
    println!(
        "median-ratio round of {}; goals: etcd backend >= 0.8x raw puts; embedded >= 1.0x etcd backend",
        a.rounds
    );
}
