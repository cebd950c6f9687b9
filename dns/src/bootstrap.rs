//! The `kube-dns` Service `kaze server` creates so pods reach this server through the
//! dataplane: a selector-less Service on the cluster DNS address (10.43.0.10 by default)
//! and an EndpointSlice naming where `kaze dns` actually listens (a host process, not a
//! pod, so no selector could find it).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::records::SERVICE_NAME_LABEL;

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "kube-dns";

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("k8s-app".to_string(), NAME.to_string()),
        ("kubernetes.io/name".to_string(), "CoreDNS".to_string()),
    ])
}

/// `cluster_ip` is `--cluster-dns`; `server_ip`/`dns_port` where `kaze dns` serves;
/// `metrics_port` its HTTP port.
pub fn kube_dns_objects(
    cluster_ip: IpAddr,
    server_ip: IpAddr,
    dns_port: u16,
    metrics_port: u16,
) -> (Service, EndpointSlice) {
    let port = |name: &str, proto: &str, port: u16, target: u16| ServicePort {
        name: Some(name.into()),
        protocol: Some(proto.into()),
        port: i32::from(port),
        target_port: Some(IntOrString::Int(i32::from(target))),
        ..Default::default()
    };
    let family = if cluster_ip.is_ipv4() { "IPv4" } else { "IPv6" };
    let service = Service {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(NAMESPACE.into()),
            labels: Some(labels()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(cluster_ip.to_string()),
            cluster_ips: Some(vec![cluster_ip.to_string()]),
            ip_families: Some(vec![family.into()]),
            ports: Some(vec![
                port("dns", "UDP", 53, dns_port),
                port("dns-tcp", "TCP", 53, dns_port),
                port("metrics", "TCP", 9153, metrics_port),
            ]),
            ..Default::default()
        }),
        status: None,
    };
    let mut slice_labels = labels();
    slice_labels.insert(SERVICE_NAME_LABEL.into(), NAME.into());
    // marks the slice as hand-managed so the EndpointSlice controller leaves it alone
    slice_labels.insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        "kaze-server".into(),
    );
    let eport = |name: &str, proto: &str, port: u16| EndpointPort {
        name: Some(name.into()),
        protocol: Some(proto.into()),
        port: Some(i32::from(port)),
        ..Default::default()
    };
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{NAME}-kaze")),
            namespace: Some(NAMESPACE.into()),
            labels: Some(slice_labels),
            ..Default::default()
        },
        address_type: if server_ip.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
        endpoints: Some(vec![Endpoint {
            addresses: vec![server_ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            ..Default::default()
        }]),
        ports: Some(vec![
            eport("dns", "UDP", dns_port),
            eport("dns-tcp", "TCP", dns_port),
            eport("metrics", "TCP", metrics_port),
        ]),
    };
    (service, slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{ServiceInfo, ServiceKind, SliceInfo};

    #[test]
    fn kube_dns_objects_describe_the_server() {
        let (svc, slice) = kube_dns_objects(
            "10.43.0.10".parse().unwrap(),
            "192.168.5.2".parse().unwrap(),
            5353,
            8181,
        );
        let info = ServiceInfo::from_service(&svc).unwrap();
        assert_eq!(info.key(), ("kube-system".into(), "kube-dns".into()));
        assert_eq!(
            info.kind,
            ServiceKind::ClusterIp(vec!["10.43.0.10".parse().unwrap()])
        );
        assert!(svc.spec.as_ref().unwrap().selector.is_none());
        let slice = SliceInfo::from_slice(&slice).unwrap();
        assert_eq!(slice.service, "kube-dns");
        assert_eq!(
            slice.endpoints[0].addresses,
            vec!["192.168.5.2".parse::<IpAddr>().unwrap()]
        );
        assert!(slice
            .ports
            .iter()
            .any(|p| p.name == "dns" && p.port == 5353));
    }
}
