//! The embedded store's durability promise: a kill -9 loses no acknowledged write.
//!
//! The test re-runs its own binary as a child that writes keys as fast as it can and prints
//! each key once the store acknowledged it; the parent SIGKILLs the child mid-stream, reopens
//! the database and checks that every acknowledged key is there.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use store::embedded::EmbeddedStore;
use store::Store;

const CHILD_ENV: &str = "KAZE_STORE_DURABILITY_CHILD_DB";

#[test]
fn kill_nine_loses_no_acknowledged_write() {
    if let Ok(db) = std::env::var(CHILD_ENV) {
        return child_writer(&db);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("state.db");
    let mut child = Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "--exact",
            "kill_nine_loses_no_acknowledged_write",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning the writer child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acked = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    while let Some(Ok(line)) = lines.next() {
        if let Some(key) = line.strip_prefix("ack ") {
            acked.push(key.to_string());
            if acked.len() == 400 {
                child.kill().expect("SIGKILL the writer");
                break;
            }
        }
    }
    // Anything the child printed before it died was acknowledged too.
    for line in lines.map_while(Result::ok) {
        if let Some(key) = line.strip_prefix("ack ") {
            acked.push(key.to_string());
        }
    }
    let _ = child.wait();
    assert!(
        acked.len() >= 400,
        "the child acknowledged only {} writes",
        acked.len()
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = EmbeddedStore::open(&db).expect("reopening after kill -9");
        for key in &acked {
            let kv = store
                .get(key)
                .await
                .expect("get")
                .unwrap_or_else(|| panic!("acknowledged write {key} was lost"));
            assert_eq!(kv.value, Bytes::from(key.clone().into_bytes()));
        }
        // The store is usable and its revisions continue upward.
        let rev = store.current_revision().await.expect("rev");
        let kv = store
            .create("/after/restart", Bytes::from_static(b"x"))
            .await
            .expect("write after reopen");
        assert!(kv.mod_revision > rev);
    });
}

fn child_writer(db: &str) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = EmbeddedStore::open(db).expect("opening the store");
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("/registry/pods/w{t}/p{i}");
                    store
                        .create(&key, Bytes::from(key.clone().into_bytes()))
                        .await
                        .expect("write");
                    println!("ack {key}");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}
