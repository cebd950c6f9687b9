//! Container log rotation, as upstream's container log manager (`--container-log-max-size`,
//! `--container-log-max-files`), with a real containerd, runc and the real kubectl: a
//! chatty container's log is rotated at the size, earlier rotated files are gzipped and the
//! oldest removed so no more than the set number of files is kept; `kubectl logs` shows the
//! current file, and `kubectl logs -f` goes on across rotations without losing a line.

mod support;

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use support::cluster::Cluster;

/// The numbers of the `line N ...` records in CRI log text.
fn numbers(cri: &str) -> Vec<u64> {
    cri.lines()
        .filter_map(|l| {
            let text = l.splitn(4, ' ').nth(3)?;
            text.strip_prefix("line ")?.split(' ').next()?.parse().ok()
        })
        .collect()
}

/// The numbers of `kubectl logs` output lines (`line N ...`).
fn shown(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("line ")?.split(' ').next()?.parse().ok())
        .collect()
}

fn consecutive(n: &[u64]) -> bool {
    n.windows(2).all(|w| w[1] == w[0] + 1)
}

fn gunzip(p: &Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(p).expect("open .gz"))
        .read_to_string(&mut text)
        .expect("gunzip");
    text
}

/// The container's log dir's files, by name.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_logs_rotate_compress_keep_max_files_and_follow_goes_on() {
    let mut c = Cluster::new("logrotate", 250).await;
    c.config.container_log_max_size = "2Ki".into();
    c.config.container_log_max_files = 3;
    c.start_kubelet();
    c.wait_node().await;
    // ~130-byte records, 5 a second: a rotation every ~3 s
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "chatty", "namespace": "default"},
        "spec": {
            "nodeName": c.node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": "kaze/busybox:1",
                "command": ["sh", "-c",
                    "i=0; while true; do i=$((i+1)); echo \"line $i $(printf %070d 0)\"; sleep 0.2; done"],
            }],
        },
    }))
    .expect("pod");
    c.pods("default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let p = c
        .wait_pod("default", "chatty", "Running", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await;
    let uid = p.metadata.uid.expect("uid");
    let dir = c
        .dir
        .path()
        .join("logs")
        .join(format!("default_chatty_{uid}"))
        .join("main");

    // `kubectl logs -f` from the start, read on a thread of its own
    let mut follow = std::process::Command::new(testkit::kubectl())
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["logs", "-f", "chatty"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let followed = Arc::new(Mutex::new(String::new()));
    let reader = {
        let out = follow.stdout.take().expect("stdout");
        let followed = followed.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut f = followed.lock().expect("lock");
                f.push_str(&line);
                f.push('\n');
            }
        })
    };

    // Three rotations or more: the oldest rotated file is gone (line 1 with it), one is
    // compressed, the newest is not.
    let (gz, plain) = testkit::wait_for("three rotations", Duration::from_secs(60), || {
        let dir = dir.clone();
        async move {
            let all = files(&dir);
            let gz: Vec<&PathBuf> = all
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "gz"))
                .collect();
            let plain: Vec<&PathBuf> = all
                .iter()
                .filter(|p| {
                    let name = p.file_name().unwrap_or_default().to_string_lossy();
                    name.starts_with("0.log.") && !name.ends_with(".gz")
                })
                .collect();
            let first = gz.first().map(|g| numbers(&gunzip(g)));
            let dropped = first.is_some_and(|n| n.first().is_some_and(|f| *f > 1));
            (all.len() == 3 && gz.len() == 1 && plain.len() == 1 && dropped)
                .then(|| (gz[0].clone(), plain[0].clone()))
        }
    })
    .await;
    let names: Vec<String> = [&gz, &plain]
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for name in &names {
        let stamp = name.trim_start_matches("0.log.").trim_end_matches(".gz");
        assert!(
            stamp.len() == 15 && stamp.as_bytes()[8] == b'-',
            "upstream's <log>.<YYYYMMDD-hhmmss>[.gz]: {name}"
        );
    }
    // the files hold one run of lines, oldest first, each rotated at about the size
    let old = numbers(&gunzip(&gz));
    let newer = numbers(&std::fs::read_to_string(&plain).expect("rotated file"));
    assert!(!old.is_empty() && consecutive(&old), "{old:?}");
    assert!(!newer.is_empty() && consecutive(&newer), "{newer:?}");
    assert_eq!(newer[0], old[old.len() - 1] + 1, "{old:?} then {newer:?}");
    let size = std::fs::metadata(&plain).expect("rotated").len();
    assert!(
        (2048..2048 + 400).contains(&size),
        "rotated once it reached 2Ki: {size} bytes"
    );
    assert!(std::fs::metadata(dir.join("0.log")).expect("current").len() < 2048 + 400);

    // `kubectl logs` shows the file being written, as upstream's kubelet
    // (just after a rotation the file is empty, and so is the answer)
    let now = testkit::wait_for("kubectl logs", Duration::from_secs(10), || async {
        let now = shown(&c.kubectl(&["logs", "chatty"]));
        (!now.is_empty()).then_some(now)
    })
    .await;
    assert!(
        !now.is_empty() && consecutive(&now) && now[0] > newer[0],
        "only the current file: {now:?} (rotated: {newer:?})"
    );

    // the follow saw every line since the first, through every rotation
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = reader.join();
    let seen = shown(&followed.lock().expect("lock"));
    assert!(
        seen.first() == Some(&1) && consecutive(&seen),
        "kubectl logs -f lost or repeated lines across rotations: {seen:?}"
    );
    assert!(
        seen.last() >= now.last(),
        "the follow kept up: {seen:?} vs {now:?}"
    );

    c.pods("default")
        .delete("chatty", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_pod_gone("default", "chatty").await;
}

/// Upstream's checks of the two settings, before anything starts.
#[test]
fn bad_rotation_settings_are_refused() {
    let mut config = support::node_config(
        Path::new("/nonexistent/kubeconfig"),
        PathBuf::from("/nonexistent/ca.crt"),
        "logcheck",
        Path::new("/nonexistent/containerd.sock"),
        Path::new("/nonexistent/root"),
        PathBuf::from("/nonexistent/logs"),
        "kzlogchk",
    );
    assert_eq!(
        config.log_rotation().expect("defaults"),
        kubelet::logs::Rotation {
            max_size: 10 * 1024 * 1024,
            max_files: 5
        }
    );
    config.container_log_max_files = 1;
    let err = config.log_rotation().expect_err("one file");
    assert!(
        err.contains("--container-log-max-files (1) must be greater than 1"),
        "{err}"
    );
    config.container_log_max_files = 2;
    config.container_log_max_size = "lots".into();
    let err = config.log_rotation().expect_err("not a quantity");
    assert!(err.contains("--container-log-max-size \"lots\""), "{err}");
}
