//! OCI runtime specs for the pause sandbox and app containers, and the pod's /etc files
//! (resolv.conf, hosts, hostname). Plain functions of their inputs: no I/O here.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::images::ImageConfig;
use crate::security::OciSecurity;

/// Kubernetes' default CPU CFS period (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Cgroup limits from `resources.limits`/`requests`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// cpu request in millicores -> cpu.shares (1024 per core, min 2).
    pub cpu_request_milli: Option<u64>,
    /// cpu limit in millicores -> CFS quota over [`CPU_PERIOD_US`].
    pub cpu_limit_milli: Option<u64>,
}

impl Resources {
    pub fn cpu_shares(&self) -> u64 {
        // Upstream's MilliCPUToShares: requests in millicores, 2 shares minimum.
        self.cpu_request_milli
            .map_or(2, |m| (m * 1024 / 1000).max(2))
    }

    pub fn cpu_quota(&self) -> Option<i64> {
        // Upstream's MilliCPUToQuota: 1 ms minimum quota.
        self.cpu_limit_milli
            .map(|m| ((m * CPU_PERIOD_US / 1000) as i64).max(1000))
    }

    fn to_oci(&self) -> Value {
        let mut cpu = json!({ "shares": self.cpu_shares() });
        if let Some(q) = self.cpu_quota() {
            cpu["quota"] = json!(q);
            cpu["period"] = json!(CPU_PERIOD_US);
        }
        let mut r = json!({
            "devices": [{ "allow": false, "access": "rwm" }],
            "cpu": cpu,
        });
        if let Some(m) = self.memory_limit {
            r["memory"] = json!({ "limit": m });
        }
        r
    }
}

/// A bind mount into a container.
#[derive(Clone, Debug, PartialEq)]
pub struct BindMount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
    /// `mountPropagation`: `None` (rprivate), `HostToContainer` (rslave),
    /// `Bidirectional` (rshared).
    pub propagation: Propagation,
}

/// A volume mount's `mountPropagation`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    None,
    HostToContainer,
    Bidirectional,
}

impl Propagation {
    /// The OCI mount option.
    pub fn option(self) -> &'static str {
        match self {
            Propagation::None => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        }
    }
}

/// The pod's DNS settings (dnsPolicy ClusterFirst unless told otherwise).
#[derive(Clone, Debug, PartialEq)]
pub struct DnsConfig {
    pub nameservers: Vec<IpAddr>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl DnsConfig {
    /// ClusterFirst: the cluster DNS, `<ns>.svc.<domain> svc.<domain> <domain>`, ndots:5.
    pub fn cluster_first(cluster_dns: &[IpAddr], namespace: &str, domain: &str) -> DnsConfig {
        DnsConfig {
            nameservers: cluster_dns.to_vec(),
            searches: vec![
                format!("{namespace}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_string(),
            ],
            options: vec!["ndots:5".into()],
        }
    }

    pub fn resolv_conf(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// The pod's /etc/hosts, as the kubelet writes it (managed header, localhost, the pod).
pub fn hosts_file(names: &[String], pod_ips: &[IpAddr], aliases: &[HostAlias]) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    for ip in pod_ips {
        out.push_str(&format!("{ip}\t{}\n", names.join("\t")));
    }
    out.push_str(&host_aliases(aliases));
    out
}

/// A pod's `hostAliases` entry: an IP and its names.
pub type HostAlias = (String, Vec<String>);

/// The `hostAliases` block upstream appends to a pod's hosts file (empty without any).
pub fn host_aliases(aliases: &[HostAlias]) -> String {
    if aliases.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n# Entries added by HostAliases.\n");
    for (ip, names) in aliases {
        out.push_str(&format!("{ip}\t{}\n", names.join("\t")));
    }
    out
}

/// What one OCI spec is built from.
#[derive(Clone, Debug)]
pub struct SpecInput<'a> {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// User, capabilities, no_new_privs, read-only root, masked paths, devices.
    pub security: OciSecurity,
    pub hostname: Option<&'a str>,
    pub netns: &'a Path,
    /// The pause process: app containers join its IPC and UTS namespaces.
    pub sandbox_pid: Option<u32>,
    pub cgroups_path: String,
    pub resources: Resources,
    pub mounts: Vec<BindMount>,
    /// The pod's sandbox id: every container of a pod names it as its shim group, so the
    /// pod has one `containerd-shim-runc-v2` (as under the CRI plugin), not one per container.
    pub shim_group: &'a str,
}

/// The OCI annotation the runc v2 shim groups containers by (its `start` reads it from the
/// bundle's config.json and hands back the running shim of the same group).
pub const SHIM_GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";

/// The process args from the image and the pod (Kubernetes' rules: `command` replaces the
/// entrypoint and drops the image's cmd; `args` replace the cmd).
pub fn process_args(image: &ImageConfig, command: &[String], args: &[String]) -> Vec<String> {
    let entry = if command.is_empty() {
        image.entrypoint.clone().unwrap_or_default()
    } else {
        command.to_vec()
    };
    let rest = if !args.is_empty() {
        args.to_vec()
    } else if command.is_empty() {
        image.cmd.clone().unwrap_or_default()
    } else {
        Vec::new()
    };
    entry.into_iter().chain(rest).collect()
}

/// Image env overlaid with the container's env (container wins, order kept).
pub fn merge_env(image: &ImageConfig, env: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<(String, String)> = image
        .env
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map_or((kv.clone(), String::new()), |(k, v)| (k.into(), v.into()))
        })
        .collect();
    for (k, v) in env {
        match out.iter_mut().find(|(ok, _)| ok == k) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The OCI runtime spec (runtime-spec 1.0) for runc.
pub fn oci_spec(input: &SpecInput<'_>) -> Value {
    let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "mount"})];
    namespaces.push(json!({ "type": "network", "path": input.netns }));
    match input.sandbox_pid {
        Some(pid) => {
            namespaces.push(json!({ "type": "ipc", "path": format!("/proc/{pid}/ns/ipc") }));
            namespaces.push(json!({ "type": "uts", "path": format!("/proc/{pid}/ns/uts") }));
        }
        None => {
            namespaces.push(json!({"type": "ipc"}));
            namespaces.push(json!({"type": "uts"}));
        }
    }
    let sec = &input.security;
    // Privileged containers get a writable /sys, as under the CRI plugin.
    let sys_mode = if sec.privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys_mode]}),
    ];
    for m in &input.mounts {
        let mode = if m.read_only { "ro" } else { "rw" };
        mounts.push(json!({
            "destination": m.container_path,
            "type": "bind",
            "source": m.host_path,
            "options": ["rbind", m.propagation.option(), mode],
        }));
    }
    let mut resources = input.resources.to_oci();
    if sec.privileged {
        resources["devices"] = json!([{ "allow": true, "access": "rwm" }]);
    }
    let devices: Vec<Value> = sec
        .devices
        .iter()
        .map(|d| {
            json!({
                "path": d.path,
                "type": d.kind.to_string(),
                "major": d.major,
                "minor": d.minor,
                "fileMode": d.mode,
                "uid": d.uid,
                "gid": d.gid,
            })
        })
        .collect();
    let mut user = json!({ "uid": sec.uid, "gid": sec.gid });
    if !sec.additional_gids.is_empty() {
        user["additionalGids"] = json!(sec.additional_gids);
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        // No rlimits: containers inherit the shim's, as under the CRI plugin.
        "process": {
            "terminal": false,
            "user": user,
            "args": input.args,
            "env": input.env,
            "cwd": if input.cwd.is_empty() { "/" } else { &input.cwd },
            "capabilities": {
                "bounding": sec.caps,
                "effective": sec.caps,
                "permitted": sec.caps,
            },
            "noNewPrivileges": sec.no_new_privileges,
        },
        "root": { "path": "rootfs", "readonly": sec.read_only_root },
        "mounts": mounts,
        "annotations": { SHIM_GROUP_ANNOTATION: input.shim_group },
        "linux": {
            "cgroupsPath": input.cgroups_path,
            "namespaces": namespaces,
            "resources": resources,
            "maskedPaths": sec.masked_paths,
            "readonlyPaths": sec.readonly_paths,
        },
    });
    if let Some(profile) = &sec.seccomp {
        spec["linux"]["seccomp"] = profile.clone();
    }
    if !devices.is_empty() {
        spec["linux"]["devices"] = json!(devices);
    }
    if let Some(h) = input.hostname {
        spec["hostname"] = json!(h);
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(vec!["/ep".into()]),
            cmd: Some(vec!["c1".into()]),
            env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(process_args(&image(), &[], &[]), s(&["/ep", "c1"]));
        assert_eq!(process_args(&image(), &[], &s(&["a"])), s(&["/ep", "a"]));
        assert_eq!(process_args(&image(), &s(&["sh"]), &[]), s(&["sh"]));
        assert_eq!(
            process_args(&image(), &s(&["sh"]), &s(&["-c", "x"])),
            s(&["sh", "-c", "x"])
        );
    }

    #[test]
    fn container_env_overrides_image_env() {
        let env = merge_env(
            &image(),
            &[("A".into(), "2".into()), ("B".into(), "3".into())],
        );
        assert_eq!(env, vec!["PATH=/bin", "A=2", "B=3"]);
    }

    #[test]
    fn cluster_first_resolv_conf() {
        let dns =
            DnsConfig::cluster_first(&["10.43.0.10".parse().unwrap()], "team", "cluster.local");
        assert_eq!(
            dns.resolv_conf(),
            "search team.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn resources_map_to_cgroup_values() {
        let r = Resources {
            memory_limit: Some(64 << 20),
            cpu_request_milli: Some(250),
            cpu_limit_milli: Some(500),
        };
        assert_eq!(r.cpu_shares(), 256);
        assert_eq!(r.cpu_quota(), Some(50_000));
        let oci = r.to_oci();
        assert_eq!(oci["memory"]["limit"], 64 << 20);
        assert_eq!(oci["cpu"]["period"], CPU_PERIOD_US);
        assert_eq!(Resources::default().cpu_shares(), 2);
    }

    #[test]
    fn app_containers_join_the_sandbox_namespaces() {
        let netns = PathBuf::from("/var/run/netns/x");
        let spec = oci_spec(&SpecInput {
            args: vec!["sh".into()],
            env: vec![],
            cwd: String::new(),
            security: OciSecurity::default(),
            hostname: None,
            netns: &netns,
            sandbox_pid: Some(42),
            cgroups_path: "/kaze/n/p/c".into(),
            resources: Resources::default(),
            shim_group: "sb",
            mounts: vec![BindMount {
                host_path: "/h".into(),
                container_path: "/etc/hosts".into(),
                read_only: false,
                propagation: Default::default(),
            }],
        });
        let ns = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "network", "path": "/var/run/netns/x"})));
        assert!(ns.contains(&json!({"type": "ipc", "path": "/proc/42/ns/ipc"})));
        assert!(ns.contains(&json!({"type": "uts", "path": "/proc/42/ns/uts"})));
        assert!(spec.get("hostname").is_none());
        assert_eq!(spec["annotations"][SHIM_GROUP_ANNOTATION], "sb");
        assert_eq!(spec["process"]["cwd"], "/");
        assert!(spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/etc/hosts"));
    }

    #[test]
    fn security_reaches_the_process_and_privileged_specs_open_up() {
        let netns = PathBuf::from("/var/run/netns/x");
        let input = |security: OciSecurity| SpecInput {
            args: vec!["sh".into()],
            env: vec![],
            cwd: String::new(),
            security,
            hostname: None,
            netns: &netns,
            sandbox_pid: Some(42),
            cgroups_path: "/kaze/n/p/c".into(),
            resources: Resources::default(),
            mounts: vec![],
            shim_group: "sb",
        };
        let plain = oci_spec(&input(OciSecurity {
            uid: 1000,
            gid: 3000,
            additional_gids: vec![2000, 3000],
            no_new_privileges: true,
            read_only_root: true,
            ..OciSecurity::default()
        }));
        assert_eq!(
            plain["process"]["user"],
            json!({"uid": 1000, "gid": 3000, "additionalGids": [2000, 3000]})
        );
        assert_eq!(plain["process"]["noNewPrivileges"], true);
        assert_eq!(plain["root"]["readonly"], true);
        assert_eq!(
            plain["process"]["capabilities"]["effective"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert!(plain["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/kcore")));
        let sys = |spec: &Value| {
            spec["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["destination"] == "/sys")
                .unwrap()["options"]
                .clone()
        };
        assert!(sys(&plain).as_array().unwrap().contains(&json!("ro")));
        assert_eq!(
            plain["linux"]["resources"]["devices"],
            json!([{"allow": false, "access": "rwm"}])
        );
        assert!(plain["linux"].get("devices").is_none());

        let privileged = oci_spec(&input(OciSecurity {
            privileged: true,
            masked_paths: vec![],
            readonly_paths: vec![],
            devices: vec![crate::security::Device {
                path: "/dev/loop0".into(),
                kind: 'b',
                major: 7,
                minor: 0,
                mode: 0o660,
                uid: 0,
                gid: 6,
            }],
            ..OciSecurity::default()
        }));
        assert!(sys(&privileged).as_array().unwrap().contains(&json!("rw")));
        assert_eq!(
            privileged["linux"]["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
        assert_eq!(
            privileged["linux"]["devices"],
            json!([{"path": "/dev/loop0", "type": "b", "major": 7, "minor": 0, "fileMode": 0o660, "uid": 0, "gid": 6}])
        );
        assert_eq!(privileged["linux"]["maskedPaths"], json!([]));
    }
}
