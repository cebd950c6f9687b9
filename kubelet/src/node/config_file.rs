//! `--config FILE`: upstream's `KubeletConfiguration` (`kubelet.config.k8s.io/v1beta1`, YAML
//! or JSON), decoded strictly as upstream does: an unknown field is an error naming it, and
//! so is a wrong `apiVersion` or `kind`. Every field maps onto the flag kaze already has for
//! it; command-line flags override the file (upstream's precedence), so a field is applied
//! only where its flag was not given ([`Config::given`]).
//!
//! Upstream fields kaze does not implement are refused with a message saying so
//! ([`UNSUPPORTED`]), except `serializeImagePulls`, `maxParallelImagePulls` and
//! `registryPullQPS`/`registryBurst`, accepted and ignored: this kubelet never pulls (images
//! come from the air-gap tarballs), so they cannot change anything.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::Config;

pub const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
pub const KIND: &str = "KubeletConfiguration";

/// The fields of upstream's `KubeletConfiguration` kaze implements, with upstream's names.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeletConfiguration {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub static_pod_path: Option<PathBuf>,
    pub file_check_frequency: Option<GoDuration>,
    pub http_check_frequency: Option<GoDuration>,
    pub sync_frequency: Option<GoDuration>,
    #[serde(rename = "staticPodURL")]
    pub static_pod_url: Option<String>,
    #[serde(rename = "staticPodURLHeader")]
    pub static_pod_url_header: Option<BTreeMap<String, Vec<String>>>,
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
    pub authentication: Option<Authentication>,
    pub authorization: Option<Authorization>,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Option<Vec<IpAddr>>,
    pub cluster_domain: Option<String>,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    pub max_pods: Option<u32>,
    pub cgroup_root: Option<String>,
    pub pod_logs_dir: Option<PathBuf>,
    pub container_runtime_endpoint: Option<String>,
    pub eviction_hard: Option<BTreeMap<String, String>>,
    pub eviction_soft: Option<BTreeMap<String, String>>,
    pub eviction_soft_grace_period: Option<BTreeMap<String, String>>,
    pub allowed_unsafe_sysctls: Option<Vec<String>>,
    #[serde(rename = "imageGCHighThresholdPercent")]
    pub image_gc_high_threshold_percent: Option<i32>,
    #[serde(rename = "imageGCLowThresholdPercent")]
    pub image_gc_low_threshold_percent: Option<i32>,
    #[serde(rename = "imageMinimumGCAge")]
    pub image_minimum_gc_age: Option<GoDuration>,
    pub container_log_max_size: Option<String>,
    pub container_log_max_files: Option<u32>,
    // Accepted, no effect: this kubelet never pulls from a registry.
    pub serialize_image_pulls: Option<bool>,
    pub max_parallel_image_pulls: Option<u32>,
    #[serde(rename = "registryPullQPS")]
    pub registry_pull_qps: Option<f64>,
    pub registry_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Authentication {
    pub x509: Option<X509>,
    pub webhook: Option<Webhook>,
    pub anonymous: Option<Anonymous>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct X509 {
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Webhook {
    pub enabled: Option<bool>,
    #[serde(rename = "cacheTTL")]
    pub cache_ttl: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Anonymous {
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Authorization {
    pub mode: Option<String>,
    pub webhook: Option<AuthorizationWebhook>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationWebhook {
    #[serde(rename = "cacheAuthorizedTTL")]
    pub cache_authorized_ttl: Option<GoDuration>,
    #[serde(rename = "cacheUnauthorizedTTL")]
    pub cache_unauthorized_ttl: Option<GoDuration>,
}

/// A Go duration (`20s`, `1m30s`, `1.5h`, `300ms`) as upstream's `metav1.Duration`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_go_duration(&s)
            .map(GoDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parse a Go duration (`1m30s`, `2.5s`, `0`; [`component::leader::parse_go_duration`]).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    component::leader::parse_go_duration(s)
}

/// Upstream `KubeletConfiguration` fields kaze's kubelet does not implement: a file setting
/// one is refused rather than silently running otherwise than it asks.
pub const UNSUPPORTED: &[&str] = &[
    "enableServer",
    "tlsCertFile",
    "tlsPrivateKeyFile",
    "tlsCipherSuites",
    "tlsMinVersion",
    "rotateCertificates",
    "serverTLSBootstrap",
    "registerNode",
    "registerWithTaints",
    "readOnlyPort",
    "healthzPort",
    "healthzBindAddress",
    "oomScoreAdj",
    "streamingConnectionIdleTimeout",
    "nodeStatusUpdateFrequency",
    "nodeStatusReportFrequency",
    "imageMaximumGCAge",
    "volumeStatsAggPeriod",
    "kubeletCgroups",
    "systemCgroups",
    "cgroupsPerQOS",
    "cgroupDriver",
    "cpuManagerPolicy",
    "cpuManagerPolicyOptions",
    "cpuManagerReconcilePeriod",
    "memoryManagerPolicy",
    "topologyManagerPolicy",
    "topologyManagerScope",
    "topologyManagerPolicyOptions",
    "qosReserved",
    "runtimeRequestTimeout",
    "hairpinMode",
    "podPidsLimit",
    "resolvConf",
    "runOnce",
    "cpuCFSQuota",
    "cpuCFSQuotaPeriod",
    "nodeStatusMaxImages",
    "maxOpenFiles",
    "contentType",
    "kubeAPIQPS",
    "kubeAPIBurst",
    "evictionPressureTransitionPeriod",
    "evictionMaxPodGracePeriod",
    "evictionMinimumReclaim",
    "mergeDefaultEvictionSettings",
    "podsPerCore",
    "enableControllerAttachDetach",
    "protectKernelDefaults",
    "makeIPTablesUtilChains",
    "iptablesMasqueradeBit",
    "iptablesDropBit",
    "featureGates",
    "failSwapOn",
    "memorySwap",
    "containerLogMaxWorkers",
    "containerLogMonitorInterval",
    "configMapAndSecretChangeDetectionStrategy",
    "systemReserved",
    "kubeReserved",
    "reservedSystemCPUs",
    "showHiddenMetricsForVersion",
    "systemReservedCgroup",
    "kubeReservedCgroup",
    "enforceNodeAllocatable",
    "volumePluginDir",
    "providerID",
    "kernelMemcgNotification",
    "logging",
    "enableSystemLogHandler",
    "enableSystemLogQuery",
    "shutdownGracePeriod",
    "shutdownGracePeriodCriticalPods",
    "shutdownGracePeriodByPodPriority",
    "crashLoopBackOff",
    "reservedMemory",
    "enableProfilingHandler",
    "enableDebugFlagsHandler",
    "seccompDefault",
    "memoryThrottlingFactor",
    "localStorageCapacityIsolation",
    "nodeLeaseDurationSeconds",
    "imageServiceEndpoint",
    "failCgroupV1",
    "userNamespaces",
    "imagePullCredentialsVerificationPolicy",
    "preloadedImagesVerificationAllowlist",
    "singleProcessOOMKill",
    "enableDebuggingHandlers",
    "enableContentionProfiling",
    "tracing",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("reading kubelet config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kubelet config file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Decode a `KubeletConfiguration` (YAML or JSON; `path` names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<KubeletConfiguration, ConfigFileError> {
    let invalid = |reason: String| ConfigFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let raw: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| invalid(format!("not YAML or JSON: {e}")))?;
    let top = raw
        .as_mapping()
        .ok_or_else(|| invalid("not a KubeletConfiguration object".into()))?;
    let get = |k: &str| top.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    if get("apiVersion") != API_VERSION {
        return Err(invalid(format!(
            "apiVersion {:?}: want {API_VERSION:?}",
            get("apiVersion")
        )));
    }
    if get("kind") != KIND {
        return Err(invalid(format!("kind {:?}: want {KIND:?}", get("kind"))));
    }
    for key in top.keys().filter_map(|k| k.as_str()) {
        if UNSUPPORTED.contains(&key) {
            return Err(invalid(format!(
                "field {key:?} is not supported by kaze's kubelet (README: \"--config\")"
            )));
        }
    }
    // serde_yaml's errors from a field's own parser do not say which field: say it here
    for key in [
        "fileCheckFrequency",
        "httpCheckFrequency",
        "syncFrequency",
        "imageMinimumGCAge",
    ] {
        let Some(v) = top.get(key) else { continue };
        let text = match v {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            _ => return Err(invalid(format!("{key}: want a duration like \"20s\""))),
        };
        parse_go_duration(&text).map_err(|e| invalid(format!("{key}: {e}")))?;
    }
    // from the text, not `raw`: serde_yaml's errors then name the field's path and line
    let file: KubeletConfiguration =
        serde_yaml::from_str(text).map_err(|e| invalid(format!("strict decoding error: {e}")))?;
    // What kaze cannot honour inside otherwise known sections.
    if let Some(a) = &file.authentication {
        if a.webhook.as_ref().and_then(|w| w.enabled) == Some(false) {
            return Err(invalid("authentication.webhook.enabled: false is not supported: with an apiserver, kaze's kubelet always checks bearer tokens with TokenReview".into()));
        }
    }
    if let Some(mode) = file.authorization.as_ref().and_then(|a| a.mode.as_deref()) {
        if mode != "Webhook" {
            return Err(invalid(format!("authorization.mode {mode:?}: kaze's kubelet supports only \"Webhook\" (SubjectAccessReview; system:masters callers are allowed)")));
        }
    }
    Ok(file)
}

/// Read and decode `path`.
pub fn load(path: &Path) -> Result<KubeletConfiguration, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

impl KubeletConfiguration {
    /// Set what this file sets on `config`, except settings whose flag was given
    /// (`config.given`): flags win over the file.
    pub fn apply(self, config: &mut Config) {
        let given: std::collections::HashSet<String> = config.given.iter().cloned().collect();
        let free = |id: &str| !given.contains(id);
        macro_rules! set {
            ($value:expr, $id:literal, $field:expr) => {
                if let Some(v) = $value {
                    if free($id) {
                        $field = v;
                    }
                }
            };
        }
        let s = &mut config.static_pods;
        set!(
            self.static_pod_path.map(Some),
            "pod_manifest_path",
            s.pod_manifest_path
        );
        set!(
            self.file_check_frequency.map(|d| d.0),
            "file_check_frequency",
            s.file_check_frequency
        );
        set!(
            self.http_check_frequency.map(|d| d.0),
            "http_check_frequency",
            s.http_check_frequency
        );
        set!(
            self.sync_frequency.map(|d| d.0),
            "sync_frequency",
            s.sync_frequency
        );
        set!(
            self.static_pod_url.map(Some),
            "manifest_url",
            s.manifest_url
        );
        set!(
            self.static_pod_url_header.map(|h| h
                .into_iter()
                .flat_map(|(k, vs)| vs.into_iter().map(move |v| format!("{k}:{v}")))
                .collect()),
            "manifest_url_header",
            s.manifest_url_header
        );
        set!(self.address, "address", config.address);
        set!(self.port, "port", config.port);
        let auth = self.authentication.unwrap_or_default();
        set!(
            auth.x509.and_then(|x| x.client_ca_file).map(Some),
            "client_ca_file",
            config.client_ca_file
        );
        set!(
            auth.anonymous.and_then(|a| a.enabled),
            "anonymous_auth",
            config.anonymous_auth
        );
        set!(self.cluster_dns, "cluster_dns", config.cluster_dns);
        set!(self.cluster_domain, "cluster_domain", config.cluster_domain);
        set!(self.pod_cidr.map(Some), "pod_cidr", config.pod_cidr);
        set!(self.max_pods, "max_pods", config.max_pods);
        set!(
            self.cgroup_root.map(Some),
            "cgroup_root",
            config.cgroup_root
        );
        set!(self.pod_logs_dir, "pod_log_dir", config.pod_log_dir);
        set!(
            self.container_runtime_endpoint,
            "container_runtime_endpoint",
            config.container_runtime_endpoint
        );
        set!(
            self.eviction_hard.map(|m| m
                .iter()
                .map(|(k, v)| format!("{k}<{v}"))
                .collect::<Vec<_>>()
                .join(",")),
            "eviction_hard",
            config.eviction_hard
        );
        set!(
            self.eviction_soft.map(|m| m
                .iter()
                .map(|(k, v)| format!("{k}<{v}"))
                .collect::<Vec<_>>()
                .join(",")),
            "eviction_soft",
            config.eviction_soft
        );
        set!(
            self.eviction_soft_grace_period.map(|m| m
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")),
            "eviction_soft_grace_period",
            config.eviction_soft_grace_period
        );
        set!(
            self.allowed_unsafe_sysctls,
            "allowed_unsafe_sysctls",
            config.allowed_unsafe_sysctls
        );
        set!(
            self.container_log_max_size,
            "container_log_max_size",
            config.container_log_max_size
        );
        set!(
            self.container_log_max_files,
            "container_log_max_files",
            config.container_log_max_files
        );
        let gc = &mut config.image_gc;
        set!(
            self.image_gc_high_threshold_percent,
            "image_gc_high_threshold",
            gc.high_threshold
        );
        set!(
            self.image_gc_low_threshold_percent,
            "image_gc_low_threshold",
            gc.low_threshold
        );
        set!(
            self.image_minimum_gc_age.map(|d| d.0),
            "minimum_image_ttl_duration",
            gc.minimum_age
        );
    }
}

/// A duration as Go's `time.Duration.String()` writes it (`20s`, `1m30s`, `4h0m0s`,
/// `500ms`, `0s`), as upstream's `/configz` shows durations.
pub fn go_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d < Duration::from_secs(1) {
        let ms = d.as_secs_f64() * 1000.0;
        return format!("{}ms", trim_float(ms));
    }
    let total = d.as_secs();
    let (h, m) = (total / 3600, (total % 3600) / 60);
    let secs = (total % 60) as f64 + f64::from(d.subsec_nanos()) / 1e9;
    let s = format!("{}s", trim_float(secs));
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.9}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `key<value,...` (or `key=value,...`) as the map the file form has.
fn pairs(s: &str, sep: char) -> serde_json::Map<String, serde_json::Value> {
    s.split(',')
        .filter_map(|p| p.split_once(sep))
        .map(|(k, v)| (k.trim().to_string(), serde_json::Value::from(v.trim())))
        .collect()
}

/// The kubelet's effective configuration as upstream's `/configz` answers it:
/// `{"kubeletconfig": {...}}` with `KubeletConfiguration`'s field names, after flags and
/// `--config`'s file. It holds the fields kaze implements (the ones a file may set, above);
/// read back as a file, it gives the same settings.
pub fn configz(c: &Config) -> serde_json::Value {
    use serde_json::json;
    let sp = &c.static_pods;
    let mut headers = serde_json::Map::new();
    for h in &sp.manifest_url_header {
        if let Some((name, value)) = h.split_once(':') {
            let values = headers.entry(name.to_string()).or_insert_with(|| json!([]));
            if let Some(list) = values.as_array_mut() {
                list.push(json!(value));
            }
        }
    }
    let mut k = json!({
        "syncFrequency": go_duration(sp.sync_frequency),
        "fileCheckFrequency": go_duration(sp.file_check_frequency),
        "httpCheckFrequency": go_duration(sp.http_check_frequency),
        "address": c.address.to_string(),
        "port": c.port,
        "authentication": {
            "anonymous": {"enabled": c.anonymous_auth},
            "webhook": {"enabled": true},
            "x509": {},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": c.cluster_dns.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "clusterDomain": c.cluster_domain,
        "maxPods": c.max_pods,
        "podLogsDir": c.pod_log_dir,
        "containerRuntimeEndpoint": c.container_runtime_endpoint,
        "evictionHard": pairs(&c.eviction_hard, '<'),
        "imageGCHighThresholdPercent": c.image_gc.high_threshold,
        "imageGCLowThresholdPercent": c.image_gc.low_threshold,
        "imageMinimumGCAge": go_duration(c.image_gc.minimum_age),
        "containerLogMaxSize": c.container_log_max_size,
        "containerLogMaxFiles": c.container_log_max_files,
    });
    let mut set = |key: &str, v: serde_json::Value| {
        k[key] = v;
    };
    if let Some(p) = &sp.pod_manifest_path {
        set("staticPodPath", json!(p));
    }
    if let Some(u) = &sp.manifest_url {
        set("staticPodURL", json!(u));
    }
    if !headers.is_empty() {
        set("staticPodURLHeader", serde_json::Value::Object(headers));
    }
    if let Some(cidr) = &c.pod_cidr {
        set("podCIDR", json!(cidr));
    }
    if let Some(root) = &c.cgroup_root {
        set("cgroupRoot", json!(root));
    }
    if !c.eviction_soft.is_empty() {
        set("evictionSoft", json!(pairs(&c.eviction_soft, '<')));
    }
    if !c.eviction_soft_grace_period.is_empty() {
        set(
            "evictionSoftGracePeriod",
            json!(pairs(&c.eviction_soft_grace_period, '=')),
        );
    }
    if !c.allowed_unsafe_sysctls.is_empty() {
        set("allowedUnsafeSysctls", json!(c.allowed_unsafe_sysctls));
    }
    if let Some(ca) = &c.client_ca_file {
        k["authentication"]["x509"]["clientCAFile"] = json!(ca);
    }
    json!({ "kubeletconfig": k })
}

impl Config {
    /// This config with `--config`'s file applied under the flags given; without `--config`,
    /// unchanged.
    pub fn with_config_file(mut self) -> Result<Config, ConfigFileError> {
        if let Some(path) = self.config.clone() {
            load(&path)?.apply(&mut self);
        }
        Ok(self)
    }

    /// The ids of the arguments in `matches` that came from the command line (or the
    /// environment), for [`Config::given`]: the settings a config file must not override.
    pub fn given_in(matches: &clap::ArgMatches) -> Vec<String> {
        use clap::parser::ValueSource;
        matches
            .ids()
            .filter(|id| {
                matches!(
                    matches.value_source(id.as_str()),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
            })
            .map(|id| id.to_string())
            .collect()
    }

    /// Apply kubelet flags (`--name=value` or `name=value`, as k3s's `--kubelet-arg`) over
    /// this config: only the flags in `args` change anything (defaults are not re-applied),
    /// and they count as given for `--config`.
    pub fn apply_args(&mut self, args: &[String]) -> Result<(), String> {
        use clap::{Args, FromArgMatches};
        if args.is_empty() {
            return Ok(());
        }
        let command = Config::augment_args(clap::Command::new("kubelet"))
            .no_binary_name(true)
            .mut_args(|a| a.default_value(None));
        let argv = args.iter().map(|a| {
            if a.starts_with("--") {
                a.clone()
            } else {
                format!("--{a}")
            }
        });
        let matches = command
            .try_get_matches_from(argv)
            .map_err(|e| format!("kubelet arguments {args:?}: {e}"))?;
        self.update_from_arg_matches(&matches)
            .map_err(|e| format!("kubelet arguments {args:?}: {e}"))?;
        self.given.extend(Config::given_in(&matches));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Kubelet {
        #[command(flatten)]
        config: Config,
    }

    /// What kaze's main does: parse, then note the flags given.
    fn flags(args: &[&str]) -> Config {
        let m = Kubelet::command()
            .get_matches_from(std::iter::once("kubelet").chain(args.iter().copied()));
        let mut c = Kubelet::from_arg_matches(&m).expect("flags").config;
        c.given = Config::given_in(&m);
        c
    }

    fn file(text: &str) -> Result<KubeletConfiguration, String> {
        parse(Path::new("kubelet.yaml"), text).map_err(|e| e.to_string())
    }

    const HEAD: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";

    #[test]
    fn go_durations_are_written_as_go_writes_them() {
        let w = |ms: u64| go_duration(Duration::from_millis(ms));
        assert_eq!(w(0), "0s");
        assert_eq!(w(500), "500ms");
        assert_eq!(w(20_000), "20s");
        assert_eq!(w(1_500), "1.5s");
        assert_eq!(w(60_000), "1m0s");
        assert_eq!(w(90_000), "1m30s");
        assert_eq!(w(4 * 3_600_000), "4h0m0s");
        for ms in [0, 500, 1_500, 20_000, 90_000, 4 * 3_600_000 + 61_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_go_duration(&go_duration(d)), Ok(d), "{ms} ms");
        }
    }

    #[test]
    fn configz_read_back_as_a_file_gives_the_same_settings() {
        let given = flags(&[
            "--pod-manifest-path=/etc/kubernetes/manifests",
            "--file-check-frequency=1m30s",
            "--manifest-url=http://example/pods",
            "--manifest-url-header=a:b,a:c",
            "--port=10260",
            "--address=127.0.0.1",
            "--client-ca-file=/etc/ca.crt",
            "--cluster-dns=10.96.0.10,10.96.0.11",
            "--cluster-domain=example.local",
            "--pod-cidr=10.9.0.0/24",
            "--max-pods=7",
            "--cgroup-root=/kubepods",
            "--pod-log-dir=/var/log/other",
            "--eviction-hard=memory.available<200Mi,nodefs.available<5%",
            "--eviction-soft=memory.available<1Gi",
            "--eviction-soft-grace-period=memory.available=1m30s",
            "--allowed-unsafe-sysctls=net.core.somaxconn",
            "--image-gc-high-threshold=90",
            "--container-log-max-size=50Mi",
            "--container-log-max-files=3",
        ]);
        let z = configz(&given);
        let k = &z["kubeletconfig"];
        assert_eq!(k["fileCheckFrequency"], "1m30s");
        assert_eq!(k["syncFrequency"], "1m0s");
        assert_eq!(k["evictionHard"]["nodefs.available"], "5%");
        assert_eq!(k["authentication"]["x509"]["clientCAFile"], "/etc/ca.crt");
        let mut text = String::from(HEAD);
        for (key, v) in k.as_object().expect("object") {
            text.push_str(&format!("{key}: {v}\n"));
        }
        let mut back = flags(&[]);
        file(&text)
            .expect("configz reads as a file")
            .apply(&mut back);
        // everything but the flags-only bookkeeping
        back.given = given.given.clone();
        assert_eq!(format!("{back:?}"), format!("{given:?}"));
    }

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s).map(|d| d.as_millis());
        assert_eq!(d("20s"), Ok(20_000));
        assert_eq!(d("1m30s"), Ok(90_000));
        assert_eq!(d("2m0s"), Ok(120_000));
        assert_eq!(d("1.5h"), Ok(5_400_000));
        assert_eq!(d("300ms"), Ok(300));
        assert_eq!(d("0"), Ok(0));
        for bad in ["", "20", "1x", "-1s", "s", "1m30"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_field_maps_onto_its_flag() {
        let text = format!(
            "{HEAD}staticPodPath: /etc/kubernetes/manifests
fileCheckFrequency: 1m30s
httpCheckFrequency: 5s
syncFrequency: 30s
staticPodURL: http://example/pods
staticPodURLHeader: {{a: [b, c]}}
address: 127.0.0.1
port: 10260
authentication:
  x509: {{clientCAFile: /etc/ca.crt}}
  anonymous: {{enabled: true}}
  webhook: {{enabled: true, cacheTTL: 2m}}
authorization: {{mode: Webhook}}
clusterDNS: [10.96.0.10, 10.96.0.11]
clusterDomain: example.local
podCIDR: 10.9.0.0/24
maxPods: 7
cgroupRoot: /kubepods
podLogsDir: /var/log/other
containerRuntimeEndpoint: unix:///run/other.sock
evictionHard: {{memory.available: 200Mi, nodefs.available: 5%}}
evictionSoft: {{memory.available: 1Gi}}
evictionSoftGracePeriod: {{memory.available: 1m30s}}
allowedUnsafeSysctls: [net.core.somaxconn]
imageGCHighThresholdPercent: 90
imageGCLowThresholdPercent: 70
imageMinimumGCAge: 1m
containerLogMaxSize: 50Mi
containerLogMaxFiles: 3
serializeImagePulls: false
"
        );
        let mut c = flags(&[]);
        file(&text).expect("valid").apply(&mut c);
        let s = &c.static_pods;
        assert_eq!(
            s.pod_manifest_path.as_deref(),
            Some(Path::new("/etc/kubernetes/manifests"))
        );
        assert_eq!(s.file_check_frequency, Duration::from_secs(90));
        assert_eq!(s.http_check_frequency, Duration::from_secs(5));
        assert_eq!(s.sync_frequency, Duration::from_secs(30));
        assert_eq!(s.manifest_url.as_deref(), Some("http://example/pods"));
        assert_eq!(s.manifest_url_header, vec!["a:b", "a:c"]);
        assert_eq!(c.address, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.port, 10260);
        assert_eq!(c.client_ca_file.as_deref(), Some(Path::new("/etc/ca.crt")));
        assert!(c.anonymous_auth);
        assert_eq!(
            c.cluster_dns,
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "10.96.0.11".parse().unwrap()
            ]
        );
        assert_eq!(c.cluster_domain, "example.local");
        assert_eq!(c.pod_cidr.as_deref(), Some("10.9.0.0/24"));
        assert_eq!(c.max_pods, 7);
        assert_eq!(c.cgroup_root.as_deref(), Some("/kubepods"));
        assert_eq!(c.pod_log_dir, Path::new("/var/log/other"));
        assert_eq!(c.container_runtime_endpoint, "unix:///run/other.sock");
        assert_eq!(
            c.eviction_hard,
            "memory.available<200Mi,nodefs.available<5%"
        );
        assert!(crate::node::pressure::Thresholds::parse(&c.eviction_hard).is_ok());
        assert_eq!(c.eviction_soft, "memory.available<1Gi");
        assert_eq!(c.eviction_soft_grace_period, "memory.available=1m30s");
        assert!(crate::node::pressure::Soft::parse(
            &c.eviction_soft,
            &c.eviction_soft_grace_period
        )
        .is_ok());
        assert_eq!(c.allowed_unsafe_sysctls, vec!["net.core.somaxconn"]);
        assert_eq!(c.image_gc.high_threshold, 90);
        assert_eq!(c.image_gc.low_threshold, 70);
        assert_eq!(c.image_gc.minimum_age, Duration::from_secs(60));
        assert_eq!(
            c.log_rotation(),
            Ok(crate::logs::Rotation {
                max_size: 50 * 1024 * 1024,
                max_files: 3
            })
        );
    }

    #[test]
    fn flags_given_win_over_the_file() {
        let text = format!(
            "{HEAD}maxPods: 7\nclusterDomain: file.local\nfileCheckFrequency: 9s\nimageGCHighThresholdPercent: 90\n"
        );
        let mut c = flags(&[
            "--max-pods",
            "30",
            "--file-check-frequency",
            "3s",
            "--image-gc-high-threshold",
            "100",
        ]);
        file(&text).expect("valid").apply(&mut c);
        assert_eq!(c.max_pods, 30, "the flag wins");
        assert_eq!(c.static_pods.file_check_frequency, Duration::from_secs(3));
        assert_eq!(c.image_gc.high_threshold, 100);
        assert_eq!(c.cluster_domain, "file.local", "no flag: the file wins");
        // A flag left at its default is no flag: the file sets it.
        let mut c = flags(&[]);
        file(&text).expect("valid").apply(&mut c);
        assert_eq!(c.max_pods, 7);
    }

    #[test]
    fn json_is_accepted() {
        let f = file(r#"{"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration", "maxPods": 12, "evictionHard": {"memory.available": "1Gi"}}"#)
            .expect("json");
        assert_eq!(f.max_pods, Some(12));
    }

    #[test]
    fn bad_files_are_errors_naming_the_problem() {
        let err = file(&format!("{HEAD}maxPods: 7\nnotAField: 1\n")).unwrap_err();
        assert!(
            err.contains("kubelet.yaml") && err.contains("unknown field `notAField`"),
            "{err}"
        );
        let err = file(&format!(
            "{HEAD}authentication:\n  x509:\n    clientCAFiles: /x\n"
        ))
        .unwrap_err();
        assert!(err.contains("unknown field `clientCAFiles`"), "{err}");
        let err =
            file("apiVersion: kubelet.config.k8s.io/v1\nkind: KubeletConfiguration\n").unwrap_err();
        assert!(
            err.contains("apiVersion \"kubelet.config.k8s.io/v1\""),
            "{err}"
        );
        let err = file("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n")
            .unwrap_err();
        assert!(err.contains("kind \"KubeProxyConfiguration\""), "{err}");
        let err = file(&format!("{HEAD}tlsCertFile: /x.crt\n")).unwrap_err();
        assert!(
            err.contains("\"tlsCertFile\" is not supported by kaze's kubelet"),
            "{err}"
        );
        let err = file(&format!("{HEAD}fileCheckFrequency: 20\n")).unwrap_err();
        assert!(err.contains("fileCheckFrequency"), "{err}");
        let err = file(&format!("{HEAD}fileCheckFrequency: 20x\n")).unwrap_err();
        assert!(
            err.contains("fileCheckFrequency") && err.contains("invalid duration \"20x\""),
            "{err}"
        );
        let err = file(&format!("{HEAD}maxPods: lots\n")).unwrap_err();
        assert!(err.contains("maxPods"), "{err}");
        let err = file(&format!("{HEAD}authorization: {{mode: AlwaysAllow}}\n")).unwrap_err();
        assert!(err.contains("authorization.mode \"AlwaysAllow\""), "{err}");
        let err = file("- a\n- b\n").unwrap_err();
        assert!(err.contains("not a KubeletConfiguration"), "{err}");
    }

    #[test]
    fn kubelet_args_apply_only_what_they_name() {
        let mut c = flags(&[]);
        c.max_pods = 42;
        c.apply_args(&[
            "image-gc-high-threshold=100".into(),
            "--eviction-hard=memory.available<1Mi".into(),
        ])
        .expect("args");
        assert_eq!(c.image_gc.high_threshold, 100);
        assert_eq!(c.eviction_hard, "memory.available<1Mi");
        assert_eq!(c.max_pods, 42, "a flag not named keeps its value");
        assert!(c.given.iter().any(|g| g == "image_gc_high_threshold"));
        let err = c.apply_args(&["no-such-flag=1".into()]).unwrap_err();
        assert!(err.contains("no-such-flag"), "{err}");
    }
}
