//! The protobuf wire format: varints, fixed-width numbers and length-delimited records,
//! plus the `runtime.Unknown` envelope.

use super::ProtobufError;

pub const VARINT: u8 = 0;
pub const FIXED64: u8 = 1;
pub const LEN: u8 = 2;
pub const FIXED32: u8 = 5;

/// A cursor over one message's bytes. Errors name the message (`context`) being read.
pub struct Reader<'a> {
    buf: &'a [u8],
    context: &'a str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], context: &'a str) -> Self {
        Reader { buf, context }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next field key: (tag, wire type).
    pub fn key(&mut self) -> Result<(u32, u8), ProtobufError> {
        let key = self.varint("field key")?;
        let tag = u32::try_from(key >> 3).ok().filter(|t| *t > 0);
        let Some(tag) = tag else {
            return Err(self.invalid("field key", format!("field number {}", key >> 3)));
        };
        Ok((tag, (key & 7) as u8))
    }

    pub fn varint(&mut self, what: &'static str) -> Result<u64, ProtobufError> {
        let mut value = 0u64;
        for (i, byte) in self.buf.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        if self.buf.len() >= 10 {
            return Err(self.invalid(what, "varint longer than 10 bytes".into()));
        }
        Err(self.truncated(what))
    }

    pub fn fixed64(&mut self, what: &'static str) -> Result<u64, ProtobufError> {
        let bytes = self.take(8, what)?;
        let mut le = [0u8; 8];
        le.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(le))
    }

    /// A length-delimited record's bytes.
    pub fn len_delimited(&mut self, what: &'static str) -> Result<&'a [u8], ProtobufError> {
        let len = self.varint(what)?;
        let len = usize::try_from(len).map_err(|_| self.truncated(what))?;
        self.take(len, what)
    }

    /// Skip a field this decoder doesn't know (newer upstream fields): proto2 says ignore it.
    pub fn skip(&mut self, wire_type: u8, tag: u32) -> Result<(), ProtobufError> {
        match wire_type {
            VARINT => self.varint("unknown field").map(drop),
            FIXED64 => self.take(8, "unknown field").map(drop),
            LEN => self.len_delimited("unknown field").map(drop),
            FIXED32 => self.take(4, "unknown field").map(drop),
            // Groups (3, 4) are proto2-only and never generated for Kubernetes types.
            other => Err(self.invalid(
                "field key",
                format!("unsupported wire type {other} for field {tag}"),
            )),
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtobufError> {
        if self.buf.len() < n {
            return Err(self.truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn truncated(&self, what: &'static str) -> ProtobufError {
        ProtobufError::Truncated {
            what,
            context: self.context.to_string(),
        }
    }

    pub fn invalid(&self, what: &'static str, reason: String) -> ProtobufError {
        ProtobufError::Invalid {
            what,
            context: self.context.to_string(),
            reason,
        }
    }
}

/// `runtime.Unknown`: {1 typeMeta {1 apiVersion, 2 kind}, 2 raw, 3 contentEncoding,
/// 4 contentType}.
pub struct Unknown<'a> {
    pub api_version: String,
    pub kind: String,
    pub raw: &'a [u8],
    pub content_encoding: String,
}

pub fn read_unknown(buf: &[u8]) -> Result<Unknown<'_>, ProtobufError> {
    let mut r = Reader::new(buf, "the runtime.Unknown envelope");
    let mut out = Unknown {
        api_version: String::new(),
        kind: String::new(),
        raw: &[],
        content_encoding: String::new(),
    };
    while !r.is_empty() {
        let (tag, wt) = r.key()?;
        match (tag, wt) {
            (1, LEN) => {
                let type_meta = r.len_delimited("typeMeta")?;
                let mut t = Reader::new(type_meta, "the envelope's typeMeta");
                while !t.is_empty() {
                    match t.key()? {
                        (1, LEN) => out.api_version = t.string("apiVersion")?,
                        (2, LEN) => out.kind = t.string("kind")?,
                        (tag, wt) => t.skip(wt, tag)?,
                    }
                }
            }
            (2, LEN) => out.raw = r.len_delimited("raw")?,
            (3, LEN) => out.content_encoding = r.string("contentEncoding")?,
            // contentType: empty from client-go; the raw bytes are protobuf whatever it says.
            (4, LEN) => drop(r.len_delimited("contentType")?),
            (1..=4, found) => {
                return Err(ProtobufError::WrongWireType {
                    context: format!("field {tag} of the runtime.Unknown envelope"),
                    expected: LEN,
                    found,
                })
            }
            _ => r.skip(wt, tag)?,
        }
    }
    Ok(out)
}

impl Reader<'_> {
    pub fn string(&mut self, what: &'static str) -> Result<String, ProtobufError> {
        let bytes = self.len_delimited(what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| self.invalid(what, e.to_string()))
    }
}
