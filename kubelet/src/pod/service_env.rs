//! The Service environment variables every container gets, as upstream's kubelet builds them
//! (`getServiceEnvVarMap` and `envvars.FromServices`): for the `kubernetes` Service of the
//! `default` namespace always (so in-cluster clients find the API through
//! `KUBERNETES_SERVICE_HOST`/`_PORT`), and for every Service of the pod's own namespace when
//! `enableServiceLinks` is true (the default). Services without a cluster IP (headless)
//! give none. For each: `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT` (the first port),
//! `<NAME>_SERVICE_PORT_<PORTNAME>` for named ports, and the Docker-link style
//! `<NAME>_PORT`, `<NAME>_PORT_<port>_<PROTO>{,_PROTO,_PORT,_ADDR}`; names upper-cased with
//! `-` as `_`. The container's own `env` wins over these, and may refer to them as `$(VAR)`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;

/// The namespace and name of the Service whose variables every pod gets.
pub const MASTER_NAMESPACE: &str = "default";
pub const MASTER_SERVICE: &str = "kubernetes";

/// The variables for a pod in `ns` given `services` (any namespaces; the ones that do not
/// concern the pod are ignored).
pub fn service_env<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    ns: &str,
    enable_links: bool,
) -> BTreeMap<String, String> {
    // by name: a Service of the pod's own namespace called `kubernetes` replaces the
    // master one, as upstream's map does
    let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
    let mut own: BTreeMap<&str, &Service> = BTreeMap::new();
    for s in services.into_iter().filter(|s| cluster_ip(s).is_some()) {
        let name = s.metadata.name.as_deref().unwrap_or_default();
        let s_ns = s.metadata.namespace.as_deref().unwrap_or_default();
        if s_ns == MASTER_NAMESPACE && name == MASTER_SERVICE {
            chosen.entry(name).or_insert(s);
        } else if s_ns == ns && enable_links {
            own.insert(name, s);
        }
    }
    chosen.extend(own);
    let mut env = BTreeMap::new();
    for s in chosen.values() {
        add_service(&mut env, s);
    }
    env
}

/// The Service's cluster IP, unless it has none (headless `None`, or unset).
fn cluster_ip(s: &Service) -> Option<&str> {
    s.spec
        .as_ref()?
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

fn var_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

fn add_service(env: &mut BTreeMap<String, String>, s: &Service) {
    let (Some(ip), Some(spec)) = (cluster_ip(s), s.spec.as_ref()) else {
        return;
    };
    let ports = spec.ports.as_deref().unwrap_or_default();
    let Some(first) = ports.first() else {
        return;
    };
    let prefix = var_name(s.metadata.name.as_deref().unwrap_or_default());
    env.insert(format!("{prefix}_SERVICE_HOST"), ip.to_string());
    env.insert(format!("{prefix}_SERVICE_PORT"), first.port.to_string());
    for p in ports {
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            env.insert(
                format!("{prefix}_SERVICE_PORT_{}", var_name(name)),
                p.port.to_string(),
            );
        }
    }
    // Docker links
    for (i, p) in ports.iter().enumerate() {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let lower = proto.to_lowercase();
        // host:port as Go's net.JoinHostPort writes it: an IPv6 address in brackets
        let url = if ip.contains(':') {
            format!("{lower}://[{ip}]:{}", p.port)
        } else {
            format!("{lower}://{ip}:{}", p.port)
        };
        if i == 0 {
            env.insert(format!("{prefix}_PORT"), url.clone());
        }
        let port_prefix = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
        env.insert(format!("{port_prefix}_PROTO"), lower);
        env.insert(format!("{port_prefix}_PORT"), p.port.to_string());
        env.insert(format!("{port_prefix}_ADDR"), ip.to_string());
        env.insert(port_prefix, url);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip, "ports": ports},
        }))
        .expect("service")
    }

    fn kubernetes() -> Service {
        svc(
            "default",
            "kubernetes",
            "10.43.0.1",
            json!([{"name": "https", "port": 443, "protocol": "TCP"}]),
        )
    }

    #[test]
    fn the_master_service_is_always_there_with_upstreams_names() {
        let env = service_env(&[kubernetes()], "team", false);
        let want: BTreeMap<String, String> = [
            ("KUBERNETES_SERVICE_HOST", "10.43.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.43.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.43.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.43.0.1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, want);
    }

    #[test]
    fn own_namespace_services_only_with_links_and_never_headless_or_foreign() {
        let services = [
            kubernetes(),
            svc(
                "team",
                "my-db",
                "10.43.7.7",
                json!([{"port": 5432}, {"name": "metrics-port", "port": 9187, "protocol": "UDP"}]),
            ),
            svc("team", "headless", "None", json!([{"port": 80}])),
            svc("other", "web", "10.43.8.8", json!([{"port": 80}])),
        ];
        let env = service_env(&services, "team", true);
        assert_eq!(env["MY_DB_SERVICE_HOST"], "10.43.7.7");
        assert_eq!(env["MY_DB_SERVICE_PORT"], "5432");
        assert_eq!(env["MY_DB_SERVICE_PORT_METRICS_PORT"], "9187");
        assert_eq!(env["MY_DB_PORT"], "tcp://10.43.7.7:5432");
        // an IPv6 ClusterIP (an IPv6-primary cluster) is bracketed in the URLs only
        let mut v6 = BTreeMap::new();
        add_service(
            &mut v6,
            &svc("d", "web", "fd00:43::7", json!([{"port": 80}])),
        );
        assert_eq!(v6["WEB_PORT"], "tcp://[fd00:43::7]:80");
        assert_eq!(v6["WEB_PORT_80_TCP"], "tcp://[fd00:43::7]:80");
        assert_eq!(v6["WEB_PORT_80_TCP_ADDR"], "fd00:43::7");
        assert_eq!(v6["WEB_SERVICE_HOST"], "fd00:43::7");
        assert_eq!(env["MY_DB_PORT_9187_UDP"], "udp://10.43.7.7:9187");
        assert_eq!(env["MY_DB_PORT_9187_UDP_PROTO"], "udp");
        assert!(env.contains_key("KUBERNETES_SERVICE_HOST"));
        assert!(!env.keys().any(|k| k.starts_with("HEADLESS_")));
        assert!(!env.keys().any(|k| k.starts_with("WEB_")));
        let without = service_env(&services, "team", false);
        assert!(!without.keys().any(|k| k.starts_with("MY_DB_")));
        assert!(without.contains_key("KUBERNETES_SERVICE_HOST"));
    }

    #[test]
    fn a_kubernetes_service_in_the_pods_namespace_replaces_the_master_one() {
        let services = [
            kubernetes(),
            svc("team", "kubernetes", "10.43.9.9", json!([{"port": 8443}])),
        ];
        let env = service_env(&services, "team", true);
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.43.9.9");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "8443");
        assert!(!env.contains_key("KUBERNETES_SERVICE_PORT_HTTPS"));
    }
}
