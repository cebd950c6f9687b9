//! Builders for the Service and EndpointSlice objects tests and benchmarks feed the zone
//! through the seam. They make the same objects the apiserver would store.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::records::SERVICE_NAME_LABEL;

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(namespace.to_string()),
        name: Some(name.to_string()),
        ..Default::default()
    }
}

/// `(name, protocol, port)`; an empty name makes an unnamed port.
pub type PortSpec<'a> = (&'a str, &'a str, u16);

fn service_ports(ports: &[PortSpec<'_>]) -> Vec<ServicePort> {
    ports
        .iter()
        .map(|(name, proto, port)| ServicePort {
            name: (!name.is_empty()).then(|| name.to_string()),
            protocol: Some(proto.to_string()),
            port: i32::from(*port),
            ..Default::default()
        })
        .collect()
}

/// A ClusterIP service; several IPs make it dual-stack.
pub fn cluster_ip_service(
    namespace: &str,
    name: &str,
    ips: &[&str],
    ports: &[PortSpec<'_>],
) -> Service {
    Service {
        metadata: meta(namespace, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: ips.first().map(|s| s.to_string()),
            cluster_ips: Some(ips.iter().map(|s| s.to_string()).collect()),
            ports: Some(service_ports(ports)),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn headless_service(
    namespace: &str,
    name: &str,
    ports: &[PortSpec<'_>],
    publish_not_ready: bool,
) -> Service {
    Service {
        metadata: meta(namespace, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some("None".into()),
            cluster_ips: Some(vec!["None".into()]),
            ports: Some(service_ports(ports)),
            publish_not_ready_addresses: publish_not_ready.then_some(true),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn external_name_service(namespace: &str, name: &str, target: &str) -> Service {
    Service {
        metadata: meta(namespace, name),
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some(target.into()),
            ..Default::default()
        }),
        status: None,
    }
}

/// One endpoint: `(addresses, hostname, ready)`.
pub type EndpointSpec<'a> = (&'a [&'a str], Option<&'a str>, bool);

pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    address_type: &str,
    endpoints: &[EndpointSpec<'_>],
    ports: &[PortSpec<'_>],
) -> EndpointSlice {
    let mut m = meta(namespace, name);
    m.labels = Some(BTreeMap::from([(
        SERVICE_NAME_LABEL.to_string(),
        service.to_string(),
    )]));
    EndpointSlice {
        metadata: m,
        address_type: address_type.into(),
        endpoints: Some(
            endpoints
                .iter()
                .map(|(addrs, hostname, ready)| Endpoint {
                    addresses: addrs.iter().map(|a| a.to_string()).collect(),
                    hostname: hostname.map(str::to_string),
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*ready),
                        terminating: Some(false),
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(
            ports
                .iter()
                .map(|(name, proto, port)| EndpointPort {
                    name: (!name.is_empty()).then(|| name.to_string()),
                    protocol: Some(proto.to_string()),
                    port: Some(i32::from(*port)),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}
