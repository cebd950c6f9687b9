//! The kubelet's HTTPS server (`--port`, 10250 by default), which the apiserver proxies
//! `kubectl logs`, `exec`, `attach` and `port-forward` to:
//! - `/healthz`;
//! - `/stats/summary`: upstream's Summary API, CPU, memory, network, filesystems and volumes
//!   of the node and each pod and container ([`crate::stats`]);
//! - `/containerLogs/<ns>/<pod>/<container>` with upstream's query parameters (`follow`,
//!   `tailLines`, `timestamps`, `previous`, `limitBytes`, `sinceSeconds`), read from the CRI
//!   log files the runtime writes;
//! - `/exec/<ns>/<pod>/<container>?command=..&stdin=..&stdout=..&stderr=..&tty=..` over a
//!   WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`; [`super::stream`]) or SPDY/3.1
//!   (`v4.channel.k8s.io`; [`super::spdy_exec`]);
//! - `/attach/<ns>/<pod>/<container>`: the same channels carrying the output of the
//!   container's main process (no stdin: containers are created without one);
//! - `/portForward/<ns>/<pod>`: SPDY/3.1, raw or tunnelled in a WebSocket, or the
//!   WebSocket channel protocol with `?ports=` ([`super::portforward`]);
//! - `GET /pods`: the pods this kubelet runs (a `v1.PodList` with their current status), as
//!   upstream's;
//! - `POST /pods`, `DELETE /pods/<ns>/<name>`: the kubelet's own pod source (`--pod-server`,
//!   a kaze extension: [`crate::static_pod::server`]).
//!
//! Callers are authenticated by client certificate and authorized by [`super::auth`] before
//! any handler runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use bytes::Bytes;

use super::stream::{self, ExecOptions};
use super::NodeError;
use super::{portforward, spdy_exec};
use crate::pod::ActivePods;
use crate::runtime::Runtime;
use crate::static_pod::server::{ServerPodError, ServerPods};

/// `(namespace, name)` → uid of the pods this kubelet runs (kept by the sync loop), so a
/// log request reaches the current pod of that name, not an earlier one's files.
pub type PodUids = std::sync::Arc<std::sync::RwLock<HashMap<(String, String), String>>>;

#[derive(Clone)]
struct Ctx {
    log_dir: PathBuf,
    uids: PodUids,
    rt: Runtime,
    stats: std::sync::Arc<crate::stats::Collector>,
    active: ActivePods,
    server_pods: Option<ServerPods>,
    configz: std::sync::Arc<serde_json::Value>,
}

/// The inputs of [`serve`].
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub log_dir: PathBuf,
    pub uids: PodUids,
    pub rt: Runtime,
    /// Where the self-signed serving certificate is kept.
    pub tls_dir: PathBuf,
    /// The certificate's names.
    pub names: Vec<String>,
    /// Who may call (`--client-ca-file`, `--anonymous-auth`).
    pub auth: std::sync::Arc<super::auth::Auth>,
    /// The pods this node runs (`GET /pods`).
    pub active: ActivePods,
    /// The pods POSTed to `/pods` (`--pod-server`); None when that source is off.
    pub server_pods: Option<ServerPods>,
    /// What `/configz` answers ([`super::config_file::configz`]).
    pub configz: serde_json::Value,
}

/// Bind and serve until `shutdown`.
pub async fn serve(
    config: ServerConfig,
    shutdown: component::CancellationToken,
) -> Result<(), NodeError> {
    let ServerConfig {
        addr,
        log_dir,
        uids,
        rt,
        tls_dir,
        names,
        auth,
        active,
        server_pods,
        configz,
    } = config;
    let tls = component::https::self_signed(&tls_dir, &names, auth.client_certs())
        .map_err(|e| NodeError::Flag(format!("kubelet serving certificate: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::Flag(format!("binding the kubelet server on {addr}: {e}")))?;
    let stats = std::sync::Arc::new(crate::stats::Collector::new(rt.clone()));
    {
        let (stats, token) = (stats.clone(), shutdown.clone());
        tokio::spawn(async move { stats.sample(token).await });
    }
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/configz", get(configz_json))
        .route("/stats/summary", get(stats_summary))
        .route("/metrics", get(metrics))
        .route("/metrics/resource", get(resource_metrics))
        .route("/metrics/cadvisor", get(cadvisor_metrics))
        .route("/metrics/probes", get(probe_metrics))
        .route("/pods", get(list_pods).post(post_pod))
        .route("/pods/{ns}/{name}", delete(delete_pod))
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec).post(exec))
        .route("/attach/{ns}/{pod}/{container}", get(attach).post(attach))
        .route(
            "/portForward/{ns}/{pod}",
            get(port_forward).post(port_forward),
        )
        .with_state(Ctx {
            log_dir,
            uids,
            rt,
            stats,
            active,
            server_pods,
            configz: std::sync::Arc::new(configz),
        })
        .layer(axum::middleware::from_fn_with_state(
            auth,
            super::auth::middleware,
        ));
    tracing::info!(%addr, "kubelet server listening");
    component::https::serve(listener, tls, app, shutdown).await;
    Ok(())
}

fn text(code: StatusCode, msg: String) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], msg).into_response()
}

impl Ctx {
    fn uid(&self, ns: &str, pod: &str) -> Option<String> {
        self.uids
            .read()
            .ok()
            .and_then(|m| m.get(&(ns.to_string(), pod.to_string())).cloned())
    }
}

fn not_running(ns: &str, pod: &str) -> Response {
    text(
        StatusCode::NOT_FOUND,
        format!("pod {ns}/{pod} is not running on this node"),
    )
}

/// How an exec or attach session is carried.
#[derive(Clone, Copy, Debug)]
enum Transport {
    /// A WebSocket in this channel protocol.
    WebSocket(&'static str),
    /// SPDY/3.1 streams, `v4.channel.k8s.io`.
    Spdy,
}

/// What exec and attach share before the upgrade: the container, the options, the
/// transport and the upgrade itself.
struct Channelled {
    found: crate::runtime::FoundContainer,
    opts: ExecOptions,
    transport: Transport,
    upgrade: hyper::upgrade::OnUpgrade,
    response: Response,
    /// Why the session cannot run (reported on the status channel after the upgrade).
    not_running: Option<String>,
}

/// Check an exec or attach request; `Err` is the answer refusing it.
async fn channelled(
    ctx: &Ctx,
    (ns, pod, container): (&str, &str, &str),
    what: &str,
    req: &mut Request,
) -> Result<Channelled, Response> {
    let Some(uid) = ctx.uid(ns, pod) else {
        return Err(not_running(ns, pod));
    };
    let found = match ctx.rt.find_container(&uid, container).await {
        Ok(Some(found)) => found,
        // Upstream answers "container not found" too: an exited container is removed (or
        // the name is unknown; the apiserver has checked it against the pod spec already).
        Ok(None) => {
            return Err(text(
                StatusCode::NOT_FOUND,
                format!(
                    "container {container:?} not found in pod {ns}/{pod} (not running on this \
                     node)"
                ),
            ))
        }
        Err(e) => return Err(text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    let opts = ExecOptions::parse(req.uri().query().unwrap_or(""));
    if !opts.stdin && !opts.stdout && !opts.stderr {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr".into(),
        ));
    }
    let headers = req.headers();
    let transport = if stream::is_websocket(headers) {
        stream::negotiate(headers, stream::CHANNEL_PROTOCOLS).map(Transport::WebSocket)
    } else {
        (is_spdy(headers) && stream_versions(headers).contains(&spdy_exec::PROTOCOL))
            .then_some(Transport::Spdy)
    };
    let (Some(transport), Some(upgrade)) = (
        transport,
        req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>(),
    ) else {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!(
                "{what} needs a WebSocket upgrade with one of the subprotocols {}, or SPDY/3.1 \
                 with {}",
                stream::CHANNEL_PROTOCOLS.join(", "),
                spdy_exec::PROTOCOL
            ),
        ));
    };
    let not_running =
        (!found.running).then(|| format!("container {container} of pod {ns}/{pod} is not running"));
    let response = match transport {
        Transport::WebSocket(protocol) => stream::accept(req.headers(), protocol),
        Transport::Spdy => spdy_switch(spdy_exec::PROTOCOL),
    };
    Ok(Channelled {
        found,
        opts,
        transport,
        upgrade,
        response,
        not_running,
    })
}

/// Whether the request asks to upgrade to SPDY/3.1.
fn is_spdy(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"))
}

/// The `X-Stream-Protocol-Version`s a SPDY client offers, in its order.
fn stream_versions(headers: &axum::http::HeaderMap) -> Vec<&str> {
    headers
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect()
}

/// The 101 answer switching to SPDY/3.1 with `protocol`.
fn spdy_switch(protocol: &str) -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("x-stream-protocol-version", protocol)
        .body(Body::empty())
        .unwrap_or_default()
}

/// Run `run` on the upgraded connection once the client has switched.
fn spawn_session(c: Channelled, run: stream::Run) -> Response {
    let (opts, upgrade) = (c.opts, c.upgrade);
    match c.transport {
        Transport::WebSocket(protocol) => tokio::spawn(async move {
            if let Some(ws) = stream::websocket(upgrade).await {
                stream::session(ws, protocol, opts, run).await;
            }
        }),
        Transport::Spdy => tokio::spawn(async move {
            match upgrade.await {
                Ok(io) => spdy_exec::serve(hyper_util::rt::TokioIo::new(io), opts, run).await,
                Err(e) => tracing::debug!(error = %e, "upgrading an exec connection"),
            }
        }),
    };
    c.response
}

/// `/stats/summary[?only_cpu_and_memory=true]`: upstream's Summary API ([`crate::stats`]).
async fn stats_summary(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let only = q
        .get("only_cpu_and_memory")
        .is_some_and(|v| v == "true" || v == "1");
    axum::Json(ctx.stats.summary(only).await).into_response()
}

/// `GET /metrics`: the kubelet's own metrics (see [`crate::metrics`]).
/// `GET /configz`: the effective configuration, as upstream's kubelet serves it
/// (authorized as `nodes/configz`).
async fn configz_json(State(ctx): State<Ctx>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ctx.configz.to_string(),
    )
        .into_response()
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    let body = crate::metrics::render(
        &ctx.rt.config().node_name,
        &ctx.active.list(),
        ctx.rt.metrics(),
    );
    prometheus(body + &component::process::metrics())
}

/// `GET /metrics/resource`: CPU and memory of the node, pods and containers.
async fn resource_metrics(State(ctx): State<Ctx>) -> Response {
    prometheus(crate::metrics::render_resource(
        &ctx.stats.summary(true).await,
    ))
}

/// `GET /metrics/probes`: probe runs per container, type and result.
async fn probe_metrics(State(ctx): State<Ctx>) -> Response {
    prometheus(crate::metrics::render_probes(
        &ctx.active.list(),
        ctx.rt.metrics(),
    ))
}

/// `GET /metrics/cadvisor`: the containers' cgroup metrics in cadvisor's names.
async fn cadvisor_metrics(State(ctx): State<Ctx>) -> Response {
    prometheus(ctx.stats.cadvisor().await)
}

fn prometheus(body: String) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `GET /pods`: the pods this kubelet runs, with their status (upstream's `v1.PodList`).
async fn list_pods(State(ctx): State<Ctx>) -> Response {
    let list = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": ctx.active.list(),
    });
    axum::Json(list).into_response()
}

fn pod_server_off() -> Response {
    text(
        StatusCode::METHOD_NOT_ALLOWED,
        "this kubelet takes no pods over HTTP: start it with --pod-server".into(),
    )
}

fn server_pod_error(e: ServerPodError) -> Response {
    let code = match &e {
        ServerPodError::Decode(_) => StatusCode::BAD_REQUEST,
        ServerPodError::Taken { .. } => StatusCode::CONFLICT,
        ServerPodError::NotFound { .. } => StatusCode::NOT_FOUND,
        ServerPodError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(code, e.to_string())
}

/// `POST /pods` with a Pod manifest (YAML or JSON): run it as a static pod (`--pod-server`).
/// 201 with the pod as it runs, or 200 when it replaced a posted pod of the same name.
async fn post_pod(State(ctx): State<Ctx>, body: Bytes) -> Response {
    let Some(pods) = &ctx.server_pods else {
        return pod_server_off();
    };
    match pods.post(&body) {
        Ok((pod, replaced)) => {
            tracing::info!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or("")), replaced, "pod posted to the kubelet server");
            let code = if replaced {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (code, axum::Json(pod)).into_response()
        }
        Err(e) => server_pod_error(e),
    }
}

/// `DELETE /pods/<ns>/<name>`: stop and remove a posted pod (by its name as posted or as it
/// runs, `<name>-<node>`).
async fn delete_pod(
    State(ctx): State<Ctx>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    let Some(pods) = &ctx.server_pods else {
        return pod_server_off();
    };
    match pods.delete(&ns, &name) {
        Ok(pod) => axum::Json(pod).into_response(),
        Err(e) => server_pod_error(e),
    }
}

/// `/exec/<ns>/<pod>/<container>`: a channel session running the command.
async fn exec(
    State(ctx): State<Ctx>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    mut req: Request,
) -> Response {
    if !req.uri().query().unwrap_or("").contains("command=") {
        return text(StatusCode::BAD_REQUEST, "no command given".into());
    }
    let mut c = match channelled(&ctx, (&ns, &pod, &container), "exec", &mut req).await {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    let target = match c.not_running.take() {
        None => Ok(c.found.id.clone()),
        Some(why) => Err(why),
    };
    let run = stream::exec_run(ctx.rt.clone(), target, c.opts.command.clone());
    spawn_session(c, run)
}

/// `/attach/<ns>/<pod>/<container>`: the output of the container's main process and, for a
/// container with `stdin: true`, its input and terminal size; a client asking for stdin of
/// a container without one is told first that its input goes nowhere.
async fn attach(
    State(ctx): State<Ctx>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    mut req: Request,
) -> Response {
    let mut c = match channelled(&ctx, (&ns, &pod, &container), "attach", &mut req).await {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    let target = match (c.not_running.take(), ctx.rt.attach_output(&c.found.id)) {
        (None, Some(output)) => Ok(output),
        (Some(why), _) => Err(why),
        (None, None) => Err(format!(
            "the output of container {container} of pod {ns}/{pod} is not available on this node"
        )),
    };
    // `kubectl attach -i` / `kubectl run -i` to a container without stdin (or whose
    // `stdinOnce` stdin closed after its first attach): the output still flows, and the user
    // is told up front that what they type goes nowhere.
    let input = match ctx.uid(&ns, &pod) {
        Some(uid) if target.is_ok() => ctx.rt.attach_input(&uid, &c.found.id),
        _ => None,
    };
    let notice = (c.opts.stdin && input.is_none()).then(|| {
        format!(
            "kaze: container {container} of pod {ns}/{pod} has no stdin to attach to (stdin: true in its spec gives it one; stdinOnce closes it after the first attach): input is not delivered\n"
        )
    });
    spawn_session(c, stream::attach_run(target, input, notice))
}

/// `/portForward/<ns>/<pod>`: SPDY port-forward into the pod's network namespace.
async fn port_forward(
    State(ctx): State<Ctx>,
    UrlPath((ns, pod)): UrlPath<(String, String)>,
    mut req: Request,
) -> Response {
    let Some(uid) = ctx.uid(&ns, &pod) else {
        return not_running(&ns, &pod);
    };
    let netns = match ctx.rt.sandbox(&uid).await {
        Ok(Some(sandbox)) => sandbox.netns,
        Ok(None) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("pod {ns}/{pod} has no running sandbox on this node"),
            );
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let target = portforward::Target {
        netns,
        pod: format!("{ns}/{pod}"),
    };
    let headers = req.headers().clone();
    let Some(upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return text(StatusCode::BAD_REQUEST, "upgrade request required".into());
    };
    if stream::is_websocket(&headers) {
        let ours = [portforward::TUNNEL, stream::V5, stream::V4];
        let Some(protocol) = stream::negotiate(&headers, &ours) else {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "port-forward over a WebSocket needs one of the subprotocols {}",
                    ours.join(", ")
                ),
            );
        };
        if protocol == portforward::TUNNEL {
            tokio::spawn(async move {
                if let Some(ws) = stream::websocket(upgrade).await {
                    portforward::over_websocket(ws, target).await;
                }
            });
            return stream::accept(&headers, protocol);
        }
        let ports = match portforward::query_ports(req.uri().query().unwrap_or("")) {
            Ok(ports) => ports,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        tokio::spawn(async move {
            if let Some(ws) = stream::websocket(upgrade).await {
                portforward::over_channels(ws, protocol, ports, target).await;
            }
        });
        return stream::accept(&headers, protocol);
    }
    let versions = stream_versions(&headers);
    if !is_spdy(&headers) || !(versions.is_empty() || versions.contains(&portforward::PROTOCOL)) {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "port-forward needs an upgrade to SPDY/3.1 ({}) or a WebSocket ({})",
                portforward::PROTOCOL,
                portforward::TUNNEL
            ),
        );
    }
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => portforward::over_spdy(hyper_util::rt::TokioIo::new(io), target).await,
            Err(e) => tracing::debug!(error = %e, "upgrading a port-forward connection"),
        }
    });
    spdy_switch(portforward::PROTOCOL)
}

/// The container's log files, oldest attempt first.
fn log_files(root: &Path, ns: &str, pod: &str, uid: &str, container: &str) -> Vec<PathBuf> {
    let pod_dir = crate::logs::pod_log_dir(root, ns, pod, uid);
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(pod_dir.join(container))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some((name.strip_suffix(".log")?.parse().ok()?, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// Options from the query string.
#[derive(Debug, Default, Clone)]
pub struct LogOptions {
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
    pub since: Option<k8s_openapi::jiff::Timestamp>,
}

/// Render CRI log records (`<time> <stream> <P|F> <text>`) the way `kubectl logs` shows them.
pub fn render(cri: &str, opts: &LogOptions) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut partial = String::new();
    for record in cri.lines() {
        let mut parts = record.splitn(4, ' ');
        let (Some(ts), Some(_stream), Some(tag), content) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next().unwrap_or(""),
        ) else {
            continue;
        };
        if let Some(since) = opts.since {
            if ts
                .parse::<k8s_openapi::jiff::Timestamp>()
                .is_ok_and(|t| t < since)
            {
                continue;
            }
        }
        if partial.is_empty() && opts.timestamps {
            partial.push_str(ts);
            partial.push(' ');
        }
        partial.push_str(content);
        if tag != "P" {
            partial.push('\n');
            lines.push(std::mem::take(&mut partial));
        }
    }
    if let Some(n) = opts.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out = lines.concat();
    if let Some(limit) = opts.limit_bytes {
        let mut cut = limit.min(out.len());
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

async fn container_logs(
    State(ctx): State<Ctx>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let uid = ctx
        .uids
        .read()
        .ok()
        .and_then(|m| m.get(&(ns.clone(), pod.clone())).cloned());
    let Some(uid) = uid else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not running on this node"),
        );
    };
    let files = log_files(&ctx.log_dir, &ns, &pod, &uid, &container);
    let previous = q.get("previous").is_some_and(|v| v == "true");
    let file = if previous {
        files.len().checked_sub(2).map(|i| files[i].clone())
    } else {
        files.last().cloned()
    };
    let Some(file) = file else {
        if previous {
            // upstream's kubelet: a 400 the apiserver passes on (`kubectl logs -p`)
            return text(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container {container:?} in pod {pod:?} not found"),
            );
        }
        return text(
            StatusCode::NOT_FOUND,
            format!("logs for container {container:?} in pod {ns}/{pod} not found on this node"),
        );
    };
    let since = q
        .get("sinceSeconds")
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|s| {
            k8s_openapi::jiff::Timestamp::from_second(
                k8s_openapi::jiff::Timestamp::now().as_second() - s,
            )
            .ok()
        });
    let since = q.get("sinceTime").and_then(|t| t.parse().ok()).or(since);
    let opts = LogOptions {
        timestamps: q.get("timestamps").is_some_and(|v| v == "true"),
        tail_lines: q.get("tailLines").and_then(|v| v.parse().ok()),
        limit_bytes: q.get("limitBytes").and_then(|v| v.parse().ok()),
        since,
    };
    // One open file: a follow goes on reading it after it is rotated (renamed) away.
    let read = async {
        use tokio::io::AsyncReadExt;
        let mut handle = tokio::fs::File::open(&file).await?;
        let mut content = String::new();
        handle.read_to_string(&mut content).await?;
        let inode = handle.metadata().await?.ino();
        Ok::<_, std::io::Error>((content, handle, inode))
    };
    let (content, handle, inode) = match read.await {
        Ok(c) => c,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading {}: {e}", file.display()),
            )
        }
    };
    let first = render(&content, &opts);
    let follow = q.get("follow").is_some_and(|v| v == "true");
    if !follow {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            first,
        )
            .into_response();
    }
    // Follow: send what is there, then whatever complete records are appended, until the
    // client goes away or, as upstream's kubelet, the container is no longer running (it
    // exited, was removed, or a restart began a newer log file): then the rest, and the end.
    let stream_opts = LogOptions {
        tail_lines: None,
        limit_bytes: None,
        since: None,
        ..opts
    };
    let follow = Follow {
        pending: Some(first),
        offset: content.len() as u64,
        handle,
        inode,
        file,
        opts: stream_opts,
        rt: ctx.rt.clone(),
        log_dir: ctx.log_dir.clone(),
        ids: (ns, pod, uid, container),
        idle: 0,
        done: false,
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        if let Some(first) = f.pending.take() {
            return Some((Ok::<Bytes, std::io::Error>(Bytes::from(first)), f));
        }
        while !f.done {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Ok(new) = f.read_new().await else {
                return None;
            };
            f.idle += 1;
            if new.is_empty() && f.rotated().await {
                // the file was rotated away and read to its end: follow the new one
                match tokio::fs::File::open(&f.file).await {
                    Ok(handle) => {
                        f.inode = handle.metadata().await.map_or(0, |m| m.ino());
                        f.handle = handle;
                        f.offset = 0;
                        continue;
                    }
                    Err(_) => return None,
                }
            }
            // every second without news: is the container still writing this file?
            if f.idle % 4 == 0 && !f.still_running().await {
                f.done = true;
            }
            if !new.is_empty() {
                // Only whole records (at the end, everything): keep a trailing fragment
                // for the next round.
                let end = if f.done {
                    new.len()
                } else {
                    new.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
                };
                if end > 0 {
                    f.offset += end as u64;
                    f.idle = 0;
                    let chunk = render(&String::from_utf8_lossy(&new[..end]), &f.opts);
                    return Some((Ok(Bytes::from(chunk)), f));
                }
            }
        }
        None
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A `follow=true` log stream's state.
struct Follow {
    /// What was there when the request came (sent first).
    pending: Option<String>,
    /// The log's path, and the file read (which a rotation renames away from it).
    file: PathBuf,
    handle: tokio::fs::File,
    inode: u64,
    offset: u64,
    opts: LogOptions,
    rt: Runtime,
    log_dir: PathBuf,
    /// namespace, pod, pod uid, container
    ids: (String, String, String, String),
    /// Rounds since the last new record.
    idle: u32,
    /// The container stopped: send what is left, then end.
    done: bool,
}

impl Follow {
    /// What the open file holds past `offset`.
    async fn read_new(&mut self) -> std::io::Result<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        self.handle
            .seek(std::io::SeekFrom::Start(self.offset))
            .await?;
        let mut new = Vec::new();
        self.handle.read_to_end(&mut new).await?;
        Ok(new)
    }

    /// Whether the log's path now names another file (the one read was rotated away).
    async fn rotated(&self) -> bool {
        tokio::fs::metadata(&self.file)
            .await
            .is_ok_and(|m| m.ino() != self.inode)
    }

    /// Whether the file followed is the running container's: the newest of its log files,
    /// and that container runs.
    async fn still_running(&self) -> bool {
        let (ns, pod, uid, container) = &self.ids;
        if log_files(&self.log_dir, ns, pod, uid, container).last() != Some(&self.file) {
            return false;
        }
        match self.rt.find_container(uid, container).await {
            Ok(Some(found)) => found.running,
            Ok(None) => false,
            // the runtime did not answer: keep following rather than cut the stream
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRI: &str = "2026-11-25T10:00:00.000000001Z stdout F one\n\
                       2026-11-25T10:00:01.000000001Z stderr P tw\n\
                       2026-11-25T10:00:01.000000002Z stderr F o\n\
                       2026-11-25T10:00:02.000000001Z stdout F three\n";

    #[test]
    fn renders_like_kubectl_logs() {
        assert_eq!(render(CRI, &LogOptions::default()), "one\ntwo\nthree\n");
        let tail = LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(render(CRI, &tail), "two\nthree\n");
        let ts = LogOptions {
            timestamps: true,
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(render(CRI, &ts), "2026-11-25T10:00:02.000000001Z three\n");
        let limited = LogOptions {
            limit_bytes: Some(5),
            ..Default::default()
        };
        assert_eq!(render(CRI, &limited), "one\nt", "five bytes");
        let since = LogOptions {
            since: Some("2026-11-25T10:00:01Z".parse().expect("ts")),
            ..Default::default()
        };
        assert_eq!(render(CRI, &since), "two\nthree\n");
    }
}
