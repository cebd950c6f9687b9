//! The NodePort allocator (`--service-node-port-range`, at
//! `<prefix>/ranges/servicenodeports`): a bitmap in a `RangeAllocation` changed only by
//! compare-and-swap, so concurrent creates (also from several apiservers) never hand out one
//! port twice. ClusterIPs are IPAddress objects since session 20 (`crate::servicecidr`); a
//! store written before keeps an unused `<prefix>/ranges/serviceips` bitmap.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("range is full")]
    Full,
    #[error("provided {what} is already allocated")]
    Allocated { what: &'static str },
    #[error("provided {what} is not in the valid range. The range of valid {what}s is {range}")]
    OutOfRange { what: &'static str, range: String },
    #[error("reading or writing the allocation bitmap")]
    Store(#[source] StoreError),
    #[error("the stored allocation bitmap is corrupt: {0}")]
    Corrupt(String),
    /// Writing the object that holds a ClusterIP failed (`crate::servicecidr`).
    #[error("{}", .0.message)]
    Api(Box<crate::status::ApiError>),
}

/// A bitmap over `count` values starting at `first`.
#[derive(Debug)]
struct Bitmap {
    /// What is allocated, for messages ("IP", "port").
    what: &'static str,
    range: String,
    first: u32,
    count: u32,
    key: String,
    store: Arc<dyn Store>,
    /// Where the next search starts, so freed values are not reused at once.
    cursor: AtomicU32,
}

impl Bitmap {
    fn offset(&self, value: u32) -> Result<u32, AllocError> {
        value
            .checked_sub(self.first)
            .filter(|o| *o < self.count)
            .ok_or_else(|| AllocError::OutOfRange {
                what: self.what,
                range: self.range.clone(),
            })
    }

    /// Allocate `want`, or any free value.
    async fn allocate(&self, want: Option<u32>) -> Result<u32, AllocError> {
        let want_off = want.map(|w| self.offset(w)).transpose()?;
        loop {
            let (mut bits, rev) = self.load().await?;
            let off = match want_off {
                Some(o) if get_bit(&bits, o) => {
                    return Err(AllocError::Allocated { what: self.what })
                }
                Some(o) => o,
                None => {
                    let start = self.cursor.load(Ordering::Relaxed) % self.count;
                    (0..self.count)
                        .map(|i| (start + i) % self.count)
                        .find(|o| !get_bit(&bits, *o))
                        .ok_or(AllocError::Full)?
                }
            };
            set_bit(&mut bits, off, true);
            match self.save(&bits, rev).await {
                Ok(()) => {
                    self.cursor.store(off + 1, Ordering::Relaxed);
                    return Ok(self.first + off);
                }
                // Someone else allocated meanwhile: read again and retry.
                Err(AllocError::Store(
                    StoreError::Conflict { .. } | StoreError::AlreadyExists { .. },
                )) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn release(&self, value: u32) -> Result<(), AllocError> {
        let Ok(off) = self.offset(value) else {
            return Ok(());
        };
        loop {
            let (mut bits, rev) = self.load().await?;
            if !get_bit(&bits, off) {
                return Ok(());
            }
            set_bit(&mut bits, off, false);
            match self.save(&bits, rev).await {
                Ok(()) => return Ok(()),
                Err(AllocError::Store(StoreError::Conflict { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The bitmap and its revision (0: not stored yet).
    async fn load(&self) -> Result<(Vec<u8>, i64), AllocError> {
        let empty = vec![0u8; self.count.div_ceil(8) as usize];
        match self.store.get(&self.key).await.map_err(AllocError::Store)? {
            None => Ok((empty, 0)),
            Some(kv) => {
                let v: Value = serde_json::from_slice(&kv.value)
                    .map_err(|e| AllocError::Corrupt(e.to_string()))?;
                if v.get("range").and_then(Value::as_str) != Some(self.range.as_str()) {
                    return Err(AllocError::Corrupt(format!(
                        "stored range {} differs from the configured {}",
                        v.get("range").unwrap_or(&Value::Null),
                        self.range
                    )));
                }
                let mut bits = base64::engine::general_purpose::STANDARD
                    .decode(v.get("data").and_then(Value::as_str).unwrap_or(""))
                    .map_err(|e| AllocError::Corrupt(e.to_string()))?;
                bits.resize(empty.len(), 0);
                Ok((bits, kv.mod_revision))
            }
        }
    }

    async fn save(&self, bits: &[u8], rev: i64) -> Result<(), AllocError> {
        let obj = json!({
            "apiVersion": "v1",
            "kind": "RangeAllocation",
            "metadata": {"creationTimestamp": null},
            "range": self.range,
            "data": base64::engine::general_purpose::STANDARD.encode(bits),
        });
        let bytes = Bytes::from(serde_json::to_vec(&obj).unwrap_or_default());
        let r = if rev == 0 {
            self.store.create(&self.key, bytes).await
        } else {
            self.store.update(&self.key, bytes, rev).await
        };
        r.map(|_| ()).map_err(AllocError::Store)
    }
}

fn get_bit(bits: &[u8], i: u32) -> bool {
    bits.get((i / 8) as usize)
        .is_some_and(|b| b & (1 << (i % 8)) != 0)
}

fn set_bit(bits: &mut [u8], i: u32, on: bool) {
    if let Some(b) = bits.get_mut((i / 8) as usize) {
        if on {
            *b |= 1 << (i % 8);
        } else {
            *b &= !(1 << (i % 8));
        }
    }
}

/// Parse `first-last` (inclusive) into (first, count).
pub fn parse_port_range(range: &str) -> Result<(u32, u32), String> {
    let (a, b) = range
        .split_once('-')
        .ok_or_else(|| format!("{range:?} is not a port range (expected first-last)"))?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{range:?}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{range:?}: {e}"))?;
    if a == 0 || b < a {
        return Err(format!("{range:?}: expected 1 <= first <= last"));
    }
    Ok((u32::from(a), u32::from(b - a) + 1))
}

/// NodePorts.
#[derive(Debug)]
pub struct PortAllocator(Bitmap);

impl PortAllocator {
    pub fn new(range: &str, store: Arc<dyn Store>, key: String) -> Result<PortAllocator, String> {
        let (first, count) = parse_port_range(range)?;
        Ok(PortAllocator(Bitmap {
            what: "port",
            range: range.to_string(),
            first,
            count,
            key,
            store,
            cursor: AtomicU32::new(0),
        }))
    }

    pub async fn allocate(&self, want: Option<u16>) -> Result<u16, AllocError> {
        // Values come from a u16 range, so they fit back.
        self.0.allocate(want.map(u32::from)).await.map(|p| p as u16)
    }

    pub async fn release(&self, port: u16) -> Result<(), AllocError> {
        self.0.release(u32::from(port)).await
    }

    /// What a dry run would take (upstream's `dryRunRange`): a port asked for is only checked
    /// against the range, not against what is taken; any port is the range's first.
    pub fn dry_run(&self, want: Option<u16>) -> Result<u16, AllocError> {
        match want {
            Some(p) => self.0.offset(u32::from(p)).map(|_| p),
            None => Ok(self.0.first as u16),
        }
    }

    /// The range as configured (`30000-32767`), for messages.
    pub fn range(&self) -> &str {
        &self.0.range
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn Store> =
            Arc::new(store::embedded::EmbeddedStore::open(dir.path().join("s.db")).expect("open"));
        (dir, store)
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(
            parse_port_range("30000-32767").expect("valid"),
            (30000, 2768)
        );
        assert!(parse_port_range("32767-30000").is_err());
    }

    #[tokio::test]
    async fn node_ports_fill_the_range_then_report_full() {
        let (_dir, store) = store();
        let ports = PortAllocator::new(
            "30000-30003",
            store,
            "/registry/ranges/servicenodeports".into(),
        )
        .expect("alloc");
        assert_eq!(ports.allocate(Some(30002)).await.expect("explicit"), 30002);
        let mut got = vec![30002];
        for _ in 0..3 {
            got.push(ports.allocate(None).await.expect("dynamic"));
        }
        got.sort();
        assert_eq!(got, [30000, 30001, 30002, 30003]);
        assert!(matches!(ports.allocate(None).await, Err(AllocError::Full)));
        let err = ports.allocate(Some(29999)).await.expect_err("out of range");
        assert_eq!(
            err.to_string(),
            "provided port is not in the valid range. The range of valid ports is 30000-30003"
        );
        ports.release(30001).await.expect("release");
        assert_eq!(ports.allocate(None).await.expect("reuse"), 30001);
    }
}
