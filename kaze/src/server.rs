//! `kaze server`: the apiserver, then the control-plane components as its clients through
//! the kubeconfig it writes, and (unless `--disable-agent`) this machine's DNS and node.

use anyhow::Context;
use clap::Parser;

use crate::node::{self, NodeArgs};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Run only the control plane: no kubelet, containerd or DNS on this machine.
    #[arg(long)]
    disable_agent: bool,
    #[command(flatten)]
    apiserver: apiserver::Config,
    #[command(flatten)]
    leader: component::leader::LeaderElectionArgs,
    #[command(flatten)]
    node: NodeArgs,
    /// CIDR that node pod CIDRs are carved from.
    #[arg(long = "cluster-cidr", default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// k3s's spelling of `--service-cluster-ip-range`: the Service ClusterIP range, or two of
    /// different families for dual-stack Services (`10.43.0.0/16,fd00:10:43::/112`, the
    /// first the primary family).
    #[arg(long = "service-cidr", conflicts_with = "service_cluster_ip_range")]
    service_cidr: Option<String>,
    /// How long a node may go without a heartbeat before it is marked NotReady (Unknown).
    #[arg(long = "node-monitor-grace-period", default_value = "40s", value_parser = component::leader::parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// How often the controller-manager syncs every HorizontalPodAutoscaler.
    #[arg(long = "horizontal-pod-autoscaler-sync-period", default_value = "15s", value_parser = component::leader::parse_duration)]
    horizontal_pod_autoscaler_sync_period: std::time::Duration,
    /// How far back an HPA without `behavior.scaleDown.stabilizationWindowSeconds` looks
    /// for its highest recommendation before scaling down.
    #[arg(long = "horizontal-pod-autoscaler-downscale-stabilization", default_value = "5m", value_parser = component::leader::parse_duration)]
    horizontal_pod_autoscaler_downscale_stabilization: std::time::Duration,
    /// Port the host DNS server listens on (the kube-dns Service maps 53 to it).
    #[arg(long = "dns-port", default_value_t = 10053)]
    dns_port: u16,
    /// Port of the DNS server's /health, /ready and /metrics.
    #[arg(long = "dns-http-port", default_value_t = 8181)]
    dns_http_port: u16,
    /// Packaged components not to run (k3s's flag; repeatable or comma-separated). kaze
    /// packages `local-storage` (the `kaze.io/local-path` provisioner and its default
    /// `local-path` StorageClass) and `servicelb` (node addresses for LoadBalancer
    /// Services: leave them to another load balancer, e.g. MetalLB).
    #[arg(long = "disable", value_delimiter = ',', value_parser = ["local-storage", "servicelb"])]
    disable: Vec<String>,
    /// Encrypt Secrets at rest (k3s's flag): the first start writes an aescbc key to
    /// `<data-dir>/server/cred/encryption-config.json` (0600), which the apiserver gets as
    /// its `--encryption-provider-config` (an explicit one wins).
    #[arg(long = "secrets-encryption")]
    secrets_encryption: bool,
}

/// The encryption config `--secrets-encryption` uses, as k3s writes it: one random
/// 32-byte aescbc key for Secrets, then identity (Secrets written before stay readable).
/// Written once; later starts reuse it.
fn ensure_encryption_config(data_dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir
        .join("server")
        .join("cred")
        .join("encryption-config.json");
    if path.exists() {
        return Ok(path);
    }
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| anyhow::anyhow!("generating the secrets-encryption key"))?;
    let config = serde_json::json!({
        "kind": "EncryptionConfiguration",
        "apiVersion": "apiserver.config.k8s.io/v1",
        "resources": [{
            "resources": ["secrets"],
            "providers": [
                {"aescbc": {"keys": [{"name": "aescbckey",
                    "secret": base64::engine::general_purpose::STANDARD.encode(key)}]}},
                {"identity": {}}
            ]
        }]
    });
    let dir = path.parent().expect("a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(serde_json::to_string_pretty(&config)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The default StorageClass `kaze server` creates when it is missing (k3s's `local-path`
/// with kaze's provisioner).
fn local_path_class() -> anyhow::Result<k8s_openapi::api::storage::v1::StorageClass> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "local-path",
                     "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": component::volumes::LOCAL_PATH_PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    }))?)
}

/// Create the `local-path` StorageClass unless one of that name exists: an operator's
/// edits stay; a deleted one comes back at the next start (as k3s re-applies its
/// manifest); `--disable=local-storage` leaves it alone.
async fn ensure_local_path_class(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::storage::v1::StorageClass;
    let classes: kube::Api<StorageClass> = kube::Api::all(client.clone());
    if classes.get_opt("local-path").await?.is_some() {
        return Ok(());
    }
    match classes
        .create(&Default::default(), &local_path_class()?)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).context("creating the local-path StorageClass"),
    }
}

/// The in-process scheduler's and controller-manager's secure ports: upstream's (10259,
/// 10257) on 127.0.0.1 (as k3s binds them), which the apiserver's ComponentStatus probes
/// (`kubectl get cs`). A port another process holds (a second server on this machine) is
/// waited for rather than fatal.
fn local_serving() -> component::serving::SecureServing {
    component::serving::SecureServing {
        bind_address: std::net::Ipv4Addr::LOCALHOST.into(),
        busy: component::serving::Busy::Wait,
        ..component::serving::SecureServing::defaults()
    }
}

/// `kaze dns`'s flag defaults, for the DNS server `kaze server` runs.
#[derive(Parser)]
struct DnsDefaults {
    #[command(flatten)]
    config: dns::Config,
}

async fn create_or_replace<K>(api: &kube::Api<K>, obj: K, what: &str) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    use kube::api::PostParams;
    let name = obj.meta().name.clone().unwrap_or_default();
    match api.get_opt(&name).await? {
        Some(cur) => {
            let mut next = obj;
            next.meta_mut().resource_version = cur.meta().resource_version.clone();
            api.replace(&name, &PostParams::default(), &next)
                .await
                .with_context(|| format!("updating {what}"))?;
        }
        None => {
            api.create(&PostParams::default(), &obj)
                .await
                .with_context(|| format!("creating {what}"))?;
        }
    }
    Ok(())
}

/// The `kube-system/kube-dns` Service and its EndpointSlice, so the cluster DNS address
/// leads to this machine's DNS server.
async fn publish_kube_dns(
    client: &kube::Client,
    cluster_dns: std::net::IpAddr,
    node_ip: std::net::IpAddr,
    dns_port: u16,
    http_port: u16,
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let (svc, slice) = dns::bootstrap::kube_dns_objects(cluster_dns, node_ip, dns_port, http_port);
    let ns = dns::bootstrap::NAMESPACE;
    let svcs: kube::Api<Service> = kube::Api::namespaced(client.clone(), ns);
    // The Service keeps its ClusterIP: only create it.
    if svcs.get_opt(dns::bootstrap::NAME).await?.is_none() {
        svcs.create(&Default::default(), &svc)
            .await
            .context("creating the kube-dns Service")?;
    }
    create_or_replace(
        &kube::Api::<EndpointSlice>::namespaced(client.clone(), ns),
        slice,
        "the kube-dns EndpointSlice",
    )
    .await
}

/// `kube-public/cluster-info`, kubeadm's bootstrap ConfigMap: a kubeconfig with the server
/// and CA (no credentials), plus the CA on its own.
async fn publish_cluster_info(
    client: &kube::Client,
    url: &str,
    ca_pem: &str,
) -> anyhow::Result<()> {
    use base64::Engine;
    use k8s_openapi::api::core::v1::ConfigMap;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\ncontexts: []\ncurrent-context: \"\"\nusers: []\n"
    );
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": kubeconfig, "ca.crt": ca_pem},
    }))?;
    create_or_replace(
        &kube::Api::<ConfigMap>::namespaced(client.clone(), "kube-public"),
        cm,
        "kube-public/cluster-info",
    )
    .await
}

/// A kubeconfig in `<data-dir>/agent/<file>` for one of this machine's node components,
/// with a certificate the cluster CA issues on every start (a year): `kubeconfig.yaml` for
/// the kubelet (user `system:node:<name>` in `system:nodes`),
/// `kube-proxy-kubeconfig.yaml` for the Service proxy and pod routes (`system:kube-proxy`,
/// as an agent's).
fn own_node_kubeconfig(
    data_dir: &std::path::Path,
    user: &str,
    groups: &[String],
    file: &str,
    url: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let text = apiserver::user_kubeconfig(data_dir, user, groups, 365, Some(url))
        .with_context(|| format!("kaze server: issuing a client certificate for {user}"))?;
    let dir = data_dir.join("agent");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(file);
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Label this machine's node `node-role.kubernetes.io/control-plane=true` once its kubelet
/// has registered it, then wait for the shutdown (a component that ends stops the others).
async fn label_control_plane(
    admin: kube::Client,
    node: String,
    shutdown: component::CancellationToken,
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    let nodes: kube::Api<Node> = kube::Api::all(admin);
    let patch = serde_json::json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": "true"}}});
    let params = kube::api::PatchParams::default();
    loop {
        match nodes
            .patch(&node, &params, &kube::api::Patch::Merge(&patch))
            .await
        {
            Ok(_) => break,
            Err(e) => {
                tracing::debug!(node = %node, error = %e, "labelling this node a control plane; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
    shutdown.cancelled().await;
    Ok(())
}

pub async fn run(args: ServerArgs, shutdown: component::CancellationToken) -> anyhow::Result<()> {
    if args.disable_agent {
        tracing::info!("--disable-agent: control plane only");
    }
    let data_dir = args.apiserver.data_dir.clone();
    let secret = crate::join::ensure_node_secret(&data_dir)?;
    let mut api_config = args.apiserver.clone();
    if let Some(cidrs) = &args.service_cidr {
        api_config.service_cluster_ip_range = cidrs.clone();
    }
    if args.secrets_encryption && api_config.encryption.encryption_provider_config.is_none() {
        api_config.encryption.encryption_provider_config =
            Some(ensure_encryption_config(&data_dir)?);
    }
    api_config.token_auth_file = Some(crate::join::token_file(
        &data_dir,
        &secret,
        args.apiserver.token_auth_file.as_deref(),
    )?);
    let api = apiserver::start(api_config)
        .await
        .context("kaze server: starting the apiserver")?;
    let kubeconfig = api.kubeconfig_path().to_path_buf();
    let client = component::client_as(
        Some(&kubeconfig),
        &component::user_agent("kaze", Some("server")),
    )
    .await?;
    publish_cluster_info(&client, api.url(), api.ca_pem()).await?;
    let local_storage = !args.disable.iter().any(|d| d == "local-storage");
    if local_storage {
        ensure_local_path_class(&client).await?;
    }
    let join = crate::join::join_token(api.ca_pem(), &secret);
    std::fs::write(data_dir.join("server").join("token"), format!("{join}\n"))
        .context("writing the join token")?;
    tracing::info!(
        "apiserver ready at {}; export KUBECONFIG={}",
        api.url(),
        kubeconfig.display()
    );
    tracing::info!(
        "nodes join with: kaze agent --server https://{}:{} --token {join}",
        args.node.ip(),
        api.local_addr().port()
    );

    let mut components = node::Components::default();
    let sched = scheduler::Config {
        leader: args.leader.clone(),
        serving: local_serving(),
        ..scheduler::Config::embedded(kubeconfig.clone())
    };
    components.spawn("scheduler", &shutdown, |token| scheduler::run(sched, token));
    let cm = controllers::Config {
        kubeconfig: Some(kubeconfig.clone()),
        controllers: std::iter::once("*".to_string())
            .chain((!local_storage).then(|| "-local-path-provisioner".into()))
            .chain(
                args.disable
                    .iter()
                    .any(|d| d == "servicelb")
                    .then(|| "-servicelb".into()),
            )
            .collect(),
        cluster_cidr: args.cluster_cidr.clone(),
        node_cidr_mask_size: None,
        node_cidr_mask_size_ipv4: None,
        node_cidr_mask_size_ipv6: None,
        node_monitor_grace_period: args.node_monitor_grace_period,
        node_monitor_period: std::time::Duration::from_secs(5),
        terminated_pod_gc_threshold: 12500,
        resource_quota_sync_period: std::time::Duration::from_secs(300),
        // kube-root-ca.crt in every namespace: the CA this server's apiserver serves with
        root_ca_file: Some(api.ca_file()),
        // legacy tokens in Secrets, signed with the key this server's apiserver checks
        service_account_private_key_file: Some(api.service_account_key_file().to_path_buf()),
        horizontal_pod_autoscaler_sync_period: args.horizontal_pod_autoscaler_sync_period,
        horizontal_pod_autoscaler_downscale_stabilization: args
            .horizontal_pod_autoscaler_downscale_stabilization,
        concurrent_gc_syncs: 20,
        leader: args.leader.clone(),
        serving: local_serving(),
    };
    components.spawn("controller-manager", &shutdown, |token| {
        controllers::run(cm, token)
    });
    let mut own_containerd = None;
    if !args.disable_agent {
        let node_ip = args.node.ip();
        publish_kube_dns(
            &client,
            args.node.cluster_dns,
            node_ip,
            args.dns_port,
            args.dns_http_port,
        )
        .await
        .context("kaze server: publishing the kube-dns Service")?;
        let dns_config = dns::Config {
            cluster_domain: args.node.cluster_domain.clone(),
            bind: vec![std::net::SocketAddr::new(node_ip, args.dns_port)],
            http_bind: std::net::SocketAddr::new(node_ip, args.dns_http_port),
            kubeconfig: Some(kubeconfig.clone()),
            ..DnsDefaults::parse_from(["dns"]).config
        };
        components.spawn("dns", &shutdown, |token| dns::run(dns_config, token));
        // This machine's node runs as system:node:<name> (its proxy and pod routes as
        // system:kube-proxy), as an agent's does, with certificates straight from the CA
        // (as k3s does); NodeRestriction does not let a node label itself a control plane,
        // so the server does.
        let node_name = args
            .node
            .node_name
            .clone()
            .unwrap_or_else(|| kubelet::node::info::hostname().to_lowercase());
        let node_kubeconfig = own_node_kubeconfig(
            &data_dir,
            &format!("system:node:{node_name}"),
            &["system:nodes".to_string()],
            "kubeconfig.yaml",
            api.url(),
        )?;
        // the Service proxy and pod routes read every Node: as upstream's kube-proxy
        let proxy_kubeconfig = args
            .node
            .runs_node_proxier()
            .then(|| {
                own_node_kubeconfig(
                    &data_dir,
                    apiserver::KUBE_PROXY_USER,
                    &[],
                    crate::bootstrap::KUBE_PROXY_KUBECONFIG,
                    api.url(),
                )
            })
            .transpose()?;
        let (admin, name) = (client.clone(), node_name.clone());
        components.spawn("control-plane label", &shutdown, |token| {
            label_control_plane(admin, name, token)
        });
        own_containerd = node::start(
            &args.node,
            &data_dir,
            node::Kubeconfigs {
                node: &node_kubeconfig,
                proxy: proxy_kubeconfig.as_deref(),
            },
            &api.ca_file(),
            Vec::new(),
            &mut components,
            &shutdown,
        )
        .await
        .context("kaze server: starting this node")?;
    }
    let result = node::supervise(&mut components, &shutdown)
        .await
        .context("kaze server");
    api.shutdown().await;
    // containerd goes last; the pods it started keep running under their shims.
    drop(own_containerd);
    result
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        server: super::ServerArgs,
    }

    #[test]
    fn service_cidr_is_k3s_spelling_of_the_service_cluster_ip_range() {
        Cli::command().debug_assert();
        let dual = "10.43.0.0/16,fd00:10:43::/112";
        let cli = Cli::try_parse_from(["kaze", "--service-cidr", dual]).expect("parses");
        assert_eq!(cli.server.service_cidr.as_deref(), Some(dual));
        let both = Cli::try_parse_from([
            "kaze",
            "--service-cidr",
            dual,
            "--service-cluster-ip-range",
            "10.44.0.0/16",
        ]);
        assert!(both.is_err(), "one spelling at a time");
    }
}
