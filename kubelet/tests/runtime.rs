//! The runtime layer against real containerd, runc, CNI plugins and network namespaces.
//! Each test has its own containerd, node name, bridge and pod CIDR, so they run in parallel.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use kubelet::spec::Resources;
use kubelet::{ContainerConfig, ContainerState};
use support::{eventually, TestNode};

#[tokio::test(flavor = "multi_thread")]
async fn images_import_by_name_and_a_missing_image_fails_fast() {
    let node = TestNode::start("kt-images", 11).await;
    let ns = node.rt.config().node_name.clone();
    let listed = node.containerd().ctr(&["-n", &ns, "images", "ls", "-q"]);
    for name in [
        "docker.io/kaze/pause:1",
        "docker.io/kaze/busybox:1",
        "docker.io/kaze/echo:1",
    ] {
        assert!(listed.lines().any(|l| l == name), "{name} not in {listed}");
        let img = node
            .rt
            .resolve_image(name)
            .await
            .expect("resolving an imported image");
        assert!(img.digest.starts_with("sha256:"));
    }
    // The air-gap dir (<root-dir>/agent/images) imports every tarball in it; importing
    // again is a no-op that succeeds.
    let air_gap = node.rt.config().air_gap_images_dir();
    std::fs::create_dir_all(&air_gap).unwrap();
    for tar in support::image_tarballs() {
        std::fs::copy(tar, air_gap.join(tar.file_name().unwrap())).unwrap();
    }
    let mut names = node
        .rt
        .import_air_gap_images()
        .await
        .expect("air-gap import");
    names.sort();
    assert_eq!(
        names,
        [
            "docker.io/kaze/busybox:1",
            "docker.io/kaze/echo:1",
            "docker.io/kaze/pause:1"
        ]
    );
    // The CLI path: a bare connection into another namespace.
    let imported = kubelet::images::import_file(
        &node.containerd().socket(),
        "cli-check",
        &support::image_tarballs()[1],
    )
    .await
    .expect("import_file");
    assert_eq!(imported, ["docker.io/kaze/busybox:1"]);
    let listed = node
        .containerd()
        .ctr(&["-n", "cli-check", "images", "ls", "-q"]);
    assert_eq!(listed.trim(), "docker.io/kaze/busybox:1");
    // A tarball that is not an image layout is a clear error.
    let junk = node.dir.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar").unwrap();
    let err = node
        .rt
        .import_image(&junk)
        .await
        .expect_err("junk is refused")
        .to_string();
    assert!(
        err.starts_with(&format!("importing image tarball {}", junk.display())),
        "{err}"
    );

    // ctr agrees the tarballs are valid OCI layouts with those names.
    for tar in support::image_tarballs() {
        node.containerd().ctr(&[
            "-n",
            "ctr-check",
            "images",
            "import",
            &tar.display().to_string(),
        ]);
    }
    let by_ctr = node
        .containerd()
        .ctr(&["-n", "ctr-check", "images", "ls", "-q"]);
    assert!(by_ctr.contains("docker.io/kaze/busybox:1"), "{by_ctr}");

    let started = std::time::Instant::now();
    let err = node
        .rt
        .resolve_image("kaze/missing:1")
        .await
        .expect_err("a missing image must fail");
    assert!(err.is_image_not_present());
    let msg = err.to_string();
    assert!(
        msg.contains("docker.io/kaze/missing:1 is not present") && msg.contains("no registry"),
        "{msg}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let sandbox = node.run_sandbox(&node.sandbox_config("missing-img")).await;
    let c = ContainerConfig {
        name: "app".into(),
        image: "kaze/missing:1".into(),
        ..Default::default()
    };
    let err = node
        .rt
        .run_container(&sandbox, &c)
        .await
        .expect_err("container with a missing image");
    assert!(err.is_image_not_present(), "{err}");
    node.rt
        .remove_pod(&sandbox.uid)
        .await
        .expect("removing the pod");
    node.assert_pod_gone(&sandbox);
}

#[tokio::test(flavor = "multi_thread")]
async fn busybox_pod_logs_hi_gets_an_ip_and_cluster_dns_then_tears_down_cleanly() {
    let node = TestNode::start("kt-busybox", 12).await;
    let (sandbox, c) = node
        .busybox_pod("web-1", "echo hi; echo oops >&2; sleep 3600")
        .await;
    let ip = sandbox.ip().expect("the pod has an ip");
    assert!(node.in_subnet(ip), "{ip} not in {}", node.subnet);

    let log = eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&c.log_path).ok()?;
        (text.contains(" stdout F hi\n") && text.contains(" stderr F oops\n")).then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("no CRI log lines in {}", c.log_path.display()));
    let first = log.lines().next().unwrap();
    let ts = first.split(' ').next().unwrap();
    assert!(
        ts.parse::<jiff::Timestamp>().is_ok(),
        "bad CRI timestamp in {first:?}"
    );
    assert!(c
        .log_path
        .ends_with(format!("default_web-1_{}/main/0.log", sandbox.uid)));

    let ContainerState::Running { pid } = node.rt.container_state(&c.id).await.unwrap() else {
        panic!("container not running")
    };
    // The container's own view of its files, through its mount namespace.
    let resolv = std::fs::read_to_string(format!("/proc/{pid}/root/etc/resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 10.43.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    let hosts = std::fs::read_to_string(format!("/proc/{pid}/root/etc/hosts")).unwrap();
    assert!(hosts.contains(&format!("{ip}\tweb-1")), "{hosts}");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let inside = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-u",
            "-n",
            "sh",
            "-c",
            "hostname; ip -4 -o addr show eth0; ip -4 -o addr show lo; ip -o link show lo",
        ])
        .output()
        .unwrap();
    let inside = String::from_utf8_lossy(&inside.stdout);
    assert!(
        inside.starts_with("web-1\n"),
        "hostname inside: {inside} (host: {hostname})"
    );
    assert!(
        inside.contains(&format!("{ip}/24")),
        "eth0 inside: {inside}"
    );
    // lo is up (the kubelet brings it up itself, as the loopback plugin would).
    assert!(inside.contains("127.0.0.1/8"), "lo inside: {inside}");
    assert!(inside.contains(",UP"), "lo inside: {inside}");
    // No hostPorts: portmap is not run for the pod (nor for its teardown).
    assert_eq!(node.cni_plugins(&sandbox), serde_json::json!(["bridge"]));

    assert!(
        !kubelet::sys::bridge_ports(&node.bridge).is_empty(),
        "the pod's veth is on the bridge"
    );
    node.rt
        .stop_pod(&sandbox.uid, Duration::from_secs(1))
        .await
        .expect("stopping the pod");
    node.rt
        .remove_pod(&sandbox.uid)
        .await
        .expect("removing the pod");
    node.assert_pod_gone(&sandbox);
    assert!(
        kubelet::sys::bridge_ports(&node.bridge).is_empty(),
        "veth left on the bridge"
    );
    node.rt.remove_all().await.expect("node teardown");
    assert!(
        !kubelet::sys::link_exists(&node.bridge),
        "bridge left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pods_on_one_node_ping_each_other() {
    let node = TestNode::start("kt-ping", 13).await;
    let (a, _) = node.busybox_pod("ping-a", "sleep 3600").await;
    let (b, _) = node.busybox_pod("ping-b", "sleep 3600").await;
    let (ip_a, ip_b) = (a.ip().unwrap(), b.ip().unwrap());
    assert_ne!(ip_a, ip_b);
    for (from, to) in [(&a, ip_b), (&b, ip_a)] {
        let c = ContainerConfig {
            name: format!("ping-{}", to.to_string().replace('.', "-")),
            image: "kaze/busybox:1".into(),
            command: vec![
                "ping".into(),
                "-c".into(),
                "2".into(),
                "-W".into(),
                "3".into(),
                to.to_string(),
            ],
            ..Default::default()
        };
        let s = node.rt.run_container(from, &c).await.expect("running ping");
        let exit = node
            .rt
            .wait_container(&s.id, Duration::from_secs(20))
            .await
            .expect("ping finished");
        let log = std::fs::read_to_string(&s.log_path).unwrap_or_default();
        assert_eq!(
            exit.exit_code, 0,
            "ping {to} from {} failed:\n{log}",
            from.name
        );
        assert_eq!(exit.reason, "Completed");
        assert!(log.contains("2 packets received"), "{log}");
    }
    // One shim per pod, as under the CRI plugin: its pause, main and ping containers
    // share the one that started with the sandbox.
    let mut sandboxes = vec![a.id.clone(), b.id.clone()];
    sandboxes.sort();
    assert_eq!(node.shim_ids(), sandboxes);
    for p in [&a, &b] {
        node.rt.remove_pod(&p.uid).await.expect("removing a pod");
    }
    // Checked after both: the check looks at everything in the node's namespace.
    node.assert_pod_gone(&a);
    node.assert_pod_gone(&b);
    // The shared shim exits with the last container of its pod.
    let left = eventually(Duration::from_secs(10), || {
        node.shim_ids().is_empty().then_some(())
    })
    .await;
    assert!(left.is_some(), "shims left: {:?}", node.shim_ids());
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_pod_answers_http_and_udp_with_its_pod_name() {
    let node = TestNode::start("kt-echo", 14).await;
    let sandbox = node.run_sandbox(&node.sandbox_config("echo-7")).await;
    let c = ContainerConfig {
        name: "echo".into(),
        image: "kaze/echo:1".into(),
        env: vec![
            ("POD_NAME".into(), "echo-7".into()),
            ("UDP_PORT".into(), "9000".into()),
        ],
        args: vec!["--http-port".into(), "8080".into()],
        ..Default::default()
    };
    node.rt
        .run_container(&sandbox, &c)
        .await
        .expect("running echo");
    let ip = sandbox.ip().unwrap();
    // The host reaches the pod through the bridge's gateway address.
    let body = eventually(Duration::from_secs(10), || {
        let mut s =
            std::net::TcpStream::connect_timeout(&(ip, 8080).into(), Duration::from_secs(1))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .await
    .expect("echo answered http");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    let line = body.split("\r\n\r\n").nth(1).unwrap().trim().to_string();
    let (name, client) = line.split_once(' ').unwrap();
    assert_eq!(name, "echo-7");
    let gateway = node.subnet.replace("0/24", "1");
    assert!(
        client.starts_with(&format!("{gateway}:")),
        "client address {client}, gateway {gateway}"
    );

    let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    udp.send_to(b"ping", (ip, 9000)).unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = udp.recv_from(&mut buf).expect("udp answer");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("echo-7 "), "{answer}");

    node.rt
        .remove_pod(&sandbox.uid)
        .await
        .expect("removing the pod");
    node.assert_pod_gone(&sandbox);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_over_its_memory_limit_is_oom_killed() {
    let node = TestNode::start("kt-oom", 15).await;
    let sandbox = node.run_sandbox(&node.sandbox_config("hog")).await;
    let c = ContainerConfig {
        name: "hog".into(),
        image: "kaze/busybox:1".into(),
        // dd allocates and fills one 64 MiB buffer: far over a 16 MiB limit.
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo start; dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived".into(),
        ],
        resources: Resources {
            memory_limit: Some(16 << 20),
            ..Default::default()
        },
        ..Default::default()
    };
    let s = node
        .rt
        .run_container(&sandbox, &c)
        .await
        .expect("running the hog");
    let exit = node
        .rt
        .wait_container(&s.id, Duration::from_secs(30))
        .await
        .expect("the hog exited");
    assert!(exit.oom_killed, "not OOM-killed: {exit:?}");
    assert_eq!(exit.reason, "OOMKilled");
    let state = node.rt.container_state(&s.id).await.unwrap();
    assert_eq!(state, ContainerState::Exited(exit.clone()));
    // The limits land in the container's cgroup (read while one runs: runc removes the
    // cgroup with the task).
    let limited = ContainerConfig {
        name: "limited".into(),
        image: "kaze/busybox:1".into(),
        command: vec!["sleep".into(), "3600".into()],
        resources: Resources {
            memory_limit: Some(16 << 20),
            cpu_request_milli: Some(250),
            cpu_limit_milli: Some(500),
        },
        ..Default::default()
    };
    let l = node
        .rt
        .run_container(&sandbox, &limited)
        .await
        .expect("running");
    let cgroup = |controller: &str, file: &str| {
        let path = format!(
            "/sys/fs/cgroup/{controller}{}/pod{}/{}/{file}",
            node.rt.config().cgroup_parent,
            sandbox.uid,
            l.id
        );
        std::fs::read_to_string(&path)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|e| panic!("reading {path}: {e}"))
    };
    assert_eq!(cgroup("memory", "memory.limit_in_bytes"), "16777216");
    assert_eq!(cgroup("cpu", "cpu.shares"), "256");
    assert_eq!(cgroup("cpu", "cpu.cfs_quota_us"), "50000");
    node.rt
        .stop_container(&l.id, Duration::from_secs(1))
        .await
        .unwrap();

    // A container that stays under its limit is not reported as OOM.
    let ok = ContainerConfig {
        name: "fine".into(),
        image: "kaze/busybox:1".into(),
        command: vec!["sh".into(), "-c".into(), "exit 3".into()],
        resources: Resources {
            memory_limit: Some(16 << 20),
            ..Default::default()
        },
        ..Default::default()
    };
    let s = node.rt.run_container(&sandbox, &ok).await.expect("running");
    let exit = node
        .rt
        .wait_container(&s.id, Duration::from_secs(20))
        .await
        .expect("exited");
    assert_eq!(
        (exit.exit_code, exit.reason.as_str(), exit.oom_killed),
        (3, "Error", false)
    );

    node.rt
        .remove_pod(&sandbox.uid)
        .await
        .expect("removing the pod");
    node.assert_pod_gone(&sandbox);
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_sends_sigterm_first_then_sigkill_after_the_grace_period() {
    let node = TestNode::start("kt-stop", 16).await;
    let polite = "trap 'echo got-SIGTERM; exit 0' TERM; echo ready; while true; do sleep 0.2; done";
    let (sandbox, c) = node.busybox_pod("polite", polite).await;
    eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&c.log_path)
            .ok()
            .filter(|l| l.contains("ready"))
            .map(|_| ())
    })
    .await
    .expect("the container started");
    let started = std::time::Instant::now();
    let exit = node
        .rt
        .stop_container(&c.id, Duration::from_secs(20))
        .await
        .unwrap()
        .expect("exit info");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "SIGTERM was not delivered first"
    );
    assert_eq!(exit.exit_code, 0, "{exit:?}");
    let log = std::fs::read_to_string(&c.log_path).unwrap();
    assert!(log.contains(" stdout F got-SIGTERM\n"), "{log}");

    // A container ignoring SIGTERM is killed when the grace period ends.
    let stubborn = ContainerConfig {
        name: "stubborn".into(),
        image: "kaze/busybox:1".into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            "trap '' TERM; echo ready; while true; do sleep 0.2; done".into(),
        ],
        ..Default::default()
    };
    let s = node
        .rt
        .run_container(&sandbox, &stubborn)
        .await
        .expect("running");
    eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&s.log_path)
            .ok()
            .filter(|l| l.contains("ready"))
            .map(|_| ())
    })
    .await
    .expect("the container started");
    let started = std::time::Instant::now();
    let exit = node
        .rt
        .stop_container(&s.id, Duration::from_secs(2))
        .await
        .unwrap()
        .expect("exit info");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "killed before the grace period ended"
    );
    assert_eq!(exit.exit_code, 137, "{exit:?}");

    node.rt
        .stop_pod(&sandbox.uid, Duration::from_secs(1))
        .await
        .expect("stopping the pod");
    node.rt
        .remove_pod(&sandbox.uid)
        .await
        .expect("removing the pod");
    node.assert_pod_gone(&sandbox);
}

#[test]
fn a_restarted_runtime_adopts_running_containers_and_their_logs() {
    // Two tokio runtimes stand for two kubelet processes: dropping the first kills its
    // tasks (log pumps, exit watchers) the way a kubelet crash would.
    let first = tokio::runtime::Runtime::new().unwrap();
    let node = first.block_on(TestNode::start("kt-adopt", 17));
    let (sandbox, c) =
        first.block_on(node.busybox_pod("chatty", "while true; do echo tick; sleep 0.1; done"));
    let ContainerState::Running { pid } = first.block_on(node.rt.container_state(&c.id)).unwrap()
    else {
        panic!("not running")
    };
    let config = node.rt.config().clone();
    std::thread::sleep(Duration::from_millis(500));
    drop(first);
    let lines_at_crash = std::fs::read_to_string(&c.log_path)
        .unwrap()
        .lines()
        .count();
    assert!(lines_at_crash > 0);
    // While no kubelet runs the container keeps going (its output waits in the pipe).
    std::thread::sleep(Duration::from_secs(1));

    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let rt = kubelet::Runtime::connect(config).await.unwrap();
        let found = rt
            .sandbox(&sandbox.uid)
            .await
            .unwrap()
            .expect("the sandbox is found again");
        assert_eq!(
            (found.id.as_str(), found.ips.clone(), found.pid),
            (sandbox.id.as_str(), sandbox.ips.clone(), sandbox.pid)
        );
        let adopted = rt.adopt().await.unwrap();
        assert_eq!(adopted, vec![c.id.clone()]);
        assert_eq!(
            rt.container_state(&c.id).await.unwrap(),
            ContainerState::Running { pid },
            "not restarted"
        );
        let grown = eventually(Duration::from_secs(10), || {
            let n = std::fs::read_to_string(&c.log_path).ok()?.lines().count();
            (n > lines_at_crash + 15).then_some(n)
        })
        .await;
        assert!(
            grown.is_some(),
            "the log did not keep growing after adoption"
        );
        let exit = rt
            .stop_container(&c.id, Duration::from_secs(1))
            .await
            .unwrap()
            .expect("exit");
        assert_eq!(
            exit.exit_code, 137,
            "sh without a trap is killed after the grace period"
        );
        rt.remove_pod(&sandbox.uid).await.unwrap();
    });
    node.assert_pod_gone(&sandbox);
    drop(node);
}

#[test]
fn host_ports_reach_the_pod_through_portmap_until_teardown() {
    // portmap's chains and rules stay in the test's own network namespace
    testkit::in_netns("kt-hp", async {
        let node = TestNode::start("kt-hostport", 18).await;
        let host_port = testkit::free_port();
        let mut cfg = node.sandbox_config("hp");
        cfg.port_mappings = vec![kubelet::cni::PortMapping {
            host_port,
            container_port: 8080,
            protocol: "TCP".into(),
            host_ip: None,
        }];
        let sandbox = node.run_sandbox(&cfg).await;
        assert_eq!(
            node.cni_plugins(&sandbox),
            serde_json::json!(["bridge", "portmap"])
        );
        let c = ContainerConfig {
            name: "echo".into(),
            image: "kaze/echo:1".into(),
            env: vec![("POD_NAME".into(), "hp".into())],
            ..Default::default()
        };
        node.rt
            .run_container(&sandbox, &c)
            .await
            .expect("running echo");
        // The bridge's gateway address is a local address of the host: portmap's OUTPUT rules
        // DNAT host-originated connections to it.
        let gateway: std::net::IpAddr = node.subnet.replace("0/24", "1").parse().unwrap();
        let get = || {
            let mut s = std::net::TcpStream::connect_timeout(
                &(gateway, host_port).into(),
                Duration::from_secs(1),
            )
            .ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        };
        let body = eventually(Duration::from_secs(10), get)
            .await
            .expect("the hostPort answered");
        assert!(body.contains("\r\n\r\nhp "), "{body}");
        node.rt
            .remove_pod(&sandbox.uid)
            .await
            .expect("removing the pod");
        node.assert_pod_gone(&sandbox);
        assert!(get().is_none(), "the hostPort still answers after teardown");
        let rules = std::process::Command::new("iptables-save")
            .args(["-t", "nat"])
            .output()
            .unwrap();
        let rules = String::from_utf8_lossy(&rules.stdout);
        assert!(
            !rules.contains(&format!("--dport {host_port} ")),
            "portmap rules left:\n{rules}"
        );
    })
}
