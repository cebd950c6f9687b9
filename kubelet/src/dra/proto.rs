//! The two gRPC APIs between the kubelet and a DRA driver's kubelet plugin, written out as
//! prost messages (no protoc at build time):
//! - `pluginregistration.Registration` (k8s.io/kubelet/pkg/apis/pluginregistration/v1), served
//!   by the plugin on the socket it puts in the plugins registry dir;
//! - `k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin` (and its `v1beta1` twin, the same messages
//!   under another package), served on the endpoint the registration names.
//!
//! Calls are unary over a unix socket ([`crate::grpc::call`]).

use std::collections::HashMap;

pub use crate::grpc::{call, CallError};

// === pluginregistration ===

pub const REGISTRATION_GET_INFO: &str = "/pluginregistration.Registration/GetInfo";
pub const REGISTRATION_NOTIFY: &str = "/pluginregistration.Registration/NotifyRegistrationStatus";

/// The plugin type a DRA driver registers with.
pub const DRA_PLUGIN_TYPE: &str = "DRAPlugin";

#[derive(Clone, PartialEq, prost::Message)]
pub struct InfoRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginInfo {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub endpoint: String,
    #[prost(string, repeated, tag = "4")]
    pub supported_versions: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RegistrationStatus {
    #[prost(bool, tag = "1")]
    pub plugin_registered: bool,
    #[prost(string, tag = "2")]
    pub error: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RegistrationStatusResponse {}

// === dra v1 / v1beta1 ===

/// The DRAPlugin services the kubelet speaks, most recent first, as a plugin names them in
/// its `supported_versions` (`<gRPC package's last element>.<service>`), with the package
/// each lives in.
pub const DRA_SERVICES: [(&str, &str); 2] = [
    ("v1.DRAPlugin", "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"),
    (
        "v1beta1.DRAPlugin",
        "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin",
    ),
];

#[derive(Clone, PartialEq, prost::Message)]
pub struct Claim {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub uid: String,
    #[prost(string, tag = "3")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodePrepareResourcesRequest {
    #[prost(message, repeated, tag = "1")]
    pub claims: Vec<Claim>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodePrepareResourcesResponse {
    /// claim uid -> result
    #[prost(map = "string, message", tag = "1")]
    pub claims: HashMap<String, NodePrepareResourceResponse>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodePrepareResourceResponse {
    #[prost(message, repeated, tag = "1")]
    pub devices: Vec<Device>,
    #[prost(string, tag = "2")]
    pub error: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Device {
    /// The claim's requests this device serves (all of them when empty).
    #[prost(string, repeated, tag = "1")]
    pub request_names: Vec<String>,
    #[prost(string, tag = "2")]
    pub pool_name: String,
    #[prost(string, tag = "3")]
    pub device_name: String,
    #[prost(string, repeated, tag = "4")]
    pub cdi_device_ids: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeUnprepareResourcesRequest {
    #[prost(message, repeated, tag = "1")]
    pub claims: Vec<Claim>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeUnprepareResourcesResponse {
    #[prost(map = "string, message", tag = "1")]
    pub claims: HashMap<String, NodeUnprepareResourceResponse>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeUnprepareResourceResponse {
    #[prost(string, tag = "1")]
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn messages_use_the_api_protos_field_numbers() {
        // PluginInfo{type: "DRAPlugin"(1), name: "d"(2), supported_versions: ["v1.DRAPlugin"](4)}
        let info = PluginInfo {
            r#type: "DRAPlugin".into(),
            name: "d".into(),
            endpoint: String::new(),
            supported_versions: vec!["v1.DRAPlugin".into()],
        };
        let bytes = info.encode_to_vec();
        assert_eq!(&bytes[..11], b"\x0a\x09DRAPlugin");
        assert_eq!(&bytes[11..14], b"\x12\x01d");
        assert_eq!(bytes[14], 0x22);
        // the response map: claims(1) { key(1): uid, value(2): {devices(1): {cdi_device_ids(4)}} }
        let mut resp = NodePrepareResourcesResponse::default();
        resp.claims.insert(
            "u".into(),
            NodePrepareResourceResponse {
                devices: vec![Device {
                    request_names: vec![],
                    pool_name: String::new(),
                    device_name: String::new(),
                    cdi_device_ids: vec!["a/b=c".into()],
                }],
                error: String::new(),
            },
        );
        let bytes = resp.encode_to_vec();
        assert_eq!(
            bytes,
            b"\x0a\x0e\x0a\x01u\x12\x09\x0a\x07\x22\x05a/b=c".to_vec()
        );
        assert_eq!(
            NodePrepareResourcesResponse::decode(bytes.as_slice()).expect("decode"),
            resp
        );
    }
}
