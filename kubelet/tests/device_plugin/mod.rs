//! A device plugin (deviceplugin v1beta1) as a real one behaves: it serves `DevicePlugin`
//! on a socket in the kubelet's device plugin dir (gRPC over raw HTTP/2), registers its
//! resource on `kubelet.sock`, streams its devices on ListAndWatch (again on every health
//! change), and registers again whenever the kubelet makes `kubelet.sock` anew (a restarted
//! kubelet removes the plugins' sockets: it serves a fresh one then).
//!
//! `Allocate` answers, per container: `DEVICES=<ids, comma-separated>`, a read-only mount
//! of the plugin's `share` dir at `/opt/plugin`, `/dev/null` as `/dev/kaze-gpu` (rw), and
//! annotation `example.com/devices=<ids>`, and with [`Plugin::cdi`] set CDI device
//! `example.com/plugin=<id>` per device (the test writes their spec). `GetPreferredAllocation` prefers the highest ids.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubelet::deviceplugin::proto;
use prost::Message;

pub struct Plugin {
    pub resource: String,
    /// The kubelet's device plugin dir.
    pub dir: PathBuf,
    /// The socket's name in it.
    pub endpoint: String,
    /// Host dir mounted at /opt/plugin (holds `hello`).
    pub share: PathBuf,
    /// id -> healthy
    devices: tokio::sync::watch::Sender<Vec<(String, bool)>>,
    /// `allocate <ids>`, `prestart <ids>`, `preferred <available>`, `registered`.
    pub calls: Arc<Mutex<Vec<String>>>,
    /// Name a CDI device per device in `Allocate` answers.
    pub cdi: std::sync::atomic::AtomicBool,
    stop: component::CancellationToken,
}

impl Plugin {
    /// A plugin of `resource` with devices `dev-0`..`dev-<n-1>`, all healthy, serving and
    /// registering (again whenever the kubelet's socket is made anew) until [`Plugin::stop`]
    /// or the end of the test's runtime.
    pub fn start(resource: &str, dir: &Path, share: &Path, n: usize) -> Arc<Plugin> {
        std::fs::create_dir_all(share).expect("share dir");
        std::fs::write(share.join("hello"), "hello from the plugin\n").expect("share file");
        let devices = (0..n).map(|i| (format!("dev-{i}"), true)).collect();
        let plugin = Arc::new(Plugin {
            resource: resource.into(),
            dir: dir.to_path_buf(),
            endpoint: format!("{}.sock", resource.replace('/', "-")),
            share: share.to_path_buf(),
            devices: tokio::sync::watch::channel(devices).0,
            calls: Arc::default(),
            cdi: Default::default(),
            stop: component::CancellationToken::new(),
        });
        let p = plugin.clone();
        tokio::spawn(async move { p.keep_registered().await });
        plugin
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }

    fn note(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    pub fn set_health(&self, id: &str, healthy: bool) {
        self.devices.send_modify(|d| {
            for (i, h) in d.iter_mut() {
                if i == id {
                    *h = healthy;
                }
            }
        });
    }

    /// The plugin goes away: streams end, its socket goes, it registers no more.
    pub fn stop(&self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(self.dir.join(&self.endpoint));
    }

    fn kubelet_socket(&self) -> PathBuf {
        self.dir.join("kubelet.sock")
    }

    /// Serve and register whenever `kubelet.sock` is new (as plugins watch it).
    async fn keep_registered(self: Arc<Self>) {
        use std::os::unix::fs::MetadataExt;
        let mut seen = None;
        let mut serving: Option<component::CancellationToken> = None;
        loop {
            let id = std::fs::metadata(self.kubelet_socket())
                .ok()
                .map(|m| (m.ino(), m.ctime_nsec()));
            if id.is_some() && id != seen {
                if let Some(old) = serving.take() {
                    old.cancel();
                }
                let token = self.stop.child_token();
                self.clone().serve(token.clone());
                serving = Some(token);
                match self.register().await {
                    Ok(()) => {
                        self.note("registered".into());
                        seen = id;
                    }
                    Err(e) => eprintln!("device plugin: registering: {e}"),
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    pub async fn register(&self) -> Result<(), String> {
        kubelet::grpc::call::<_, proto::Empty>(
            &self.kubelet_socket(),
            proto::REGISTER,
            proto::RegisterRequest {
                version: proto::VERSION.into(),
                endpoint: self.endpoint.clone(),
                resource_name: self.resource.clone(),
                options: Some(options()),
            },
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    fn list(&self) -> proto::ListAndWatchResponse {
        proto::ListAndWatchResponse {
            devices: self
                .devices
                .borrow()
                .iter()
                .map(|(id, healthy)| proto::Device {
                    id: id.clone(),
                    health: if *healthy {
                        proto::HEALTHY
                    } else {
                        proto::UNHEALTHY
                    }
                    .into(),
                    topology: Some(proto::TopologyInfo {
                        nodes: vec![proto::NumaNode { id: 0 }],
                    }),
                })
                .collect(),
        }
    }

    fn unary(&self, path: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        let decode_err = |e: prost::DecodeError| e.to_string();
        Ok(match path {
            proto::GET_DEVICE_PLUGIN_OPTIONS => options().encode_to_vec(),
            proto::GET_PREFERRED_ALLOCATION => {
                let req = proto::PreferredAllocationRequest::decode(body).map_err(decode_err)?;
                let mut resp = proto::PreferredAllocationResponse::default();
                for c in req.container_requests {
                    let mut ids = c.available_device_ids.clone();
                    ids.sort();
                    self.note(format!("preferred {}", ids.join(",")));
                    ids.reverse();
                    ids.truncate(c.allocation_size as usize);
                    resp.container_responses
                        .push(proto::ContainerPreferredAllocationResponse { device_ids: ids });
                }
                resp.encode_to_vec()
            }
            proto::ALLOCATE => {
                let req = proto::AllocateRequest::decode(body).map_err(decode_err)?;
                let mut resp = proto::AllocateResponse::default();
                for c in req.container_requests {
                    let ids = c.devices_ids.join(",");
                    self.note(format!("allocate {ids}"));
                    resp.container_responses
                        .push(proto::ContainerAllocateResponse {
                            envs: [("DEVICES".to_string(), ids.clone())].into(),
                            mounts: vec![proto::Mount {
                                container_path: "/opt/plugin".into(),
                                host_path: self.share.display().to_string(),
                                read_only: true,
                            }],
                            devices: vec![proto::DeviceSpec {
                                container_path: "/dev/kaze-gpu".into(),
                                host_path: "/dev/null".into(),
                                permissions: "rw".into(),
                            }],
                            annotations: [("example.com/devices".to_string(), ids)].into(),
                            cdi_devices: c
                                .devices_ids
                                .iter()
                                .filter(|_| self.cdi.load(std::sync::atomic::Ordering::SeqCst))
                                .map(|id| proto::CdiDevice {
                                    name: format!("example.com/plugin={id}"),
                                })
                                .collect(),
                        });
                }
                resp.encode_to_vec()
            }
            proto::PRE_START_CONTAINER => {
                let req = proto::PreStartContainerRequest::decode(body).map_err(decode_err)?;
                let mut ids = req.devices_ids;
                ids.sort();
                self.note(format!("prestart {}", ids.join(",")));
                proto::PreStartContainerResponse {}.encode_to_vec()
            }
            other => return Err(format!("unknown method {other}")),
        })
    }

    /// Serve the DevicePlugin service on the plugin's socket until `token`.
    fn serve(self: Arc<Self>, token: component::CancellationToken) {
        let path = self.dir.join(&self.endpoint);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).expect("bind the plugin socket");
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = token.cancelled() => return,
                    c = listener.accept() => match c { Ok((c, _)) => c, Err(_) => return },
                };
                let (plugin, token) = (self.clone(), token.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(conn).await else {
                        return;
                    };
                    loop {
                        let next = tokio::select! {
                            _ = token.cancelled() => return,
                            n = conn.accept() => n,
                        };
                        let Some(Ok((req, respond))) = next else {
                            return;
                        };
                        let (plugin, token) = (plugin.clone(), token.clone());
                        tokio::spawn(async move { plugin.answer(req, respond, token).await });
                    }
                });
            }
        });
    }

    async fn answer(
        &self,
        req: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<bytes::Bytes>,
        token: component::CancellationToken,
    ) {
        let path = req.uri().path().to_string();
        let mut body = req.into_body();
        let mut data = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let head = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(())
            .expect("response");
        let Ok(mut send) = respond.send_response(head, false) else {
            return;
        };
        let frame = |msg: Vec<u8>| {
            let mut f = vec![0u8];
            f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            f.extend_from_slice(&msg);
            bytes::Bytes::from(f)
        };
        let mut trailers = http::HeaderMap::new();
        if path == proto::LIST_AND_WATCH {
            let mut changes = self.devices.subscribe();
            loop {
                changes.borrow_and_update();
                if send
                    .send_data(frame(self.list().encode_to_vec()), false)
                    .is_err()
                {
                    return;
                }
                tokio::select! {
                    _ = token.cancelled() => break,
                    r = changes.changed() => if r.is_err() { break },
                }
            }
            trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
            let _ = send.send_trailers(trailers);
            return;
        }
        match self.unary(&path, data.get(5..).unwrap_or_default()) {
            Ok(msg) => {
                let _ = send.send_data(frame(msg), false);
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            }
            Err(e) => {
                trailers.insert("grpc-status", http::HeaderValue::from_static("12"));
                if let Ok(v) = http::HeaderValue::from_str(&e) {
                    trailers.insert("grpc-message", v);
                }
            }
        }
        let _ = send.send_trailers(trailers);
    }
}

fn options() -> proto::DevicePluginOptions {
    proto::DevicePluginOptions {
        pre_start_required: true,
        get_preferred_allocation_available: true,
    }
}
