//! A DRA driver's kubelet plugin: the Registration service on a socket in the kubelet's
//! plugins registry dir, the DRAPlugin v1 service on another, gRPC over raw HTTP/2.
//!
//! Shared by `kubelet/tests/dra.rs` and `kaze/tests/dra.rs` (included with `#[path]`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::resource::v1::ResourceClaim;
use kubelet::dra::proto;
use prost::Message;

pub struct Driver {
    pub name: String,
    pub cdi_dir: PathBuf,
    pub endpoint: PathBuf,
    pub client: kube::Client,
    /// `prepare <claim uid>`, `unprepare <claim uid>`, `registered <bool> <error>`.
    pub calls: Arc<Mutex<Vec<String>>>,
}

impl Driver {
    /// The CDI spec file written for a claim.
    pub fn cdi_file(&self, claim_uid: &str) -> PathBuf {
        self.cdi_dir.join(format!("{}-{claim_uid}.json", self.name))
    }

    fn note(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }

    pub fn saw(&self, call: &str) -> bool {
        self.count(call) > 0
    }

    /// How many calls start with `prefix`.
    pub fn count_prefix(&self, prefix: &str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    pub fn count(&self, call: &str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|c| *c == call)
            .count()
    }

    async fn handle(&self, path: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        let decode_err = |e: prost::DecodeError| e.to_string();
        Ok(match path {
            "/pluginregistration.Registration/GetInfo" => proto::PluginInfo {
                r#type: "DRAPlugin".into(),
                name: self.name.clone(),
                endpoint: self.endpoint.display().to_string(),
                supported_versions: vec!["v1.DRAPlugin".into()],
            }
            .encode_to_vec(),
            "/pluginregistration.Registration/NotifyRegistrationStatus" => {
                let s = proto::RegistrationStatus::decode(body).map_err(decode_err)?;
                self.note(format!("registered {} {}", s.plugin_registered, s.error));
                proto::RegistrationStatusResponse {}.encode_to_vec()
            }
            "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources" => {
                let req = proto::NodePrepareResourcesRequest::decode(body).map_err(decode_err)?;
                let mut resp = proto::NodePrepareResourcesResponse::default();
                for claim in req.claims {
                    self.note(format!("prepare {}", claim.uid));
                    let result = self.prepare(&claim).await;
                    resp.claims.insert(claim.uid.clone(), result);
                }
                resp.encode_to_vec()
            }
            "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources" => {
                let req = proto::NodeUnprepareResourcesRequest::decode(body).map_err(decode_err)?;
                let mut resp = proto::NodeUnprepareResourcesResponse::default();
                for claim in req.claims {
                    self.note(format!("unprepare {}", claim.uid));
                    let _ = std::fs::remove_file(self.cdi_file(&claim.uid));
                    resp.claims.insert(claim.uid, Default::default());
                }
                resp.encode_to_vec()
            }
            other => return Err(format!("unknown method {other}")),
        })
    }

    /// Read the claim's allocation (as a real driver does), write the CDI spec of its
    /// devices of this driver, answer their CDI ids.
    async fn prepare(&self, claim: &proto::Claim) -> proto::NodePrepareResourceResponse {
        let api: kube::Api<ResourceClaim> =
            kube::Api::namespaced(self.client.clone(), &claim.namespace);
        let rc = match api.get(&claim.name).await {
            Ok(rc) => rc,
            Err(e) => {
                return proto::NodePrepareResourceResponse {
                    devices: vec![],
                    error: format!("reading the claim: {e}"),
                }
            }
        };
        let results = rc
            .status
            .and_then(|s| s.allocation)
            .and_then(|a| a.devices)
            .and_then(|d| d.results)
            .unwrap_or_default();
        let mut devices = Vec::new();
        let mut cdi_devices = Vec::new();
        for (n, r) in results.iter().filter(|r| r.driver == self.name).enumerate() {
            let cdi_name = format!("{}-{}", claim.uid, r.device);
            cdi_devices.push(serde_json::json!({
                "name": cdi_name,
                "containerEdits": {"env": [format!("GPU_DEVICE_{n}={}", r.device)]},
            }));
            devices.push(proto::Device {
                request_names: vec![r.request.clone()],
                pool_name: r.pool.clone(),
                device_name: r.device.clone(),
                cdi_device_ids: vec![format!("example.com/gpu={cdi_name}")],
            });
        }
        let spec = serde_json::json!({
            "cdiVersion": "0.6.0",
            "kind": "example.com/gpu",
            "devices": cdi_devices,
        });
        let written = std::fs::create_dir_all(&self.cdi_dir)
            .and_then(|()| std::fs::write(self.cdi_file(&claim.uid), spec.to_string()));
        proto::NodePrepareResourceResponse {
            devices,
            error: written.err().map(|e| e.to_string()).unwrap_or_default(),
        }
    }
}

/// Serve `driver` on the unix socket `path` (gRPC: a 5-byte length prefix per
/// message, `grpc-status` in the trailers) until the runtime ends.
pub fn serve(driver: Arc<Driver>, path: &Path) {
    let _ = std::fs::remove_file(path);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("socket dir");
    let listener = tokio::net::UnixListener::bind(path).expect("bind");
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let driver = driver.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(conn).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    let driver = driver.clone();
                    tokio::spawn(async move {
                        let path = req.uri().path().to_string();
                        let mut body = req.into_body();
                        let mut data = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            data.extend_from_slice(&chunk);
                        }
                        let answer = driver
                            .handle(&path, data.get(5..).unwrap_or_default())
                            .await;
                        let mut respond = respond;
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .expect("response");
                        let Ok(mut send) = respond.send_response(head, false) else {
                            return;
                        };
                        let mut trailers = http::HeaderMap::new();
                        match answer {
                            Ok(msg) => {
                                let mut frame = vec![0u8];
                                frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
                                frame.extend_from_slice(&msg);
                                let _ = send.send_data(bytes::Bytes::from(frame), false);
                                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            }
                            Err(e) => {
                                trailers
                                    .insert("grpc-status", http::HeaderValue::from_static("12"));
                                if let Ok(v) = http::HeaderValue::from_str(&e) {
                                    trailers.insert("grpc-message", v);
                                }
                            }
                        }
                        let _ = send.send_trailers(trailers);
                    });
                }
            });
        }
    });
}
