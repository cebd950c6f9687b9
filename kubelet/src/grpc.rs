//! gRPC over unix sockets, both ways, with hand-written prost messages (no protoc at build
//! time):
//! - [`call`]: one unary call to a plugin (tonic's client, over the channel
//!   [`crate::containerd`] connects with);
//! - [`serve`]: a server of unary methods (tonic's server-side codec on hyper's HTTP/2
//!   server), for the kubelet's own sockets: the device plugin `Registration` service and
//!   the pod-resources API.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::tonic;
use tonic::codegen::http;
use tonic::codegen::http::uri::PathAndQuery;

/// Why a call to a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("connecting to {socket}: {source}")]
    Connect {
        socket: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{method}: {source}")]
    Status {
        method: String,
        #[source]
        source: Box<tonic::Status>,
    },
    #[error("{method}: no answer within {timeout:?}")]
    Timeout { method: String, timeout: Duration },
}

/// One unary call of `method` (`/<package>.<service>/<method>`) on the plugin socket at
/// `socket`, within `timeout` (connecting included). A connection per call: plugins are
/// called a few times per pod, and a restarted plugin is reached without reconnect logic.
pub async fn call<Req, Resp>(
    socket: &Path,
    method: &str,
    req: Req,
    timeout: Duration,
) -> Result<Resp, CallError>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let work = async {
        let channel =
            containerd_client::connect(socket)
                .await
                .map_err(|source| CallError::Connect {
                    socket: socket.display().to_string(),
                    source,
                })?;
        let status = |source: tonic::Status| CallError::Status {
            method: method.to_string(),
            source: Box::new(source),
        };
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| status(tonic::Status::unavailable(e.to_string())))?;
        let path = PathAndQuery::try_from(method)
            .map_err(|e| status(tonic::Status::internal(e.to_string())))?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        grpc.unary(tonic::Request::new(req), path, codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(status)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout {
            method: method.to_string(),
            timeout,
        }),
    }
}

/// A request as the server hands it to a [`Handler`].
pub type Request = http::Request<hyper::body::Incoming>;
/// What a [`Handler`] answers (a gRPC response, trailers included).
pub type Response = http::Response<tonic::body::Body>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// Answers one request, by its path (`/<package>.<service>/<method>`).
pub type Handler = Arc<dyn Fn(Request) -> BoxFuture<Response> + Send + Sync>;

/// Answer `req` with `f` applied to its one message (decoded as `Req`).
pub async fn unary<Req, Resp, F, Fut>(req: Request, f: F) -> Response
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnOnce(Req) -> Fut + Send,
    Fut: Future<Output = Result<Resp, tonic::Status>> + Send + 'static,
{
    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Resp, Req>::default());
    grpc.unary(Once(Some(f)), req).await
}

/// `unimplemented` for a path no method answers.
pub fn unimplemented(req: &Request) -> Response {
    tonic::Status::unimplemented(format!("unknown method {}", req.uri().path())).into_http()
}

/// A unary service made of one closure, called once (a service per request).
struct Once<F>(Option<F>);

impl<Req, Resp, F, Fut> tonic::server::UnaryService<Req> for Once<F>
where
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, tonic::Status>> + Send + 'static,
{
    type Response = Resp;
    type Future = BoxFuture<Result<tonic::Response<Resp>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Req>) -> Self::Future {
        match self.0.take() {
            Some(f) => {
                let fut = f(request.into_inner());
                Box::pin(async move { fut.await.map(tonic::Response::new) })
            }
            None => Box::pin(async { Err(tonic::Status::internal("called twice")) }),
        }
    }
}

/// Serve `handler` on `listener` (HTTP/2 without TLS, as gRPC over a unix socket is) until
/// `shutdown`; connections still open then are dropped.
pub async fn serve(
    listener: tokio::net::UnixListener,
    handler: Handler,
    shutdown: component::CancellationToken,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a gRPC connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let token = shutdown.clone();
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request| {
                let answer = handler(req);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            let conn =
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = token.cancelled() => {}
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "a gRPC connection ended");
                },
            }
        });
    }
    conns.abort_all();
}

/// Bind `path` (replacing a socket left there), with `mode` on the socket file if given.
pub fn bind(path: &Path, mode: Option<u32>) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(listener)
}
