//! Running a command in a running container: a containerd exec process with the
//! container's own process spec and new args. [`Runtime::exec_sync`] collects the output
//! (exec probes); [`Runtime::exec_streaming`] streams stdin/stdout/stderr through FIFOs as
//! containerd's `cio` does, optionally on a terminal with resizes (`kubectl exec`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest,
    ResizePtyRequest, StartRequest, WaitRequest,
};
use tokio::sync::{mpsc, watch};

use super::{
    Runtime, KIND_CONTAINER, LABEL_ATTEMPT, LABEL_CONTAINER_NAME, LABEL_KIND, LABEL_POD_UID,
};
use crate::error::{Context, Error, Result};
use crate::logs;
use crate::sys;

/// Output is capped: a probe or exec that prints megabytes only needs its beginning.
pub const MAX_OUTPUT: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq)]
pub struct ExecOutput {
    /// None when the command was killed at its timeout.
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

static EXEC_SEQ: AtomicU64 = AtomicU64::new(0);

impl Runtime {
    /// Run `cmd` inside container `id` and collect its output; killed after `timeout`.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let what = || format!("exec {cmd:?} in container {id}");
        let (process_any, uid) = self.exec_process_spec(id, cmd, false, &what).await?;
        let fifo_dir = self.config.pod_dir(&uid).join("fifo");
        let exec_id = format!(
            "exec-{}-{}",
            std::process::id(),
            EXEC_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let (out_path, err_path) = logs::fifo_paths(&fifo_dir, &format!("{id}-{exec_id}"));
        sys::create_dir_all(&fifo_dir).context(what)?;
        sys::mkfifo(&out_path).context(what)?;
        sys::mkfifo(&err_path).context(what)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let out_reader = tokio::spawn(collect(
            sys::open_fifo_reader(&out_path).context(what)?,
            stop_rx.clone(),
        ));
        let err_reader = tokio::spawn(collect(
            sys::open_fifo_reader(&err_path).context(what)?,
            stop_rx,
        ));

        let result = self
            .exec_process(id, &exec_id, process_any, &out_path, &err_path, timeout)
            .await;
        let _ = stop_tx.send(true);
        let stdout = out_reader.await.unwrap_or_default();
        let stderr = err_reader.await.unwrap_or_default();
        let _ = sys::remove_file(&out_path);
        let _ = sys::remove_file(&err_path);
        Ok(ExecOutput {
            exit_code: result.context(what)?,
            stdout,
            stderr,
        })
    }

    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        spec: prost_types::Any,
        stdout: &std::path::Path,
        stderr: &std::path::Path,
        timeout: Duration,
    ) -> std::result::Result<Option<i32>, containerd_client::tonic::Status> {
        let cd = &self.cd;
        let (cid, eid) = (id.to_string(), exec_id.to_string());
        cd.tasks()
            .exec(cd.req(
                ExecProcessRequest {
                    container_id: cid.clone(),
                    stdout: stdout.display().to_string(),
                    stderr: stderr.display().to_string(),
                    spec: Some(spec),
                    exec_id: eid.clone(),
                    ..Default::default()
                },
                None,
            ))
            .await?;
        // Wait is registered before Start so a fast exit is never missed.
        let mut tasks = cd.tasks();
        let wait_req = cd.req(
            WaitRequest {
                container_id: cid.clone(),
                exec_id: eid.clone(),
            },
            None,
        );
        let waiter = tokio::spawn(async move { tasks.wait(wait_req).await });
        let started = cd
            .tasks()
            .start(cd.req(
                StartRequest {
                    container_id: cid.clone(),
                    exec_id: eid.clone(),
                },
                None,
            ))
            .await;
        let exit = match started {
            Err(s) => {
                waiter.abort();
                Err(s)
            }
            Ok(_) => match tokio::time::timeout(timeout, waiter).await {
                Ok(Ok(Ok(r))) => Ok(Some(r.into_inner().exit_status as i32)),
                Ok(Ok(Err(s))) => Err(s),
                Ok(Err(_)) => Ok(None),
                Err(_) => {
                    let kill = KillRequest {
                        container_id: cid.clone(),
                        exec_id: eid.clone(),
                        signal: 9,
                        all: false,
                    };
                    let _ = cd.tasks().kill(cd.req(kill, None)).await;
                    Ok(None)
                }
            },
        };
        let del = DeleteProcessRequest {
            container_id: cid,
            exec_id: eid,
        };
        // Delete fails while a killed process is still exiting; retry briefly.
        for _ in 0..50 {
            match cd.tasks().delete_process(cd.req(del.clone(), None)).await {
                Ok(_) => break,
                Err(s) if s.code() == containerd_client::tonic::Code::NotFound => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        exit
    }
}

/// Read a FIFO until told to stop, then take what is still buffered.
async fn collect(
    fifo: tokio::net::unix::pipe::Receiver,
    mut stop: watch::Receiver<bool>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let take = |out: &mut Vec<u8>, n: usize, chunk: &[u8]| {
        let room = MAX_OUTPUT.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..n.min(room)]);
    };
    loop {
        tokio::select! {
            ready = fifo.readable() => {
                if ready.is_err() { break; }
                match fifo.try_read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => take(&mut out, n, &chunk),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            _ = stop.changed() => {
                while let Ok(n) = fifo.try_read(&mut chunk) {
                    if n == 0 { break; }
                    take(&mut out, n, &chunk);
                }
                break;
            }
        }
    }
    out
}

// === streaming exec ===

/// The client's side of a streaming exec. A stream that is `None` is not connected (the
/// process gets no stdin FIFO, or its output is not kept).
#[derive(Debug, Default)]
pub struct ExecStreams {
    /// Input; the channel closing is end of input.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    /// Unused with a terminal: the terminal merges both outputs into stdout.
    pub stderr: Option<mpsc::Sender<Bytes>>,
    /// Run the command on a terminal (`kubectl exec -t`).
    pub tty: bool,
    /// Terminal sizes, (width, height).
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
}

/// A container of a pod, by name: the newest attempt's id and whether it is running.
#[derive(Clone, Debug, PartialEq)]
pub struct FoundContainer {
    pub id: String,
    pub running: bool,
}

impl Runtime {
    /// The newest container named `name` of pod `uid` (None: the pod has none of that name).
    pub async fn find_container(&self, uid: &str, name: &str) -> Result<Option<FoundContainer>> {
        let newest = self
            .pod_containers(uid)
            .await?
            .into_iter()
            .filter(|c| {
                c.labels.get(LABEL_KIND).map(String::as_str) == Some(KIND_CONTAINER)
                    && c.labels.get(LABEL_CONTAINER_NAME).map(String::as_str) == Some(name)
            })
            .max_by_key(|c| {
                c.labels
                    .get(LABEL_ATTEMPT)
                    .and_then(|a| a.parse::<u32>().ok())
                    .unwrap_or(0)
            });
        let Some(c) = newest else {
            return Ok(None);
        };
        let running = matches!(
            self.container_state(&c.id).await?,
            super::ContainerState::Running { .. }
        );
        Ok(Some(FoundContainer { id: c.id, running }))
    }

    /// The output of container `id`'s main process from now on (`kubectl attach`); None when
    /// this kubelet is not pumping its output (it has exited).
    pub fn attach_output(
        &self,
        id: &str,
    ) -> Option<tokio::sync::broadcast::Receiver<crate::logs::Output>> {
        self.lock().pumps.get(id).map(|p| p.attach())
    }

    /// Where `kubectl attach -i` writes container `id` (of pod `uid`)'s input: None when it
    /// has no stdin (`stdin: false`, or a `stdinOnce` stdin already closed).
    pub fn attach_input(&self, uid: &str, id: &str) -> Option<AttachInput> {
        let fifo_dir = self.config.pod_dir(uid).join("fifo");
        let path = super::container::stdin_path(&fifo_dir, id);
        path.exists().then(|| AttachInput {
            once: super::container::stdin_once_path(&fifo_dir, id),
            path,
            id: id.to_string(),
            rt: self.clone(),
        })
    }

    /// Run `cmd` in container `id` with its stdio connected to `streams` until it exits, or
    /// until `cancel` (the client went away), which kills it. Returns the exit code.
    pub async fn exec_streaming(
        &self,
        id: &str,
        cmd: &[String],
        mut streams: ExecStreams,
        cancel: component::CancellationToken,
    ) -> Result<i32> {
        let what = || format!("exec {cmd:?} in container {id}");
        let (process, uid) = self.exec_process_spec(id, cmd, streams.tty, &what).await?;
        let fifo_dir = self.config.pod_dir(&uid).join("fifo");
        let exec_id = format!(
            "exec-{}-{}",
            std::process::id(),
            EXEC_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let base = format!("{id}-{exec_id}");
        let (out_path, err_path) = logs::fifo_paths(&fifo_dir, &base);
        let in_path = fifo_dir.join(format!("{base}-stdin"));
        let use_err = streams.stderr.is_some() && !streams.tty;
        let mut paths = vec![out_path.clone()];
        if use_err {
            paths.push(err_path.clone());
        }
        if streams.stdin.is_some() {
            paths.push(in_path.clone());
        }
        sys::create_dir_all(&fifo_dir).context(what)?;
        let result = async {
            for p in &paths {
                sys::mkfifo(p).context(what)?;
            }
            // Readers and the writer are open before the shim opens its ends, so neither
            // side ever sees a premature EOF.
            let (stop_tx, stop_rx) = watch::channel(false);
            let mut pumps = tokio::task::JoinSet::new();
            let out_fifo = sys::open_fifo_reader(&out_path).context(what)?;
            pumps.spawn(forward(out_fifo, streams.stdout.take(), stop_rx.clone()));
            if use_err {
                let err_fifo = sys::open_fifo_reader(&err_path).context(what)?;
                pumps.spawn(forward(err_fifo, streams.stderr.take(), stop_rx.clone()));
            }
            let stdin_fifo = match streams.stdin.is_some() {
                true => Some(sys::open_fifo_writer(&in_path).context(what)?),
                false => None,
            };
            let io = ExecIo {
                stdin: stdin_fifo.as_ref().map(|_| in_path.as_path()),
                stdout: &out_path,
                stderr: use_err.then_some(err_path.as_path()),
                terminal: streams.tty,
            };
            let exit = self
                .run_streaming(id, &exec_id, process, io, stdin_fifo, &mut streams, cancel)
                .await;
            let _ = stop_tx.send(true);
            while pumps.join_next().await.is_some() {}
            exit.context(what)
        }
        .await;
        for p in &paths {
            let _ = sys::remove_file(p);
        }
        result
    }

    /// The container's process spec with `cmd` as its args; and the container's pod uid.
    async fn exec_process_spec(
        &self,
        id: &str,
        cmd: &[String],
        terminal: bool,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<(prost_types::Any, String)> {
        if cmd.is_empty() {
            return Err(Error::invalid(what(), "empty command"));
        }
        let cd = &self.cd;
        let container = cd
            .containers()
            .get(cd.req(GetContainerRequest { id: id.into() }, None))
            .await
            .context(what)?
            .into_inner()
            .container
            .unwrap_or_default();
        let spec: serde_json::Value = container
            .spec
            .as_ref()
            .and_then(|s| serde_json::from_slice(&s.value).ok())
            .ok_or_else(|| Error::invalid(what(), "the container has no readable spec"))?;
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(cmd);
        process["terminal"] = serde_json::json!(terminal);
        let any = prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&process).unwrap_or_default(),
        };
        let uid = container
            .labels
            .get(LABEL_POD_UID)
            .cloned()
            .unwrap_or_default();
        Ok((any, uid))
    }

    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    async fn run_streaming(
        &self,
        id: &str,
        exec_id: &str,
        spec: prost_types::Any,
        io: ExecIo<'_>,
        stdin_fifo: Option<tokio::net::unix::pipe::Sender>,
        streams: &mut ExecStreams,
        cancel: component::CancellationToken,
    ) -> std::result::Result<i32, containerd_client::tonic::Status> {
        let cd = &self.cd;
        let (cid, eid) = (id.to_string(), exec_id.to_string());
        let path = |p: Option<&std::path::Path>| p.map(|p| p.display().to_string());
        cd.tasks()
            .exec(cd.req(
                ExecProcessRequest {
                    container_id: cid.clone(),
                    stdin: path(io.stdin).unwrap_or_default(),
                    stdout: io.stdout.display().to_string(),
                    stderr: path(io.stderr).unwrap_or_default(),
                    terminal: io.terminal,
                    spec: Some(spec),
                    exec_id: eid.clone(),
                },
                None,
            ))
            .await?;
        let mut tasks = cd.tasks();
        let wait_req = cd.req(
            WaitRequest {
                container_id: cid.clone(),
                exec_id: eid.clone(),
            },
            None,
        );
        let mut waiter = tokio::spawn(async move { tasks.wait(wait_req).await });
        let started = cd
            .tasks()
            .start(cd.req(
                StartRequest {
                    container_id: cid.clone(),
                    exec_id: eid.clone(),
                },
                None,
            ))
            .await;
        let mut helpers = tokio::task::JoinSet::new();
        let exit = match started {
            Err(s) => {
                waiter.abort();
                // containerd's CRI words it so (`failed to start exec "<id>": OCI runtime
                // exec failed: ...`)
                let message = format!("failed to start exec {eid:?}: {}", s.message());
                Err(containerd_client::tonic::Status::new(s.code(), message))
            }
            Ok(_) => {
                if let (Some(fifo), Some(rx)) = (stdin_fifo, streams.stdin.take()) {
                    let rt = self.clone();
                    let (cid, eid) = (cid.clone(), eid.clone());
                    helpers.spawn(async move { rt.pump_stdin(fifo, rx, cid, eid).await });
                }
                if let Some(mut rx) = streams.resize.take() {
                    let rt = self.clone();
                    let (cid, eid) = (cid.clone(), eid.clone());
                    helpers.spawn(async move {
                        while let Some((width, height)) = rx.recv().await {
                            let req = ResizePtyRequest {
                                container_id: cid.clone(),
                                exec_id: eid.clone(),
                                width: width.into(),
                                height: height.into(),
                            };
                            let _ = rt.cd.tasks().resize_pty(rt.cd.req(req, None)).await;
                        }
                    });
                }
                let waited = tokio::select! {
                    w = &mut waiter => Some(w),
                    _ = cancel.cancelled() => None,
                };
                let waited = match waited {
                    Some(w) => w,
                    None => {
                        let kill = KillRequest {
                            container_id: cid.clone(),
                            exec_id: eid.clone(),
                            signal: 9,
                            all: false,
                        };
                        let _ = cd.tasks().kill(cd.req(kill, None)).await;
                        waiter.await
                    }
                };
                match waited {
                    Ok(Ok(r)) => Ok(r.into_inner().exit_status as i32),
                    Ok(Err(s)) => Err(s),
                    Err(_) => Err(containerd_client::tonic::Status::aborted(
                        "waiting for the exec process was interrupted",
                    )),
                }
            }
        };
        helpers.abort_all();
        // Deleting the exec process waits in the shim until it has copied all output into
        // the FIFOs, so the output pumps can drain them completely afterwards.
        let del = DeleteProcessRequest {
            container_id: cid,
            exec_id: eid,
        };
        for _ in 0..50 {
            match cd.tasks().delete_process(cd.req(del.clone(), None)).await {
                Ok(_) => break,
                Err(s) if s.code() == containerd_client::tonic::Code::NotFound => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        exit
    }

    /// Copy the client's input into the stdin FIFO; at its end close our write end and ask
    /// the shim to close its own (CloseIO), so the process reads EOF after the last byte.
    async fn pump_stdin(
        &self,
        fifo: tokio::net::unix::pipe::Sender,
        mut rx: mpsc::Receiver<Bytes>,
        cid: String,
        eid: String,
    ) {
        use tokio::io::AsyncWriteExt;
        let mut fifo = fifo;
        while let Some(chunk) = rx.recv().await {
            if fifo.write_all(&chunk).await.is_err() {
                break;
            }
        }
        drop(fifo);
        let req = CloseIoRequest {
            container_id: cid,
            exec_id: eid,
            stdin: true,
        };
        let _ = self.cd.tasks().close_io(self.cd.req(req, None)).await;
    }
}

/// The input side of one `kubectl attach -i` (see [`Runtime::attach_input`]).
pub struct AttachInput {
    /// The container's stdin FIFO.
    path: std::path::PathBuf,
    /// Its `stdinOnce` marker (present: this attach's end closes the stdin).
    once: std::path::PathBuf,
    id: String,
    rt: Runtime,
}

impl AttachInput {
    /// Copy the client's input into the container's stdin, and its terminal sizes into the
    /// container's terminal, until the input ends. For `stdinOnce` the stdin then closes:
    /// the FIFO goes (later attaches get no input) and CloseIO makes the shim close its own
    /// write end, so the process reads end of file once it has read what was sent.
    pub async fn serve(
        self,
        input: Option<mpsc::Receiver<Bytes>>,
        resize: Option<mpsc::Receiver<(u16, u16)>>,
    ) {
        use tokio::io::AsyncWriteExt;
        let resizer = resize.map(|mut rx| {
            let (rt, id) = (self.rt.clone(), self.id.clone());
            tokio::spawn(async move {
                while let Some((width, height)) = rx.recv().await {
                    let req = ResizePtyRequest {
                        container_id: id.clone(),
                        exec_id: String::new(),
                        width: width.into(),
                        height: height.into(),
                    };
                    let _ = rt.cd.tasks().resize_pty(rt.cd.req(req, None)).await;
                }
            })
        });
        let Some(mut input) = input else {
            // a terminal without input: follow its size until the client leaves
            if let Some(resizer) = resizer {
                let _ = resizer.await;
            }
            return;
        };
        match sys::open_fifo_writer(&self.path) {
            Ok(mut fifo) => {
                while let Some(chunk) = input.recv().await {
                    if fifo.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(container = %self.id, error = %e, "attach: opening the container's stdin")
            }
        }
        // Whoever removes the marker closes the stdin (two attaches may end together).
        if std::fs::remove_file(&self.once).is_ok() {
            let _ = sys::remove_file(&self.path);
            let req = CloseIoRequest {
                container_id: self.id.clone(),
                exec_id: String::new(),
                stdin: true,
            };
            if let Err(s) = self.rt.cd.tasks().close_io(self.rt.cd.req(req, None)).await {
                tracing::warn!(container = %self.id, error = %s, "attach: closing the container's stdin");
            }
        }
        if let Some(resizer) = resizer {
            resizer.abort();
        }
    }
}

struct ExecIo<'a> {
    stdin: Option<&'a std::path::Path>,
    stdout: &'a std::path::Path,
    stderr: Option<&'a std::path::Path>,
    terminal: bool,
}

/// Forward a FIFO's data to `to` until told to stop, then what is still buffered. Without a
/// receiver the data is read and dropped, so the process never blocks on a full pipe.
async fn forward(
    fifo: tokio::net::unix::pipe::Receiver,
    to: Option<mpsc::Sender<Bytes>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut chunk = vec![0u8; 32 * 1024];
    let send = |n: usize, chunk: &[u8]| {
        let to = to.clone();
        let data = Bytes::copy_from_slice(&chunk[..n]);
        async move {
            if let Some(to) = to {
                let _ = to.send(data).await;
            }
        }
    };
    loop {
        tokio::select! {
            ready = fifo.readable() => {
                if ready.is_err() { break; }
                match fifo.try_read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => send(n, &chunk).await,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            _ = stop.changed() => {
                while let Ok(n) = fifo.try_read(&mut chunk) {
                    if n == 0 { break; }
                    send(n, &chunk).await;
                }
                break;
            }
        }
    }
}
