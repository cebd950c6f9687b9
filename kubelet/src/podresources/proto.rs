//! The pod-resources API v1 (k8s.io/kubelet/pkg/apis/podresources/v1 `api.proto`), as prost
//! messages with upstream's field numbers; service `v1.PodResourcesLister`.

pub const LIST: &str = "/v1.PodResourcesLister/List";
pub const GET_ALLOCATABLE_RESOURCES: &str = "/v1.PodResourcesLister/GetAllocatableResources";
pub const GET: &str = "/v1.PodResourcesLister/Get";

#[derive(Clone, PartialEq, prost::Message)]
pub struct AllocatableResourcesRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AllocatableResourcesResponse {
    #[prost(message, repeated, tag = "1")]
    pub devices: Vec<ContainerDevices>,
    #[prost(int64, repeated, tag = "2")]
    pub cpu_ids: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub memory: Vec<ContainerMemory>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodResourcesRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodResourcesResponse {
    #[prost(message, repeated, tag = "1")]
    pub pod_resources: Vec<PodResources>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodResources {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(message, repeated, tag = "3")]
    pub containers: Vec<ContainerResources>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerResources {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "2")]
    pub devices: Vec<ContainerDevices>,
    #[prost(int64, repeated, tag = "3")]
    pub cpu_ids: Vec<i64>,
    #[prost(message, repeated, tag = "4")]
    pub memory: Vec<ContainerMemory>,
    #[prost(message, repeated, tag = "5")]
    pub dynamic_resources: Vec<DynamicResource>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerMemory {
    #[prost(string, tag = "1")]
    pub memory_type: String,
    #[prost(uint64, tag = "2")]
    pub size: u64,
    #[prost(message, optional, tag = "3")]
    pub topology: Option<TopologyInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerDevices {
    #[prost(string, tag = "1")]
    pub resource_name: String,
    #[prost(string, repeated, tag = "2")]
    pub device_ids: Vec<String>,
    #[prost(message, optional, tag = "3")]
    pub topology: Option<TopologyInfo>,
}

/// `TopologyInfo` and `NUMANode` are the device plugin API's messages field for field.
pub use crate::deviceplugin::proto::{NumaNode, TopologyInfo};

#[derive(Clone, PartialEq, prost::Message)]
pub struct DynamicResource {
    // 1 (class_name) was removed upstream in 1.31
    #[prost(string, tag = "2")]
    pub claim_name: String,
    #[prost(string, tag = "3")]
    pub claim_namespace: String,
    #[prost(message, repeated, tag = "4")]
    pub claim_resources: Vec<ClaimResource>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ClaimResource {
    #[prost(message, repeated, tag = "1")]
    pub cdi_devices: Vec<CdiDevice>,
    #[prost(string, tag = "2")]
    pub driver_name: String,
    #[prost(string, tag = "3")]
    pub pool_name: String,
    #[prost(string, tag = "4")]
    pub device_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CdiDevice {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetPodResourcesRequest {
    #[prost(string, tag = "1")]
    pub pod_name: String,
    #[prost(string, tag = "2")]
    pub pod_namespace: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetPodResourcesResponse {
    #[prost(message, optional, tag = "1")]
    pub pod_resources: Option<PodResources>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn messages_use_the_api_protos_field_numbers() {
        // ContainerResources{name(1), devices(2){resource(1), ids(2), topology(3)},
        // dynamic_resources(5){claim_name(2), claim_namespace(3), claim_resources(4)
        // {cdi_devices(1), driver(2), pool(3), device(4)}}}
        let c = ContainerResources {
            name: "c".into(),
            devices: vec![ContainerDevices {
                resource_name: "r".into(),
                device_ids: vec!["d".into()],
                topology: Some(TopologyInfo {
                    nodes: vec![NumaNode { id: 0 }],
                }),
            }],
            cpu_ids: vec![],
            memory: vec![],
            dynamic_resources: vec![DynamicResource {
                claim_name: "n".into(),
                claim_namespace: "s".into(),
                claim_resources: vec![ClaimResource {
                    cdi_devices: vec![CdiDevice { name: "x".into() }],
                    driver_name: "v".into(),
                    pool_name: "p".into(),
                    device_name: "e".into(),
                }],
            }],
        };
        assert_eq!(
            c.encode_to_vec(),
            b"\x0a\x01c\x12\x0a\x0a\x01r\x12\x01d\x1a\x02\x0a\x00\
              \x2a\x16\x12\x01n\x1a\x01s\x22\x0e\x0a\x03\x0a\x01x\x12\x01v\x1a\x01p\x22\x01e"
                .to_vec()
        );
        let g = GetPodResourcesRequest {
            pod_name: "a".into(),
            pod_namespace: "b".into(),
        };
        assert_eq!(g.encode_to_vec(), b"\x0a\x01a\x12\x01b".to_vec());
    }
}
