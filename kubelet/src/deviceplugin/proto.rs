//! The device plugin API, `deviceplugin/v1beta1` (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1
//! `api.proto`), written out as prost messages with upstream's field numbers:
//! - `v1beta1.Registration`, served by the kubelet on `<dir>/kubelet.sock`;
//! - `v1beta1.DevicePlugin`, served by each plugin on the endpoint it registers.

use std::collections::HashMap;

/// The one API version the kubelet speaks (upstream's `SupportedVersions`).
pub const VERSION: &str = "v1beta1";
pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";

pub const REGISTER: &str = "/v1beta1.Registration/Register";
pub const GET_DEVICE_PLUGIN_OPTIONS: &str = "/v1beta1.DevicePlugin/GetDevicePluginOptions";
pub const LIST_AND_WATCH: &str = "/v1beta1.DevicePlugin/ListAndWatch";
pub const GET_PREFERRED_ALLOCATION: &str = "/v1beta1.DevicePlugin/GetPreferredAllocation";
pub const ALLOCATE: &str = "/v1beta1.DevicePlugin/Allocate";
pub const PRE_START_CONTAINER: &str = "/v1beta1.DevicePlugin/PreStartContainer";

#[derive(Clone, PartialEq, prost::Message)]
pub struct DevicePluginOptions {
    #[prost(bool, tag = "1")]
    pub pre_start_required: bool,
    #[prost(bool, tag = "2")]
    pub get_preferred_allocation_available: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterRequest {
    #[prost(string, tag = "1")]
    pub version: String,
    /// The socket's name in the device plugin dir.
    #[prost(string, tag = "2")]
    pub endpoint: String,
    #[prost(string, tag = "3")]
    pub resource_name: String,
    #[prost(message, optional, tag = "4")]
    pub options: Option<DevicePluginOptions>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListAndWatchResponse {
    #[prost(message, repeated, tag = "1")]
    pub devices: Vec<Device>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TopologyInfo {
    #[prost(message, repeated, tag = "1")]
    pub nodes: Vec<NumaNode>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NumaNode {
    #[prost(int64, tag = "1")]
    pub id: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Device {
    #[prost(string, tag = "1")]
    pub id: String,
    /// [`HEALTHY`] or [`UNHEALTHY`].
    #[prost(string, tag = "2")]
    pub health: String,
    #[prost(message, optional, tag = "3")]
    pub topology: Option<TopologyInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PreStartContainerRequest {
    #[prost(string, repeated, tag = "1")]
    pub devices_ids: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PreStartContainerResponse {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PreferredAllocationRequest {
    #[prost(message, repeated, tag = "1")]
    pub container_requests: Vec<ContainerPreferredAllocationRequest>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerPreferredAllocationRequest {
    #[prost(string, repeated, tag = "1")]
    pub available_device_ids: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub must_include_device_ids: Vec<String>,
    #[prost(int32, tag = "3")]
    pub allocation_size: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PreferredAllocationResponse {
    #[prost(message, repeated, tag = "1")]
    pub container_responses: Vec<ContainerPreferredAllocationResponse>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerPreferredAllocationResponse {
    #[prost(string, repeated, tag = "1")]
    pub device_ids: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AllocateRequest {
    #[prost(message, repeated, tag = "1")]
    pub container_requests: Vec<ContainerAllocateRequest>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerAllocateRequest {
    #[prost(string, repeated, tag = "1")]
    pub devices_ids: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CdiDevice {
    /// A fully qualified CDI device name (`vendor.com/class=name`).
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AllocateResponse {
    #[prost(message, repeated, tag = "1")]
    pub container_responses: Vec<ContainerAllocateResponse>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerAllocateResponse {
    #[prost(map = "string, string", tag = "1")]
    pub envs: HashMap<String, String>,
    #[prost(message, repeated, tag = "2")]
    pub mounts: Vec<Mount>,
    #[prost(message, repeated, tag = "3")]
    pub devices: Vec<DeviceSpec>,
    #[prost(map = "string, string", tag = "4")]
    pub annotations: HashMap<String, String>,
    #[prost(message, repeated, tag = "5")]
    pub cdi_devices: Vec<CdiDevice>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mount {
    #[prost(string, tag = "1")]
    pub container_path: String,
    #[prost(string, tag = "2")]
    pub host_path: String,
    #[prost(bool, tag = "3")]
    pub read_only: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DeviceSpec {
    #[prost(string, tag = "1")]
    pub container_path: String,
    #[prost(string, tag = "2")]
    pub host_path: String,
    /// Devices cgroup access: any of `r`, `w`, `m`.
    #[prost(string, tag = "3")]
    pub permissions: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn messages_use_the_api_protos_field_numbers() {
        // RegisterRequest{version(1), endpoint(2), resource_name(3), options(4){pre_start(1)}}
        let r = RegisterRequest {
            version: "v".into(),
            endpoint: "e".into(),
            resource_name: "r".into(),
            options: Some(DevicePluginOptions {
                pre_start_required: true,
                get_preferred_allocation_available: false,
            }),
        };
        assert_eq!(
            r.encode_to_vec(),
            b"\x0a\x01v\x12\x01e\x1a\x01r\x22\x02\x08\x01".to_vec()
        );
        // Device{ID(1), health(2), topology(3){nodes(1){ID(1)}}}
        let d = Device {
            id: "a".into(),
            health: "H".into(),
            topology: Some(TopologyInfo {
                nodes: vec![NumaNode { id: 1 }],
            }),
        };
        assert_eq!(
            d.encode_to_vec(),
            b"\x0a\x01a\x12\x01H\x1a\x04\x0a\x02\x08\x01".to_vec()
        );
        // ContainerAllocateResponse{envs(1), mounts(2), devices(3), annotations(4), cdi(5)}
        let resp = ContainerAllocateResponse {
            envs: HashMap::from([("K".into(), "V".into())]),
            mounts: vec![Mount {
                container_path: "c".into(),
                host_path: "h".into(),
                read_only: true,
            }],
            devices: vec![DeviceSpec {
                container_path: "d".into(),
                host_path: "n".into(),
                permissions: "rw".into(),
            }],
            annotations: HashMap::from([("A".into(), "B".into())]),
            cdi_devices: vec![CdiDevice { name: "x".into() }],
        };
        assert_eq!(
            resp.encode_to_vec(),
            b"\x0a\x06\x0a\x01K\x12\x01V\x12\x08\x0a\x01c\x12\x01h\x18\x01\
              \x1a\x0a\x0a\x01d\x12\x01n\x1a\x02rw\x22\x06\x0a\x01A\x12\x01B\x2a\x03\x0a\x01x"
                .to_vec()
        );
        // PreferredAllocationRequest{container_requests(1){available(1), must(2), size(3)}}
        let p = PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_ids: vec!["a".into()],
                must_include_device_ids: vec!["b".into()],
                allocation_size: 2,
            }],
        };
        assert_eq!(
            p.encode_to_vec(),
            b"\x0a\x08\x0a\x01a\x12\x01b\x18\x02".to_vec()
        );
    }
}
