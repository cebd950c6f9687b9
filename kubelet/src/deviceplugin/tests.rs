use super::*;

#[test]
fn device_resources_fit_within_allocatable_or_what_pods_hold() {
    let tmp = tempfile::tempdir().expect("tmp");
    let m = Manager::new(
        Config::under_root(tmp.path(), vec![]),
        crate::pod::ActivePods::default(),
        component::CancellationToken::new(),
    );
    let pod = |uid: &str, n: u32| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": uid, "uid": uid},
            "spec": {"containers": [{"name": "c", "resources": {
                "limits": {"example.com/gpu": n.to_string()},
                "requests": {"example.com/gpu": n.to_string()}}}]},
        }))
        .expect("pod")
    };
    let device = |id: &str| proto::Device {
        id: id.into(),
        health: proto::HEALTHY.into(),
        topology: None,
    };
    {
        let mut s = m.lock();
        s.connected(
            "example.com/gpu",
            Endpoint {
                socket: PathBuf::new(),
                options: Default::default(),
                stopped: None,
                generation: 1,
            },
        );
        s.update("example.com/gpu", vec![device("a"), device("b")]);
    }
    assert_eq!(m.fits(&pod("p", 2), &[]), Ok(()));
    let err = m.fits(&pod("q", 1), &[pod("p", 2)]).expect_err("full");
    assert_eq!(err.reason, "OutOfexample.com/gpu");
    assert_eq!(
        err.message,
        "Node didn't have enough resource: example.com/gpu, requested: 1, used: 2, capacity: 2"
    );
    // what pods hold counts even when the plugin lists fewer devices (upstream's
    // sanitizeNodeAllocatable)
    m.lock().update("example.com/gpu", vec![]);
    m.lock().insert(
        "p",
        "c",
        "example.com/gpu",
        &["a".into(), "b".into()],
        Default::default(),
    );
    assert_eq!(m.fits(&pod("p", 2), &[]), Ok(()));
    assert!(m.fits(&pod("q", 1), &[pod("p", 2)]).is_err());
    // a pod asking for none fits
    let plain: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "x", "uid": "x"}, "spec": {"containers": [{"name": "c"}]}}))
    .expect("pod");
    assert_eq!(m.fits(&plain, &[pod("p", 2)]), Ok(()));
}

#[test]
fn too_few_devices_reject_the_pod_as_upstream() {
    let r = rejection(
        "requested number of devices unavailable for nvidia.com/gpu. Requested: 2, Available: 1",
    );
    assert_eq!(r.reason, "UnexpectedAdmissionError");
    assert_eq!(
        r.status().message.as_deref(),
        Some("Pod was rejected: Allocate failed due to requested number of devices unavailable for nvidia.com/gpu. Requested: 2, Available: 1, which is unexpected")
    );
}
