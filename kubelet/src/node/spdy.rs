//! The part of SPDY/3.1 that `kubectl port-forward` uses (client-go's `spdystream`): frame
//! encoding and decoding, and the zlib header compression with SPDY's preset dictionary.
//!
//! Header blocks the client sends are inflated with the dictionary in front of the output
//! window (miniz's non-wrapping output buffer, so back-references reach into it). Header
//! blocks we send are written as zlib *stored* blocks: valid zlib that never refers to the
//! dictionary, so no compressor is needed. There is no flow control, as in `spdystream`.

use std::sync::OnceLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
};
use miniz_oxide::inflate::core::{decompress, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;
use tokio::task::JoinHandle;

pub const FLAG_FIN: u8 = 0x01;
const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
/// Headers beyond this (all streams of a session together) end the session: a port-forward
/// session's headers are a few hundred bytes per connection.
const MAX_HEADER_HISTORY: usize = 16 << 20;
/// RST_STREAM status for a stream we cannot serve.
pub const RST_REFUSED: u32 = 3;

/// A decoded frame; the ones port-forward does not need are `Other`.
#[derive(Debug, PartialEq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    RstStream {
        stream_id: u32,
    },
    Ping(u32),
    GoAway,
    Other,
}

#[derive(Debug, thiserror::Error)]
#[error("spdy: {0}")]
pub struct SpdyError(String);

/// SPDY/3's header dictionary (draft 3, section 2.6.10.1): length-prefixed words, then
/// status lines, dates and media types as one string.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411\
            412413414415416417502504505203 Non-Authoritative Information204 No Content301 \
            Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 \
            Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr \
            May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, \
            GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/\
            xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch\
            charset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// Inflates the client's header blocks: one zlib stream across all frames of a session.
pub struct HeaderInflater {
    state: Box<DecompressorOxide>,
    /// The dictionary, then every header byte inflated so far (the back-reference window).
    out: Vec<u8>,
    pos: usize,
    /// Bytes of the zlib header still to skip (2, plus 4 when it names a dictionary).
    header: Vec<u8>,
    started: bool,
}

impl Default for HeaderInflater {
    fn default() -> Self {
        let dict = dictionary();
        HeaderInflater {
            state: Box::default(),
            out: dict.to_vec(),
            pos: dict.len(),
            header: Vec::new(),
            started: false,
        }
    }
}

impl HeaderInflater {
    /// Inflate one frame's header block.
    pub fn inflate(&mut self, mut block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        if !self.started {
            // The zlib header: CMF, FLG, and a dictionary id when FLG.FDICT is set.
            while self.header.len() < 2 && !block.is_empty() {
                self.header.push(block[0]);
                block = &block[1..];
            }
            let want = if self.header.get(1).is_some_and(|f| f & 0x20 != 0) {
                6
            } else {
                2
            };
            while self.header.len() < want && !block.is_empty() {
                self.header.push(block[0]);
                block = &block[1..];
            }
            if self.header.len() < want {
                return Ok(Vec::new());
            }
            self.started = true;
        }
        let start = self.pos;
        loop {
            if self.out.len() < self.pos + 4096 {
                self.out.resize(self.pos + 4096, 0);
            }
            let flags = TINFL_FLAG_HAS_MORE_INPUT | TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
            let (status, read, written) =
                decompress(&mut self.state, block, &mut self.out, self.pos, flags);
            block = &block[read..];
            self.pos += written;
            match status {
                TINFLStatus::HasMoreOutput => continue,
                TINFLStatus::NeedsMoreInput | TINFLStatus::Done if block.is_empty() => break,
                TINFLStatus::NeedsMoreInput | TINFLStatus::Done if read > 0 || written > 0 => {
                    continue;
                }
                other => return Err(SpdyError(format!("inflating headers: {other:?}"))),
            }
        }
        if self.pos > MAX_HEADER_HISTORY {
            return Err(SpdyError("header history too large".into()));
        }
        Ok(self.out[start..self.pos].to_vec())
    }
}

/// Deflates our header blocks as stored blocks (see the module doc).
#[derive(Default)]
pub struct HeaderDeflater {
    started: bool,
}

impl HeaderDeflater {
    pub fn deflate(&mut self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len() + 16);
        if !self.started {
            // CMF 0x78 (deflate, 32K window), FLG 0x01: no dictionary, check bits valid.
            out.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        for chunk in raw.chunks(0xffff) {
            let len = chunk.len() as u16;
            // BFINAL=0, BTYPE=00 (stored), then byte-aligned LEN and NLEN.
            out.push(0);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        // An empty stored block ends every header block, as a sync flush does: Go's flate
        // reader hands out a stored block's bytes only when the next block header is
        // readable, and that must be within this frame.
        out.extend_from_slice(&[0, 0, 0, 0xff, 0xff]);
        out
    }
}

/// Encode a header block (uncompressed form): count, then length-prefixed names and values.
pub fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (k, v) in headers {
        b.extend_from_slice(&(k.len() as u32).to_be_bytes());
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

fn parse_header_block(mut b: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let bad = || SpdyError("malformed header block".into());
    let next = |b: &mut &[u8]| -> Result<Vec<u8>, SpdyError> {
        if b.len() < 4 {
            return Err(bad());
        }
        let n = b.get_u32() as usize;
        if b.len() < n {
            return Err(bad());
        }
        let v = b[..n].to_vec();
        b.advance(n);
        Ok(v)
    };
    if b.len() < 4 {
        return Err(bad());
    }
    let count = b.get_u32();
    let mut out = Vec::new();
    for _ in 0..count {
        let k = next(&mut b)?;
        let v = next(&mut b)?;
        out.push((
            String::from_utf8_lossy(&k).to_ascii_lowercase(),
            String::from_utf8_lossy(&v).into_owned(),
        ));
    }
    Ok(out)
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.put_u16(0x8000 | VERSION);
    f.put_u16(kind);
    f.put_u32((u32::from(flags) << 24) | payload.len() as u32);
    f.extend_from_slice(payload);
    f
}

pub fn syn_reply(stream_id: u32, deflater: &mut HeaderDeflater) -> Vec<u8> {
    let mut p = stream_id.to_be_bytes().to_vec();
    p.extend(deflater.deflate(&header_block(&[])));
    control(SYN_REPLY, 0, &p)
}

pub fn data(stream_id: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.put_u32(stream_id & 0x7fff_ffff);
    f.put_u32((u32::from(if fin { FLAG_FIN } else { 0 }) << 24) | data.len() as u32);
    f.extend_from_slice(data);
    f
}

pub fn rst_stream(stream_id: u32, status: u32) -> Vec<u8> {
    let mut p = stream_id.to_be_bytes().to_vec();
    p.extend_from_slice(&status.to_be_bytes());
    control(RST_STREAM, 0, &p)
}

pub fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

/// The bytes a SPDY session reads, as chunks.
pub type Incoming = std::pin::Pin<Box<dyn futures::Stream<Item = Bytes> + Send>>;

/// Split an upgraded connection into chunks in and a frame writer: frames sent to the
/// returned sender are written in order; when every sender is gone the connection is shut.
pub fn transport<T>(io: T) -> (Incoming, tokio::sync::mpsc::Sender<Vec<u8>>, JoinHandle<()>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (reader, mut writer) = tokio::io::split(io);
    let incoming = futures::stream::unfold(reader, |mut r| async move {
        let mut buf = vec![0u8; 32 * 1024];
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Bytes::from(buf), r))
            }
        }
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let write = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if writer.write_all(&frame).await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    (Box::pin(incoming), tx, write)
}

/// Bytes in, frames out.
#[derive(Default)]
pub struct Decoder {
    buf: BytesMut,
    inflater: HeaderInflater,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let len = (u32::from_be_bytes([0, self.buf[5], self.buf[6], self.buf[7]])) as usize;
        if self.buf.len() < 8 + len {
            return Ok(None);
        }
        let mut head = self.buf.split_to(8);
        let mut payload = self.buf.split_to(len).freeze();
        let first = head.get_u32();
        let flags = head.get_u8();
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: first & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                data: payload,
            }));
        }
        let version = (first >> 16) & 0x7fff;
        if version != u32::from(VERSION) {
            return Err(SpdyError(format!("unsupported version {version}")));
        }
        let short = || SpdyError("short control frame".into());
        Ok(Some(match (first & 0xffff) as u16 {
            SYN_STREAM => {
                if payload.len() < 10 {
                    return Err(short());
                }
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                payload.advance(6); // associated stream, priority, slot
                let raw = self.inflater.inflate(&payload)?;
                Frame::SynStream {
                    stream_id,
                    fin: flags & FLAG_FIN != 0,
                    headers: parse_header_block(&raw)?,
                }
            }
            HEADERS | SYN_REPLY => {
                // Keep the shared zlib stream in step even though we do not use these.
                if payload.len() >= 4 {
                    payload.advance(4);
                    self.inflater.inflate(&payload)?;
                }
                Frame::Other
            }
            RST_STREAM => {
                if payload.len() < 8 {
                    return Err(short());
                }
                Frame::RstStream {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                }
            }
            PING => {
                if payload.len() < 4 {
                    return Err(short());
                }
                Frame::Ping(payload.get_u32())
            }
            GOAWAY => Frame::GoAway,
            _ => Frame::Other,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
    }

    fn syn_stream(id: u32, block: &[u8]) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(block);
        control(SYN_STREAM, 0, &p)
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn client_header_blocks_inflate_with_the_dictionary() {
        // zlib at level 9 with the SPDY/3 dictionary (id 0xe3c6a7c2 in the first block's
        // header) and a sync flush after each block, as Go's spdy framer writes them.
        let first = unhex(
            "78f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45e01c6061606100a4398b20d198094ade8c0600000000ffff",
        );
        let second = unhex("c2aa19540e2512d60b000000ffff");
        let mut dec = Decoder::default();
        dec.push(&syn_stream(1, &first));
        dec.push(&syn_stream(3, &second));
        let hdrs = |t: &str| -> Vec<(String, String)> {
            [("streamtype", t), ("port", "8080"), ("requestid", "0")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            dec.next_frame().expect("decode"),
            Some(Frame::SynStream {
                stream_id: 1,
                fin: false,
                headers: hdrs("error")
            })
        );
        assert_eq!(
            dec.next_frame().expect("decode"),
            Some(Frame::SynStream {
                stream_id: 3,
                fin: false,
                headers: hdrs("data")
            })
        );
    }

    #[test]
    fn our_stored_header_blocks_are_one_zlib_stream() {
        let mut deflater = HeaderDeflater::default();
        let mut dec = Decoder::default();
        for id in [1u32, 3] {
            let block = header_block(&[("streamtype", "data"), ("port", "80")]);
            dec.push(&syn_stream(id, &deflater.deflate(&block)));
        }
        for id in [1u32, 3] {
            let Some(Frame::SynStream {
                stream_id, headers, ..
            }) = dec.next_frame().expect("decode")
            else {
                panic!("a SYN_STREAM");
            };
            assert_eq!(stream_id, id);
            assert_eq!(headers[1], ("port".to_string(), "80".to_string()));
        }
        let reply = syn_reply(7, &mut HeaderDeflater::default());
        assert_eq!(&reply[..4], &[0x80, 0x03, 0x00, 0x02]);
    }

    #[test]
    fn data_frames_round_trip() {
        let mut dec = Decoder::default();
        let f = data(5, true, b"hello");
        dec.push(&f[..3]);
        assert_eq!(dec.next_frame().expect("partial"), None);
        dec.push(&f[3..]);
        assert_eq!(
            dec.next_frame().expect("decode"),
            Some(Frame::Data {
                stream_id: 5,
                fin: true,
                data: Bytes::from_static(b"hello")
            })
        );
    }
}
