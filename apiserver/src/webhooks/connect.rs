//! CONNECT admission: `pods/<n>/exec`, `attach` and `portforward` go to the webhooks whose
//! rules name `CONNECT` (policy engines use it to refuse `kubectl exec`), before the
//! apiserver dials the kubelet. The object sent is the request's options (`PodExecOptions`,
//! `PodAttachOptions`, `PodPortForwardOptions`) as upstream's connect handler builds them
//! from the query; there is no old object and no `options`. Mutating webhooks are called
//! first, as upstream does, though nothing they patch is used.

use serde_json::{json, Value};

use super::{
    admitted, ask, call_failed, denied, fails_closed, hook_name, matching, Operation, Request,
};
use crate::auth::UserInfo;
use crate::handlers::Target;
use crate::registry::Sub;
use crate::state::AppState;
use crate::status::ApiError;

/// The kind of a CONNECT request's object; `None` for other operations.
pub(super) fn options_kind(req: &Request<'_>, sub: &str) -> Option<&'static str> {
    if req.operation != Operation::Connect {
        return None;
    }
    match sub {
        "exec" => Some("PodExecOptions"),
        "attach" => Some("PodAttachOptions"),
        "portforward" => Some("PodPortForwardOptions"),
        _ => None,
    }
}

/// The options object of a CONNECT to `sub` with `query` (what kubectl sends:
/// `command=ls&command=-l&container=c&stdout=true`, `ports=8080`).
fn options(sub: &str, query: &str) -> Value {
    let kind = match sub {
        "exec" => "PodExecOptions",
        "attach" => "PodAttachOptions",
        _ => "PodPortForwardOptions",
    };
    let mut o = json!({"kind": kind, "apiVersion": "v1"});
    let mut command = Vec::new();
    let mut ports = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "command" if sub == "exec" => command.push(json!(v)),
            "ports" if sub == "portforward" => {
                ports.extend(v.split(',').filter_map(|p| p.trim().parse::<u16>().ok()));
            }
            "container" if sub != "portforward" => o["container"] = json!(v),
            "stdin" | "stdout" | "stderr" | "tty" if sub != "portforward" => {
                o[&*k] = json!(matches!(&*v, "true" | "1"));
            }
            _ => {}
        }
    }
    if !command.is_empty() {
        o["command"] = json!(command);
    }
    if !ports.is_empty() {
        o["ports"] = json!(ports);
    }
    o
}

/// Admit a CONNECT to `t` (exec, attach or port-forward of a pod) by `user`.
pub async fn admit_connect(
    state: &AppState,
    t: &Target,
    query: &str,
    user: UserInfo,
) -> Result<(), ApiError> {
    let Some(sub) = t.sub.map(Sub::name) else {
        return Ok(());
    };
    let name = t.name.as_deref().unwrap_or("");
    let admit = async {
        let req = Request {
            def: &t.def,
            ns: t.namespace.as_deref(),
            operation: Operation::Connect,
            dry_run: false,
        };
        let options = options(sub, query);
        for mutating in [true, false] {
            let Some(sub) = admitted(state, req.def, &[mutating]) else {
                continue;
            };
            for hook in matching(state, &req, sub, mutating, Some(&options), None).await? {
                let review =
                    super::review::review_named(&req, sub, &hook, name, Some(&options), None);
                match ask(state, &hook, &review, mutating).await {
                    Ok(a) if a.allowed => {}
                    Ok(a) => return Err(denied(&hook, &a.status)),
                    Err(e) if fails_closed(&hook) => return Err(call_failed(&hook, &e)),
                    Err(e) => {
                        tracing::warn!(webhook = hook_name(&hook), error = %e, "failed calling webhook, failing open")
                    }
                }
            }
        }
        Ok(())
    };
    let admit = super::with_subresource(Some(sub), Box::pin(admit));
    crate::requester::scope(user, admit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_come_from_the_query_as_upstream_decodes_them() {
        assert_eq!(
            options(
                "exec",
                "command=ls&command=-l&container=c&stdout=true&stderr=1&tty=false"
            ),
            json!({"kind": "PodExecOptions", "apiVersion": "v1", "command": ["ls", "-l"],
                   "container": "c", "stdout": true, "stderr": true, "tty": false})
        );
        assert_eq!(
            options("portforward", "ports=8080,9090&ports=7070"),
            json!({"kind": "PodPortForwardOptions", "apiVersion": "v1", "ports": [8080, 9090, 7070]})
        );
    }
}
