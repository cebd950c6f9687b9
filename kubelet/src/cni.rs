//! CNI: the node's generated network config (bridge + host-local IPAM on the pod CIDR, then
//! portmap for hostPorts) and ADD/DEL by exec'ing the standard plugins, the way libcni runs a
//! conflist — except that a pod without hostPorts skips portmap (it would only check and
//! tear down NAT chains that have no rule for it) and `lo` is brought up by the kubelet
//! itself (all the loopback plugin does): each plugin is a Go binary whose start costs a
//! few ms of CPU, for every pod. DEL runs the plugins the ADD ran, which the caller keeps.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::sys::{self, SysError};

pub const CNI_VERSION: &str = "1.0.0";

/// How the node's pods are wired.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// The node's `spec.podCIDRs`, comma-separated: `10.42.0.0/24`, or one of each family
    /// on a dual-stack node (`10.42.0.0/24,fd00:42::/64`; pods get an address from each,
    /// the first family's first).
    pub pod_cidr: String,
    /// The Linux bridge pods attach to (at most 15 bytes).
    pub bridge: String,
    /// Where the CNI plugin binaries are (`--cni-bin-dir`).
    pub bin_dir: PathBuf,
    /// Where the generated conflist is written, for operators to read.
    pub conf_dir: PathBuf,
    /// host-local's allocation store (one file per allocated IP).
    pub ipam_dir: PathBuf,
    /// Masquerade pod traffic leaving the pod CIDR.
    pub ip_masq: bool,
}

impl NetworkConfig {
    /// Defaults for a node: bridge `kaze0`, Debian's plugins, host-local under /var/lib/cni.
    pub fn new(pod_cidr: &str) -> NetworkConfig {
        NetworkConfig {
            pod_cidr: pod_cidr.to_string(),
            bridge: "kaze0".into(),
            bin_dir: "/usr/lib/cni".into(),
            conf_dir: "/etc/cni/net.d".into(),
            ipam_dir: "/var/lib/cni/networks".into(),
            ip_masq: true,
        }
    }
}

/// A `hostPort` mapping handed to portmap.
#[derive(Clone, Debug, PartialEq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    pub host_ip: Option<String>,
}

/// Who a CNI call is for (CNI_ARGS and error messages).
#[derive(Clone, Debug)]
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub pod_namespace: &'a str,
    pub pod_name: &'a str,
    pub pod_uid: &'a str,
}

#[derive(Clone, Debug)]
pub struct Cni {
    config: NetworkConfig,
    network: String,
    conflist: Value,
}

impl Cni {
    /// Generate the node's conflist (and write it to `conf_dir`).
    pub fn new(config: NetworkConfig, network: &str) -> Result<Cni> {
        if config.bridge.is_empty() || config.bridge.len() > 15 {
            return Err(Error::invalid(
                "configuring cni",
                format!("bridge name {:?} must be 1-15 bytes", config.bridge),
            ));
        }
        let subnets: Vec<&str> = config
            .pod_cidr
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        let ranges: Vec<Value> = subnets.iter().map(|c| json!([{ "subnet": c }])).collect();
        // a default route per family the pods have an address of
        let mut routes: Vec<Value> = Vec::new();
        for c in &subnets {
            let dst = if c.contains(':') { "::/0" } else { "0.0.0.0/0" };
            if !routes.iter().any(|r| r["dst"] == dst) {
                routes.push(json!({ "dst": dst }));
            }
        }
        let conflist = json!({
            "cniVersion": CNI_VERSION,
            "name": network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": config.bridge,
                    "isGateway": true,
                    "ipMasq": config.ip_masq,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": ranges,
                        "routes": routes,
                        "dataDir": config.ipam_dir,
                    }
                },
                { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
            ]
        });
        let file = config.conf_dir.join(format!("10-{network}.conflist"));
        let text = serde_json::to_vec_pretty(&conflist).unwrap_or_default();
        sys::write_file(&file, &text)
            .map_err(|source| Error::sys("writing the cni conflist", source))?;
        Ok(Cni {
            config,
            network: network.to_string(),
            conflist,
        })
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    pub fn conflist(&self) -> &Value {
        &self.conflist
    }

    /// The types of the conflist's plugins a pod with `ports` needs, in order: portmap (the
    /// only plugin with the `portMappings` capability) only when it has hostPorts.
    pub fn plugins_for(&self, ports: &[PortMapping]) -> Vec<String> {
        let mut plugins = self.plugins();
        plugins.retain(|p| !ports.is_empty() || p["capabilities"]["portMappings"] != json!(true));
        plugin_types(&plugins)
    }

    /// Every plugin type of the conflist (what a pod made before [`Cni::plugins_for`]
    /// existed went through).
    pub fn all_plugins(&self) -> Vec<String> {
        plugin_types(&self.plugins())
    }

    /// Bring up `lo` and ADD the pod to the node network through `plugins` (from
    /// [`Cni::plugins_for`]); returns the last result (whose IPs are the pod IPs), to be
    /// kept for DEL.
    pub async fn add(
        &self,
        at: &Attachment<'_>,
        plugins: &[String],
        ports: &[PortMapping],
    ) -> Result<Value> {
        sys::loopback_up(at.netns).await.map_err(|source| {
            Error::sys(
                format!("cni ADD for pod {}/{}", at.pod_namespace, at.pod_name),
                source,
            )
        })?;
        let mut prev: Option<Value> = None;
        for plugin in self.selected(plugins) {
            let conf = self.plugin_conf(plugin, ports, prev.as_ref());
            prev = Some(self.exec("ADD", &conf, at, "eth0").await?);
        }
        prev.ok_or_else(|| Error::invalid("cni ADD", "the conflist has no plugins"))
    }

    /// DEL through `plugins` (those the ADD ran) in reverse order; releases the IP
    /// (host-local) and removes the veth and NAT rules. Idempotent: DEL of something
    /// already gone succeeds. `lo` goes with the netns.
    pub async fn del(
        &self,
        at: &Attachment<'_>,
        plugins: &[String],
        ports: &[PortMapping],
        prev: Option<&Value>,
    ) -> Result<()> {
        let mut first_err = None;
        for plugin in self.selected(plugins).into_iter().rev() {
            let conf = self.plugin_conf(plugin, ports, prev);
            if let Err(e) = self.exec("DEL", &conf, at, "eth0").await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The conflist's plugins whose type is in `types`, in the conflist's order.
    fn selected(&self, types: &[String]) -> Vec<Value> {
        self.plugins()
            .into_iter()
            .filter(|p| {
                p["type"]
                    .as_str()
                    .is_some_and(|t| types.iter().any(|x| x == t))
            })
            .collect()
    }

    /// One plugin's stdin: its own config plus the list's name/version, the previous result
    /// and the runtime config for the capabilities it declared (libcni's rules).
    fn plugin_conf(&self, plugin: Value, ports: &[PortMapping], prev: Option<&Value>) -> Value {
        let mut conf = plugin;
        conf["name"] = json!(self.network);
        conf["cniVersion"] = json!(CNI_VERSION);
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        if conf["capabilities"]["portMappings"] == json!(true) {
            let maps: Vec<Value> = ports
                .iter()
                .map(|p| {
                    let mut m = json!({ "hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol.to_lowercase() });
                    if let Some(ip) = &p.host_ip {
                        m["hostIP"] = json!(ip);
                    }
                    m
                })
                .collect();
            conf["runtimeConfig"] = json!({ "portMappings": maps });
        }
        if let Some(obj) = conf.as_object_mut() {
            obj.remove("capabilities");
        }
        conf
    }

    async fn exec(
        &self,
        command: &'static str,
        conf: &Value,
        at: &Attachment<'_>,
        ifname: &str,
    ) -> Result<Value> {
        let plugin = conf["type"].as_str().unwrap_or_default().to_string();
        let what = format!("cni {command} for pod {}/{}", at.pod_namespace, at.pod_name);
        let env = vec![
            ("CNI_COMMAND".to_string(), command.to_string()),
            ("CNI_CONTAINERID".into(), at.container_id.to_string()),
            ("CNI_NETNS".into(), at.netns.display().to_string()),
            ("CNI_IFNAME".into(), ifname.to_string()),
            ("CNI_PATH".into(), self.config.bin_dir.display().to_string()),
            (
                "CNI_ARGS".into(),
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                    at.pod_namespace, at.pod_name, at.container_id, at.pod_uid
                ),
            ),
            ("PATH".into(), std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())),
        ];
        let stdin = serde_json::to_vec(conf).unwrap_or_default();
        let bin = self.config.bin_dir.join(&plugin);
        match sys::cni_exec(&bin, &env, &stdin).await {
            Ok(out) if out.iter().all(u8::is_ascii_whitespace) => Ok(Value::Null),
            Ok(out) => serde_json::from_slice(&out).map_err(|e| Error::Cni {
                what,
                plugin,
                command,
                message: format!("unparsable result: {e}"),
            }),
            Err(SysError::Failed {
                stdout,
                stderr,
                status,
                ..
            }) => {
                // Plugins report errors as JSON on stdout: {"code":..,"msg":..,"details":..}.
                let message = serde_json::from_str::<Value>(&stdout)
                    .ok()
                    .and_then(|v| {
                        let msg = v["msg"].as_str()?.to_string();
                        Some(match v["details"].as_str() {
                            Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                            _ => msg,
                        })
                    })
                    .unwrap_or_else(|| format!("{status}: {stderr}{stdout}"));
                Err(Error::Cni {
                    what,
                    plugin,
                    command,
                    message,
                })
            }
            Err(source) => Err(Error::sys(format!("{what}: running {plugin}"), source)),
        }
    }
}

/// The pod IPs in a CNI result (`ips[].address`, CIDR notation).
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The `type` of each plugin config, in order.
fn plugin_types(plugins: &[Value]) -> Vec<String> {
    plugins
        .iter()
        .filter_map(|p| p["type"].as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cni(dir: &Path) -> Cni {
        let mut cfg = NetworkConfig::new("10.42.7.0/24");
        cfg.conf_dir = dir.to_path_buf();
        cfg.bridge = "kz-test".into();
        Cni::new(cfg, "kaze-n1").unwrap()
    }

    #[test]
    fn conflist_is_bridge_host_local_then_portmap() {
        let dir = tempfile::tempdir().unwrap();
        let c = cni(dir.path());
        let written: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("10-kaze-n1.conflist")).unwrap())
                .unwrap();
        assert_eq!(&written, c.conflist());
        assert_eq!(written["plugins"][0]["type"], "bridge");
        assert_eq!(written["plugins"][0]["bridge"], "kz-test");
        assert_eq!(written["plugins"][0]["ipam"]["type"], "host-local");
        assert_eq!(
            written["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.7.0/24"
        );
        assert_eq!(written["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn a_dual_stack_node_gets_a_range_and_a_default_route_per_family() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = NetworkConfig::new("10.42.7.0/24,fd00:42:0:7::/64");
        cfg.conf_dir = dir.path().to_path_buf();
        let c = Cni::new(cfg, "kaze-n1").unwrap();
        let ipam = &c.conflist()["plugins"][0]["ipam"];
        assert_eq!(
            ipam["ranges"],
            json!([[{"subnet": "10.42.7.0/24"}], [{"subnet": "fd00:42:0:7::/64"}]])
        );
        assert_eq!(
            ipam["routes"],
            json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
        );
    }

    #[test]
    fn plugin_conf_carries_prev_result_and_port_mappings() {
        let dir = tempfile::tempdir().unwrap();
        let c = cni(dir.path());
        let ports = [PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "TCP".into(),
            host_ip: None,
        }];
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.42.7.2/24"}]});
        let conf = c.plugin_conf(c.plugins()[1].clone(), &ports, Some(&prev));
        assert_eq!(conf["name"], "kaze-n1");
        assert_eq!(conf["prevResult"], prev);
        assert_eq!(conf["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert_eq!(conf["runtimeConfig"]["portMappings"][0]["protocol"], "tcp");
        assert!(conf.get("capabilities").is_none());
        let bridge = c.plugin_conf(c.plugins()[0].clone(), &ports, None);
        assert!(bridge.get("runtimeConfig").is_none());
        assert_eq!(
            result_ips(&prev),
            vec!["10.42.7.2".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn portmap_runs_only_for_pods_with_host_ports() {
        let dir = tempfile::tempdir().unwrap();
        let c = cni(dir.path());
        assert_eq!(c.plugins_for(&[]), vec!["bridge"]);
        let ports = [PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "TCP".into(),
            host_ip: None,
        }];
        assert_eq!(c.plugins_for(&ports), vec!["bridge", "portmap"]);
        assert_eq!(c.all_plugins(), vec!["bridge", "portmap"]);
        let picked: Vec<Value> = c.selected(&["portmap".into(), "bridge".into()]);
        assert_eq!(
            picked[0]["type"], "bridge",
            "the conflist's order, not the caller's"
        );
    }

    #[test]
    fn long_bridge_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = NetworkConfig::new("10.42.7.0/24");
        cfg.conf_dir = dir.path().to_path_buf();
        cfg.bridge = "a-bridge-name-too-long".into();
        let err = Cni::new(cfg, "n").unwrap_err().to_string();
        assert!(err.contains("1-15 bytes"), "{err}");
    }
}
