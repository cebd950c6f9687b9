//! `kubectl exec` and `kubectl attach` on the kubelet server: the WebSocket channel protocols
//! `v5.channel.k8s.io` and `v4.channel.k8s.io`. Every binary message starts with its
//! channel: 0 stdin, 1 stdout, 2 stderr, 3 the final status (a `metav1.Status` as JSON),
//! 4 terminal resizes (`{"Width":w,"Height":h}`); v5 adds 255, "close channel N", which is
//! how a client ends stdin. The status carries the exit code (`NonZeroExitCode` with an
//! `ExitCode` cause), which is what makes `kubectl exec` exit with the command's code.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::runtime::{ExecStreams, Runtime};

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
/// What exec and attach speak, best first.
pub const CHANNEL_PROTOCOLS: &[&str] = &[V5, V4];

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5's "close channel N" signal.
pub const CLOSE: u8 = 255;

pub type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Whether the request asks for a WebSocket.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The first of `ours` (in our order of preference) that the client offers.
pub fn negotiate(headers: &HeaderMap, ours: &[&'static str]) -> Option<&'static str> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    ours.iter()
        .copied()
        .find(|p| offered.iter().any(|o| o == p))
}

/// The 101 answer accepting a WebSocket with `protocol`.
pub fn accept(headers: &HeaderMap, protocol: &str) -> Response {
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes())
        .unwrap_or_default();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key),
        )
        .body(Body::empty())
        .unwrap_or_default()
}

/// The server side of an upgraded connection.
pub async fn websocket(upgrade: hyper::upgrade::OnUpgrade) -> Option<Ws> {
    match upgrade.await {
        Ok(io) => {
            Some(WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await)
        }
        Err(e) => {
            tracing::debug!(error = %e, "upgrading a stream connection");
            None
        }
    }
}

/// What the client asked for in the query string.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecOptions {
    /// `command` repeats, one argument each; the flags are `true`/`1`.
    pub fn parse(query: &str) -> ExecOptions {
        let mut o = ExecOptions::default();
        for (k, v) in form_pairs(query) {
            let on = v == "true" || v == "1";
            match k.as_str() {
                "command" => o.command.push(v),
                "input" | "stdin" => o.stdin = on,
                "output" | "stdout" => o.stdout = on,
                "error" | "stderr" => o.stderr = on,
                "tty" => o.tty = on,
                _ => {}
            }
        }
        o
    }
}

/// Decode `application/x-www-form-urlencoded` pairs (`+` is a space).
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The final status: Success, the exit code, or why the command could not run.
pub fn status(result: &Result<i32, String>, command: &[String]) -> serde_json::Value {
    match result {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        // upstream's `apierrors.NewInternalError` of the streaming server's error
        Err(message) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {message}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": message}]},
            "code": 500,
        }),
    }
}

/// What a session runs: given the streams and a token cancelled when the client goes away,
/// the exit code (0 for attach) or why it could not run.
pub type Run = Box<
    dyn FnOnce(ExecStreams, component::CancellationToken) -> BoxFuture<'static, Result<i32, String>>
        + Send,
>;

/// Exec `command` in container `target` (or report why there is none to run in). A
/// command that cannot run fails as upstream's (containerd's CRI streaming server) says:
/// `error executing command in container: failed to exec in container: failed to start
/// exec "<id>": OCI runtime exec failed: ...`, which kubectl prints after `Internal error
/// occurred: `.
pub fn exec_run(rt: Runtime, target: Result<String, String>, command: Vec<String>) -> Run {
    Box::new(move |streams, cancel| {
        Box::pin(async move {
            let failed = |why: String| {
                format!("error executing command in container: failed to exec in container: {why}")
            };
            let id = target.map_err(failed)?;
            rt.exec_streaming(&id, &command, streams, cancel)
                .await
                .map_err(|e| match e {
                    crate::Error::Containerd { source, .. } => failed(source.message().into()),
                    other => failed(other.to_string()),
                })
        })
    })
}

/// Attach to the output of a container's main process until it exits or the client leaves;
/// with `input` (a container with `stdin: true`), the client's input and terminal sizes go
/// to the container. `notice` (a client asked for stdin of a container without one) is
/// written first, on stderr (stdout with a TTY), so the user knows input is not delivered.
pub fn attach_run(
    target: Result<tokio::sync::broadcast::Receiver<crate::logs::Output>, String>,
    input: Option<crate::runtime::AttachInput>,
    notice: Option<String>,
) -> Run {
    use tokio::sync::broadcast::error::RecvError;
    Box::new(move |mut streams, cancel| {
        Box::pin(async move {
            // upstream's streaming server words it so, under `Internal error occurred`
            let mut output =
                target.map_err(|why| format!("error attaching to container: {why}"))?;
            if let Some(input) = input {
                tokio::spawn(input.serve(streams.stdin.take(), streams.resize.take()));
            }
            if let Some(notice) = notice {
                if let Some(to) = streams.stderr.as_ref().or(streams.stdout.as_ref()) {
                    let _ = to.send(Bytes::from(notice)).await;
                }
            }
            loop {
                let next = tokio::select! {
                    next = output.recv() => next,
                    _ = cancel.cancelled() => break,
                };
                let (to, data) = match next {
                    Ok((STDOUT, data)) => (&streams.stdout, data),
                    Ok((_, data)) => (&streams.stderr, data),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                };
                if let Some(to) = to {
                    if to.send(data).await.is_err() {
                        break;
                    }
                }
            }
            Ok(0)
        })
    })
}

/// A session's side of a transport (WebSocket channels or SPDY streams): where channel
/// frames go, and the client's input.
pub struct Channels {
    /// `(channel, bytes)`: STDOUT, STDERR, and finally STATUS.
    pub frames: mpsc::Sender<(u8, Bytes)>,
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
    /// Cancelled when the client goes away.
    pub cancel: component::CancellationToken,
}

/// Run `run` with its output on `ch.frames`, then send the final status.
pub async fn run_session(ch: Channels, opts: &ExecOptions, run: Run) {
    let mut adapters = tokio::task::JoinSet::new();
    let mut tagged = |channel: u8, wanted: bool| {
        wanted.then(|| {
            let (tx, mut rx) = mpsc::channel::<Bytes>(16);
            let frames = ch.frames.clone();
            adapters.spawn(async move {
                while let Some(data) = rx.recv().await {
                    if frames.send((channel, data)).await.is_err() {
                        break;
                    }
                }
            });
            tx
        })
    };
    let streams = ExecStreams {
        stdout: tagged(STDOUT, opts.stdout),
        stderr: tagged(STDERR, opts.stderr && !opts.tty),
        stdin: ch.stdin,
        tty: opts.tty,
        resize: ch.resize,
    };
    let result = run(streams, ch.cancel).await;
    while adapters.join_next().await.is_some() {}
    let status = status(&result, &opts.command);
    let _ = ch
        .frames
        .send((STATUS, Bytes::from(status.to_string())))
        .await;
}

/// Serve one exec or attach session on `ws` in `protocol`.
pub async fn session(ws: Ws, protocol: &'static str, opts: ExecOptions, run: Run) {
    let (sink, mut source) = ws.split();
    let (frames_tx, writer) = spawn_writer(sink);
    let cancel = component::CancellationToken::new();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<(u16, u16)>(4);
    let reader = {
        let cancel = cancel.clone();
        let mut stdin_tx = opts.stdin.then_some(stdin_tx);
        let mut resize_tx = opts.tty.then_some(resize_tx);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = source.next().await {
                let Message::Binary(data) = msg else {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                    continue;
                };
                match (data.first(), data.get(1)) {
                    (Some(&STDIN), _) => {
                        if let Some(tx) = &stdin_tx {
                            if data.len() > 1 && tx.send(data.slice(1..)).await.is_err() {
                                stdin_tx = None;
                            }
                        }
                    }
                    (Some(&RESIZE), _) => {
                        if let (Some(tx), Some(size)) = (&resize_tx, parse_size(&data[1..])) {
                            let _ = tx.send(size).await;
                        }
                    }
                    (Some(&CLOSE), Some(&STDIN)) if protocol == V5 => stdin_tx = None,
                    _ => {}
                }
            }
            // The client is gone (or closed): nothing will read the output any more.
            resize_tx.take();
            cancel.cancel();
        })
    };
    let ch = Channels {
        frames: frames_tx,
        stdin: opts.stdin.then_some(stdin_rx),
        resize: opts.tty.then_some(resize_rx),
        cancel,
    };
    run_session(ch, &opts, run).await;
    let _ = writer.await;
    // The client answers the close; give it a moment, then drop the connection regardless.
    let mut reader = reader;
    if tokio::time::timeout(std::time::Duration::from_secs(5), &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
}

/// A terminal size message, `{"Width":80,"Height":24}`.
pub fn parse_size(json: &[u8]) -> Option<(u16, u16)> {
    let size: serde_json::Value = serde_json::from_slice(json).ok()?;
    let dim = |k: &str| size[k].as_u64().and_then(|v| u16::try_from(v).ok());
    Some((dim("Width")?, dim("Height")?))
}

pub type Sink = futures::stream::SplitSink<Ws, Message>;

/// Write `(channel, bytes)` frames until every sender is gone, then close the WebSocket.
pub fn spawn_writer(mut sink: Sink) -> (mpsc::Sender<(u8, Bytes)>, tokio::task::JoinHandle<()>) {
    let (frames_tx, mut frames_rx) = mpsc::channel::<(u8, Bytes)>(32);
    let writer = tokio::spawn(async move {
        while let Some((channel, data)) = frames_rx.recv().await {
            let mut msg = Vec::with_capacity(data.len() + 1);
            msg.push(channel);
            msg.extend_from_slice(&data);
            if sink.send(Message::binary(msg)).await.is_err() {
                return;
            }
        }
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(close))).await;
    });
    (frames_tx, writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_query_keeps_every_command_argument() {
        let o = ExecOptions::parse(
            "command=sh&command=-c&command=echo+%22a+b%22%3B+exit+3&stdin=true&stdout=true&stderr=true&tty=false",
        );
        assert_eq!(o.command, ["sh", "-c", "echo \"a b\"; exit 3"]);
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        let o = ExecOptions::parse("command=ls&output=1");
        assert!(o.stdout && !o.stdin);
    }

    #[test]
    fn status_carries_the_exit_code() {
        let cmd = vec!["false".to_string()];
        assert_eq!(status(&Ok(0), &cmd)["status"], "Success");
        let s = status(&Ok(3), &cmd);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        let s = status(
            &Err("error executing command in container: boom".into()),
            &cmd,
        );
        assert_eq!(s["status"], "Failure");
        assert_eq!(
            s["message"],
            "Internal error occurred: error executing command in container: boom"
        );
        assert_eq!(
            s["details"]["causes"][0]["message"],
            "error executing command in container: boom"
        );
    }

    #[test]
    fn negotiation_prefers_v5() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "v4.channel.k8s.io, v5.channel.k8s.io"
                .parse()
                .expect("header"),
        );
        assert_eq!(negotiate(&h, CHANNEL_PROTOCOLS), Some(V5));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "channel.k8s.io".parse().expect("header"),
        );
        assert_eq!(negotiate(&h, CHANNEL_PROTOCOLS), None);
    }
}
