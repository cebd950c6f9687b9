//! Upstream's `AtomicWriter` layout, so a ConfigMap/Secret update swaps every file of a
//! volume at once:
//!
//! ```text
//! <volume>/..2026_11_26_02_13_00.123456789/   the current payload (real files)
//! <volume>/..data -> ..2026_11_26_02_13_00.123456789
//! <volume>/key    -> ..data/key                 one symlink per top-level path
//! ```
//!
//! An update writes a new timestamped dir, points `..data_tmp` at it and renames that over
//! `..data` (rename(2) is atomic), adds/removes the user-visible links, then deletes the old
//! dir. Readers following `key` see the old payload or the new one, never a mix.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::payload::{validate_path, Payload};
use crate::sys::{self, SysError};

pub const DATA_DIR: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Files below `dir`, as relative paths.
fn files_below(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    out
}

fn top(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

fn mode_of(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// Whether `dir` already holds exactly `payload` (content and modes).
pub fn is_current(dir: &Path, payload: &Payload) -> bool {
    let Some(current) = sys::read_link(&dir.join(DATA_DIR)) else {
        return false;
    };
    let current = dir.join(current);
    let existing = files_below(&current);
    existing.len() == payload.len()
        && payload.iter().all(|(p, f)| {
            existing.contains(p)
                && std::fs::read(current.join(p)).is_ok_and(|d| d == f.data)
                && mode_of(&current.join(p)) == Some(f.mode)
        })
}

/// Write `payload` into `dir` atomically; returns whether anything changed.
pub fn write(dir: &Path, payload: &Payload) -> Result<bool, SysError> {
    for p in payload.keys() {
        if let Err(e) = validate_path(p) {
            return Err(SysError::Io {
                what: "writing volume payload",
                path: dir.join(p),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
            });
        }
    }
    sys::create_dir_all(dir)?;
    if is_current(dir, payload) {
        return Ok(false);
    }
    let data_link = dir.join(DATA_DIR);
    let old: Option<PathBuf> = sys::read_link(&data_link);
    let old_paths = old
        .as_ref()
        .map(|o| files_below(&dir.join(o)))
        .unwrap_or_default();

    let now = jiff::Timestamp::now();
    let ts_name = format!(
        "..{}.{:09}{}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanosecond(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let ts_dir = dir.join(&ts_name);
    sys::create_dir_all(&ts_dir)?;
    sys::set_mode(&ts_dir, 0o755)?;
    for (p, f) in payload {
        let file = ts_dir.join(p);
        sys::write_file(&file, &f.data)?;
        sys::set_mode(&file, f.mode)?;
    }
    let tmp = dir.join(DATA_TMP);
    sys::remove_file(&tmp)?;
    sys::symlink(Path::new(&ts_name), &tmp)?;
    sys::rename(&tmp, &data_link)?;

    let new_tops: BTreeSet<&str> = payload.keys().map(|p| top(p)).collect();
    for t in &new_tops {
        let link = dir.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            sys::symlink(&Path::new(DATA_DIR).join(t), &link)?;
        }
    }
    for p in &old_paths {
        let t = top(p);
        if !new_tops.contains(t) {
            sys::remove_file(&dir.join(t))?;
        }
    }
    if let Some(o) = old {
        sys::remove_dir_all(&dir.join(o))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::payload::FileProjection;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, d, m)| {
                (
                    p.to_string(),
                    FileProjection {
                        data: d.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    fn entries(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn writes_the_upstream_layout_and_swaps_on_update() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        let first = payload(&[("a", "1", 0o644), ("sub/b", "2", 0o400)]);
        assert!(write(&dir, &first).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );
        assert_eq!(
            std::fs::read_link(dir.join("sub")).unwrap(),
            Path::new("..data/sub")
        );
        let ts = std::fs::read_link(dir.join(DATA_DIR)).unwrap();
        let ts = ts.to_string_lossy().into_owned();
        assert!(ts.starts_with("..20"), "{ts}");
        let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("a"), 0o644);
        assert_eq!(mode("sub/b"), 0o400);
        assert_eq!(
            entries(&dir),
            BTreeSet::from(["a".into(), "sub".into(), DATA_DIR.into(), ts.clone()])
        );

        // Same payload: nothing is rewritten.
        assert!(!write(&dir, &first).unwrap());
        assert_eq!(
            std::fs::read_link(dir.join(DATA_DIR))
                .unwrap()
                .to_string_lossy(),
            ts
        );

        // An update swaps ..data, drops vanished paths and the old dir.
        let second = payload(&[("a", "one", 0o600), ("c", "3", 0o644)]);
        assert!(write(&dir, &second).unwrap());
        let ts2 = std::fs::read_link(dir.join(DATA_DIR))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_ne!(ts2, ts);
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "one");
        assert_eq!(mode("a"), 0o600);
        assert_eq!(std::fs::read_to_string(dir.join("c")).unwrap(), "3");
        assert_eq!(
            entries(&dir),
            BTreeSet::from(["a".into(), "c".into(), DATA_DIR.into(), ts2])
        );

        // A mode change alone is a change.
        let third = payload(&[("a", "one", 0o640), ("c", "3", 0o644)]);
        assert!(write(&dir, &third).unwrap());
        assert_eq!(mode("a"), 0o640);
    }

    #[test]
    fn an_empty_payload_is_an_empty_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        assert!(write(&dir, &Payload::new()).unwrap());
        assert!(dir.join(DATA_DIR).exists());
        assert!(!write(&dir, &Payload::new()).unwrap());
    }

    #[test]
    fn paths_escaping_the_volume_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../x", "..x", ""] {
            assert!(
                write(&tmp.path().join("v"), &payload(&[(bad, "", 0o644)])).is_err(),
                "{bad}"
            );
        }
    }
}
