//! kube-rs clients for a server started in the test's runtime.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use serde_json::json;

pub async fn client(server: &apiserver::RunningServer) -> Client {
    let kc =
        kube::config::Kubeconfig::read_from(server.kubeconfig_path()).expect("reading kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig to client config");
    Client::try_from(cfg).expect("building a kube client")
}

pub async fn start(dir: &std::path::Path) -> apiserver::RunningServer {
    apiserver::start(apiserver::Config::for_tests(dir))
        .await
        .expect("starting the apiserver")
}

pub fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "demo"}},
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }))
    .expect("configmap")
}

pub fn api_code(err: &kube::Error) -> Option<(u16, String)> {
    match err {
        kube::Error::Api(s) => Some((s.code, s.reason.clone())),
        _ => None,
    }
}
