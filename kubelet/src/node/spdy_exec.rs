//! Exec and attach over SPDY/3.1 with `X-Stream-Protocol-Version: v4.channel.k8s.io`: what
//! kubectl uses when WebSockets are off (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`) and what
//! older clients speak. The client opens one stream per channel, named by its `streamtype`
//! header (`error`, `stdin`, `stdout`, `stderr`, `resize`); the session starts once every
//! stream the query asked for is there. Stdin ends with the stream's FIN, resizes are JSON
//! objects back to back, and the final `metav1.Status` is written on the error stream.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::spdy::{self, Decoder, Frame, HeaderDeflater};
use super::stream::{self, Channels, ExecOptions, Run};

/// The one remotecommand version served over SPDY (v4 carries the exit code).
pub const PROTOCOL: &str = "v4.channel.k8s.io";
/// How long the client has to open its streams (upstream's streamCreationTimeout).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The stream types the session waits for.
fn expected(opts: &ExecOptions) -> Vec<&'static str> {
    let mut want = vec!["error"];
    if opts.stdin {
        want.push("stdin");
    }
    if opts.stdout {
        want.push("stdout");
    }
    if opts.stderr && !opts.tty {
        want.push("stderr");
    }
    if opts.tty {
        want.push("resize");
    }
    want
}

/// Serve one exec or attach session on an upgraded SPDY connection.
pub async fn serve<T>(io: T, opts: ExecOptions, run: Run)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut incoming, out, writer) = spdy::transport(io);
    let mut decoder = Decoder::default();
    let mut deflater = HeaderDeflater::default();
    let want = expected(&opts);
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut early: Vec<Frame> = Vec::new();
    let opened = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
        while !want.iter().all(|w| ids.contains_key(*w)) {
            let Some(chunk) = incoming.next().await else {
                return false;
            };
            decoder.push(&chunk);
            loop {
                match decoder.next_frame() {
                    Ok(Some(Frame::SynStream {
                        stream_id, headers, ..
                    })) => {
                        let kind = headers
                            .iter()
                            .find(|(k, _)| k == "streamtype")
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default();
                        if want.contains(&kind.as_str()) {
                            let _ = out.send(spdy::syn_reply(stream_id, &mut deflater)).await;
                            ids.insert(kind, stream_id);
                        } else {
                            let _ = out
                                .send(spdy::rst_stream(stream_id, spdy::RST_REFUSED))
                                .await;
                        }
                    }
                    Ok(Some(Frame::Ping(id))) => {
                        let _ = out.send(spdy::ping(id)).await;
                    }
                    Ok(Some(Frame::GoAway)) | Err(_) => return false,
                    Ok(Some(frame)) => early.push(frame),
                    Ok(None) => break,
                }
            }
        }
        true
    })
    .await;
    if opened != Ok(true) {
        tracing::debug!(streams = ?ids.keys().collect::<Vec<_>>(), "an exec client did not open its streams");
        drop(out);
        let _ = writer.await;
        return;
    }

    let cancel = component::CancellationToken::new();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<(u16, u16)>(4);
    let reader = {
        let cancel = cancel.clone();
        let out = out.clone();
        let stdin_id = ids.get("stdin").copied();
        let resize_id = ids.get("resize").copied();
        let mut stdin_tx = opts.stdin.then_some(stdin_tx);
        let mut resize_tx = opts.tty.then_some(resize_tx);
        tokio::spawn(async move {
            let mut resize_buf: Vec<u8> = Vec::new();
            let mut frames = early;
            'session: loop {
                for frame in frames.drain(..) {
                    match frame {
                        Frame::Data {
                            stream_id,
                            fin,
                            data,
                        } if Some(stream_id) == stdin_id => {
                            if let Some(tx) = &stdin_tx {
                                if !data.is_empty() && tx.send(data).await.is_err() {
                                    stdin_tx = None;
                                }
                            }
                            if fin {
                                stdin_tx = None;
                            }
                        }
                        Frame::Data {
                            stream_id, data, ..
                        } if Some(stream_id) == resize_id => {
                            resize_buf.extend_from_slice(&data);
                            for size in take_sizes(&mut resize_buf) {
                                if let Some(tx) = &resize_tx {
                                    let _ = tx.send(size).await;
                                }
                            }
                        }
                        Frame::RstStream { stream_id } if Some(stream_id) == stdin_id => {
                            stdin_tx = None;
                        }
                        Frame::Ping(id) => {
                            let _ = out.send(spdy::ping(id)).await;
                        }
                        Frame::GoAway => break 'session,
                        _ => {}
                    }
                }
                let Some(chunk) = incoming.next().await else {
                    break;
                };
                decoder.push(&chunk);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => frames.push(frame),
                        Ok(None) => break,
                        Err(_) => break 'session,
                    }
                }
            }
            resize_tx.take();
            cancel.cancel();
        })
    };

    // Channel frames become DATA frames on the matching stream; then every stream we
    // write is closed with FIN, and the connection after them.
    let (frames_tx, mut frames_rx) = mpsc::channel::<(u8, Bytes)>(32);
    let mapper = {
        let out = out.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            let id_of = |channel: u8| match channel {
                stream::STDOUT => ids.get("stdout"),
                stream::STDERR => ids.get("stderr"),
                stream::STATUS => ids.get("error"),
                _ => None,
            };
            while let Some((channel, data)) = frames_rx.recv().await {
                if let Some(&id) = id_of(channel) {
                    if out.send(spdy::data(id, false, &data)).await.is_err() {
                        return;
                    }
                }
            }
            for kind in ["stdout", "stderr", "error"] {
                if let Some(&id) = ids.get(kind) {
                    let _ = out.send(spdy::data(id, true, &[])).await;
                }
            }
        })
    };
    drop(out);
    let ch = Channels {
        frames: frames_tx,
        stdin: opts.stdin.then_some(stdin_rx),
        resize: opts.tty.then_some(resize_rx),
        cancel,
    };
    stream::run_session(ch, &opts, run).await;
    let _ = mapper.await;
    // The client closes once it has read every stream's end; the reader (which holds a
    // frame sender, for pings) then ends, and with it the connection.
    let mut reader = reader;
    if tokio::time::timeout(Duration::from_secs(5), &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
    let _ = writer.await;
}

/// Complete JSON size objects from the front of `buf` (the client writes them back to
/// back); a trailing partial object stays.
fn take_sizes(buf: &mut Vec<u8>) -> Vec<(u16, u16)> {
    let mut sizes = Vec::new();
    let mut consumed = 0;
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
    while let Some(Ok(v)) = it.next() {
        consumed = it.byte_offset();
        if let Some(size) = stream::parse_size(v.to_string().as_bytes()) {
            sizes.push(size);
        }
    }
    buf.drain(..consumed);
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_messages_are_split_back_to_back() {
        let mut buf = br#"{"Width":80,"Height":24}
{"Width":100,"Height":30}{"Wid"#
            .to_vec();
        assert_eq!(take_sizes(&mut buf), vec![(80, 24), (100, 30)]);
        assert_eq!(buf, br#"{"Wid"#);
        buf.extend_from_slice(br#"th":1,"Height":2}"#);
        assert_eq!(take_sizes(&mut buf), vec![(1, 2)]);
        assert!(buf.is_empty());
    }

    #[test]
    fn streams_follow_the_options() {
        let o = ExecOptions {
            command: vec!["sh".into()],
            stdin: true,
            stdout: true,
            stderr: true,
            tty: true,
        };
        assert_eq!(expected(&o), ["error", "stdin", "stdout", "resize"]);
        let o = ExecOptions {
            tty: false,
            stdin: false,
            ..o
        };
        assert_eq!(expected(&o), ["error", "stdout", "stderr"]);
    }
}
