//! Lifecycle hooks (`postStart`, `preStop`) as upstream's handler runner runs them:
//! - `exec`: the command in the container (its user, capabilities and namespaces), failing on
//!   a non-zero exit;
//! - `httpGet`: a GET to the pod IP (or `host`) that fails only when no HTTP answer comes
//!   (upstream does not look at the status code);
//! - `sleep`: the kubelet waits `seconds`.
//!
//! The worker runs postStart right after the container started and before it counts as
//! running (a failure kills it: `FailedPostStartHook`), and preStop before SIGTERM within
//! the grace period ([`kill`]).

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::time::Instant;

use super::probe;
use crate::runtime::{ExitInfo, Runtime};

/// Upstream's minimum time between SIGTERM and SIGKILL, even after a long preStop hook.
pub const MIN_GRACE: Duration = Duration::from_secs(2);

/// A hook with its API defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub enum Hook {
    Exec(Vec<String>),
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
        /// `scheme: HTTPS`: TLS without certificate verification, as upstream.
        https: bool,
    },
    Sleep(Duration),
}

impl Hook {
    /// From the API type; `Err` says why it cannot run.
    pub fn from_api(c: &Container, h: &LifecycleHandler) -> Result<Hook, String> {
        if let Some(e) = &h.exec {
            return Ok(Hook::Exec(e.command.clone().unwrap_or_default()));
        }
        if let Some(g) = &h.http_get {
            // Upstream: an empty port name is 80, a numeric one is that number.
            let port = match &g.port {
                IntOrString::String(s) if s.is_empty() => 80,
                IntOrString::String(s) => match s.parse::<u16>() {
                    Ok(n) => n,
                    Err(_) => probe::port(c, &g.port)?,
                },
                IntOrString::Int(_) => probe::port(c, &g.port)?,
            };
            let path = g.path.clone().unwrap_or_default();
            return Ok(Hook::Http {
                https: g.scheme.as_deref() == Some("HTTPS"),
                host: g.host.clone().filter(|h| !h.is_empty()),
                port,
                path: if path.starts_with('/') {
                    path
                } else {
                    format!("/{path}")
                },
                headers: g
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            });
        }
        if let Some(s) = &h.sleep {
            return Ok(Hook::Sleep(Duration::from_secs(s.seconds.max(0) as u64)));
        }
        Err("invalid handler: no exec, httpGet or sleep".into())
    }
}

/// Upstream's `format.Pod`: `name_namespace(uid)`, as hook and runAsNonRoot messages name pods.
pub fn pod_desc(pod: &Pod) -> String {
    let m = &pod.metadata;
    format!(
        "{}_{}({})",
        m.name.as_deref().unwrap_or(""),
        m.namespace.as_deref().unwrap_or("default"),
        m.uid.as_deref().unwrap_or("")
    )
}

/// Who a hook runs for: the container, its pod (for messages) and the pod IP.
pub struct Target<'a> {
    pub rt: &'a Runtime,
    pub id: &'a str,
    pub container: &'a str,
    pub pod: &'a str,
    pub pod_ip: Option<IpAddr>,
}

/// Run `hook` for at most `limit`. `Err` is upstream's message; a hook still running at
/// `limit` is left behind (`Ok`), as upstream moves on when the grace period is over.
pub async fn run(t: &Target<'_>, hook: &Hook, limit: Duration) -> Result<(), String> {
    match hook {
        Hook::Exec(cmd) => match t.rt.exec_sync(t.id, cmd, limit).await {
            Ok(out) if out.exit_code == Some(0) => Ok(()),
            // Killed at the limit.
            Ok(out) if out.exit_code.is_none() => Ok(()),
            Ok(out) => {
                let code = out.exit_code.unwrap_or_default();
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                let mut output = out.stdout.clone();
                output.extend_from_slice(&out.stderr);
                Err(format!(
                    "Exec lifecycle hook ([{}]) for Container {:?} in Pod {:?} failed - error: command '{}' exited with {code}: {stderr}, message: {:?}",
                    cmd.join(" "),
                    t.container,
                    t.pod,
                    cmd.join(" "),
                    String::from_utf8_lossy(&output)
                ))
            }
            Err(e) => Err(format!(
                "Exec lifecycle hook ([{}]) for Container {:?} in Pod {:?} failed - error: {e}, message: \"\"",
                cmd.join(" "),
                t.container,
                t.pod
            )),
        },
        Hook::Http {
            host,
            port,
            path,
            headers,
            https,
        } => {
            let got = probe::http_get(
                host,
                *port,
                path,
                headers,
                *https,
                t.pod_ip,
                limit,
                "kube-lifecycle/1.37",
            )
            .await;
            match got {
                Ok(_) => Ok(()),
                Err(e) if e.contains("timeout after") => Ok(()),
                Err(e) => Err(format!(
                    "HTTP lifecycle hook ({path}) for Container {:?} in Pod {:?} failed - error: {e}",
                    t.container, t.pod
                )),
            }
        }
        Hook::Sleep(d) => {
            tokio::time::sleep((*d).min(limit)).await;
            Ok(())
        }
    }
}

/// The container's preStop hook, if it has a runnable one.
pub fn pre_stop(c: &Container) -> Option<Result<Hook, String>> {
    let h = c.lifecycle.as_ref()?.pre_stop.as_ref()?;
    Some(Hook::from_api(c, h))
}

/// The container's postStart hook, if it has one.
pub fn post_start(c: &Container) -> Option<Result<Hook, String>> {
    let h = c.lifecycle.as_ref()?.post_start.as_ref()?;
    Some(Hook::from_api(c, h))
}

/// What stopping a container came to: how it ended, and the preStop hook's failure.
pub struct Killed {
    pub exit: Option<ExitInfo>,
    pub pre_stop_failure: Option<String>,
}

/// Upstream's `killContainer`: the preStop hook first (unless the grace period is 0),
/// within the grace period; then SIGTERM with what is left of it (2 s at least), SIGKILL
/// after that.
pub async fn kill(t: &Target<'_>, spec: &Container, grace: Duration) -> Killed {
    let start = Instant::now();
    let mut pre_stop_failure = None;
    if !grace.is_zero() {
        match pre_stop(spec) {
            None => {}
            Some(Err(e)) => pre_stop_failure = Some(e),
            Some(Ok(hook)) => {
                if let Err(e) = run(t, &hook, grace).await {
                    pre_stop_failure = Some(e);
                }
            }
        }
    }
    let left = grace.saturating_sub(start.elapsed()).max(MIN_GRACE);
    let exit = match t.rt.stop_container(t.id, left).await {
        Ok(exit) => exit,
        Err(e) => {
            tracing::warn!(container = %t.id, error = %e, "stopping a container");
            None
        }
    };
    Killed {
        exit,
        pre_stop_failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hooks_from_the_api() {
        let c: Container = serde_json::from_value(json!({
            "name": "web", "ports": [{"name": "http", "containerPort": 8080}],
            "lifecycle": {
                "postStart": {"httpGet": {"port": "http", "path": "started", "httpHeaders": [{"name": "X", "value": "y"}]}},
                "preStop": {"sleep": {"seconds": 3}}
            }
        }))
        .unwrap();
        assert_eq!(
            post_start(&c).unwrap().unwrap(),
            Hook::Http {
                host: None,
                port: 8080,
                path: "/started".into(),
                headers: vec![("X".into(), "y".into())],
                https: false,
            }
        );
        assert_eq!(
            pre_stop(&c).unwrap().unwrap(),
            Hook::Sleep(Duration::from_secs(3))
        );
        let h: LifecycleHandler = serde_json::from_value(json!({"httpGet": {"port": ""}})).unwrap();
        assert!(matches!(
            Hook::from_api(&c, &h),
            Ok(Hook::Http {
                port: 80,
                https: false,
                ..
            })
        ));
        let h: LifecycleHandler =
            serde_json::from_value(json!({"httpGet": {"port": 8443, "scheme": "HTTPS"}})).unwrap();
        assert!(matches!(
            Hook::from_api(&c, &h),
            Ok(Hook::Http {
                port: 8443,
                https: true,
                ..
            })
        ));
        let h: LifecycleHandler =
            serde_json::from_value(json!({"exec": {"command": ["sh", "-c", "true"]}})).unwrap();
        assert_eq!(
            Hook::from_api(&c, &h).unwrap(),
            Hook::Exec(vec!["sh".into(), "-c".into(), "true".into()])
        );
        let h: LifecycleHandler = serde_json::from_value(json!({})).unwrap();
        assert!(Hook::from_api(&c, &h).is_err());
        let bare: Container = serde_json::from_value(json!({"name": "x"})).unwrap();
        assert!(pre_stop(&bare).is_none() && post_start(&bare).is_none());
    }

    #[test]
    fn pods_are_named_as_upstream_formats_them() {
        let p: Pod = serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "team", "uid": "u-1"}}),
        )
        .unwrap();
        assert_eq!(pod_desc(&p), "web_team(u-1)");
    }
}
