//! Container logs in the CRI format that `kubectl logs` and log shippers expect:
//! `<RFC3339Nano time> <stdout|stderr> <F|P> <line>` in
//! `<log root>/<ns>_<pod>_<uid>/<container>/<restart count>.log`.
//!
//! The shim writes the container's stdout/stderr into two FIFOs; a pump per container reads
//! them and writes lines. Lines longer than [`MAX_LINE`] are split into `P` (partial) records
//! followed by an `F` record, like the CRI plugin does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::sys::{self, SysError};

pub const MAX_LINE: usize = 16 * 1024;

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
    pub fn start(stdout: &Path, stderr: &Path, log: &Path) -> Result<LogPump, SysError> {
        let file = Arc::new(Mutex::new(sys::open_append(log)?));
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
    file: Arc<Mutex<std::fs::File>>,
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
                let _ = f.write_all(&records);
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
}
