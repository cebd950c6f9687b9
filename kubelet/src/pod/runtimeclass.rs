//! A pod's `runtimeClassName` resolved to its RuntimeClass's handler, as upstream's
//! kubelet does before it asks the runtime for a sandbox. kaze's runtime runs containers
//! with containerd's runc only: the handlers `""` (the default) and `runc` run as any pod;
//! any other makes the sandbox fail (event `FailedCreatePodSandBox`, the pod stays Pending
//! with its containers `ContainerCreating`), never a silent run on runc.

use k8s_openapi::api::node::v1::RuntimeClass;

/// The handlers kaze's runtime can run.
pub const SUPPORTED: &[&str] = &["", "runc"];

/// Whether the runtime can run `handler`, worded as a CRI runtime refuses one.
pub fn check_handler(handler: &str) -> Result<(), String> {
    if SUPPORTED.contains(&handler) {
        Ok(())
    } else {
        Err(format!("RuntimeHandler {handler:?} not supported"))
    }
}

/// The handler of the pod's class (`""` without one). Without an apiserver (standalone
/// static pods) there is no class to read: upstream's kubelet then has no RuntimeClass
/// manager and uses the default handler too.
pub async fn lookup(client: Option<&kube::Client>, class: Option<&str>) -> Result<String, String> {
    let Some(name) = class.filter(|n| !n.is_empty()) else {
        return Ok(String::new());
    };
    let Some(client) = client else {
        return Ok(String::new());
    };
    let api: kube::Api<RuntimeClass> = kube::Api::all(client.clone());
    match api.get_opt(name).await {
        Ok(Some(rc)) => Ok(rc.handler),
        Ok(None) => Err(format!("runtimeclass.node.k8s.io {name:?} not found")),
        Err(e) => Err(format!("failed to lookup RuntimeClass {name}: {e}")),
    }
}

/// The sandbox's handler for a pod of class `class`: resolved and checked; the error is
/// the `FailedCreatePodSandBox` event's message.
pub async fn sandbox_handler(
    client: Option<&kube::Client>,
    class: Option<&str>,
) -> Result<String, String> {
    let handler = lookup(client, class).await?;
    check_handler(&handler)?;
    Ok(handler)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_and_the_default_run_others_are_refused() {
        assert_eq!(check_handler(""), Ok(()));
        assert_eq!(check_handler("runc"), Ok(()));
        assert_eq!(
            check_handler("kata"),
            Err("RuntimeHandler \"kata\" not supported".to_string())
        );
    }

    #[tokio::test]
    async fn no_class_or_no_apiserver_is_the_default_handler() {
        assert_eq!(sandbox_handler(None, None).await, Ok(String::new()));
        assert_eq!(sandbox_handler(None, Some("")).await, Ok(String::new()));
        assert_eq!(sandbox_handler(None, Some("kata")).await, Ok(String::new()));
    }
}
