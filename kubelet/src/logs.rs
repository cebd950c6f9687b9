//! Container logs in the CRI format that `kubectl logs` and log shippers expect:
//! `<RFC3339Nano time> <stdout|stderr> <F|P> <line>` in
//! `<log root>/<ns>_<pod>_<uid>/<container>/<restart count>.log`.
//!
//! The shim writes the container's stdout/stderr into two FIFOs; a pump per container reads
//! them and writes lines. Lines longer than [`MAX_LINE`] are split into `P` (partial) records
//! followed by an `F` record, like the CRI plugin does.
//!
//! Logs rotate as upstream's container log manager rotates them ([`Rotation`],
//! `--container-log-max-size` / `--container-log-max-files`): once `<n>.log` reaches the size
//! it is renamed `<n>.log.<YYYYMMDD-hhmmss>` (UTC) and a new one begun; earlier rotated files
//! are gzipped (`.gz`) and the oldest removed, so a container keeps at most `max_files`
//! files. Upstream checks every 10 s and asks the runtime to reopen; the pump here writes the
//! file itself, so it rotates as soon as a write reaches the size.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::sys::{self, SysError};

pub const MAX_LINE: usize = 16 * 1024;

/// Upstream's `containerLogMaxSize` / `containerLogMaxFiles` (defaults 10Mi and 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the file holds this many bytes.
    pub max_size: u64,
    /// Files kept per container, the one being written included (at least 2).
    pub max_files: usize,
}

impl Default for Rotation {
    fn default() -> Rotation {
        Rotation {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// A container's log file as the pump writes it, rotated per [`Rotation`].
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    rotation: Rotation,
    /// Held while a rotation's compression and clean-up run (in the background), so two
    /// never work on the same files.
    cleaning: Arc<Mutex<()>>,
}

impl LogFile {
    fn open(path: &Path, rotation: Rotation) -> Result<LogFile, SysError> {
        let file = sys::open_append(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            size,
            rotation,
            cleaning: Arc::default(),
        })
    }

    fn write(&mut self, records: &[u8]) {
        if self.file.write_all(records).is_ok() {
            self.size += records.len() as u64;
        }
        if self.size >= self.rotation.max_size {
            if let Err(e) = self.rotate() {
                tracing::warn!(log = %self.path.display(), error = %e, "rotating a container log");
            }
        }
    }

    /// Upstream's `rotateLog`: rename the file with a time stamp, begin a new one, then (in
    /// the background) compress the earlier rotated files and remove the oldest.
    fn rotate(&mut self) -> std::io::Result<()> {
        let stamp = jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S");
        let rotated = PathBuf::from(format!("{}.{stamp}", self.path.display()));
        if rotated.exists() || PathBuf::from(format!("{}.gz", rotated.display())).exists() {
            // rotated within this second already: keep writing, rotate on a later write
            return Ok(());
        }
        std::fs::rename(&self.path, &rotated)?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        let (path, rotation, cleaning) = (self.path.clone(), self.rotation, self.cleaning.clone());
        std::thread::spawn(move || {
            let _held = cleaning.lock();
            clean_rotated(&path, &rotated, rotation);
        });
        Ok(())
    }
}

/// The rotated files of log `path` (`<path>.<stamp>` and `<path>.<stamp>.gz`), oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stamp = name.strip_prefix(&prefix)?;
            let stamp = stamp.strip_suffix(".gz").unwrap_or(stamp);
            let plain = stamp.len() == 15
                && stamp.as_bytes()[8] == b'-'
                && stamp.bytes().filter(u8::is_ascii_digit).count() == 14;
            plain.then(|| (stamp.to_string(), e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// After `newest` was rotated out of `path`: gzip every other uncompressed rotated file
/// (upstream's `compressLog`, through `.tmp`) and remove the oldest past
/// `max_files - 1` rotated ones (upstream's `removeExcessLogs`).
fn clean_rotated(path: &Path, newest: &Path, rotation: Rotation) {
    let mut rotated = rotated_files(path);
    let keep = rotation.max_files.saturating_sub(1).max(1);
    while rotated.len() > keep {
        let old = rotated.remove(0);
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::debug!(log = %old.display(), error = %e, "removing a rotated log");
        }
    }
    for f in rotated
        .iter()
        .filter(|f| f.as_path() != newest && f.extension().is_none_or(|e| e != "gz"))
    {
        if let Err(e) = gzip(f) {
            tracing::warn!(log = %f.display(), error = %e, "compressing a rotated log");
        }
    }
}

/// `f` → `f.gz` (written as `f.gz.tmp` first), then `f` removed.
fn gzip(f: &Path) -> std::io::Result<()> {
    let gz = PathBuf::from(format!("{}.gz", f.display()));
    let tmp = PathBuf::from(format!("{}.tmp", gz.display()));
    let result = (|| {
        let mut input = std::fs::File::open(f)?;
        let out = std::fs::File::create(&tmp)?;
        let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        std::io::copy(&mut input, &mut enc)?;
        enc.finish()?.sync_all()?;
        std::fs::rename(&tmp, &gz)?;
        std::fs::remove_file(f)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `/var/log/pods/<ns>_<pod>_<uid>`.
pub fn pod_log_dir(root: &Path, namespace: &str, pod: &str, uid: &str) -> PathBuf {
    root.join(format!("{namespace}_{pod}_{uid}"))
}

/// `<pod log dir>/<container>/<n>.log`.
pub fn container_log_path(
    root: &Path,
    namespace: &str,
    pod: &str,
    uid: &str,
    container: &str,
    attempt: u32,
) -> PathBuf {
    pod_log_dir(root, namespace, pod, uid)
        .join(container)
        .join(format!("{attempt}.log"))
}

/// One CRI log record.
pub fn cri_line(time: jiff::Timestamp, stream: &str, partial: bool, line: &[u8]) -> Vec<u8> {
    let tag = if partial { "P" } else { "F" };
    let mut out = format!("{time:.9} {stream} {tag} ").into_bytes();
    out.extend_from_slice(line);
    out.push(b'\n');
    out
}

/// Split buffered output into complete CRI records; returns the records and leaves any
/// unterminated tail (shorter than MAX_LINE) in `buf`.
pub fn drain_lines(buf: &mut Vec<u8>, stream: &str, eof: bool) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let now = jiff::Timestamp::now();
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            if nl > MAX_LINE {
                out.extend(cri_line(now, stream, true, &buf[..MAX_LINE]));
                buf.drain(..MAX_LINE);
                continue;
            }
            out.extend(cri_line(now, stream, false, &buf[..nl]));
            buf.drain(..=nl);
        } else if buf.len() >= MAX_LINE {
            out.extend(cri_line(now, stream, true, &buf[..MAX_LINE]));
            buf.drain(..MAX_LINE);
        } else {
            if eof && !buf.is_empty() {
                out.extend(cri_line(now, stream, false, buf));
                buf.clear();
            }
            return out;
        }
    }
}

/// The two FIFOs of one container, under the pod's state dir.
pub fn fifo_paths(dir: &Path, container_id: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{container_id}-stdout")),
        dir.join(format!("{container_id}-stderr")),
    )
}

/// Output as it is read, for `kubectl attach`: (1 for stdout or 2 for stderr, bytes).
pub type Output = (u8, bytes::Bytes);

/// Reads a container's FIFOs into its log file until told to stop (after the task is
/// deleted, when the shim has flushed and closed its ends). What it reads is also offered
/// to attached clients; one that falls behind misses output, the log file never does.
#[derive(Debug)]
pub struct LogPump {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    attached: tokio::sync::broadcast::Sender<Output>,
}

impl LogPump {
    pub fn start(
        stdout: &Path,
        stderr: &Path,
        log: &Path,
        rotation: Rotation,
    ) -> Result<LogPump, SysError> {
        let file = Arc::new(Mutex::new(LogFile::open(log, rotation)?));
        let (tx, rx) = watch::channel(false);
        let (attached, _) = tokio::sync::broadcast::channel(256);
        let mut tasks = Vec::new();
        for (path, name, channel) in [(stdout, "stdout", 1), (stderr, "stderr", 2)] {
            let fifo = sys::open_fifo_reader(path)?;
            let tee = (channel, attached.clone());
            tasks.push(tokio::spawn(pump(
                fifo,
                name,
                file.clone(),
                rx.clone(),
                tee,
            )));
        }
        Ok(LogPump {
            stop: tx,
            tasks,
            attached,
        })
    }

    /// The output from now on; the receiver sees `Closed` once the container has exited and
    /// its output is drained.
    pub fn attach(&self) -> tokio::sync::broadcast::Receiver<Output> {
        self.attached.subscribe()
    }

    /// Drain what is left and stop.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn pump(
    fifo: tokio::net::unix::pipe::Receiver,
    stream: &'static str,
    file: Arc<Mutex<LogFile>>,
    mut stop: watch::Receiver<bool>,
    (channel, attached): (u8, tokio::sync::broadcast::Sender<Output>),
) {
    let tee = |data: &[u8]| {
        if attached.receiver_count() > 0 {
            let _ = attached.send((channel, bytes::Bytes::copy_from_slice(data)));
        }
    };
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    let write = |records: Vec<u8>| {
        if !records.is_empty() {
            if let Ok(mut f) = file.lock() {
                f.write(&records);
            }
        }
    };
    loop {
        tokio::select! {
            ready = fifo.readable() => {
                if ready.is_err() { break; }
                match fifo.try_read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => { tee(&chunk[..n]); buf.extend_from_slice(&chunk[..n]); write(drain_lines(&mut buf, stream, false)); }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            _ = stop.changed() => {
                // The writer is gone; take what is still buffered in the pipe.
                while let Ok(n) = fifo.try_read(&mut chunk) {
                    if n == 0 { break; }
                    tee(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                }
                break;
            }
        }
    }
    write(drain_lines(&mut buf, stream, true));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(out: &[u8]) -> Vec<(String, String, String)> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| {
                let mut it = l.splitn(4, ' ');
                let ts = it.next().unwrap();
                assert!(ts.parse::<jiff::Timestamp>().is_ok(), "bad timestamp {ts}");
                (
                    it.next().unwrap().into(),
                    it.next().unwrap().into(),
                    it.next().unwrap_or("").into(),
                )
            })
            .collect()
    }

    #[test]
    fn complete_lines_become_full_records() {
        let mut buf = b"hi\nthere\npart".to_vec();
        let out = drain_lines(&mut buf, "stdout", false);
        assert_eq!(
            records(&out),
            vec![
                ("stdout".into(), "F".into(), "hi".into()),
                ("stdout".into(), "F".into(), "there".into())
            ]
        );
        assert_eq!(buf, b"part");
        let out = drain_lines(&mut buf, "stdout", true);
        assert_eq!(
            records(&out),
            vec![("stdout".into(), "F".into(), "part".into())]
        );
    }

    #[test]
    fn long_lines_are_split_into_partials() {
        let mut buf = vec![b'x'; MAX_LINE + 10];
        buf.push(b'\n');
        let out = drain_lines(&mut buf, "stderr", false);
        let recs = records(&out);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].1, "P");
        assert_eq!(recs[0].2.len(), MAX_LINE);
        assert_eq!(recs[1].1, "F");
        assert_eq!(recs[1].2.len(), 10);
    }

    #[test]
    fn log_paths_follow_the_kubelet_layout() {
        let p = container_log_path(Path::new("/var/log/pods"), "default", "web", "u1", "app", 0);
        assert_eq!(p, Path::new("/var/log/pods/default_web_u1/app/0.log"));
    }

    #[test]
    fn a_write_that_reaches_the_size_rotates_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("app/0.log");
        let rotation = Rotation {
            max_size: 100,
            max_files: 2,
        };
        let mut f = LogFile::open(&log, rotation).expect("open");
        f.write(&[b'a'; 60]);
        assert!(rotated_files(&log).is_empty());
        f.write(&[b'b'; 60]);
        let rotated = rotated_files(&log);
        assert_eq!(rotated.len(), 1, "{rotated:?}");
        assert_eq!(std::fs::metadata(&rotated[0]).expect("rotated").len(), 120);
        assert_eq!(std::fs::metadata(&log).expect("new file").len(), 0);
        f.write(b"c\n");
        assert_eq!(std::fs::read(&log).expect("new file"), b"c\n");
        // reopening an existing file counts what it holds
        let again = LogFile::open(&log, rotation).expect("reopen");
        assert_eq!(again.size, 2);
    }

    #[test]
    fn rotated_files_are_gzipped_and_the_oldest_removed() {
        use std::io::Read;
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("0.log");
        let write = |name: &str, body: &str| {
            std::fs::write(dir.path().join(name), body).expect("write");
        };
        write("0.log", "current\n");
        write("0.log.20261128-100000.gz", "oldest");
        write("0.log.20261128-100001", "middle\n");
        write("0.log.20261128-100002", "newest\n");
        // not rotated files of 0.log
        for other in [
            "1.log.20261128-100000",
            "0.log.tmp",
            "0.log.2026",
            "0.log.20261128-1000x1",
        ] {
            write(other, "x");
        }
        let newest = dir.path().join("0.log.20261128-100002");
        let rotation = Rotation {
            max_size: 1,
            max_files: 3,
        };
        clean_rotated(&log, &newest, rotation);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "0.log",
                "0.log.2026",
                "0.log.20261128-100001.gz",
                "0.log.20261128-100002",
                "0.log.20261128-1000x1",
                "0.log.tmp",
                "1.log.20261128-100000",
            ]
        );
        let gz = std::fs::File::open(dir.path().join("0.log.20261128-100001.gz")).expect("gz");
        let mut text = String::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_string(&mut text)
            .expect("gunzip");
        assert_eq!(text, "middle\n");
        assert_eq!(
            rotated_files(&log),
            [
                dir.path().join("0.log.20261128-100001.gz"),
                dir.path().join("0.log.20261128-100002"),
            ]
        );
    }
}
