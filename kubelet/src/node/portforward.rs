//! `kubectl port-forward` on the kubelet server: the `portforward.k8s.io` protocol over
//! SPDY/3.1, either on the upgraded connection itself or tunnelled in WebSocket binary
//! messages (`SPDY/3.1+portforward.k8s.io`, KEP-4006, which kubectl 1.30+ tries first).
//!
//! For every local connection the client opens two streams with the same `requestid`: an
//! error stream and a data stream, both naming the `port`. The kubelet connects to
//! `127.0.0.1:<port>` inside the pod's network namespace and splices the data stream to it;
//! a failure is written on the error stream. When the pod side closes, the data stream gets
//! FIN and the error stream is closed empty (which the client reads as "no error").
//!
//! Clients of the WebSocket channel protocol (`v4`/`v5.channel.k8s.io`, kube-rs) instead
//! name the ports up front (`?ports=80,8080`) and get one connection per port: channel 2i
//! carries port i's data, 2i+1 its errors, and each channel's first message is the port
//! (2 bytes, little-endian); v5's close signal half-closes a port's connection.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::spdy::{self, Decoder, Frame, HeaderDeflater};
use super::stream::Ws;

/// `X-Stream-Protocol-Version` of port-forward over SPDY.
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol carrying the same SPDY.
pub const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 32 * 1024;

/// Where to forward to: the pod's network namespace.
#[derive(Clone, Debug)]
pub struct Target {
    pub netns: PathBuf,
    /// `<ns>/<name>`, for messages.
    pub pod: String,
}

/// Serve port-forward over SPDY on an upgraded connection.
pub async fn over_spdy<T>(io: T, target: Target)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (incoming, tx, write) = spdy::transport(io);
    session(incoming, tx, target).await;
    let _ = write.await;
}

/// Serve port-forward over SPDY tunnelled in a WebSocket's binary messages.
pub async fn over_websocket(ws: Ws, target: Target) {
    let (mut sink, source) = ws.split();
    let incoming = source
        .take_while(|m| std::future::ready(matches!(m, Ok(m) if !m.is_close())))
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Binary(b)) => Some(b),
                _ => None,
            })
        });
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let write = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.send(Message::binary(frame)).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    session(Box::pin(incoming), tx, target).await;
    let _ = write.await;
}

/// One stream pair being assembled.
#[derive(Default)]
struct Pending {
    port: u16,
    error: Option<u32>,
    data: Option<(u32, mpsc::Receiver<Option<Bytes>>)>,
}

/// The SPDY session: frames in from `incoming`, frames out through `out`.
async fn session(mut incoming: spdy::Incoming, out: mpsc::Sender<Vec<u8>>, target: Target) {
    let mut decoder = Decoder::default();
    let mut deflater = HeaderDeflater::default();
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut inbound: HashMap<u32, mpsc::Sender<Option<Bytes>>> = HashMap::new();
    let mut conns = tokio::task::JoinSet::new();
    'session: while let Some(chunk) = incoming.next().await {
        // Reap finished connections: a session may forward many over its life.
        while conns.try_join_next().is_some() {}
        decoder.push(&chunk);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(pod = %target.pod, error = %e, "port-forward session");
                    break 'session;
                }
            };
            tracing::trace!(?frame, "spdy frame");
            match frame {
                Frame::SynStream {
                    stream_id, headers, ..
                } => {
                    let get = |k: &str| {
                        headers
                            .iter()
                            .find(|(n, _)| n == k)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    let port = get("port").parse::<u16>().ok().filter(|p| *p > 0);
                    let kind = get("streamtype");
                    let (Some(port), "error" | "data") = (port, kind.as_str()) else {
                        let _ = out
                            .send(spdy::rst_stream(stream_id, spdy::RST_REFUSED))
                            .await;
                        continue;
                    };
                    let _ = out.send(spdy::syn_reply(stream_id, &mut deflater)).await;
                    let request = get("requestid");
                    let p = pending.entry(request.clone()).or_default();
                    p.port = port;
                    if kind == "error" {
                        p.error = Some(stream_id);
                    } else {
                        let (tx, rx) = mpsc::channel(64);
                        inbound.insert(stream_id, tx);
                        p.data = Some((stream_id, rx));
                    }
                    if p.error.is_some() && p.data.is_some() {
                        let p = pending.remove(&request).unwrap_or_default();
                        if let (Some(error), Some((data, rx))) = (p.error, p.data) {
                            let (out, target) = (out.clone(), target.clone());
                            conns.spawn(forward(p.port, error, data, rx, out, target));
                        }
                    }
                }
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    if let Some(tx) = inbound.get(&stream_id) {
                        if !data.is_empty() && tx.send(Some(data)).await.is_err() {
                            inbound.remove(&stream_id);
                            continue;
                        }
                        if fin {
                            let _ = tx.send(None).await;
                            inbound.remove(&stream_id);
                        }
                    }
                }
                Frame::RstStream { stream_id } => {
                    inbound.remove(&stream_id);
                }
                Frame::Ping(id) => {
                    let _ = out.send(spdy::ping(id)).await;
                }
                Frame::GoAway => break 'session,
                Frame::Other => {}
            }
        }
    }
    // The client is gone: its connections go with it.
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// One forwarded connection.
async fn forward(
    port: u16,
    error_stream: u32,
    data_stream: u32,
    mut from_client: mpsc::Receiver<Option<Bytes>>,
    out: mpsc::Sender<Vec<u8>>,
    target: Target,
) {
    let tcp = match crate::sys::connect_in_netns(&target.netns, port, CONNECT_TIMEOUT).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {}: {e}", target.pod);
            tracing::debug!("{msg}");
            let _ = out
                .send(spdy::data(error_stream, true, msg.as_bytes()))
                .await;
            let _ = out.send(spdy::data(data_stream, true, &[])).await;
            return;
        }
    };
    let (mut r, mut w) = tcp.into_split();
    let up = async move {
        while let Some(Some(chunk)) = from_client.recv().await {
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    let down = {
        let out = out.clone();
        async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out
                            .send(spdy::data(data_stream, false, &buf[..n]))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = out.send(spdy::data(data_stream, true, &[])).await;
            let _ = out.send(spdy::data(error_stream, true, &[])).await;
        }
    };
    tokio::join!(up, down);
}

/// The ports of `?ports=80,8080` (or repeated `ports=`).
pub fn query_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in super::stream::form_pairs(query) {
        if k != "ports" && k != "port" {
            continue;
        }
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(format!("invalid port {p:?}")),
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"ports\" is required".into());
    }
    if ports.len() > 127 {
        return Err("too many ports: at most 127 fit the channel numbers".into());
    }
    Ok(ports)
}

/// Serve the WebSocket channel port-forward: one connection per port in `ports`.
pub async fn over_channels(ws: Ws, protocol: &'static str, ports: Vec<u16>, target: Target) {
    use super::stream::{spawn_writer, CLOSE, V5};
    let (sink, mut source) = ws.split();
    let (frames, writer) = spawn_writer(sink);
    let mut inbound: Vec<Option<mpsc::Sender<Option<Bytes>>>> = Vec::new();
    let mut conns = tokio::task::JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data, error) = (2 * i as u8, 2 * i as u8 + 1);
        for channel in [data, error] {
            let _ = frames
                .send((channel, Bytes::copy_from_slice(&port.to_le_bytes())))
                .await;
        }
        let (tx, rx) = mpsc::channel(64);
        inbound.push(Some(tx));
        let (frames, target) = (frames.clone(), target.clone());
        conns.spawn(async move {
            let half_close = protocol == V5;
            forward_channel(port, (data, error), rx, frames, target, half_close).await
        });
    }
    drop(frames);
    let reader = async {
        while let Some(Ok(msg)) = source.next().await {
            let Message::Binary(msg) = msg else {
                if msg.is_close() {
                    break;
                }
                continue;
            };
            match (msg.first().copied(), msg.get(1).copied()) {
                (Some(CLOSE), Some(channel)) if protocol == V5 => {
                    if let Some(tx) = inbound.get_mut(usize::from(channel / 2)) {
                        if channel % 2 == 0 {
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(None).await;
                            }
                        }
                    }
                }
                (Some(channel), _) if channel % 2 == 0 && msg.len() > 1 => {
                    let slot = inbound.get_mut(usize::from(channel / 2));
                    if let Some(Some(tx)) = slot.map(|s| s.as_ref()) {
                        if tx.send(Some(msg.slice(1..))).await.is_err() {
                            inbound[usize::from(channel / 2)] = None;
                        }
                    }
                }
                _ => {}
            }
        }
    };
    // The session ends when every connection is done (the pod side closed) or the client
    // goes away; the writer then closes the WebSocket.
    tokio::select! {
        _ = async { while conns.join_next().await.is_some() {} } => {}
        _ = reader => {}
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    let _ = writer.await;
}

/// One port's connection for [`over_channels`].
async fn forward_channel(
    port: u16,
    (data, error): (u8, u8),
    mut from_client: mpsc::Receiver<Option<Bytes>>,
    frames: mpsc::Sender<(u8, Bytes)>,
    target: Target,
    half_close: bool,
) {
    let tcp = match crate::sys::connect_in_netns(&target.netns, port, CONNECT_TIMEOUT).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {}: {e}", target.pod);
            let _ = frames.send((error, Bytes::from(msg))).await;
            return;
        }
    };
    let (mut r, mut w) = tcp.into_split();
    let up = async move {
        while let Some(Some(chunk)) = from_client.recv().await {
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if frames
                        .send((data, Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        if half_close {
            let _ = frames
                .send((super::stream::CLOSE, Bytes::copy_from_slice(&[data])))
                .await;
        }
    };
    // Done when the pod side is: as upstream, the client's half is not waited for.
    tokio::select! {
        _ = down => {}
        _ = async { up.await; std::future::pending::<()>().await } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_query() {
        assert_eq!(query_ports("ports=80%2C8080"), Ok(vec![80, 8080]));
        assert_eq!(query_ports("ports=80&ports=81"), Ok(vec![80, 81]));
        assert!(query_ports("ports=http").is_err());
        assert!(query_ports("").is_err());
    }
}
