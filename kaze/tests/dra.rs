//! Dynamic resource allocation end to end on a real single-node `kaze server` (its
//! scheduler, controller-manager and kubelet; real containerd, runc and pods), driven by the
//! real kubectl 1.37, with a DRA driver's kubelet plugin in the test
//! (`kubelet/tests/dra_driver`: it registers through the node's plugins registry dir and
//! writes a CDI spec per prepared claim whose devices set `GPU_DEVICE_<n>=<device>`).
//!
//! The driver's two devices are published in a ResourceSlice; pods ask for one through a
//! ResourceClaimTemplate with a CEL selector. The scheduler allocates a device to each of
//! two pods' claims, the kubelet has the driver prepare them and the containers see their
//! device; a third pod waits (`cannot allocate all claims`) until one of the first two is
//! deleted, when its claim is unprepared, deallocated and deleted, and the freed device
//! goes to the third.
//!
//! Then a device plugin (`kubelet/tests/device_plugin`) registers `example.com/gpu` with two
//! devices on the same node: a pod asking for both is scheduled and its container gets them
//! from the plugin's `Allocate` (`DEVICES=dev-0,dev-1`); another waits
//! (`Insufficient example.com/gpu`) until the first is deleted, then gets a freed device.
//!
//! The node runs in a network namespace of its own (`testkit::Netns`), as every kaze test
//! that runs a node.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::eventually;

#[allow(dead_code)]
#[path = "../../kubelet/tests/dra_driver/mod.rs"]
mod driver;

#[allow(dead_code)]
#[path = "../../kubelet/tests/device_plugin/mod.rs"]
mod device_plugin;

const DRIVER: &str = "gpu.example.com";

/// The device class, the node's slice of two a100s, and the template of a claim for one.
fn devices(node: &str) -> String {
    format!(
        r#"
apiVersion: resource.k8s.io/v1
kind: DeviceClass
metadata: {{name: gpu}}
spec:
  selectors: [{{cel: {{expression: "device.driver == '{DRIVER}'"}}}}]
---
apiVersion: resource.k8s.io/v1
kind: ResourceSlice
metadata: {{name: {node}-gpus}}
spec:
  driver: {DRIVER}
  nodeName: {node}
  pool: {{name: {node}, generation: 1, resourceSliceCount: 1}}
  devices:
  - {{name: gpu-0, attributes: {{model: {{string: a100}}}}, capacity: {{memory: {{value: 40Gi}}}}}}
  - {{name: gpu-1, attributes: {{model: {{string: a100}}}}, capacity: {{memory: {{value: 40Gi}}}}}}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {{name: a100, namespace: default}}
spec:
  spec:
    devices:
      requests:
      - name: gpu
        exactly:
          deviceClassName: gpu
          selectors:
          - cel: {{expression: "device.attributes['{DRIVER}'].model == 'a100' && device.capacity['{DRIVER}'].memory.compareTo(quantity('32Gi')) >= 0"}}
"#
    )
}

/// A pod whose container prints the devices it got, then sleeps.
fn pod(name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  terminationGracePeriodSeconds: 1
  resourceClaims: [{{name: gpu, resourceClaimTemplateName: a100}}]
  containers:
  - name: c
    image: kaze/busybox:1
    command: ["sh", "-c", "env | grep GPU_DEVICE; sleep 3600"]
    resources: {{claims: [{{name: gpu}}]}}
"#
    )
}

/// A pod asking for `n` of the device plugin's `example.com/gpu`, printing what it got.
fn plugin_pod(name: &str, n: u32) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: kaze/busybox:1
    command: ["sh", "-c", "env | grep DEVICES; sleep 3600"]
    resources: {{limits: {{example.com/gpu: {n}}}}}
"#
    )
}

/// The device the pod's container says it got, once it runs and says it.
fn device_of(s: &support::Server, pod: &str) -> String {
    eventually(
        &format!("{pod} running with a device"),
        Duration::from_secs(90),
        || {
            let out = s.kubectl(&["logs", pod]);
            let log = String::from_utf8_lossy(&out.stdout).into_owned();
            log.lines()
                .find_map(|l| l.strip_prefix("GPU_DEVICE_0="))
                .map(str::to_string)
        },
    )
}

/// The name of the claim made for the pod.
fn claim_of(s: &support::Server, pod: &str) -> String {
    eventually(
        &format!("{pod}'s claim recorded"),
        Duration::from_secs(30),
        || {
            let p = s.json(&["get", "pod", pod]);
            p["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
                .as_str()
                .map(str::to_string)
        },
    )
}

#[test]
fn pods_get_devices_from_dra_drivers_and_device_plugins() {
    let cdi = tempfile::Builder::new()
        .prefix("kaze-dra-cdi-")
        .tempdir()
        .expect("cdi dir");
    let cdi_dir = cdi.path().to_path_buf();
    let cdi_arg = format!("cdi-spec-dirs={}", cdi_dir.display());
    let server = support::Server::start(
        "dra",
        "10.248.0.0/16",
        "10.248.",
        "127.0.0.1",
        &["--kubelet-arg", &cdi_arg],
        || {},
    );
    let s = &server;
    let data = server.data();
    let node = server.node.clone();

    // the driver's kubelet plugin, on a runtime of its own (its threads in this netns)
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let kubeconfig = data.join("kubeconfig.yaml");
    let drv = rt.block_on(async {
        let client = component::client(Some(&kubeconfig)).await.expect("client");
        let drv = Arc::new(driver::Driver {
            name: DRIVER.into(),
            cdi_dir: cdi_dir.clone(),
            endpoint: data.join("plugins").join(DRIVER).join("dra.sock"),
            client,
            calls: Arc::new(Mutex::new(Vec::new())),
        });
        driver::serve(drv.clone(), &drv.endpoint);
        driver::serve(
            drv.clone(),
            &data.join(format!("plugins_registry/{DRIVER}-reg.sock")),
        );
        drv
    });
    eventually("the driver registered", Duration::from_secs(30), || {
        drv.saw("registered true ").then_some(())
    });

    s.apply(&devices(&node));
    s.apply(&pod("train-1"));
    s.apply(&pod("train-2"));
    let mut got = vec![device_of(s, "train-1"), device_of(s, "train-2")];
    got.sort();
    assert_eq!(got, ["gpu-0", "gpu-1"], "{}", s.log());
    let claim_1 = claim_of(s, "train-1");
    let claims = s.kubectl_ok(&["get", "resourceclaims"]);
    assert!(
        claims
            .lines()
            .any(|l| l.starts_with(&claim_1) && l.contains("allocated,reserved")),
        "{claims}"
    );
    let c1 = s.json(&["get", "resourceclaim", &claim_1]);
    let uid_1 = c1["metadata"]["uid"].as_str().expect("uid").to_string();
    assert!(drv.saw(&format!("prepare {uid_1}")));
    assert!(drv.cdi_file(&uid_1).exists());
    let freed = c1["status"]["allocation"]["devices"]["results"][0]["device"]
        .as_str()
        .expect("device")
        .to_string();

    // no third a100
    s.apply(&pod("train-3"));
    eventually("train-3 unschedulable", Duration::from_secs(30), || {
        let events = s.kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=train-3,reason=FailedScheduling",
        ]);
        events
            .contains("0/1 nodes are available: 1 cannot allocate all claims.")
            .then_some(())
    });

    // train-1 goes: its claim is unprepared and deleted, and train-3 gets its device
    s.kubectl_ok(&["delete", "pod", "train-1"]);
    eventually(
        "train-1's claim unprepared",
        Duration::from_secs(60),
        || drv.saw(&format!("unprepare {uid_1}")).then_some(()),
    );
    assert!(!drv.cdi_file(&uid_1).exists());
    eventually("train-1's claim deleted", Duration::from_secs(60), || {
        let out = s.kubectl(&["get", "resourceclaim", &claim_1]);
        (!out.status.success()).then_some(())
    });
    assert_eq!(device_of(s, "train-3"), freed, "{}", s.log());

    s.kubectl_ok(&["delete", "pod", "train-2", "train-3"]);
    eventually("every claim unprepared", Duration::from_secs(60), || {
        (drv.count_prefix("unprepare ") >= 3).then_some(())
    });

    // A device plugin's resource on the same node: counted by the scheduler
    // (`Insufficient example.com/gpu` when none is free) and allocated by the kubelet.
    let plugin = {
        let _in_rt = rt.enter();
        device_plugin::Plugin::start(
            "example.com/gpu",
            &data.join("device-plugins"),
            &data.join("plugin-share"),
            2,
        )
    };
    eventually(
        "two example.com/gpu allocatable",
        Duration::from_secs(30),
        || {
            let n = s.json(&["get", "node", &node]);
            (n["status"]["allocatable"]["example.com/gpu"] == "2").then_some(())
        },
    );
    s.apply(&plugin_pod("infer-1", 2));
    let devices = eventually(
        "infer-1 running with both devices",
        Duration::from_secs(90),
        || {
            let out = s.kubectl(&["logs", "infer-1"]);
            let log = String::from_utf8_lossy(&out.stdout).into_owned();
            log.lines()
                .find_map(|l| l.strip_prefix("DEVICES="))
                .map(str::to_string)
        },
    );
    let mut ids: Vec<&str> = devices.split(',').collect();
    ids.sort();
    assert_eq!(ids, ["dev-0", "dev-1"], "{}", s.log());
    s.apply(&plugin_pod("infer-2", 1));
    eventually("infer-2 unschedulable", Duration::from_secs(30), || {
        let events = s.kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=infer-2,reason=FailedScheduling",
        ]);
        events
            .contains("0/1 nodes are available: 1 Insufficient example.com/gpu.")
            .then_some(())
    });
    s.kubectl_ok(&["delete", "pod", "infer-1"]);
    eventually(
        "infer-2 running with a device",
        Duration::from_secs(90),
        || {
            let out = s.kubectl(&["logs", "infer-2"]);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.starts_with("DEVICES=dev-"))
                .then_some(())
        },
    );
    s.kubectl_ok(&["delete", "pod", "infer-2"]);
    plugin.stop();
    server.stop();
    drop(rt);
}
