//! `kaze images import` against a real containerd: a tarball's images land in the node's
//! containerd namespace under the names the tarball gives them, not pinned, and nowhere
//! else; bad input is refused with a message naming the problem.

use std::path::Path;
use std::process::{Command, Output};

#[allow(dead_code, unreachable_pub)]
#[path = "../../xtask/src/images.rs"]
mod xtask_images;

/// `kaze images import --container-runtime-endpoint <socket> [--node-name <node>] <file>`.
fn import(socket: &str, node: Option<&str>, file: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kaze"));
    cmd.args(["images", "import", "--container-runtime-endpoint", socket]);
    if let Some(node) = node {
        cmd.args(["--node-name", node]);
    }
    cmd.arg(file)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running kaze")
}

#[test]
fn images_import_puts_tarballs_into_the_nodes_containerd_namespace() {
    let containerd = testkit::Containerd::start();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let tars = xtask_images::build_images(root).expect("building the images");
    let busybox = tars
        .iter()
        .find(|t| t.file_name().is_some_and(|n| n == "busybox.tar"))
        .expect("the busybox tarball");
    let node = format!("images-{}", std::process::id());
    let socket = containerd.socket().display().to_string();

    let out = import(&socket, Some(&node), &busybox.display().to_string());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "kaze images import: {stderr}");
    assert_eq!(
        stdout.trim(),
        "docker.io/kaze/busybox:1",
        "the names imported"
    );
    let listed = containerd.ctr(&["-n", &node, "images", "ls"]);
    let line = listed
        .lines()
        .find(|l| l.starts_with("docker.io/kaze/busybox:1 "))
        .unwrap_or_else(|| panic!("the image in namespace {node}:\n{listed}"));
    assert!(
        !line.contains("io.cri-containerd.pinned"),
        "imported on demand, so not pinned: {line}"
    );
    assert!(
        containerd
            .ctr(&["-n", "default", "images", "ls", "-q"])
            .trim()
            .is_empty(),
        "no other namespace gets it"
    );

    // not a tarball: refused, naming the file; nothing half-imported under a name
    let junk = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(junk.path(), "not an image\n").expect("writing junk");
    let junk_path = junk.path().display().to_string();
    let out = import(&socket, Some(&node), &junk_path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&junk_path),
        "a file that is no image tarball is refused by name: {stderr}"
    );
    assert_eq!(
        containerd.ctr(&["-n", &node, "images", "ls", "-q"]).trim(),
        "docker.io/kaze/busybox:1"
    );
    // a missing file, and no containerd at the socket
    let out = import(&socket, None, "/nonexistent.tar");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("/nonexistent.tar: no such image tarball"),
        "{stderr}"
    );
    let out = import(
        "/nonexistent/containerd.sock",
        None,
        &busybox.display().to_string(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("no containerd socket at /nonexistent/containerd.sock"),
        "{stderr}"
    );
}
