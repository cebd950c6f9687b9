//! The log backend: one event per line to a file (or stdout), rotated as upstream's
//! lumberjack does it (`--audit-log-maxsize` MB per file, the full file renamed to
//! `<name>-<UTC timestamp>.<ext>`, at most `--audit-log-maxbackup` backups kept, none older
//! than `--audit-log-maxage` days), written in the request (`blocking`, `blocking-strict`)
//! or by a background thread that also serializes the events (`batch`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use super::event::Event;
use super::{Format, Mode};

/// How many events `batch` mode queues before it drops them (upstream's
/// `--audit-log-batch-buffer-size` default).
const BATCH_BUFFER: usize = 10_000;

pub struct Rotation {
    pub max_size_mb: u64,
    pub max_backups: usize,
    pub max_age_days: u64,
}

enum Sink {
    Stdout,
    File(RotatingFile),
}

impl Sink {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line)?;
                out.flush()
            }
            Sink::File(f) => f.write(line),
        }
    }
}

pub struct LogBackend {
    format: Format,
    target: Target,
}

enum Target {
    Blocking(Mutex<Sink>),
    Batch(SyncSender<Arc<Event>>),
}

impl std::fmt::Debug for LogBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogBackend").finish_non_exhaustive()
    }
}

impl LogBackend {
    /// Open `path` (`-`: stdout) for appending.
    pub fn open(
        path: &Path,
        rotation: Rotation,
        format: Format,
        mode: Mode,
    ) -> Result<LogBackend, String> {
        let sink = if path == Path::new("-") {
            Sink::Stdout
        } else {
            Sink::File(
                RotatingFile::open(path.to_path_buf(), rotation)
                    .map_err(|e| format!("opening {}: {e}", path.display()))?,
            )
        };
        let target = match mode {
            Mode::Blocking | Mode::BlockingStrict => Target::Blocking(Mutex::new(sink)),
            Mode::Batch => {
                let (tx, rx) = std::sync::mpsc::sync_channel(BATCH_BUFFER);
                std::thread::Builder::new()
                    .name("audit-log".into())
                    .spawn(move || batch_writer(rx, sink, format))
                    .map_err(|e| format!("starting the audit writer: {e}"))?;
                Target::Batch(tx)
            }
        };
        Ok(LogBackend { format, target })
    }

    /// Record `event`: written before returning (blocking modes), else queued. False when
    /// it was lost (the failure is logged).
    pub fn process(&self, event: Arc<Event>) -> bool {
        match &self.target {
            Target::Blocking(sink) => {
                let line = event.line(self.format);
                let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
                match sink.write_line(&line) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(audit_id = %event.audit_id, error = %e, "writing an audit event");
                        false
                    }
                }
            }
            Target::Batch(tx) => match tx.try_send(event) {
                Ok(()) => true,
                Err(TrySendError::Full(ev)) | Err(TrySendError::Disconnected(ev)) => {
                    tracing::error!(audit_id = %ev.audit_id, "audit buffer queue blocked: event dropped");
                    false
                }
            },
        }
    }
}

fn batch_writer(rx: Receiver<Arc<Event>>, mut sink: Sink, format: Format) {
    while let Ok(first) = rx.recv() {
        // what is queued now goes out in one write
        let mut buf = first.line(format);
        let mut ids = vec![first.audit_id.clone()];
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(ev) => {
                    buf.extend_from_slice(&ev.line(format));
                    ids.push(ev.audit_id.clone());
                }
                Err(_) => break,
            }
        }
        if let Err(e) = sink.write_line(&buf) {
            tracing::error!(events = ids.len(), first = %ids[0], error = %e, "writing audit events");
        }
    }
}

/// lumberjack's file: append; when a write would take it past the maximum size, rename it
/// to a timestamped backup and start a new one, then prune the backups.
struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
}

impl RotatingFile {
    fn open(path: PathBuf, rotation: Rotation) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path,
            file,
            size,
            rotation,
        })
    }

    fn max_bytes(&self) -> u64 {
        self.rotation.max_size_mb * 1024 * 1024
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64;
        let max = self.max_bytes();
        if max > 0 {
            if len > max {
                return Err(io::Error::other(format!(
                    "write length {len} exceeds maximum file size {max}"
                )));
            }
            if self.size + len > max {
                self.rotate()?;
            }
        }
        self.file.write_all(line)?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let backup = backup_name(&self.path, jiff::Timestamp::now());
        std::fs::rename(&self.path, &backup)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        if let Err(e) = self.prune() {
            tracing::warn!(error = %e, "removing old audit log backups");
        }
        Ok(())
    }

    /// Remove backups past `max_backups` (oldest first) and older than `max_age_days`.
    fn prune(&self) -> io::Result<()> {
        let (dir, prefix, ext) = parts(&self.path);
        let mut backups: Vec<(jiff::Timestamp, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stamp) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(&ext))
            else {
                continue;
            };
            if let Some(t) = parse_stamp(stamp) {
                backups.push((t, entry.path()));
            }
        }
        backups.sort_by_key(|b| std::cmp::Reverse(b.0));
        let now = jiff::Timestamp::now();
        for (i, (t, path)) in backups.iter().enumerate() {
            let too_many = self.rotation.max_backups > 0 && i >= self.rotation.max_backups;
            let too_old = self.rotation.max_age_days > 0
                && now.duration_since(*t).as_secs() as u64 > self.rotation.max_age_days * 86_400;
            if too_many || too_old {
                std::fs::remove_file(path)?;
            }
        }
        Ok(())
    }
}

/// (directory, `<stem>-`, `.<ext>`) of a log file's name.
fn parts(path: &Path) -> (PathBuf, String, String) {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("audit.log");
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    (dir, format!("{stem}-"), ext.to_string())
}

/// lumberjack's backup name: `<stem>-2006-01-02T15-04-05.000<ext>` (UTC).
fn backup_name(path: &Path, t: jiff::Timestamp) -> PathBuf {
    let (dir, prefix, ext) = parts(path);
    let stamp = t.strftime("%Y-%m-%dT%H-%M-%S.%3f").to_string();
    dir.join(format!("{prefix}{stamp}{ext}"))
}

fn parse_stamp(s: &str) -> Option<jiff::Timestamp> {
    let dt = jiff::civil::DateTime::strptime("%Y-%m-%dT%H-%M-%S.%f", s).ok()?;
    dt.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_are_lumberjacks() {
        let t: jiff::Timestamp = "2026-11-26T20:31:02.123456Z".parse().unwrap();
        assert_eq!(
            backup_name(Path::new("/var/log/kaze/audit.log"), t),
            PathBuf::from("/var/log/kaze/audit-2026-11-26T20-31-02.123.log")
        );
        assert_eq!(
            backup_name(Path::new("audit"), t),
            PathBuf::from("./audit-2026-11-26T20-31-02.123")
        );
        assert_eq!(
            parse_stamp("2026-11-26T20-31-02.123"),
            Some("2026-11-26T20:31:02.123Z".parse().unwrap())
        );
    }

    #[test]
    fn rotates_at_max_size_and_keeps_max_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut f = RotatingFile::open(
            path.clone(),
            Rotation {
                max_size_mb: 1,
                max_backups: 2,
                max_age_days: 0,
            },
        )
        .unwrap();
        let line = vec![b'x'; 400 * 1024];
        for _ in 0..10 {
            f.write(&line).unwrap();
            // distinct backup timestamps (milliseconds)
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
        // 2 lines per 1 MiB file: 10 lines -> 5 files, the 2 newest backups kept
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 800 * 1024);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "audit.log")
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names
            .iter()
            .all(|n| n.starts_with("audit-") && n.ends_with(".log")));
        let too_big = vec![b'x'; 2 * 1024 * 1024];
        assert!(f.write(&too_big).is_err());
    }
}
