//! `kubectl exec`, `attach` and `port-forward` end to end: the real kubectl, the real kaze
//! apiserver (in-process) proxying to this kubelet's HTTPS server, a real containerd, runc
//! and CNI. Exec and attach run over WebSocket `v5.channel.k8s.io` (kubectl 1.37's default)
//! and over SPDY; port-forward over SPDY, tunnelled in a WebSocket (the default) or not.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use testkit::wait_for as eventually;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Run kubectl off the async runtime (the kubelet and apiserver share it).
async fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let (kc, args, stdin) = (
        kubeconfig.to_path_buf(),
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        stdin.map(str::to_string),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        testkit::kubectl_with(&kc, &args, stdin.as_deref())
    })
    .await
    .expect("kubectl task")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One HTTP/1.0 request through the forwarded local port; returns the body's last line.
fn http_get(port: u16) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.") {
        return Err(std::io::Error::other(format!(
            "not an HTTP answer: {out:?}"
        )));
    }
    Ok(out.trim_end().lines().last().unwrap_or("").to_string())
}

/// kubectl's switch between WebSocket and SPDY for exec and attach.
const REMOTE_COMMAND_WEBSOCKETS: &str = "KUBECTL_REMOTE_COMMAND_WEBSOCKETS";

/// kubectl with WebSockets off for exec/attach: SPDY.
fn kubectl_spdy(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(testkit::kubectl())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env(REMOTE_COMMAND_WEBSOCKETS, "false")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("kubectl stdin")
            .write_all(input.as_bytes())
            .expect("writing kubectl stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("kubectl output")
}

/// The first `count` lines `kubectl attach ticker` prints.
fn attach_lines(kubeconfig: &Path, websockets: bool, count: usize) -> Vec<String> {
    let mut attached = testkit::ChildGuard::new(
        Command::new(testkit::kubectl())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["attach", "ticker"])
            .env(REMOTE_COMMAND_WEBSOCKETS, websockets.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl attach"),
    );
    let stdout = attached
        .0
        .as_mut()
        .and_then(|c| c.stdout.take())
        .expect("stdout");
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    (0..count)
        .map(|_| {
            line_rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_default()
        })
        .collect()
}

/// `kubectl attach -i <pod>` with `input` piped in, stopped after `secs` at the latest (an
/// attach follows a process that never ends); (exited 0, stdout, stderr).
async fn attach_i(kubeconfig: &Path, pod: &str, input: &str, secs: u32) -> (bool, String, String) {
    let (kc, pod, input) = (kubeconfig.to_path_buf(), pod.to_string(), input.to_string());
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("timeout")
            .arg(secs.to_string())
            .arg(testkit::kubectl())
            .arg("--kubeconfig")
            .arg(&kc)
            .args(["attach", "-i", &pod])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl attach -i");
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes());
        let out = child.wait_with_output().expect("kubectl attach -i output");
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    })
    .await
    .expect("attach -i task")
}

/// kube-rs's port-forward, by hand: a WebSocket in `v5.channel.k8s.io` with `?ports=`,
/// straight to the kubelet, as `id` (the apiserver). Sends `request`
/// on port 0's data channel; returns every channel's bytes, in order, until the kubelet
/// ends the session.
async fn channel_port_forward(
    kubelet_port: u16,
    id: &support::tls::Identity,
    pod: &str,
    ports: &[u16],
    request: &[u8],
) -> Vec<(u8, Vec<u8>)> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

    let tls = support::tls::connect(kubelet_port, Some(id)).await;
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let url = format!(
        "wss://127.0.0.1:{kubelet_port}/portForward/{pod}?ports={}",
        list.join(",")
    );
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "v5.channel.k8s.io, v4.channel.k8s.io"
            .parse()
            .expect("header"),
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls)
        .await
        .expect("websocket handshake");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"v5.channel.k8s.io"[..])
    );
    let mut msg = vec![0u8];
    msg.extend_from_slice(request);
    ws.send(Message::binary(msg)).await.expect("send");
    let mut got = Vec::new();
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Binary(b) = m {
                if let Some((&channel, data)) = b.split_first() {
                    got.push((channel, data.to_vec()));
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the kubelet ends the session");
    got
}

/// Run `kubectl port-forward pod/web :<port>` and make `count` HTTP requests through it;
/// an error carries what kubectl said.
fn port_forward(
    kubeconfig: &Path,
    port: u16,
    websockets: bool,
    count: usize,
) -> Vec<Result<String, String>> {
    let mut pf = testkit::ChildGuard::new(
        Command::new(testkit::kubectl())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["port-forward", "pod/web", &format!(":{port}")])
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl port-forward"),
    );
    let stdout = pf.0.as_mut().and_then(|c| c.stdout.take()).expect("stdout");
    // kubectl prints "Handling connection for 8080" per connection: keep reading its
    // stdout, or it dies of SIGPIPE.
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // "Forwarding from 127.0.0.1:40123 -> 8080"
            if let Some(addr) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                let port = addr
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u16>().ok());
                let _ = port_tx.send(port);
            }
        }
    });
    let local = port_rx
        .recv_timeout(Duration::from_secs(20))
        .ok()
        .flatten()
        .expect("kubectl port-forward names its local port");
    let answers: Vec<std::io::Result<String>> = (0..count).map(|_| http_get(local)).collect();
    if answers.iter().all(Result::is_ok) {
        let _ = pf.terminate(Duration::from_secs(5));
        return answers
            .into_iter()
            .map(|a| a.map_err(|e| e.to_string()))
            .collect();
    }
    // Give kubectl a moment to print the error it got, then take its stderr.
    let mut child = pf.0.take().expect("port-forward runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("port-forward output");
    answers
        .into_iter()
        .map(|a| a.map_err(|e| format!("{e}; kubectl port-forward said: {}", text(&out.stderr))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_attach_and_port_forward_reach_the_pods_containers() {
    let dir = tempfile::Builder::new()
        .prefix("kaze-kubelet-exec-")
        .tempdir()
        .expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path().join("api")))
        .await
        .expect("apiserver");
    let kubeconfig = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kubeconfig)).await.expect("client");
    let pid = std::process::id();
    let node = format!("kl-exec-{pid}");
    let cgroup_root = format!("/kaze-test/{node}");
    // Declared before containerd, so dropped after it has killed the tasks.
    let _cgroups = support::CgroupGuard(cgroup_root.clone());
    let _leftovers = testkit::NodeGuard {
        node: node.clone(),
        // 10.244.220.0/24 is this test's alone (node_api 200, volumes 201-203, restart 210-211).
        pod_ip_prefix: "10.244.220.".into(),
    };
    let containerd = tokio::task::spawn_blocking(testkit::Containerd::start)
        .await
        .expect("containerd");
    let root = dir.path().join("kubelet");
    let images = root.join("agent/images");
    std::fs::create_dir_all(&images).expect("images dir");
    for tar in support::image_tarballs() {
        std::fs::copy(tar, images.join(tar.file_name().expect("name"))).expect("copy image");
    }
    let bridge = format!("kze{}", pid % 100_000);
    let _bridge = testkit::LinkGuard(bridge.clone());
    let kubelet_port = testkit::free_port();
    let config = kubelet::node::Config {
        port: kubelet_port,
        ..support::node_config(
            &kubeconfig,
            server.ca_file(),
            &node,
            &containerd.socket(),
            &root,
            dir.path().join("logs"),
            &bridge,
        )
    };
    let token = component::CancellationToken::new();
    let kl = tokio::spawn(kubelet::node::run(config, token.clone()));

    let nodes: Api<Node> = Api::all(client.clone());
    eventually("node registration", Duration::from_secs(20), || {
        let (nodes, node) = (nodes.clone(), node.clone());
        async move { nodes.get_opt(&node).await.ok().flatten() }
    })
    .await;
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"podCIDR": "10.244.220.0/24", "podCIDRs": ["10.244.220.0/24"]}}),
            ),
        )
        .await
        .expect("assigning the pod CIDR");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for pod in [
        json!({"metadata": {"name": "shell"},
               "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "main", "image": "kaze/busybox:1", "command": ["sh", "-c", "sleep 3600"]}]}}),
        json!({"metadata": {"name": "mixed"},
               "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": "kaze/busybox:1", "command": ["sh", "-c", "sleep 3600"]},
                                       {"name": "done", "image": "kaze/busybox:1", "command": ["true"]}]}}),
        json!({"metadata": {"name": "ticker"},
               "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "main", "image": "kaze/busybox:1",
                                        "command": ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]}]}}),
        // stdin closed by the first attach's end (as `kubectl run -i` makes them)
        json!({"metadata": {"name": "reader"},
               "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": "kaze/busybox:1", "stdin": true, "stdinOnce": true,
                                        "command": ["sh", "-c", "while read l; do echo \"got $l\"; done; echo stdin closed"]}]}}),
        // stdin that stays open across attaches
        json!({"metadata": {"name": "listener"},
               "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "main", "image": "kaze/busybox:1", "stdin": true,
                                        "command": ["sh", "-c", "while read l; do echo \"got $l\"; done; echo stdin closed"]}]}}),
        json!({"metadata": {"name": "web"},
               "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "echo", "image": "kaze/echo:1"}]}}),
    ] {
        let pod: Pod = serde_json::from_value(pod).expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
    }
    for name in ["shell", "mixed", "ticker", "web", "reader", "listener"] {
        eventually(
            &format!("pod {name} Running"),
            Duration::from_secs(60),
            || {
                let pods = pods.clone();
                async move {
                    let p = pods.get(name).await.ok()?;
                    (p.status?.phase.as_deref() == Some("Running")).then_some(())
                }
            },
        )
        .await;
    }

    // stdout and stderr come back apart.
    let out = kubectl(
        &kubeconfig,
        &[
            "exec",
            "shell",
            "--",
            "sh",
            "-c",
            "echo to-out; echo to-err >&2",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "kubectl exec: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to-out\n");
    assert!(
        text(&out.stderr).contains("to-err"),
        "stderr: {}",
        text(&out.stderr)
    );

    // stdin reaches the command, and its end is the command's EOF (v5 close signal).
    let out = kubectl(
        &kubeconfig,
        &["exec", "-i", "shell", "--", "cat"],
        Some("hello\nworld\n"),
    )
    .await;
    assert!(
        out.status.success(),
        "kubectl exec -i: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "hello\nworld\n");
    let input: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    let out = kubectl(
        &kubeconfig,
        &["exec", "-i", "shell", "--", "wc", "-l"],
        Some(&input),
    )
    .await;
    assert!(
        out.status.success(),
        "kubectl exec -i wc: {}",
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout).trim(),
        "20000",
        "all of a larger input arrives"
    );

    // The command's exit code is kubectl's.
    let out = kubectl(
        &kubeconfig,
        &["exec", "shell", "--", "sh", "-c", "exit 3"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("command terminated with exit code 3"),
        "{}",
        text(&out.stderr)
    );
    // The same over SPDY (kubectl with WebSockets off; older clients): streams per channel,
    // stdin ended by FIN, the status on the error stream.
    let spdy = |args: &'static [&'static str], stdin: Option<&'static str>| {
        let kc = kubeconfig.clone();
        async move {
            tokio::task::spawn_blocking(move || kubectl_spdy(&kc, args, stdin))
                .await
                .expect("kubectl task")
        }
    };
    let out = spdy(
        &[
            "exec",
            "shell",
            "--",
            "sh",
            "-c",
            "echo to-out; echo to-err >&2",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "SPDY exec: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to-out\n");
    assert!(
        text(&out.stderr).contains("to-err"),
        "{}",
        text(&out.stderr)
    );
    let out = spdy(&["exec", "-i", "shell", "--", "cat"], Some("over\nspdy\n")).await;
    assert!(out.status.success(), "SPDY exec -i: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "over\nspdy\n");
    let out = spdy(&["exec", "shell", "--", "sh", "-c", "exit 4"], None).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));

    // The command lives as long as its session: kubectl going away kills it.
    let ps = |kubeconfig: std::path::PathBuf| async move {
        let out = kubectl(&kubeconfig, &["exec", "shell", "--", "ps"], None).await;
        text(&out.stdout)
    };
    let long = testkit::ChildGuard::new(
        Command::new(testkit::kubectl())
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["exec", "shell", "--", "sleep", "1234"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl exec sleep"),
    );
    eventually("the exec'd sleep runs", Duration::from_secs(20), || {
        let (ps, kc) = (ps, kubeconfig.clone());
        async move { ps(kc).await.contains("sleep 1234").then_some(()) }
    })
    .await;
    drop(long);
    eventually(
        "the exec'd sleep is killed",
        Duration::from_secs(20),
        || {
            let (ps, kc) = (ps, kubeconfig.clone());
            async move { (!ps(kc).await.contains("sleep 1234")).then_some(()) }
        },
    )
    .await;

    // -it: the command runs on a terminal of kubectl's size (kubectl needs a terminal itself:
    // `script` gives it one); over WebSockets and over SPDY (resize stream).
    for websockets in [true, false] {
        let kubeconfig = kubeconfig.clone();
        let out = tokio::task::spawn_blocking(move || {
            let kubectl = format!(
                "stty rows 33 cols 77; {} --kubeconfig {} exec -it shell -- sh -c 'tty; sleep 1; stty size'",
                testkit::kubectl().display(),
                kubeconfig.display()
            );
            Command::new("script")
                .args(["-qec", &kubectl, "/dev/null"])
                .env(REMOTE_COMMAND_WEBSOCKETS, websockets.to_string())
                .stdin(Stdio::null())
                .output()
                .expect("script")
        })
        .await
        .expect("script task");
        assert!(
            text(&out.stdout).contains("/dev/pts/"),
            "a terminal in the container (websockets={websockets}): {} {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        // kubectl sends its terminal's size; the container's terminal takes it.
        assert!(
            text(&out.stdout).contains("33 77"),
            "the terminal is resized (websockets={websockets}): {}",
            text(&out.stdout)
        );
    }

    // Straight to the kubelet (as the apiserver, with its client certificate): a pod or
    // container it does not run is a 404 that says so.
    let apiserver_id = support::tls::Identity::apiserver(&server);
    let kubelet_get =
        |path: &'static str| support::tls::get(kubelet_port, path, Some(&apiserver_id));
    let answer = kubelet_get("/exec/default/nosuch/main?command=ls&stdout=1").await;
    assert_eq!(
        answer,
        (
            404,
            "pod default/nosuch is not running on this node".to_string()
        )
    );
    let answer = kubelet_get("/exec/default/shell/nope?command=ls&stdout=1").await;
    assert_eq!(
        answer,
        (
            404,
            "container \"nope\" not found in pod default/shell (not running on this node)"
                .to_string()
        )
    );
    let answer = kubelet_get("/portForward/default/nosuch").await;
    assert_eq!(answer.0, 404, "{answer:?}");

    // A command that cannot start is an error, not a hang, worded as upstream's (the
    // containerd CRI streaming server's, under kubectl's `Internal error occurred`).
    let out = kubectl(
        &kubeconfig,
        &["exec", "shell", "--", "/no/such/binary"],
        None,
    )
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.starts_with(
            "error: Internal error occurred: error executing command in container: \
             failed to exec in container: failed to start exec \""
        ) && err.contains("OCI runtime exec failed")
            && err.contains("/no/such/binary"),
        "{err}"
    );
    // Unknown containers are refused before anything runs.
    let out = kubectl(
        &kubeconfig,
        &["exec", "shell", "-c", "nope", "--", "ls"],
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("container nope is not valid for pod shell"),
        "{}",
        text(&out.stderr)
    );

    // A container that has exited is gone from the node: refused before the upgrade, as
    // upstream's "container not found".
    eventually("container done exited", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move {
            let st = pods.get("mixed").await.ok()?.status?;
            st.container_statuses?
                .iter()
                .any(|c| {
                    c.name == "done" && c.state.as_ref().is_some_and(|s| s.terminated.is_some())
                })
                .then_some(())
        }
    })
    .await;
    let out = kubectl(
        &kubeconfig,
        &["exec", "mixed", "-c", "done", "--", "ls"],
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(
            "container \"done\" not found in pod default/mixed (not running on this node)"
        ),
        "{}",
        text(&out.stderr)
    );

    // kubectl cp is tar over exec: binary data both ways, byte for byte.
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let local = dir.path().join("blob.bin");
    std::fs::write(&local, &data).expect("write blob");
    let back = dir.path().join("blob.back");
    for args in [
        vec![
            "cp".to_string(),
            local.display().to_string(),
            "shell:/tmp/blob.bin".into(),
        ],
        vec![
            "cp".to_string(),
            "shell:/tmp/blob.bin".into(),
            back.display().to_string(),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = kubectl(&kubeconfig, &args, None).await;
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(
        std::fs::read(&back).expect("copied back") == data,
        "kubectl cp round trip changed the bytes"
    );

    // attach: the main process's output as it is written, over WebSockets and SPDY.
    for websockets in [true, false] {
        let kc = kubeconfig.clone();
        let lines = tokio::task::spawn_blocking(move || attach_lines(&kc, websockets, 3))
            .await
            .expect("attach task");
        let ticks: Vec<u32> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
            .collect();
        assert_eq!(
            ticks.len(),
            3,
            "kubectl attach streams the output (websockets={websockets}): {lines:?}"
        );
        assert!(
            ticks.windows(2).all(|w| w[1] == w[0] + 1),
            "consecutive lines, live: {ticks:?}"
        );
    }

    // attach -i to a container without stdin: the output still flows, and kubectl shows
    // the kubelet's notice that the input goes nowhere (it is not silently dropped).
    let (_, stdout, stderr) = attach_i(&kubeconfig, "ticker", "hello\n", 5).await;
    assert!(
        stderr.contains("has no stdin to attach to") && stderr.contains("input is not delivered"),
        "kubectl attach -i tells why input goes nowhere: {stderr}"
    );
    assert!(
        stdout.contains("tick "),
        "kubectl attach -i still shows the output: {stdout}"
    );

    // attach -i to a container with stdin and stdinOnce: it reads every line sent, then end
    // of file when the attach ends, so it finishes (and kubectl with it).
    let (ok, stdout, stderr) = attach_i(&kubeconfig, "reader", "one\ntwo\nthree\n", 30).await;
    assert!(
        ok && stdout.contains("got one\ngot two\ngot three\nstdin closed"),
        "kubectl attach -i feeds the container's stdin and stdinOnce closes it:\nstdout: {stdout}\nstderr: {stderr}"
    );
    eventually("pod reader Succeeded", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("reader").await.ok()?;
            (p.status?.phase.as_deref() == Some("Succeeded")).then_some(())
        }
    })
    .await;

    // Without stdinOnce the stdin stays open: a second attach's input reaches the same
    // process, which has not seen an end of file.
    for word in ["first", "second"] {
        let input = format!("{word}\n");
        let (_, stdout, stderr) = attach_i(&kubeconfig, "listener", &input, 6).await;
        assert!(
            stdout.contains(&format!("got {word}")) && !stdout.contains("stdin closed"),
            "attach -i to a container whose stdin stays open ({word}):\nstdout: {stdout}\nstderr: {stderr}"
        );
    }
    // (the log file is written beside the attach stream: give it a moment)
    let mut logs = String::new();
    for _ in 0..20 {
        logs = text(
            &kubectl(&kubeconfig, &["logs", "listener"], None)
                .await
                .stdout,
        );
        if logs == "got first\ngot second\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        logs, "got first\ngot second\n",
        "one process read both attaches' input and is still reading"
    );

    // kubectl run -i --rm: a one-off pod fed from kubectl's stdin, deleted afterwards.
    let overrides = json!({"apiVersion": "v1",
                           "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1}})
    .to_string();
    let run = kubectl(
        &kubeconfig,
        &[
            "run",
            "one-off",
            "-i",
            "--rm",
            "--restart=Never",
            "--image=kaze/busybox:1",
            "--overrides",
            &overrides,
            "--",
            "sh",
            "-c",
            "read l; echo \"you said $l\"",
        ],
        Some("hi\n"),
    )
    .await;
    assert!(
        run.status.success() && text(&run.stdout).contains("you said hi"),
        "kubectl run -i --rm:\nstdout: {}\nstderr: {}",
        text(&run.stdout),
        text(&run.stderr)
    );
    eventually("pod one-off deleted", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move { pods.get_opt("one-off").await.ok()?.is_none().then_some(()) }
    })
    .await;

    // kubectl run -it on a terminal (`script` gives kubectl one): the container runs on a
    // terminal of its own, what is typed reaches it, and its output comes back.
    let command = format!(
        "{} --kubeconfig {} run term -it --rm --restart=Never --image=kaze/busybox:1 --overrides '{}' -- sh -c 'read l; echo \"got $l on $(tty)\"'",
        testkit::kubectl().display(),
        kubeconfig.display(),
        overrides
    );
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("timeout")
            .args(["60", "script", "-qec", &command, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script kubectl run -it");
        let mut input = child.stdin.take().expect("stdin");
        // typed once the session is up (kubectl waits for the pod to run first); the pipe
        // stays open until the session ends, as a user's keyboard would
        std::thread::spawn(move || {
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(500));
                if input.write_all(b"typed\r").is_err() {
                    return;
                }
            }
        });
        child.wait_with_output().expect("script output")
    })
    .await
    .expect("kubectl run -it task");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("got typed on /dev/pts/"),
        "kubectl run -it reaches a terminal in the container:\nstdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );

    // kubectl debug: an ephemeral container added to the running pod through
    // pods/<n>/ephemeralcontainers, run by the kubelet in the pod's sandbox with stdin, in
    // the process namespace of its target (its `ps` shows the target's `sleep 3600`), and
    // reported in ephemeralContainerStatuses once it has ended.
    let debug = kubectl(
        &kubeconfig,
        &[
            "debug",
            "shell",
            "-i",
            "--image=kaze/busybox:1",
            "--target=main",
            "--container=debugger",
            "--",
            "sh",
            "-c",
            "read l; echo \"debugger got $l\"; ps",
        ],
        Some("hi\n"),
    )
    .await;
    let stdout = text(&debug.stdout);
    assert!(
        debug.status.success() && stdout.contains("debugger got hi") && stdout.contains("sleep 3600"),
        "kubectl debug -i --target reaches an ephemeral container in the target's process namespace:\nstdout: {stdout}\nstderr: {}",
        text(&debug.stderr)
    );
    eventually(
        "the ephemeral container's status",
        Duration::from_secs(30),
        || {
            let pods = pods.clone();
            async move {
                let p = pods.get("shell").await.ok()?;
                let status = p.status?;
                let e = status
                    .ephemeral_container_statuses?
                    .into_iter()
                    .find(|c| c.name == "debugger")?;
                let done = e.state?.terminated?;
                // the pod itself is untouched: still running and ready
                let app = status
                    .container_statuses?
                    .into_iter()
                    .find(|c| c.name == "main")?;
                (done.exit_code == 0 && app.ready && app.restart_count == 0).then_some(())
            }
        },
    )
    .await;
    let logs = kubectl(&kubeconfig, &["logs", "shell", "-c", "debugger"], None).await;
    assert!(
        text(&logs.stdout).contains("debugger got hi"),
        "kubectl logs of the ephemeral container: {}",
        text(&logs.stdout)
    );

    // port-forward: two connections through one session reach the echo server in the pod,
    // over SPDY tunnelled in a WebSocket (kubectl's default) and over plain SPDY.
    for websockets in [true, false] {
        let kc = kubeconfig.clone();
        let answers = tokio::task::spawn_blocking(move || port_forward(&kc, 8080, websockets, 2))
            .await
            .expect("port-forward task");
        for answer in answers {
            let answer = answer.unwrap_or_else(|e| panic!("websockets={websockets}: {e}"));
            assert!(
                answer.starts_with("web "),
                "the echo pod answers with its name (websockets={websockets}): {answer:?}"
            );
        }
    }
    // kube-rs's protocol: the WebSocket channel port-forward with `?ports=`, one connection
    // per port; each channel starts with its port number, a failure is on the error channel,
    // and v5 half-closes the data channel when the pod side is done.
    let got = channel_port_forward(
        kubelet_port,
        &apiserver_id,
        "default/web",
        &[8080, 9999],
        b"GET / HTTP/1.0\r\n\r\n",
    )
    .await;
    for (channel, port) in [(0u8, 8080u16), (1, 8080), (2, 9999), (3, 9999)] {
        assert!(
            got.iter()
                .find(|(c, _)| *c == channel)
                .map(|(_, d)| d.as_slice())
                == Some(&port.to_le_bytes()[..]),
            "channel {channel} starts with port {port}: {got:?}"
        );
    }
    let body: Vec<u8> = got
        .iter()
        .filter(|(c, _)| *c == 0)
        .skip(1)
        .flat_map(|(_, d)| d.clone())
        .collect();
    let body = text(&body);
    assert!(
        body.starts_with("HTTP/1.")
            && body
                .trim_end()
                .lines()
                .last()
                .is_some_and(|l| l.starts_with("web ")),
        "the echo pod's answer on channel 0: {body:?}"
    );
    let errors: Vec<u8> = got
        .iter()
        .filter(|(c, _)| *c == 3)
        .skip(1)
        .flat_map(|(_, d)| d.clone())
        .collect();
    assert!(
        text(&errors).contains("error forwarding port 9999 to pod default/web"),
        "channel 3: {}",
        text(&errors)
    );
    assert!(
        got.contains(&(255, vec![0])),
        "v5 closes channel 0 after the answer: {got:?}"
    );

    // Nothing listens on 9999 in the pod: kubectl reports the kubelet's error.
    let kc = kubeconfig.clone();
    let answers = tokio::task::spawn_blocking(move || port_forward(&kc, 9999, true, 1))
        .await
        .expect("port-forward task");
    let err = answers[0]
        .as_ref()
        .expect_err("no answer from a closed port");
    assert!(
        err.contains("error forwarding port 9999 to pod default/web") && err.contains("refused"),
        "{err}"
    );

    // The kubelet stops and removes the pods (nothing left in containerd or on the host).
    for name in ["shell", "mixed", "ticker", "web", "reader", "listener"] {
        pods.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    eventually(
        "pods removed by the kubelet",
        Duration::from_secs(30),
        || {
            let pods = pods.clone();
            async move {
                let left = pods.list(&Default::default()).await.ok()?;
                left.items.is_empty().then_some(())
            }
        },
    )
    .await;
    token.cancel();
    kl.await
        .expect("kubelet task")
        .expect("kubelet stops cleanly");
    drop(containerd);
    server.shutdown().await;
}
