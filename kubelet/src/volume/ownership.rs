//! `fsGroup`: upstream's `SetVolumeOwnership` for emptyDir, configMap, secret, downwardAPI and
//! projected volumes. Everything in the volume (the volume dir included, symlinks not
//! followed) gets group `fsGroup`; files and dirs gain group read and write (read only for
//! read-only volumes), dirs also group execute and setgid, so what containers create later
//! belongs to the group too. Symlinks are only re-grouped: a chmod would reach their target.

use std::path::Path;

use crate::sys;

/// Group read+write, or read for read-only volumes.
const RW_MASK: u32 = 0o660;
const RO_MASK: u32 = 0o440;
const EXEC_MASK: u32 = 0o110;
const SETGID: u32 = 0o2000;

/// The mode `mode` becomes under fsGroup.
pub fn with_group_bits(mode: u32, dir: bool, read_only: bool) -> u32 {
    let mut mask = if read_only { RO_MASK } else { RW_MASK };
    if dir {
        mask |= SETGID | EXEC_MASK;
    }
    mode | mask
}

/// Give everything below `dir` (and `dir`) group `gid`, as upstream does with `fsGroup`.
pub fn apply(dir: &Path, gid: u32, read_only: bool) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("applying fsGroup {gid} to {}: {e}", path.display()))?;
        sys::lchown_group(&path, gid).map_err(|e| e.to_string())?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        sys::set_mode(&path, with_group_bits(mode, meta.is_dir(), read_only))
            .map_err(|e| e.to_string())?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path)
                .map_err(|e| format!("applying fsGroup {gid} to {}: {e}", path.display()))?;
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn files_and_dirs_get_the_group_and_its_bits() {
        assert_eq!(with_group_bits(0o777, true, false), 0o2777);
        assert_eq!(with_group_bits(0o644, false, true), 0o644);
        assert_eq!(with_group_bits(0o400, false, true), 0o440);
        assert_eq!(with_group_bits(0o600, false, false), 0o660);
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(vol.join("sub")).unwrap();
        std::fs::write(vol.join("sub/f"), "x").unwrap();
        std::fs::set_permissions(vol.join("sub/f"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::os::unix::fs::symlink("sub/f", vol.join("link")).unwrap();
        apply(&vol, 4321, false).unwrap();
        let m = |p: &str| std::fs::symlink_metadata(vol.join(p)).unwrap();
        assert_eq!(m("sub/f").gid(), 4321);
        assert_eq!(m("sub/f").mode() & 0o7777, 0o660);
        assert_eq!(m("sub").mode() & 0o2000, 0o2000);
        assert_eq!(m("link").gid(), 4321);
        assert_eq!(std::fs::metadata(&vol).unwrap().gid(), 4321);
    }
}
