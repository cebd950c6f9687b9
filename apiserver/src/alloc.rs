//! Service ClusterIP allocation: a bitmap over `--service-cluster-ip-range` stored as a
//! `RangeAllocation` object at `<prefix>/ranges/serviceips` and changed only by
//! compare-and-swap, so concurrent creates (also from several apiservers) never hand out one
//! address twice.

use std::net::Ipv4Addr;
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
    #[error("provided IP is already allocated")]
    Allocated,
    #[error("provided IP is not in the valid range. The range of valid IPs is {range}")]
    OutOfRange { range: String },
    #[error("reading or writing the allocation bitmap")]
    Store(#[source] StoreError),
    #[error("the stored allocation bitmap is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Debug)]
pub struct IpAllocator {
    range: String,
    base: u32,
    size: u32,
    key: String,
    store: Arc<dyn Store>,
    /// Where the next search starts, so freed addresses are not reused at once.
    cursor: AtomicU32,
}

/// Parse an IPv4 CIDR into (network address, number of addresses).
pub fn parse_cidr(cidr: &str) -> Result<(u32, u32), String> {
    let (ip, len) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not a CIDR (expected a.b.c.d/n)"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{cidr:?}: {e}"))?;
    let len: u32 = len
        .parse()
        .map_err(|e| format!("{cidr:?}: prefix length: {e}"))?;
    if !(8..=30).contains(&len) {
        return Err(format!("{cidr:?}: prefix length must be between 8 and 30"));
    }
    let size = 1u32 << (32 - len);
    Ok((u32::from(ip) & !(size - 1), size))
}

impl IpAllocator {
    pub fn new(cidr: &str, store: Arc<dyn Store>, key: String) -> Result<IpAllocator, String> {
        let (base, size) = parse_cidr(cidr)?;
        Ok(IpAllocator {
            range: cidr.to_string(),
            base,
            size,
            key,
            store,
            cursor: AtomicU32::new(10),
        })
    }

    /// The first usable address (upstream gives it to the `kubernetes` service).
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    fn offset(&self, ip: Ipv4Addr) -> Option<u32> {
        let n = u32::from(ip);
        (n > self.base && n < self.base + self.size - 1).then(|| n - self.base)
    }

    /// Allocate `want`, or any free address.
    pub async fn allocate(&self, want: Option<Ipv4Addr>) -> Result<Ipv4Addr, AllocError> {
        let want_off = match want {
            Some(ip) => Some(self.offset(ip).ok_or_else(|| AllocError::OutOfRange {
                range: self.range.clone(),
            })?),
            None => None,
        };
        loop {
            let (mut bits, rev) = self.load().await?;
            let off = match want_off {
                Some(o) if get_bit(&bits, o) => return Err(AllocError::Allocated),
                Some(o) => o,
                None => {
                    let usable = self.size - 2;
                    let start = self.cursor.load(Ordering::Relaxed) % usable;
                    (0..usable)
                        .map(|i| 1 + (start + i) % usable)
                        .find(|o| !get_bit(&bits, *o))
                        .ok_or(AllocError::Full)?
                }
            };
            set_bit(&mut bits, off, true);
            match self.save(&bits, rev).await {
                Ok(()) => {
                    self.cursor.store(off, Ordering::Relaxed);
                    return Ok(Ipv4Addr::from(self.base + off));
                }
                // Someone else allocated meanwhile: read again and retry.
                Err(AllocError::Store(
                    StoreError::Conflict { .. } | StoreError::AlreadyExists { .. },
                )) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn release(&self, ip: Ipv4Addr) -> Result<(), AllocError> {
        let Some(off) = self.offset(ip) else {
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

    #[cfg(test)]
    pub async fn is_allocated(&self, ip: Ipv4Addr) -> Result<bool, AllocError> {
        let off = self.offset(ip).ok_or_else(|| AllocError::OutOfRange {
            range: self.range.clone(),
        })?;
        Ok(get_bit(&self.load().await?.0, off))
    }

    /// The bitmap and its revision (0: not stored yet).
    async fn load(&self) -> Result<(Vec<u8>, i64), AllocError> {
        let empty = vec![0u8; self.size.div_ceil(8) as usize];
        match self.store.get(&self.key).await.map_err(AllocError::Store)? {
            None => Ok((empty, 0)),
            Some(kv) => {
                let v: Value = serde_json::from_slice(&kv.value)
                    .map_err(|e| AllocError::Corrupt(e.to_string()))?;
                if v.get("range").and_then(Value::as_str) != Some(self.range.as_str()) {
                    return Err(AllocError::Corrupt(format!(
                        "stored range {} differs from --service-cluster-ip-range {}",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs() {
        assert_eq!(
            parse_cidr("10.43.0.0/16").expect("valid"),
            (u32::from(Ipv4Addr::new(10, 43, 0, 0)), 65536)
        );
        assert!(parse_cidr("10.43.0.0").is_err());
        assert!(parse_cidr("10.43.0.0/31").is_err());
    }

    #[tokio::test]
    async fn concurrent_allocations_never_collide_and_release_frees() {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn Store> =
            Arc::new(store::embedded::EmbeddedStore::open(dir.path().join("s.db")).expect("open"));
        let alloc = Arc::new(
            IpAllocator::new("10.43.0.0/24", store, "/registry/ranges/serviceips".into())
                .expect("alloc"),
        );
        let first = alloc.allocate(Some(alloc.first())).await.expect("first");
        assert_eq!(first, Ipv4Addr::new(10, 43, 0, 1));
        assert!(matches!(
            alloc.allocate(Some(first)).await,
            Err(AllocError::Allocated)
        ));
        assert!(matches!(
            alloc.allocate(Some(Ipv4Addr::new(10, 44, 0, 1))).await,
            Err(AllocError::OutOfRange { .. })
        ));
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let a = alloc.clone();
            tasks.push(tokio::spawn(async move {
                a.allocate(None).await.expect("allocate")
            }));
        }
        let mut ips = std::collections::HashSet::new();
        for t in tasks {
            assert!(
                ips.insert(t.await.expect("join")),
                "duplicate address handed out"
            );
        }
        assert!(!ips.contains(&first));
        let one = *ips.iter().next().expect("one");
        alloc.release(one).await.expect("release");
        assert!(!alloc.is_allocated(one).await.expect("read"));
    }
}
